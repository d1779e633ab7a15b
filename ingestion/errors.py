"""Errors raised by the ingestion engine.

Every error has a stable ``code``, the HTTP status it answers with at an edge (``http_status``, a plain
int: this package knows no HTTP framework) and a message a person understands; the domain layer stores
that message as the document's failure reason.
"""

from __future__ import annotations


class IngestionError(Exception):
    """Base class of every ingestion error."""

    code = "ingestion_error"
    #: what an edge answers when one reaches a request: the index or its search cannot serve it
    http_status = 503
    #: permanent errors fail the document; transient ones may be retried
    transient = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnsupportedFormatError(IngestionError):
    code = "unsupported_format"


class EncryptedDocumentError(IngestionError):
    code = "encrypted"


class DamagedDocumentError(IngestionError):
    code = "damaged"


class EmptyDocumentError(IngestionError):
    code = "empty"


#: how every error that a rebuild of the search store mends ends: ``manage.py rebuild_index`` queues the
#: documents that failed with it again once the store is rebuilt
REBUILD_HINT = "run `manage.py rebuild_index`"


class IndexMismatchError(IngestionError):
    """The saved index was built by another embedder or dimension than the configured one."""

    code = "index_mismatch"


class IndexBusyError(IngestionError):
    """The index lock could not be taken in time (another writer holds it)."""

    code = "index_busy"
    transient = True


class IndexCorruptError(IngestionError):
    """The saved index files cannot be read or do not agree with each other."""

    code = "index_corrupt"


class DocumentTooLargeError(IngestionError):
    """The document exceeds a safety limit (pages, unpacked size): refused rather than hang a worker."""

    code = "too_large"


class MemoryLimitError(DocumentTooLargeError):
    """Reading the document needed more memory than allowed (``ingestion.sandbox``): refused, not OOM-killed."""

    code = "memory_limit"
