"""The OpenAI-compatible face: ``/api/v1/openai/chat/completions`` and ``/api/v1/openai/models``.

OpenAI SDKs and chat front ends use the portal with only a base URL (``…/api/v1/openai``) and an API
key (sent as ``Authorization: Bearer <key>``). Every completion is grounded in the documents the
key may read; the passages used come back in an extra ``sources`` field. The model chosen picks the
answer mode (see ``MODELS``). Errors take OpenAI's shape: ``{"error": {"message", "type", "param",
"code"}}``, with the status every edge gives them (``knowledge.errors.http_error``). The request and
response shapes are in ``openai_serializers``; here are the bodies, the error shape and the views.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from django.conf import settings
from django.http import StreamingHttpResponse
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from knowledge.api import errors as api_errors
from knowledge.api.limits import LimitedApiView
from knowledge.api.openai_serializers import (
    DEFAULT_MODEL,
    MODELS,
    ChatCompletionCreateSerializer,
    ChatCompletionSerializer,
    ModelListSerializer,
    OpenAIErrorSerializer,
)
from knowledge.api.openai_serializers import conversation_split as conversation_split  # re-exported
from knowledge.api.parsers import SafeJSONParser
from knowledge.api.serializers import SOURCE_EXAMPLE, ServerSentEventSerializer, related_body, sources_body
from knowledge.models import ApiKey
from knowledge.services import answering, audit
from knowledge.services import requests as question_services

logger = logging.getLogger(__name__)

_MODEL_DESCRIPTIONS = {
    None: "Answers from your documents in the portal's default mode, with the sources cited.",
    answering.EXTRACTIVE: "Quotes the passages that answer, with citations; no language model call.",
    answering.GENERATIVE: "The language model writes the answer from the retrieved passages, citing them.",
}
_MODELS_CREATED = int(time.time())


# --------------------------------------------------------------------------------------- response


def _usage(answer: answering.Answer) -> dict[str, int]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.tokens_used,
    }


def completion_body(answer: answering.Answer, *, model: str) -> dict[str, Any]:
    """A ``chat.completion``: the answer, why it ended (as the model said), its usage and sources."""
    return {
        "id": _completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.output},
                "logprobs": None,
                "finish_reason": answer.finish_reason,
            }
        ],
        "usage": _usage(answer),
        **_grounding(answer),
    }


def _grounding(answer: answering.Answer) -> dict[str, Any]:
    """The extension fields of a completion: its sources, whether they answer, and the closest passages if not."""
    return {"sources": sources_body(answer), "answered": answer.answered, "related": related_body(answer)}


def completion_chunks(
    items: answering.AnswerEvents,
    *,
    model: str,
    include_usage: bool,
) -> Iterator[str]:
    """Server-sent events: a role chunk, content chunks, a finish chunk with ``sources``, [DONE]."""
    head = {"id": _completion_id(), "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    extra = {"usage": None} if include_usage else {}  # as OpenAI: null on every chunk but the usage one

    def chunk(delta: dict[str, str], finish_reason: str | None = None, **fields: Any) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _event({**head, "choices": [choice], **extra, **fields})

    yield chunk({"role": "assistant", "content": ""})
    try:
        for item in items:
            if isinstance(item, answering.Answer):
                grounding = _grounding(item)
                yield chunk({}, item.finish_reason, **grounding)
                if include_usage:
                    yield _event({**head, "choices": [], "usage": _usage(item), **grounding})
            else:
                yield chunk({"content": item.text})
    except Exception as exc:
        # The response has begun: the error goes into the stream, where OpenAI's SDKs raise it.
        yield _event(_stream_error(exc))
        return
    finally:
        items.close()  # a client that went away: the answer is charged and the model stops now
    yield "data: [DONE]\n\n"


def _stream_error(exc: Exception) -> dict[str, Any]:
    response = api_errors.exception_handler(exc, {})
    if response is None:
        logger.exception("A streamed chat completion failed")
        return {"error": {"message": "The answer failed.", "type": "server_error", "param": None, "code": None}}
    return {"error": _error(response.status_code, response.data, exc)}


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def models_body() -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": _MODELS_CREATED,
                "owned_by": "knowledge-portal",
                "mode": mode or settings.RAG_ANSWER_MODE,
                "description": _MODEL_DESCRIPTIONS[mode],
            }
            for name, mode in MODELS.items()
        ],
    }


# ----------------------------------------------------------------------------------------- errors

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def openai_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """The project's mapping of errors to statuses (and Retry-After), in OpenAI's error shape."""
    response = api_errors.exception_handler(exc, context)
    if response is not None:
        response.data = {"error": _error(response.status_code, response.data, exc)}
    return response


def _error(status_code: int, data: Any, exc: Exception) -> dict[str, Any]:
    kind = _TYPES.get(status_code, "server_error" if status_code >= 500 else "invalid_request_error")
    if isinstance(exc, serializers.ValidationError):
        param, message, code = _first_field_error(data)
        return {"message": f"{param}: {message}" if param else message, "type": kind, "param": param, "code": code}
    if isinstance(data, dict) and "detail" in data:
        return {"message": str(data["detail"]), "type": kind, "param": None, "code": data.get("code")}
    return {"message": str(data), "type": kind, "param": None, "code": None}


def _first_field_error(detail: Any, path: str | None = None) -> tuple[str | None, str, str | None]:
    """The first of DRF's nested field errors: its field path (``messages[1].role``), text and code."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            if not value:
                continue
            if key == "non_field_errors":
                return _first_field_error(value, path)
            child = f"{path or ''}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else str(key)
            return _first_field_error(value, child)
    elif isinstance(detail, list):
        for index, value in enumerate(detail):
            if isinstance(value, (dict, list)):
                if value:  # a list of objects: {} stands for an item without errors
                    return _first_field_error(value, f"{path or ''}[{index}]")
            elif value:
                return path, str(value), getattr(value, "code", None)
    return path, str(detail), getattr(detail, "code", None)


