"""The OpenAI face's request and response shapes: what ``/api/v1/openai/…`` accepts and answers.

The request serializer turns a chat completion request into the keys of ``QuestionRequest``; the
response serializers describe the bodies for the OpenAPI schema. The views are in ``openai_compat``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from knowledge import limits
from knowledge.api.serializers import SourceSerializer, StrictSerializer, history_pairs
from knowledge.services import answering

DEFAULT_MODEL = "knowledge-portal"
#: model id → answer mode (None: the portal's default mode, RAG_ANSWER_MODE). Any other model name
#: is accepted too and answered like DEFAULT_MODEL, so that clients with a fixed model name work.
MODELS: dict[str, str | None] = {
    DEFAULT_MODEL: None,
    f"{DEFAULT_MODEL}-extractive": answering.EXTRACTIVE,
    f"{DEFAULT_MODEL}-generative": answering.GENERATIVE,
}


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
    temperature = serializers.FloatField(
        min_value=0.0, max_value=limits.TEMPERATURE_MAX, required=False, allow_null=True
    )
    top_p = serializers.FloatField(max_value=1.0, required=False, allow_null=True)
    max_tokens = serializers.IntegerField(
        min_value=1,
        required=False,
        allow_null=True,
        help_text=f"Longest answer in tokens (default {limits.DEFAULT_MAX_TOKENS}); more than LLM_MAX_TOKENS is "
        "lowered to it.",
    )
    max_completion_tokens = serializers.IntegerField(
        min_value=1, required=False, allow_null=True, help_text="Same as max_tokens, which it overrides."
    )
    stream = serializers.BooleanField(required=False, allow_null=True)
    stream_options = StreamOptionsSerializer(required=False, allow_null=True)
    stop = StopField(required=False)
    n = serializers.IntegerField(required=False, allow_null=True, help_text="Only 1 is supported.")
    user = serializers.CharField(
        max_length=limits.END_USER_ID_MAX_CHARS,
        required=False,
        allow_null=True,
        allow_blank=True,
        help_text="Your end user's id (quotas).",
    )
    collection = serializers.SlugField(
        max_length=limits.COLLECTION_SLUG_MAX_CHARS,
        required=False,
        allow_null=True,
        help_text="Extension: slug of the one collection to search.",
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
        if len(question) > limits.QUESTION_MAX_CHARS:
            raise serializers.ValidationError(
                {"messages": [f"The last user message is longer than {limits.QUESTION_MAX_CHARS} characters."]}
            )
        max_tokens = attrs.get("max_completion_tokens") or attrs.get("max_tokens") or limits.DEFAULT_MAX_TOKENS
        temperature, top_p = attrs.get("temperature"), attrs.get("top_p")
        # The keys of QuestionRequest, then what only the response needs.
        return {
            "prompt": question,
            "history": tuple(history),
            "temperature": limits.DEFAULT_TEMPERATURE if temperature is None else temperature,
            "top_p": limits.DEFAULT_TOP_P if top_p is None else top_p,
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
    history = history_pairs(turns[:-1])
    # user messages left without an answer belong to the question
    asked = []
    for message in reversed(turns[:-1]):
        if message["role"] != "user":
            break
        asked.insert(0, message["content"] or "")
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
    answered = serializers.BooleanField(
        help_text="Extension: false when no passage answers the question (the message says so; sources is empty)"
    )
    related = SourceSerializer(
        many=True, help_text="Extension: when answered is false, the closest passages, which are not an answer"
    )


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
