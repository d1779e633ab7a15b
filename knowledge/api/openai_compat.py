"""The OpenAI-compatible face: ``/api/v1/openai/chat/completions`` and ``/api/v1/openai/models``.

OpenAI SDKs and chat front ends use the portal with only a base URL (``…/api/v1/openai``) and an API
key (sent as ``Authorization: Bearer <key>``). Every completion is grounded in the documents the
key may read; the passages used come back in an extra ``sources`` field. The model chosen picks the
answer mode (see ``MODELS``). Errors take OpenAI's shape: ``{"error": {"message", "type", "param",
"code"}}``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from typing import Any

from django.conf import settings
from django.http import StreamingHttpResponse
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from knowledge.api import errors as api_errors
from knowledge.api.limits import LimitedApiView
from knowledge.api.parsers import SafeJSONParser
from knowledge.api.serializers import ServerSentEventSerializer, SourceSerializer, StrictSerializer
from knowledge.models import ApiKey
from knowledge.services import answering
from knowledge.services import requests as question_services

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "knowledge-portal"
#: model id → answer mode (None: the portal's default mode, RAG_ANSWER_MODE). Any other model name
#: is accepted too and answered like DEFAULT_MODEL, so that clients with a fixed model name work.
MODELS: dict[str, str | None] = {
    DEFAULT_MODEL: None,
    f"{DEFAULT_MODEL}-extractive": answering.EXTRACTIVE,
    f"{DEFAULT_MODEL}-generative": answering.GENERATIVE,
}
_MODEL_DESCRIPTIONS = {
    None: "Answers from your documents in the portal's default mode, with the sources cited.",
    answering.EXTRACTIVE: "Quotes the passages that answer, with citations; no language model call.",
    answering.GENERATIVE: "The language model writes the answer from the retrieved passages, citing them.",
}
_MODELS_CREATED = int(time.time())
MAX_QUESTION_CHARS = 8000
DEFAULT_MAX_TOKENS = 256


# ---------------------------------------------------------------------------------------- request


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string"},
            {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}},
                    "required": ["type", "text"],
                },
            },
        ],
        "nullable": True,
    }
)
class ContentField(serializers.Field):
    """A message's text: a string, or a list of ``{"type": "text", "text": …}`` parts (joined)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_null=True, **kwargs)

    def to_internal_value(self, data: Any) -> str:
        if isinstance(data, str):
            return data
        if isinstance(data, list):
            texts = []
            for part in data:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise serializers.ValidationError("Only text content parts are supported.")
                texts.append(part["text"])
            return "\n".join(texts)
        raise serializers.ValidationError("Must be a string or a list of text parts.")

    def to_representation(self, value: Any) -> Any:
        return value