# ------------------------------------------------------------------------------------------ views

_ERRORS = {
    400: OpenApiResponse(OpenAIErrorSerializer, description="Invalid request (OpenAI error shape)"),
    401: OpenApiResponse(OpenAIErrorSerializer, description="No valid API key"),
    404: OpenApiResponse(OpenAIErrorSerializer, description="Unknown or unreadable collection (the same answer)"),
    429: OpenApiResponse(OpenAIErrorSerializer, description="Rate limited or token quota spent (Retry-After)"),
    503: OpenApiResponse(OpenAIErrorSerializer, description="Model or index unavailable"),
}
_CHAT_EXAMPLES = [
    OpenApiExample(
        "Question with history",
        value={
            "model": DEFAULT_MODEL,
            "messages": [
                {"role": "user", "content": "What do Python classes bundle?"},
                {"role": "assistant", "content": "Data and the methods that act on it [1]."},
                {"role": "user", "content": "How is an instance created?"},
            ],
            "max_tokens": 200,
            "temperature": 0.2,
            "user": "42",
            "collection": "default",
        },
        request_only=True,
    ),
    OpenApiExample(
        "Completion",
        value={
            "id": "chatcmpl-5f0c1d1e9b6a4c3f8e2d7a6b5c4d3e2f",
            "object": "chat.completion",
            "created": 1767225600,
            "model": DEFAULT_MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "By calling the class like a function [1]."},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 412, "completion_tokens": 11, "total_tokens": 423},
            "sources": [SOURCE_EXAMPLE],
        },
        response_only=True,
        status_codes=["200"],
    ),
    OpenApiExample(
        "Stream",
        value='data: {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1767225600, '
        '"model": "knowledge-portal", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, '
        '"logprobs": null, "finish_reason": null}]}\n\n'
        'data: {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1767225600, '
        '"model": "knowledge-portal", "choices": [{"index": 0, "delta": {"content": "By calling the class [1]."}, '
        '"logprobs": null, "finish_reason": null}]}\n\n'
        'data: {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1767225600, '
        '"model": "knowledge-portal", "choices": [{"index": 0, "delta": {}, "logprobs": null, '
        '"finish_reason": "stop"}], "sources": [{"id": 12, "document_id": 3, "title": "guide.pdf", "page": 4, '
        '"score": 0.71, "text": "the chunk text", "highlight": "the sentence that answers"}]}\n\n'
        "data: [DONE]\n\n",
        media_type="text/event-stream",
        response_only=True,
        status_codes=["200"],
    ),
]


class _OpenAIApi(LimitedApiView):
    parser_classes = [SafeJSONParser]

    def get_exception_handler(self) -> Callable[[Exception, dict[str, Any]], Response | None]:
        return openai_exception_handler

    def get_authenticate_header(self, request: Request) -> str:
        # what OpenAI clients send; "Token <key>" is accepted here as well
        return "Bearer"


class OpenAIChatCreateApi(_OpenAIApi):
    """OpenAI's chat completions, answered from the documents the caller may read, with ``sources``."""

    @extend_schema(
        operation_id="openai_chat_completions_create",
        tags=["openai"],
        request=ChatCompletionCreateSerializer,
        responses={
            (200, "application/json"): ChatCompletionSerializer,
            (200, "text/event-stream"): ServerSentEventSerializer,
            **_ERRORS,
        },
        examples=_CHAT_EXAMPLES,
        description="OpenAI-compatible: point an OpenAI SDK at `/api/v1/openai` with an API key. The last user "
        "message is the question, earlier user/assistant pairs the conversation. Extensions: `collection` in the "
        "request, `sources` in the response.\n\n"
        'With `"stream": true` the answer is text/event-stream: `data: {chat.completion.chunk}` events (the '
        "first with the role, then content deltas, then one with `finish_reason` and `sources`; with "
        "`stream_options.include_usage`, one more with `usage` and `sources` and no choices), then `data: [DONE]`.",
    )
    def post(self, request: Request) -> Any:
        serializer = ChatCompletionCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        question = question_services.QuestionRequest.from_validated(question_services.CHAT, data)
        api_key = request.auth if isinstance(request.auth, ApiKey) else None
        if data["stream"]:
            items = question_services.question_stream(
                request=question, user=request.user, api_key=api_key, ip_address=audit.client_ip(request)
            )
            response = StreamingHttpResponse(
                completion_chunks(items, model=data["model"], include_usage=data["include_usage"]),
                content_type="text/event-stream",
            )
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"
            return response
        answer = question_services.question_answer(
            request=question, user=request.user, api_key=api_key, ip_address=audit.client_ip(request)
        )
        return Response(completion_body(answer, model=data["model"]))


class OpenAIModelListApi(_OpenAIApi):
    """The models a client may name: they choose how the portal answers."""

    @extend_schema(
        operation_id="openai_models_list",
        tags=["openai"],
        responses={200: ModelListSerializer, 401: _ERRORS[401]},
    )
    def get(self, request: Request) -> Response:
        return Response(models_body())
