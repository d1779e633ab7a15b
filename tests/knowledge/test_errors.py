"""Every domain and engine error carries its HTTP status and code; ``http_error`` reads them for every edge."""

from __future__ import annotations

import pytest
from django.db import InterfaceError, OperationalError

import ingestion.errors as ie
import ingestion.rerank as rerank
import ingestion.sources as sources
import llm.errors as le
from knowledge import errors as ke
from knowledge.errors import HttpError, http_error
from knowledge.models import Document
from knowledge.services.directory_oidc import OIDCSignInError
from knowledge.services.originals import OriginalUnavailableError

#: class → (HTTP status, stable code): the API contract (ARCHITECTURE section 6), written out on purpose
EXPECTED: dict[type[Exception], tuple[int, str]] = {
    ke.KnowledgeError: (400, "error"),
    ke.NotFoundError: (404, "not_found"),
    ke.PermissionDeniedError: (403, "permission_denied"),
    ke.DuplicateDocumentError: (409, "duplicate"),
    ke.SameVersionError: (409, "same_version"),
    ke.VersionPendingError: (409, "version_pending"),
    ke.SourceBusyError: (409, "sync_running"),
    ke.UploadTooLargeError: (413, "too_large"),
    ke.UnsupportedUploadError: (415, "unsupported_type"),
    ke.RateLimitedError: (429, "rate_limited"),
    ke.QuotaExceededError: (429, "quota_exceeded"),
    ke.ServiceUnavailableError: (503, "unavailable"),
    OriginalUnavailableError: (404, "original_unavailable"),
    OIDCSignInError: (401, "oidc_sign_in_failed"),
    le.LLMError: (503, "llm_error"),
    le.ModelUnavailableError: (503, "model_unavailable"),
    le.GenerationError: (503, "generation_error"),
    le.InvalidRequestError: (400, "invalid_request"),
    le.PromptTooLongError: (400, "prompt_too_long"),
    # an engine error that reaches a request means the index or its search cannot serve it
    ie.IngestionError: (503, "ingestion_error"),
    ie.UnsupportedFormatError: (503, "unsupported_format"),
    ie.EncryptedDocumentError: (503, "encrypted"),
    ie.DamagedDocumentError: (503, "damaged"),
    ie.EmptyDocumentError: (503, "empty"),
    ie.IndexMismatchError: (503, "index_mismatch"),
    ie.IndexBusyError: (503, "index_busy"),
    ie.IndexCorruptError: (503, "index_corrupt"),
    ie.DocumentTooLargeError: (503, "too_large"),
    ie.MemoryLimitError: (503, "memory_limit"),
    rerank.RerankerUnavailableError: (503, "reranker_unavailable"),
    # a document source's settings, or the source itself, in the admin, `manage.py sync` and the API
    sources.SourceError: (503, "source_error"),
    sources.SourceConfigError: (400, "source_config"),
    sources.SourceUnreachable: (503, "source_unreachable"),
    sources.ItemUnavailable: (503, "item_unavailable"),
    sources.ItemTooLarge: (503, "too_large"),
}


def make_error(cls: type[Exception], message: str = "What went wrong.") -> Exception:
    """One instance of each error class, built the way its raisers build it."""
    if cls is ke.DuplicateDocumentError:
        return ke.DuplicateDocumentError(Document(pk=7, title="guide.pdf"))
    if cls is ke.UnsupportedUploadError:
        return ke.UnsupportedUploadError(message, accepted=["pdf", "txt"])
    if cls is OIDCSignInError:
        return OIDCSignInError("refused", message)
    if cls is OriginalUnavailableError:
        return OriginalUnavailableError(message, reason="damaged")
    if cls in (ke.RateLimitedError, ke.QuotaExceededError):
        return cls(message, retry_after=7)  # type: ignore[call-arg]
    return cls(message)


def all_subclasses(cls: type) -> set[type]:
    return {cls} | {sub for child in cls.__subclasses__() for sub in all_subclasses(child)}


def test_every_domain_error_class_is_in_the_table() -> None:
    defined = set().union(*(all_subclasses(base) for base in ke.DOMAIN_ERRORS))
    defined = {cls for cls in defined if cls.__module__.split(".")[0] in ("knowledge", "ingestion", "llm")}

    assert defined == set(EXPECTED)


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda cls: cls.__name__)
def test_each_error_class_carries_its_status_and_code(cls: type[Exception]) -> None:
    status, code = EXPECTED[cls]

    assert (cls.http_status, cls.code) == (status, code)  # type: ignore[attr-defined]
    mapped = http_error(make_error(cls))
    assert (mapped.status, mapped.code) == (status, code)


def test_the_message_is_the_errors_own() -> None:
    assert http_error(ke.NotFoundError("There is no collection hr.")).message == "There is no collection hr."
    assert http_error(le.ModelUnavailableError("The model is loading.")).message == "The model is loading."
    duplicate = http_error(make_error(ke.DuplicateDocumentError))
    assert duplicate.message == "This file is already in the collection as document 7 (guide.pdf)."


def test_retry_after_comes_with_the_errors_that_have_one() -> None:
    assert http_error(ke.RateLimitedError("Slow down.", retry_after=7)).retry_after == 7
    assert http_error(ke.QuotaExceededError("Spent.", retry_after=0)).retry_after == 1  # never "0"
    assert http_error(ke.NotFoundError("No.")).retry_after is None
    assert http_error(ie.IndexBusyError("Busy.")).retry_after is None


@pytest.mark.parametrize("exc", [OperationalError("connection refused"), InterfaceError("connection already closed")])
def test_an_unreachable_database_is_a_503_to_retry_in_30_s(exc: Exception) -> None:
    assert http_error(exc) == HttpError(
        503, "database_unavailable", "The database is unavailable; try again shortly.", 30
    )


@pytest.mark.parametrize("exc", [ValueError("no"), KeyError("k"), RuntimeError("boom")])
def test_other_errors_are_not_mapped(exc: Exception) -> None:
    assert http_error(exc) is None
