"""The REST API (v1). Views are thin: validate with a serializer, call a service, render."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from django.http import FileResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import permissions, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.serializers import Serializer

from knowledge.api import serializers as s
from knowledge.api.limits import LimitedApiView
from knowledge.api.parsers import SafeJSONParser
from knowledge.errors import NotFoundError
from knowledge.models import ApiTask, Document
from knowledge.selectors import collections_readable_by, documents_visible_to, service_status, sources_visible_to
from knowledge.services import answering, audit
from knowledge.services import documents as document_services
from knowledge.services import requests as question_services
from knowledge.services import sources as source_services

_ERRORS = {
    400: OpenApiResponse(description="Invalid input: field errors"),
    401: OpenApiResponse(s.ErrorSerializer, description="No valid credentials"),
    403: OpenApiResponse(s.ErrorSerializer, description="Not allowed (document permissions)"),
    429: OpenApiResponse(s.ErrorSerializer, description="Rate limited or token quota spent (Retry-After)"),
    503: OpenApiResponse(s.ErrorSerializer, description="Model or index unavailable"),
}
_RAG_EXAMPLE = OpenApiExample(
    "Question",
    value={
        "prompt": "Explique les classes Python",
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 200,
        "user_id": "42",
        "top_k": 5,
        "collection": "default",
        "mode": "extractive",
    },
    request_only=True,
)
_RAG_RESPONSE_EXAMPLE = OpenApiExample(
    "Answer",
    value={
        "output": "Les classes Python permettent de regrouper des données et des méthodes [1].",
        "sources": [s.SOURCE_EXAMPLE],
        "meta": {
            "tokens_used": 180,
            "prompt_tokens": 150,
            "completion_tokens": 30,
            "response_time": "1.23s",
            "model": "SmolLM2-135M-Instruct",
        },
    },
    response_only=True,
    status_codes=["200"],
)


def _api_key(request: Request) -> Any:
    from knowledge.models import ApiKey

    return request.auth if isinstance(request.auth, ApiKey) else None


def _sse(events: answering.AnswerEvents, *, with_sources: bool) -> Iterator[str]:
    """``token`` events ({"text"}) while the answer is written, then one ``done`` event with the body."""
    try:
        for item in events:
            if isinstance(item, answering.Answer):
                event, data = "done", s.answer_body(item, with_sources=with_sources)
            else:
                event, data = "token", {"text": item.text}
            yield f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
    finally:
        events.close()  # a client that went away: the answer is charged and the model stops now


def _question_schema(
    request: type[s.GenerateRequestSerializer],
    response: type[Serializer],
    *,
    examples: list[OpenApiExample],
    description: str | None = None,
    not_found: bool = False,
) -> Any:
    """The schema of a question endpoint: its body as JSON or as server-sent events, 202 when asked
    ``async``, and the errors every endpoint answers (and 404, for one that names a collection)."""
    return extend_schema(
        request=request,
        responses={
            (200, "application/json"): response,
            (200, "text/event-stream"): s.ServerSentEventSerializer,
            202: s.AsyncAcceptedSerializer,
            **({404: s.ErrorSerializer} if not_found else {}),
            **_ERRORS,
        },
        examples=examples,
        description=description,
    )


class _HasPermission(permissions.IsAuthenticated):
    """A signed-in caller whose user holds ``perm``, one of Django's model permissions (the staff flag is not one)."""

    def __init__(self, perm: str) -> None:
        self.perm = perm

    def has_permission(self, request: Request, view: Any) -> bool:
        return super().has_permission(request, view) and request.user.has_perm(self.perm)


