"""The errors of the sources: a source's settings, the source as a whole, one item."""

from __future__ import annotations

from ingestion.errors import DocumentTooLargeError, IngestionError


class SourceError(IngestionError):
    """Base class of the errors of sources."""

    code = "source_error"


class SourceConfigError(SourceError):
    """A source's kind, location or options are not valid (raised when the source is built)."""

    code = "source_config"
    http_status = 400


class SourceUnreachable(SourceError):
    """The source as a whole cannot be enumerated now; the run fails with this reason and removes nothing."""

    code = "source_unreachable"
    transient = True


class ItemUnavailable(SourceError):
    """One item could not be downloaded. ``transient`` is False when it is gone (404, deleted since listing)."""

    code = "item_unavailable"

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


class ItemTooLarge(DocumentTooLargeError, SourceError):
    """An item is larger than the source's download cap."""

    code = "too_large"