@extend_schema_field(
    {
        "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}],
        "nullable": True,
    }
)
class StopField(serializers.Field):
    """Up to 4 strings; the answer ends before the first of them."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_null=True, **kwargs)

    def to_internal_value(self, data: Any) -> list[str]:
        stops = [data] if isinstance(data, str) else data
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise serializers.ValidationError("Must be a string or a list of strings.")
        if len(stops) > 4:
            raise serializers.ValidationError("At most 4 stop sequences are supported.")
        return [s for s in stops if s]

    def to_representation(self, value: Any) -> Any:
        return value


class ChatMessageSerializer(serializers.Serializer):
    # Other keys a client sends along with a message (name, refusal, …) are ignored.
    role = serializers.ChoiceField(choices=["system", "developer", "user", "assistant"])
    content = ContentField()

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict) and data.get("role") in {"tool", "function"}:
            raise serializers.ValidationError({"role": ["Tool and function messages are not supported."]})
        return super().to_internal_value(data)


class StreamOptionsSerializer(serializers.Serializer):
    include_usage = serializers.BooleanField(
        required=False, allow_null=True, help_text="Send a last chunk with `usage` (and `sources`) before [DONE]."
    )


class ResponseFormatSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=["text"], help_text="Only plain text is supported.")


class ChatCompletionCreateSerializer(StrictSerializer):
    """A chat completion request as OpenAI defines it, plus ``collection``; unknown fields are refused."""

    model = serializers.CharField(
        max_length=200,
        help_text=f"`{DEFAULT_MODEL}` (default answer mode), `{DEFAULT_MODEL}-extractive` or "
        f"`{DEFAULT_MODEL}-generative`; any other name is answered like `{DEFAULT_MODEL}`.",
    )
    messages = ChatMessageSerializer(
        many=True,
        allow_empty=False,
        help_text="The last message is the question (role user); earlier user/assistant pairs are the "
        "conversation so far. System and developer messages are ignored: the portal's own instructions apply.",
    )
    temperature = serializers.FloatField(min_value=0.0, max_value=2.0, required=False, allow_null=True)
    top_p = serializers.FloatField(max_value=1.0, required=False, allow_null=True)
    max_tokens = serializers.IntegerField(
        min_value=1,
        required=False,
        allow_null=True,
        help_text="Longest answer in tokens (default 256); more than LLM_MAX_TOKENS is lowered to it.",
    )
    max_completion_tokens = serializers.IntegerField(
        min_value=1, required=False, allow_null=True, help_text="Same as max_tokens, which it overrides."
    )
    stream = serializers.BooleanField(required=False, allow_null=True)
    stream_options = StreamOptionsSerializer(required=False, allow_null=True)
    stop = StopField(required=False)
    n = serializers.IntegerField(required=False, allow_null=True, help_text="Only 1 is supported.")
    user = serializers.CharField(
        max_length=200, required=False, allow_null=True, allow_blank=True, help_text="Your end user's id (quotas)."
    )
    collection = serializers.SlugField(
        max_length=64, required=False, allow_null=True, help_text="Extension: slug of the one collection to search."
    )
    # Accepted for compatibility and ignored: none of them changes what a grounded answer is.
    presence_penalty = serializers.FloatField(min_value=-2.0, max_value=2.0, required=False, allow_null=True)
    frequency_penalty = serializers.FloatField(min_value=-2.0, max_value=2.0, required=False, allow_null=True)
    seed = serializers.IntegerField(required=False, allow_null=True)
    logprobs = serializers.BooleanField(required=False, allow_null=True, help_text="Only false is supported.")
    top_logprobs = serializers.IntegerField(required=False, allow_null=True, help_text="Only 0 is supported.")
    response_format = ResponseFormatSerializer(required=False, allow_null=True)
    metadata = serializers.DictField(child=serializers.CharField(), required=False, allow_null=True)
    store = serializers.BooleanField(required=False, allow_null=True)
    service_tier = serializers.CharField(required=False, allow_null=True)
    parallel_tool_calls = serializers.BooleanField(required=False, allow_null=True)
    tools = serializers.ListField(
        child=serializers.DictField(), required=False, allow_null=True, help_text="Tools are not supported."
    )
    tool_choice = serializers.JSONField(required=False, allow_null=True, help_text='Only "none" or "auto".')

    def validate_top_p(self, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise serializers.ValidationError("Ensure this value is greater than 0.")
        return value

    def validate_n(self, value: int | None) -> int | None:
        if value not in (None, 1):
            raise serializers.ValidationError("Only n=1 is supported.")
        return value

    def validate_logprobs(self, value: bool | None) -> bool | None:
        if value:
            raise serializers.ValidationError("logprobs are not supported.")
        return value

    def validate_top_logprobs(self, value: int | None) -> int | None:
        if value:
            raise serializers.ValidationError("logprobs are not supported.")
        return value

    def validate_tools(self, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise serializers.ValidationError("Tools are not supported.")
        return value

    def validate_tool_choice(self, value: Any) -> Any:
        if value not in (None, "none", "auto"):
            raise serializers.ValidationError("Tools are not supported.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        question, history = conversation_split(attrs["messages"])
        if not question.strip():
            raise serializers.ValidationError({"messages": ["The last user message is empty."]})
        if len(question) > MAX_QUESTION_CHARS:
            raise serializers.ValidationError(
                {"messages": [f"The last user message is longer than {MAX_QUESTION_CHARS} characters."]}
            )
        max_tokens = attrs.get("max_completion_tokens") or attrs.get("max_tokens") or DEFAULT_MAX_TOKENS
        temperature, top_p = attrs.get("temperature"), attrs.get("top_p")
        # The keys of QuestionRequest, then what only the response needs.
        return {
            "prompt": question,
            "history": tuple(history),
            "temperature": 0.7 if temperature is None else temperature,
            "top_p": 0.9 if top_p is None else top_p,
            "max_tokens": min(max_tokens, settings.LLM_MAX_TOKENS),
            "stop": tuple(attrs.get("stop") or ()),
            "user_id": attrs.get("user") or "",
            "top_k": settings.RAG_TOP_K,
            "collection": attrs.get("collection") or None,
            "mode": MODELS.get(attrs["model"]) or settings.RAG_ANSWER_MODE,
            "model": attrs["model"],
            "stream": bool(attrs.get("stream")),
            "include_usage": bool((attrs.get("stream_options") or {}).get("include_usage")),
        }


def conversation_split(messages: list[dict[str, str]]) -> tuple[str, list[tuple[str, str]]]:
    """The question (the last message, which must be the user's) and the earlier (question, answer) turns.

    System and developer messages are left out; consecutive user messages are read as one; an
    assistant message that answers no question (a greeting) is left out.
    """
    turns = [m for m in messages if m["role"] in {"user", "assistant"}]
    if not turns or messages[-1]["role"] != "user":
        raise serializers.ValidationError({"messages": ["The last message must be the user's question."]})
    history: list[tuple[str, str]] = []
    asked: list[str] = []
    for message in turns[:-1]:
        content = message["content"] or ""
        if message["role"] == "user":
            asked.append(content)
        elif asked:
            history.append(("\n".join(asked), content))
            asked = []
    # user messages left without an answer belong to the question
    question = "\n".join([*asked, turns[-1]["content"] or ""])
    return question, history


# --------------------------------------------------------------------------------------- response


class ChatMessageOutSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["assistant"])
    content = serializers.CharField()


class ChoiceSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    message = ChatMessageOutSerializer()
    logprobs = serializers.JSONField(allow_null=True)
    finish_reason = serializers.ChoiceField(choices=["stop", "length"])


class UsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class ChatCompletionSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.ChoiceField(choices=["chat.completion"])
    created = serializers.IntegerField(help_text="Unix time")
    model = serializers.CharField(help_text="The model named in the request")
    choices = ChoiceSerializer(many=True)
    usage = UsageSerializer()
    sources = SourceSerializer(many=True, help_text="Extension: the passages the answer was given, cited as [n]")


class ModelSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.ChoiceField(choices=["model"])
    created = serializers.IntegerField()
    owned_by = serializers.CharField()
    mode = serializers.CharField(help_text="Extension: the answer mode, extractive or generative")
    description = serializers.CharField(help_text="Extension")


class ModelListSerializer(serializers.Serializer):
    object = serializers.ChoiceField(choices=["list"])
    data = ModelSerializer(many=True)


class OpenAIErrorDetailSerializer(serializers.Serializer):
    message = serializers.CharField()
    type = serializers.CharField()
    param = serializers.CharField(allow_null=True)
    code = serializers.CharField(allow_null=True)


class OpenAIErrorSerializer(serializers.Serializer):
    error = OpenAIErrorDetailSerializer()


def _usage(answer: answering.Answer) -> dict[str, int]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.tokens_used,
    }


def completion_body(completion: question_services.Completion, *, model: str) -> dict[str, Any]:
    answer = completion.answer
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
                "finish_reason": completion.finish_reason,
            }
        ],
        "usage": _usage(answer),
        "sources": question_services.sources_body(answer),
    }


def completion_chunks(
    items: Generator[answering.StreamPiece | question_services.Completion, None, None],
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
            if isinstance(item, question_services.Completion):
                sources = question_services.sources_body(item.answer)
                yield chunk({}, item.finish_reason, sources=sources)
                if include_usage:
                    yield _event({**head, "choices": [], "usage": _usage(item.answer), "sources": sources})
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
_SOURCE_EXAMPLE = {
    "id": 12,
    "document_id": 3,
    "title": "guide.pdf",
    "page": 4,
    "score": 0.71,
    "text": "the chunk text",
    "highlight": "the sentence that answers",
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
            "sources": [_SOURCE_EXAMPLE],
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
            items = question_services.question_complete_stream(request=question, user=request.user, api_key=api_key)
            response = StreamingHttpResponse(
                completion_chunks(items, model=data["model"], include_usage=data["include_usage"]),
                content_type="text/event-stream",
            )
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"
            return response
        completion = question_services.question_complete(request=question, user=request.user, api_key=api_key)
        return Response(completion_body(completion, model=data["model"]))


class OpenAIModelListApi(_OpenAIApi):
    """The models a client may name: they choose how the portal answers."""

    @extend_schema(
        operation_id="openai_models_list",
        tags=["openai"],
        responses={200: ModelListSerializer, 401: _ERRORS[401]},
    )
    def get(self, request: Request) -> Response:
        return Response(models_body())
