"""The API's exception handler: an error's HTTP meaning (``knowledge.errors.http_error``) as DRF JSON."""

from __future__ import annotations

import logging
from typing import Any

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from ingestion.errors import IngestionError
from knowledge import errors
from knowledge.observability import instrumentation as observe
from llm.errors import LLMError

logger = logging.getLogger(__name__)


def error_response(
    code: str, message: str, http_status: int, *, retry_after: str | None = None, **extra: Any
) -> Response:
    response = Response({"detail": message, "code": code, **extra}, status=http_status)
    if retry_after is not None:
        response["Retry-After"] = retry_after
    return response


def _extra(exc: Exception) -> dict[str, Any]:
    """Fields some errors add to the body, so that a program can act on them."""
    if isinstance(exc, errors.DuplicateDocumentError):
        return {"document_id": exc.existing.pk}
    if isinstance(exc, errors.UnsupportedUploadError):
        return {"accepted_types": exc.accepted}
    return {}


def _log_unavailable(exc: Exception, status: int) -> None:
    if status < 500:
        return
    if isinstance(exc, LLMError):
        logger.warning("The language model is unavailable: %s", exc)
    elif isinstance(exc, (OperationalError, InterfaceError)):
        logger.error("The database is unavailable: %s", exc)
    elif isinstance(exc, IngestionError):
        logger.warning("The index is unavailable: %s", exc.message)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, (errors.RateLimitedError, errors.QuotaExceededError)):
        observe.api_rejected(exc.code, context.get("request"))
    mapped = errors.http_error(exc)
    if mapped is not None:
        _log_unavailable(exc, mapped.status)
        retry_after = None if mapped.retry_after is None else str(mapped.retry_after)
        return error_response(mapped.code, mapped.message, mapped.status, retry_after=retry_after, **_extra(exc))

    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and "detail" in response.data:
        detail = response.data["detail"]
        response.data["code"] = getattr(detail, "code", None) or "error"
    return response


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Django's 404 handler: JSON under ``/api/`` (a path no route matches, such as a negative id, is still an API
    error), the portal's page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Not found.", "code": "not_found"}, status=404)
    return defaults.page_not_found(request, exception)
