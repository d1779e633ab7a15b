"""Reads of the knowledge domain (permission filters and status)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import connection
from django.db.models import Q, QuerySet

from knowledge.models import Collection, Document, Source

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

    from knowledge.models import ApiKey


def collections_readable_by(
    *, user: AbstractBaseUser | AnonymousUser, api_key: ApiKey | None = None
) -> QuerySet[Collection]:
    """The collections a caller may read: superusers all; other users the public ones and their groups'.

    The staff flag opens nothing here (it is the admin's door, not a reading right). A key reads
    what its user may read, narrowed to the collections it lists unless it is for all collections:
    a limited key whose list is empty reads nothing. Anonymous callers read nothing.
    """
    if not user.is_authenticated or not user.is_active:
        return Collection.objects.none()
    if user.is_superuser:
        readable = Collection.objects.all()
    else:
        readable = Collection.objects.filter(Q(is_public=True) | Q(groups__in=user.groups.all())).distinct()
    if api_key is not None and not api_key.all_collections:
        readable = readable.filter(pk__in=api_key.collections.values("pk"))
    return readable


def sources_visible_to(*, user: AbstractBaseUser | AnonymousUser, api_key: ApiKey | None = None) -> QuerySet[Source]:
    """The document sources of the collections the caller may read."""
    return Source.objects.filter(collection__in=collections_readable_by(user=user, api_key=api_key))


def documents_visible_to(
    *, user: AbstractBaseUser | AnonymousUser, api_key: ApiKey | None = None
) -> QuerySet[Document]:
    return Document.objects.filter(collection__in=collections_readable_by(user=user, api_key=api_key))


def _check_database() -> dict[str, Any]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return {"ok": True}
    except Exception as exc:  # any driver error means "not ready"
        return {"ok": False, "error": str(exc).strip()[:200]}


def _check_broker() -> dict[str, Any]:
    from celery import current_app

    from llm.config import url_without_credentials

    try:
        with current_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return {"ok": True, "url": url_without_credentials(conn.as_uri())}
    except Exception as exc:
        return {"ok": False, "error": str(exc).strip()[:200]}


def _check_index() -> dict[str, Any]:
    """The search store's state (never loads a model or the faiss store's contents)."""
    try:
        if settings.RAG_SEARCH_BACKEND == "postgres":
            from knowledge.services import engines

            # what the store holds (the previous model's vectors while a rebuild builds the new ones)
            state = engines.open_store(engines.saved_identity() or engines.store_identity()).state()
        else:
            from ingestion.index import read_saved_state

            state = read_saved_state(settings.INDEX_DIR)
    except Exception as exc:
        return {"ok": False, "backend": settings.RAG_SEARCH_BACKEND, "error": str(exc).strip()[:200]}
    if not state or not (state.get("vectors") or state.get("chunks")):
        return {
            "ok": True,
            "backend": settings.RAG_SEARCH_BACKEND,
            "vectors": 0,
            "version": (state or {}).get("version", 0),
            "note": "empty search store (no document ingested yet)",
        }
    check = {"ok": True, "backend": settings.RAG_SEARCH_BACKEND, **state}
    check.setdefault("vectors", state.get("chunks", 0))
    rebuild = _running_rebuild()
    if rebuild is not None:
        check["rebuild"] = rebuild
    if rebuild is None and (other := _other_models()):
        check["note"] = (
            f"the search store holds vectors of {other}, not of the configured models: questions are answered with "
            "those, uploads fail until `manage.py rebuild_index` runs (it queues them again)"
        )
    elif settings.RAG_COMPANION_EMBEDDER and state.get("chunks_without_companion"):
        check["note"] = (
            f"the companion's search side is off: {state['chunks_without_companion']} chunks were embedded without "
            "it; run `manage.py rebuild_index`"
        )
    return check


def _other_models() -> str:
    """The models the store's vectors were made with, when they are not the configured ones ("" otherwise, or
    when that cannot be told without loading a model)."""
    from ingestion.embedding import expected_identity
    from knowledge.services import engines

    expected, saved = expected_identity(engines.embedder_config()), engines.saved_identity()
    if expected is None or saved is None or saved == expected:
        return ""
    return saved.embedder + (f" with the companion {saved.companion}" if saved.companion else "")


def _running_rebuild() -> dict[str, Any] | None:
    """The rebuild of the search store running now (progress, models), None when there is none."""
    from knowledge.models import SearchRebuild

    run = SearchRebuild.objects.running().first()
    if run is None:
        return None
    return {
        "done": run.done,
        "total": run.total,
        "embedder": run.embedder,
        "previous_embedder": run.previous_embedder,
        "started_at": run.started_at.isoformat(),
    }


#: how long the OpenAI-compatible server's answer to GET /models is trusted, and waited for
_MODEL_CHECK_TTL_S = 10.0
_MODEL_CHECK_TIMEOUT_S = 2.0
_model_check_cache: dict[str, Any] = {}


def _check_model() -> dict[str, Any]:
    """Whether the language model can be loaded, cheaply: never loads it.

    Local backend: the model file (or folder) exists and is readable. OpenAI-compatible backend:
    the server answers ``GET /models`` within two seconds (remembered for ten).
    """
    import os
    import time

    from knowledge.services import engines

    config = engines.llm_config()
    llm = engines.get_llm()
    if llm.is_loaded():
        return {"ok": True, "backend": config.backend, "loaded": True, "model": llm.model_name()}
    if config.backend == "openai":
        cached = _model_check_cache.get(config.base_url)
        if cached is not None and time.monotonic() - cached[0] < _MODEL_CHECK_TTL_S:
            return cached[1]
        result = _check_model_server(config)
        _model_check_cache[config.base_url] = (time.monotonic(), result)
        return result
    from llm.backends.local import locate_model
    from llm.errors import LLMError

    try:
        location = locate_model(config)
    except LLMError as exc:
        return {"ok": False, "backend": "local", "error": str(exc).strip()[:200]}
    path = location.path if location.file else location.folder / "config.json"
    if not os.access(path, os.R_OK):
        return {"ok": False, "backend": "local", "error": f"The model file {path.name} cannot be read."}
    return {"ok": True, "backend": "local", "loaded": False, "model": location.file or location.folder.name}


def _check_model_server(config: Any) -> dict[str, Any]:
    import httpx

    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    try:
        response = httpx.get(config.base_url.rstrip("/") + "/models", headers=headers, timeout=_MODEL_CHECK_TIMEOUT_S)
    except httpx.HTTPError as exc:
        reason = str(exc).replace(config.base_url, config.server)
        return {"ok": False, "backend": "openai", "error": f"The model server does not answer: {reason}"[:200]}
    # some servers have no /models: with a configured model name only "down" or "refused" count
    status = response.status_code
    if status in (401, 403) or status >= 500 or (status >= 400 and not config.model):
        return {"ok": False, "backend": "openai", "error": f"The model server answered {status}."}
    return {"ok": True, "backend": "openai", "loaded": False}


def readiness() -> dict[str, dict[str, Any]]:
    """What the readiness probe reports of the dependencies: each with ``ok`` and details."""
    return {
        "database": _check_database(),
        "broker": _check_broker(),
        "index": _check_index(),
        "model": _check_model(),
    }


def queue_depth() -> dict[str, Any]:
    """Messages waiting in each Celery queue (None when the broker cannot be reached)."""
    from celery import current_app

    depths: dict[str, Any] = {}
    try:
        with current_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            channel = conn.default_channel
            for queue in ("celery", "ocr"):
                try:
                    depths[queue] = channel.queue_declare(queue=queue, passive=True).message_count
                except Exception:  # never declared yet: nothing waiting
                    depths[queue] = 0
        return {"ok": True, "waiting": depths}
    except Exception as exc:
        return {"ok": False, "error": str(exc).strip()[:200]}


def document_counts(*, documents: QuerySet[Document] | None = None) -> dict[str, int]:
    from django.db.models import Count

    rows = (documents if documents is not None else Document.objects.all()).values("status").annotate(n=Count("pk"))
    counts = {status: 0 for status, _label in Document.Status.choices}
    counts.update({row["status"]: row["n"] for row in rows})
    return counts


def service_status(*, user: Any = None, api_key: ApiKey | None = None) -> dict[str, Any]:
    """What /api/v1/status/ reports: the model, the index, the queue and the documents.

    Document counts cover only what the caller may read; the index size is shown to staff only,
    so the endpoint reveals nothing about collections the caller cannot see.
    """
    from knowledge.services import engines

    llm = engines.get_llm()
    config = engines.llm_config()
    index = _check_index()
    queue = queue_depth()
    model = {"name": llm.model_name(), "backend": config.backend, "loaded": llm.is_loaded()}
    database = _check_database()
    ready = index["ok"] and queue["ok"] and database["ok"]
    is_staff = bool(user is not None and user.is_authenticated and user.is_staff and api_key is None)
    if not is_staff:
        index = {key: value for key, value in index.items() if key in {"ok", "version", "embedder", "error"}}
    documents: dict[str, int] = {}
    if database["ok"] and user is not None and user.is_authenticated:
        documents = document_counts(documents=documents_visible_to(user=user, api_key=api_key))
    return {
        "status": "ready" if ready else "degraded",
        "model": model,
        "index": index,
        "queue": queue,
        "documents": documents,
    }


# --- Web pages: documents, conversations and usage ----------------------------------------------

if TYPE_CHECKING:
    from knowledge.models import Chunk, Conversation, DocumentVersion, Message, UsageRecord

#: statuses of a document the workers have not finished with (the pages poll while one is shown)
DOCUMENT_ACTIVE_STATUSES = (Document.Status.QUEUED, Document.Status.PROCESSING)


def documents_search(
    *, documents: QuerySet[Document], query: str = "", status: str = "", collection_id: int | None = None
) -> QuerySet[Document]:
    """Documents narrowed by words of their title or file name, a status and a collection."""
    for word in query.split():
        documents = documents.filter(Q(title__icontains=word) | Q(original_name__icontains=word))
    if status:
        documents = documents.filter(status=status)
    if collection_id is not None:
        documents = documents.filter(collection_id=collection_id)
    return documents.select_related("collection", "uploaded_by")


def document_versions(*, document: Document) -> QuerySet[DocumentVersion]:
    """A document's versions, newest first, with who made each."""
    from knowledge.models import DocumentVersion

    return DocumentVersion.objects.filter(document=document).select_related("created_by").order_by("-number")


