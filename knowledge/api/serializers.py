"""Strict request validation and the response shapes of the API (used for the OpenAPI schema too)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.urls import reverse as django_reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from knowledge import limits
from knowledge.models import Document, DocumentVersion, SourceRun
from knowledge.models import Source as DocumentSource
from knowledge.services.answering import MODES, Answer, Source


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not know, so a typo never passes silently."""

    def to_internal_value(self, data: Any) -> Any:
        unknown = sorted(set(data) - set(self.fields)) if hasattr(data, "keys") else []
        errors = {name: ["Unknown field."] for name in unknown}
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            detail = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
            raise serializers.ValidationError({**detail, **errors}) from exc
        if errors:
            raise serializers.ValidationError(errors)
        return value


class GenerateRequestSerializer(StrictSerializer):
    prompt = serializers.CharField(min_length=1, max_length=limits.QUESTION_MAX_CHARS, trim_whitespace=False)
    temperature = serializers.FloatField(
        min_value=0.0, max_value=limits.TEMPERATURE_MAX, default=limits.DEFAULT_TEMPERATURE
    )
    top_p = serializers.FloatField(max_value=1.0, default=limits.DEFAULT_TOP_P)
    user_id = serializers.CharField(max_length=limits.END_USER_ID_MAX_CHARS, required=False, allow_blank=False)
    stream = serializers.BooleanField(
        default=False, help_text="Answer as text/event-stream: token events, then a final event."
    )

    def get_fields(self) -> dict[str, Any]:
        fields = super().get_fields()
        # The bound is a setting, read when the serializer is built (the schema shows it too).
        fields["max_tokens"] = serializers.IntegerField(
            min_value=1,
            max_value=settings.LLM_MAX_TOKENS,
            default=min(limits.DEFAULT_MAX_TOKENS, settings.LLM_MAX_TOKENS),
        )
        # "async" is a Python keyword, so it cannot be declared as a class attribute.
        fields["async"] = serializers.BooleanField(
            default=False, help_text="Run on a worker: 202 with a task id and a status URL."
        )
        return fields

    def validate_prompt(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("The prompt is empty.")
        return value

    def validate_top_p(self, value: float) -> float:
        if value <= 0:
            raise serializers.ValidationError("Ensure this value is greater than 0.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("stream") and attrs.get("async"):
            raise serializers.ValidationError({"stream": ["stream and async cannot be combined."]})
        return attrs


class HistoryMessageSerializer(StrictSerializer):
    role = serializers.ChoiceField(choices=["user", "assistant"])
    content = serializers.CharField(max_length=limits.QUESTION_MAX_CHARS, allow_blank=True, trim_whitespace=False)


def history_pairs(messages: list[dict[str, str]]) -> list[tuple[str, str]]:
    """The (question, answer) turns of a conversation's user and assistant messages, oldest first.

    Consecutive user messages are read as one question; an assistant message that answers no question
    (a greeting) is left out, and so is a last question without its answer.
    """
    pairs: list[tuple[str, str]] = []
    asked: list[str] = []
    for message in messages:
        content = message.get("content") or ""
        if message["role"] == "user":
            asked.append(content)
        elif asked:
            pairs.append(("\n".join(asked), content))
            asked = []
    return pairs


class RagRequestSerializer(GenerateRequestSerializer):
    top_k = serializers.IntegerField(min_value=1, max_value=50, default=None)
    collection = serializers.SlugField(
        max_length=limits.COLLECTION_SLUG_MAX_CHARS, required=False, help_text="Slug of one collection to search."
    )
    mode = serializers.ChoiceField(choices=MODES, required=False, help_text="Default: RAG_ANSWER_MODE.")
    history = HistoryMessageSerializer(
        many=True,
        required=False,
        max_length=limits.HISTORY_MAX_MESSAGES,
        help_text="The conversation so far, oldest first: user and assistant messages. A follow-up question "
        '("and in 2020?") is searched with what it refers to.',
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        attrs["top_k"] = attrs.get("top_k") or settings.RAG_TOP_K
        attrs["mode"] = attrs.get("mode") or settings.RAG_ANSWER_MODE
        attrs["history"] = history_pairs(attrs.get("history") or [])
        return attrs


class SourceSerializer(serializers.Serializer):
    id = serializers.IntegerField(help_text="Chunk id")
    document_id = serializers.IntegerField()
    title = serializers.CharField()
    page = serializers.IntegerField(allow_null=True)
    score = serializers.FloatField(help_text="Cosine similarity of the passage to the question")
    text = serializers.CharField()
    highlight = serializers.CharField(help_text="The sentences of the passage that best answer the question")
    url = serializers.SerializerMethodField(
        help_text="The passage in its original (for a PDF, the page with the passage marked), relative to the portal"
    )
    origin_url = serializers.CharField(
        help_text="Where the document lives outside the portal (the page or file of a synced website or bucket); "
        "empty for an uploaded document"
    )

    @extend_schema_field(OpenApiTypes.STR)
    def get_url(self, source: Source) -> str:
        return source_url(source)


#: a source as the examples of the API's documentation show it (the REST answer, the OpenAI face's extension)
SOURCE_EXAMPLE = {
    "id": 12,
    "document_id": 3,
    "title": "guide.pdf",
    "page": 4,
    "score": 0.71,
    "text": "the chunk text",
    "highlight": "the sentence that answers",
}


class MetaSerializer(serializers.Serializer):
    """What an answer cost; reads an ``Answer``."""

    tokens_used = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    response_time = serializers.SerializerMethodField(help_text='Seconds, like "1.23s"')
    model = serializers.CharField()

    @extend_schema_field(OpenApiTypes.STR)
    def get_response_time(self, answer: Answer) -> str:
        return f"{answer.seconds:.2f}s"


class GenerateResponseSerializer(serializers.Serializer):
    """The body of /generate/ (and the done event of its stream); reads an ``Answer``."""

    output = serializers.CharField()
    meta = MetaSerializer(source="*")


class RagResponseSerializer(serializers.Serializer):
    """The body of /rag/ (and the done event of its stream); reads an ``Answer``."""

    output = serializers.CharField()
    answered = serializers.BooleanField(
        help_text="false when no passage answers the question: the output says so and sources is empty"
    )
    sources = SourceSerializer(many=True)
    related = SourceSerializer(
        many=True, help_text="When answered is false: the closest passages, which do not answer the question"
    )
    meta = MetaSerializer(source="*")


def answer_body(answer: Answer, *, with_sources: bool) -> dict[str, Any]:
    """The response body of an answer: /rag/'s ``with_sources``, else /generate/'s."""
    serializer = RagResponseSerializer if with_sources else GenerateResponseSerializer
    return dict(serializer(answer).data)


def sources_body(answer: Answer) -> list[dict[str, Any]]:
    """The answer's sources as every body shows them."""
    return [dict(source) for source in SourceSerializer(answer.sources, many=True).data]


def related_body(answer: Answer) -> list[dict[str, Any]]:
    """The passages closest to a question no passage answers, as every body shows them."""
    return [dict(source) for source in SourceSerializer(answer.related, many=True).data]


def source_url(source: Source) -> str:
    """Where a reader opens a source in its original: the cited page with the passage marked."""
    query = f"page={source.page}&chunk={source.id}" if source.page else f"chunk={source.id}"
    return f"{django_reverse('document-original', args=[source.document_id])}?{query}"


class AsyncAcceptedSerializer(serializers.Serializer):
    task_id = serializers.CharField()
    status = serializers.CharField()
    status_url = serializers.CharField()


class TaskStatusSerializer(serializers.Serializer):
    task_id = serializers.CharField()
    status = serializers.ChoiceField(choices=["pending", "running", "succeeded", "failed"])
    result = RagResponseSerializer(required=False, help_text="When succeeded: the body of the synchronous call")
    error = serializers.DictField(required=False)


class DocumentVersionSerializer(serializers.ModelSerializer):
    created = serializers.DateTimeField(source="created_at", read_only=True)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)

    class Meta:
        model = DocumentVersion
        fields = ["number", "status", "size", "created", "created_by", "error"]
        read_only_fields = fields


class DocumentSerializer(serializers.ModelSerializer):
    collection = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    version = serializers.IntegerField(read_only=True, help_text="The number of the version that answers.")
    versions = DocumentVersionSerializer(many=True, read_only=True, help_text="Every version, newest first.")
    origin_url = serializers.CharField(
        read_only=True,
        help_text="Where the document lives outside the portal (a synced website page or bucket file); "
        "empty for an upload",
    )

    class Meta:
        model = Document
        fields = [
            "id",
            "title",
            "collection",
            "original_name",
            "mime_type",
            "size",
            "sha256",
            "status",
            "stage",
            "error",
            "page_count",
            "chunk_count",
            "created_at",
            "updated_at",
            "processed_at",
            "version",
            "versions",
            "origin_url",
        ]
        read_only_fields = fields


class SourceRunSerializer(serializers.ModelSerializer):
    class Meta:
        model = SourceRun
        fields = [
            "id",
            "status",
            "trigger",
            "started_at",
            "finished_at",
            "found",
            "added",
            "updated",
            "removed",
            "failed",
            "failures",
            "error",
        ]
        read_only_fields = fields


class DocumentSourceSerializer(serializers.ModelSerializer):
    """A document source (a folder, website or bucket synced into a collection) and its last run."""

    collection = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    last_run = serializers.SerializerMethodField()

    class Meta:
        model = DocumentSource
        fields = ["id", "name", "kind", "location", "collection", "enabled", "every_minutes", "next_run_at", "last_run"]
        read_only_fields = fields

    @extend_schema_field(SourceRunSerializer(allow_null=True))
    def get_last_run(self, source: DocumentSource) -> dict[str, Any] | None:
        run = source.runs.order_by("-started_at").first()
        return SourceRunSerializer(run).data if run is not None else None


class SyncAcceptedSerializer(serializers.Serializer):
    source = serializers.CharField()
    status = serializers.ChoiceField(choices=["queued"])


class DocumentFileSerializer(StrictSerializer):
    file = serializers.FileField(help_text="The new version's file.")


class DocumentUploadSerializer(StrictSerializer):
    file = serializers.FileField()
    title = serializers.CharField(max_length=300, required=False, allow_blank=True)
    collection = serializers.SlugField(max_length=limits.COLLECTION_SLUG_MAX_CHARS, required=False)


class StatusSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ready", "degraded"])
    model = serializers.DictField()
    index = serializers.DictField()
    queue = serializers.DictField()
    documents = serializers.DictField()


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
    code = serializers.CharField()


class ServerSentEventSerializer(serializers.Serializer):
    """One event of a text/event-stream answer: ``event: token|done`` and its JSON ``data``."""

    event = serializers.CharField(required=False, help_text="token (a piece of the answer) or done (the body)")
    data = serializers.CharField(help_text='JSON: {"text": …} for token, the full response body for done')
