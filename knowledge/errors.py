"""The domain's errors, and the one function that says what any error means in HTTP.

Each error carries a stable ``code`` and its ``http_status``; the engines' errors (``IngestionError``,
``LLMError``) carry theirs too. Every edge (the API, the OpenAI face, the pages) maps an error with
``http_error`` and only chooses the shape of its body.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, overload

from django.db import InterfaceError, OperationalError

from ingestion.errors import IngestionError
from llm.errors import LLMError

if TYPE_CHECKING:
    from knowledge.models import Document


class KnowledgeError(Exception):
    code = "error"
    http_status = 400
    #: seconds after which asking again may succeed (the Retry-After header), when the error says so
    retry_after: int | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFoundError(KnowledgeError):
    code = "not_found"
    http_status = 404


class PermissionDeniedError(KnowledgeError):
    code = "permission_denied"
    http_status = 403


class DuplicateDocumentError(KnowledgeError):
    """The same file (same sha256) is already in the collection: it is not ingested twice."""

    code = "duplicate"
    http_status = 409

    def __init__(self, existing: Document) -> None:
        super().__init__(f"This file is already in the collection as document {existing.pk} ({existing.title}).")
        self.existing = existing


class SameVersionError(KnowledgeError):
    """A new version of a document is the very file of its current version."""

    code = "same_version"
    http_status = 409


class VersionPendingError(KnowledgeError):
    """A document's earlier new version is still waiting or being processed: one new version at a time."""

    code = "version_pending"
    http_status = 409


class SourceBusyError(KnowledgeError):
    """A sync of a document source is already running."""

    code = "sync_running"
    http_status = 409


class UploadTooLargeError(KnowledgeError):
    code = "too_large"
    http_status = 413


class UnsupportedUploadError(KnowledgeError):
    code = "unsupported_type"
    http_status = 415

    def __init__(self, message: str, *, accepted: list[str]) -> None:
        super().__init__(message)
        self.accepted = accepted


class RateLimitedError(KnowledgeError):
    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QuotaExceededError(KnowledgeError):
    code = "quota_exceeded"
    http_status = 429

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServiceUnavailableError(KnowledgeError):
    code = "unavailable"
    http_status = 503


class HttpError(NamedTuple):
    """What an error means at an edge: status, stable code, a message, and Retry-After seconds (or None)."""

    status: int
    code: str
    message: str
    retry_after: int | None = None


DOMAIN_ERRORS = (KnowledgeError, IngestionError, LLMError)
#: the database server is down or unreachable: not a domain error, but every edge answers it the same way
DATABASE_UNAVAILABLE = HttpError(503, "database_unavailable", "The database is unavailable; try again shortly.", 30)


@overload
def http_error(exc: KnowledgeError | IngestionError | LLMError) -> HttpError: ...
@overload
def http_error(exc: BaseException) -> HttpError | None: ...
def http_error(exc: BaseException) -> HttpError | None:
    """The HTTP meaning of a domain or engine error (or an unreachable database); None for any other error."""
    if isinstance(exc, DOMAIN_ERRORS):
        retry_after = exc.retry_after if isinstance(exc, KnowledgeError) else None
        return HttpError(
            status=exc.http_status,
            code=exc.code,
            message=exc.message,
            retry_after=None if retry_after is None else max(1, int(retry_after)),
        )
    if isinstance(exc, (OperationalError, InterfaceError)):
        return DATABASE_UNAVAILABLE
    return None