def document_chunks(*, document: Document) -> QuerySet[Chunk]:
    from knowledge.models import Chunk

    return Chunk.objects.filter(document=document).order_by("ordinal")


def conversations_of(*, user: AbstractBaseUser | AnonymousUser) -> QuerySet[Conversation]:
    """A user's own conversations, most recently active first."""
    from knowledge.models import Conversation

    if not user.is_authenticated:
        return Conversation.objects.none()
    return Conversation.objects.filter(user=user).select_related("collection").order_by("-updated_at", "-id")


def conversation_for(*, user: AbstractBaseUser | AnonymousUser, conversation_id: int) -> Conversation | None:
    """The conversation if ``user`` owns it, else None (nobody reads another person's chat)."""
    return conversations_of(user=user).filter(pk=conversation_id).first()


def conversation_messages(*, conversation: Conversation) -> QuerySet[Message]:
    from knowledge.models import Message

    return Message.objects.filter(conversation=conversation).order_by("created_at", "id")


def message_for(*, user: AbstractBaseUser | AnonymousUser, message_id: int) -> Message | None:
    """The message if it belongs to one of ``user``'s conversations, else None."""
    from knowledge.models import Message

    if not user.is_authenticated:
        return None
    return Message.objects.filter(pk=message_id, conversation__user=user).select_related("conversation").first()


def usage_daily_totals(*, records: QuerySet[UsageRecord], limit: int = 50) -> list[dict[str, Any]]:
    """Requests and tokens per user per day (UTC), most recent day first."""
    from django.db.models import Count, F, Sum
    from django.db.models.functions import TruncDate

    rows = (
        records.order_by()
        .annotate(day=TruncDate("created_at"))
        .values("day", "user__username")
        .annotate(
            requests=Count("pk"),
            tokens=Sum(F("prompt_tokens") + F("completion_tokens")),
            prompt=Sum("prompt_tokens"),
            completion=Sum("completion_tokens"),
        )
        .order_by("-day", "-tokens")
    )
    return list(rows[:limit])