class _QuestionApi(LimitedApiView):
    endpoint = ""
    serializer_class: type[s.GenerateRequestSerializer] = s.GenerateRequestSerializer
    parser_classes = [SafeJSONParser]

    def post(self, request: Request) -> Any:
        serializer = self.serializer_class(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        question = question_services.QuestionRequest.from_validated(self.endpoint, data)
        api_key = _api_key(request)
        if data.get("async"):
            task = question_services.question_submit(
                request=question, user=request.user, api_key=api_key, ip_address=audit.client_ip(request)
            )
            url = reverse("api-v1-task-detail", kwargs={"task_id": str(task.pk)}, request=request)
            return Response(
                {"task_id": str(task.pk), "status": "pending", "status_url": url},
                status=status.HTTP_202_ACCEPTED,
                headers={"Location": url},
            )
        with_sources = self.endpoint in question_services.RETRIEVAL
        if data.get("stream"):
            events = question_services.question_stream(
                request=question, user=request.user, api_key=api_key, ip_address=audit.client_ip(request)
            )
            response = StreamingHttpResponse(_sse(events, with_sources=with_sources), content_type="text/event-stream")
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"
            return response
        answer = question_services.question_answer(
            request=question, user=request.user, api_key=api_key, ip_address=audit.client_ip(request)
        )
        return Response(s.answer_body(answer, with_sources=with_sources))


@extend_schema_view(
    post=_question_schema(
        s.RagRequestSerializer,
        s.RagResponseSerializer,
        examples=[_RAG_EXAMPLE, _RAG_RESPONSE_EXAMPLE],
        description="`stream: true` answers as text/event-stream (`token` events, then one `done` event with the "
        "body below); `async: true` answers 202 and the result is read from the task's status URL.",
        not_found=True,
    )
)
class RagApi(_QuestionApi):
    """Answer a question from the documents the caller may read, with the sources cited."""

    endpoint = question_services.RAG
    serializer_class = s.RagRequestSerializer


@extend_schema_view(
    post=_question_schema(
        s.GenerateRequestSerializer,
        s.GenerateResponseSerializer,
        examples=[
            OpenApiExample(
                "Prompt", value={"prompt": "Write a haiku about documents", "max_tokens": 40}, request_only=True
            )
        ],
    )
)
class GenerateApi(_QuestionApi):
    """Text from a prompt, without retrieval."""

    endpoint = question_services.GENERATE
    serializer_class = s.GenerateRequestSerializer


class TaskDetailApi(LimitedApiView):
    """The state of an asynchronous request and, when done, the same body as the synchronous call."""

    @extend_schema(responses={200: s.TaskStatusSerializer, 404: s.ErrorSerializer})
    def get(self, request: Request, task_id: str) -> Response:
        from celery.result import AsyncResult

        # a task belongs to the key (or the session: no key) that made it, not to every key of its user
        endpoint = (
            ApiTask.objects.filter(pk=task_id, user=request.user, api_key=_api_key(request))
            .values_list("endpoint", flat=True)
            .first()
        )
        if endpoint is None:
            raise NotFoundError("No such task.")
        result = AsyncResult(str(task_id))
        body: dict[str, Any] = {"task_id": str(task_id)}
        if result.state == "SUCCESS":
            value = result.result or {}
            if value.get("ok"):
                body.update(status="succeeded", result=_task_body(value["body"], endpoint))
            else:
                body.update(status="failed", error=value.get("error", {}))
        elif result.state in {"FAILURE", "REVOKED"}:
            body.update(status="failed", error={"code": "task_failed", "detail": "The request failed on the worker."})
        elif result.state in {"STARTED", "RETRY"}:
            body["status"] = "running"
        else:
            body["status"] = "pending"
        return Response(body)


def _task_body(record: dict[str, Any], endpoint: str) -> dict[str, Any]:
    if "meta" in record:  # a result stored by a worker of the previous release: already a body
        return record
    answer = answering.Answer.from_record(record)
    return s.answer_body(answer, with_sources=endpoint in question_services.RETRIEVAL)


class StatusApi(LimitedApiView):
    """Is the service ready: model, index, queue."""

    permission_classes = [permissions.AllowAny]

    @extend_schema(responses={200: s.StatusSerializer})
    def get(self, request: Request) -> Response:
        return Response(service_status(user=request.user, api_key=_api_key(request)))


class DocumentListApi(LimitedApiView):
    """Documents the caller may read; holders of `knowledge.add_document` upload new ones (multipart, field `file`)."""

    parser_classes = [MultiPartParser, FormParser, SafeJSONParser]

    def get_permissions(self) -> list[Any]:
        if self.request.method == "POST":
            return [_HasPermission("knowledge.add_document")]
        return [permissions.IsAuthenticated()]

    @extend_schema(responses={200: s.DocumentSerializer(many=True)})
    def get(self, request: Request) -> Response:
        queryset = (
            documents_visible_to(user=request.user, api_key=_api_key(request))
            .select_related("collection")
            .prefetch_related("versions__created_by")
        )
        if status_filter := request.query_params.get("status"):
            queryset = queryset.filter(status=status_filter)
        if collection := request.query_params.get("collection"):
            queryset = queryset.filter(collection__slug=collection)
        return Response(s.DocumentSerializer(queryset[:500], many=True).data)

    @extend_schema(
        request={"multipart/form-data": s.DocumentUploadSerializer},
        responses={
            201: s.DocumentSerializer,
            404: s.ErrorSerializer,
            409: s.ErrorSerializer,
            413: s.ErrorSerializer,
            415: s.ErrorSerializer,
            **_ERRORS,
        },
    )
    def post(self, request: Request) -> Response:
        serializer = s.DocumentUploadSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        upload = serializer.validated_data["file"]
        collection = document_services.collection_for_upload(
            slug=serializer.validated_data.get("collection"),
            readable=collections_readable_by(user=request.user, api_key=_api_key(request)),
        )
        document = document_services.document_create(
            file=upload,
            filename=upload.name,
            collection=collection,
            title=serializer.validated_data.get("title", ""),
            uploaded_by=request.user,
            check_type=True,
            api_key=_api_key(request),
            ip_address=audit.client_ip(request),
        )
        return Response(s.DocumentSerializer(document).data, status=status.HTTP_201_CREATED)


class DocumentDetailApi(LimitedApiView):
    """One document's status; holders of `knowledge.delete_document` delete it (chunks, vectors and file with it)."""

    def get_permissions(self) -> list[Any]:
        if self.request.method == "DELETE":
            return [_HasPermission("knowledge.delete_document")]
        return [permissions.IsAuthenticated()]

    def _document(self, request: Request, document_id: int) -> Document:
        document = (
            documents_visible_to(user=request.user, api_key=_api_key(request))
            .select_related("collection")
            .filter(pk=document_id)
            .first()
        )
        if document is None:
            raise NotFoundError("No such document.")
        return document

    @extend_schema(responses={200: s.DocumentSerializer, 404: s.ErrorSerializer})
    def get(self, request: Request, document_id: int) -> Response:
        return Response(s.DocumentSerializer(self._document(request, document_id)).data)

    @extend_schema(responses={204: OpenApiResponse(description="Deleted"), 404: s.ErrorSerializer})
    def delete(self, request: Request, document_id: int) -> Response:
        document_services.document_delete(
            document=self._document(request, document_id),
            actor=request.user,
            api_key=_api_key(request),
            ip_address=audit.client_ip(request),
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class DocumentFileApi(LimitedApiView):
    """Download a document's current file (callers who may read its collection); holders of
    `knowledge.change_document` upload a new version (multipart, field `file`)."""

    parser_classes = [MultiPartParser, FormParser]

    def get_permissions(self) -> list[Any]:
        if self.request.method == "PUT":
            return [_HasPermission("knowledge.change_document")]
        return [permissions.IsAuthenticated()]

    @extend_schema(
        request={"multipart/form-data": s.DocumentFileSerializer},
        responses={
            202: s.DocumentSerializer,
            404: s.ErrorSerializer,
            409: OpenApiResponse(
                s.ErrorSerializer,
                description="The file is the current version's, another document's, or a new version is pending",
            ),
            413: s.ErrorSerializer,
            415: s.ErrorSerializer,
            **_ERRORS,
        },
        description="Upload a new version of the document: the current version answers until the new one is "
        "`ready`; a new version that fails leaves it answering, with its reason in `versions`.",
    )
    def put(self, request: Request, document_id: int) -> Response:
        document = documents_visible_to(user=request.user, api_key=_api_key(request)).filter(pk=document_id).first()
        if document is None:
            raise NotFoundError("No such document.")
        serializer = s.DocumentFileSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        upload = serializer.validated_data["file"]
        document = document_services.document_replace(
            document=document,
            file=upload,
            filename=upload.name,
            actor=request.user,
            check_type=True,
            api_key=_api_key(request),
            ip_address=audit.client_ip(request),
        )
        return Response(s.DocumentSerializer(document).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses={(200, "application/octet-stream"): OpenApiTypes.BINARY, 404: s.ErrorSerializer})
    def get(self, request: Request, document_id: int) -> FileResponse:
        document = documents_visible_to(user=request.user, api_key=_api_key(request)).filter(pk=document_id).first()
        if document is None or not document.file:
            raise NotFoundError("No such document.")
        try:
            handle = document.file.open("rb")
        except FileNotFoundError as exc:
            raise NotFoundError("The document's file is missing from storage.") from exc
        audit.audit_document(
            action=audit.Action.DOCUMENT_DOWNLOAD,
            document=document,
            user=request.user,
            api_key=_api_key(request),
            ip_address=audit.client_ip(request),
        )
        return FileResponse(
            handle,
            as_attachment=True,
            filename=document.original_name or "document",
            content_type=document.mime_type or "application/octet-stream",
        )


class SourceListApi(LimitedApiView):
    """Document sources (folders, websites, buckets synced into collections) of the collections the caller may
    read, with their last run; for holders of `knowledge.view_source`."""

    def get_permissions(self) -> list[Any]:
        return [_HasPermission("knowledge.view_source")]

    @extend_schema(responses={200: s.DocumentSourceSerializer(many=True), **_ERRORS})
    def get(self, request: Request) -> Response:
        visible = sources_visible_to(user=request.user, api_key=_api_key(request)).select_related("collection")
        return Response(s.DocumentSourceSerializer(visible, many=True).data)


class SourceSyncApi(LimitedApiView):
    """Sync a source now, on a worker (holders of `knowledge.change_source`): 202, or 409 while a sync runs."""

    def get_permissions(self) -> list[Any]:
        return [_HasPermission("knowledge.change_source")]

    @extend_schema(
        request=None,
        responses={202: s.SyncAcceptedSerializer, 404: s.ErrorSerializer, 409: s.ErrorSerializer, **_ERRORS},
    )
    def post(self, request: Request, source_id: int) -> Response:
        source = sources_visible_to(user=request.user, api_key=_api_key(request)).filter(pk=source_id).first()
        if source is None:
            raise NotFoundError("No such source.")
        source_services.source_sync_request(source, trigger="api")
        return Response({"source": source.name, "status": "queued"}, status=status.HTTP_202_ACCEPTED)
