"""The domain's errors. Each carries a stable ``code``; the API maps them to HTTP at the edge."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from knowledge.models import Document


class KnowledgeError(Exception):
    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFoundError(KnowledgeError):
    code = "not_found"


class PermissionDeniedError(KnowledgeError):
    code = "permission_denied"


class DuplicateDocumentError(KnowledgeError):
    """The same file (same sha256) is already in the collection: it is not ingested twice."""

    code = "duplicate"

    def __init__(self, existing: Document) -> None:
        super().__init__(f"This file is already in the collection as document {existing.pk} ({existing.title}).")
        self.existing = existing


class UploadTooLargeError(KnowledgeError):
    code = "too_large"


class UnsupportedUploadError(KnowledgeError):
    code = "unsupported_type"

    def __init__(self, message: str, *, accepted: list[str]) -> None:
        super().__init__(message)
        self.accepted = accepted


class RateLimitedError(KnowledgeError):
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QuotaExceededError(KnowledgeError):
    code = "quota_exceeded"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServiceUnavailableError(KnowledgeError):
    code = "unavailable"
