"""The one place where errors become HTTP: domain and engine errors → JSON with a 4xx/503 code."""

from __future__ import annotations

import logging
from typing import Any

from django.db import InterfaceError, OperationalError
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from ingestion.errors import IngestionError
from knowledge import errors
from knowledge.observability import instrumentation as observe
from llm.errors import InvalidRequestError, LLMError, PromptTooLongError

logger = logging.getLogger(__name__)

_STATUS = {
    errors.NotFoundError: status.HTTP_404_NOT_FOUND,
    errors.PermissionDeniedError: status.HTTP_403_FORBIDDEN,
    errors.DuplicateDocumentError: status.HTTP_409_CONFLICT,
    errors.UploadTooLargeError: status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    errors.UnsupportedUploadError: status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    errors.RateLimitedError: status.HTTP_429_TOO_MANY_REQUESTS,
    errors.QuotaExceededError: status.HTTP_429_TOO_MANY_REQUESTS,
    errors.ServiceUnavailableError: status.HTTP_503_SERVICE_UNAVAILABLE,
}


def error_response(
    code: str, message: str, http_status: int, *, retry_after: str | None = None, **extra: Any
) -> Response:
    response = Response({"detail": message, "code": code, **extra}, status=http_status)
    if retry_after is not None:
        response["Retry-After"] = retry_after
    return response


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, (errors.RateLimitedError, errors.QuotaExceededError)):
        observe.api_rejected(exc.code, context.get("request"))
    if isinstance(exc, errors.KnowledgeError):
        http_status = next((code for cls, code in _STATUS.items() if isinstance(exc, cls)), 400)
        extra: dict[str, Any] = {}
        if isinstance(exc, errors.DuplicateDocumentError):
            extra["document_id"] = exc.existing.pk
        if isinstance(exc, errors.UnsupportedUploadError):
            extra["accepted_types"] = exc.accepted
        response = error_response(exc.code, exc.message, http_status, **extra)
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            response["Retry-After"] = str(max(1, int(retry_after)))
        return response
    if isinstance(exc, (InvalidRequestError, PromptTooLongError)):
        return error_response(exc.code, str(exc), status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, LLMError):
        logger.warning("The language model is unavailable: %s", exc)
        return error_response(exc.code, str(exc), status.HTTP_503_SERVICE_UNAVAILABLE)
    if isinstance(exc, (OperationalError, InterfaceError)):  # the server is down or unreachable
        logger.error("The database is unavailable: %s", exc)
        return error_response(
            "database_unavailable", "The database is unavailable; try again shortly.", 503, retry_after="30"
        )
    if isinstance(exc, IngestionError):
        logger.warning("The index is unavailable: %s", exc.message)
        return error_response(exc.code, exc.message, status.HTTP_503_SERVICE_UNAVAILABLE)

    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and "detail" in response.data:
        detail = response.data["detail"]
        response.data["code"] = getattr(detail, "code", None) or "error"
    return response
