"""Reads of the knowledge domain (permission filters and status)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import connection
from django.db.models import Q, QuerySet

from knowledge.models import Collection, Document

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

    from knowledge.models import ApiKey


def collections_readable_by(
    *, user: AbstractBaseUser | AnonymousUser, api_key: ApiKey | None = None
) -> QuerySet[Collection]:
    """The collections a caller may read: staff all; signed-in users the public ones and their groups'.

    A key limited to some collections narrows that further. Anonymous callers read nothing.
    """
    if not user.is_authenticated or not user.is_active:
        return Collection.objects.none()
    if user.is_staff or user.is_superuser:
        readable = Collection.objects.all()
    else:
        readable = Collection.objects.filter(Q(is_public=True) | Q(groups__in=user.groups.all())).distinct()
    if api_key is not None and api_key.collections.exists():
        readable = readable.filter(pk__in=api_key.collections.values("pk"))
    return readable


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

    try:
        with current_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return {"ok": True, "url": conn.as_uri()}
    except Exception as exc:
        return {"ok": False, "error": str(exc).strip()[:200]}


def _check_index() -> dict[str, Any]:
    from ingestion.index import read_saved_state

    try:
        state = read_saved_state(settings.INDEX_DIR)
    except Exception as exc:
        return {"ok": False, "error": str(exc).strip()[:200]}
    if state is None:
        return {"ok": True, "vectors": 0, "version": 0, "note": "empty index (no document ingested yet)"}
    return {"ok": True, **state}


def readiness() -> dict[str, dict[str, Any]]:
    """What the readiness probe reports: each dependency with ``ok`` and details."""
    return {"database": _check_database(), "broker": _check_broker(), "index": _check_index()}


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


def service_status() -> dict[str, Any]:
    """What /api/v1/status/ reports: the model, the index, the queue and the documents."""
    from knowledge.services import engines

    llm = engines.get_llm()
    config = engines.llm_config()
    index = _check_index()
    queue = queue_depth()
    model = {"name": llm.model_name(), "backend": config.backend, "loaded": llm.is_loaded()}
    database = _check_database()
    ready = index["ok"] and queue["ok"] and database["ok"]
    return {
        "status": "ready" if ready else "degraded",
        "model": model,
        "index": index,
        "queue": queue,
        "documents": document_counts() if database["ok"] else {},
    }
