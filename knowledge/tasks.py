"""Celery tasks: thin glue that takes ids and calls a service."""

from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings
from django.db import OperationalError

from ingestion.errors import IndexBusyError
from knowledge.models import Document
from knowledge.services import document_parts, documents

logger = logging.getLogger(__name__)

_RETRY = {
    "acks_late": True,
    # A worker child killed mid-task (OOM, kill -9) puts the message back instead of losing it.
    "reject_on_worker_lost": True,
    "autoretry_for": (IndexBusyError, OperationalError),
    "retry_backoff": 5,
    "retry_backoff_max": 300,
    "max_retries": 8,
    # One document may not hold a worker forever: past the soft limit it fails with a reason.
    "soft_time_limit": settings.RAG_INGEST_TIME_LIMIT,
    "time_limit": settings.RAG_INGEST_TIME_LIMIT + 60,
}


@shared_task(name="knowledge.document_ingest", **_RETRY)
def document_ingest_task(document_id: int, force: bool = False) -> dict[str, object]:
    """Ingest one document; documents with pages that need OCR continue on the slower "ocr" queue."""
    document = Document.objects.filter(pk=document_id).first()
    if document is None:
        return {"document_id": document_id, "status": "deleted"}
    if document.status == Document.Status.READY and not force:
        return {"document_id": document_id, "status": document.status}
    if documents.document_needs_ocr(document=document):
        Document.objects.filter(pk=document_id).update(stage="waiting for OCR")
        document_ocr_task.delay(document_id, force=force)
        return {"document_id": document_id, "status": "ocr"}
    # A big text PDF continues as page ranges, one document_ingest_part task each.
    parts = document_parts.document_split(document_id=document_id, ocr=False)
    if parts:
        return {"document_id": document_id, "status": "split", "parts": len(parts)}
    outcome = documents.document_process(document_id=document_id, ocr=False, force=force, split=False)
    return {"document_id": document_id, "status": outcome.status, "chunks": outcome.chunks}


@shared_task(name="knowledge.document_ingest_part", **_RETRY)
def document_ingest_part_task(document_id: int, part_id: int) -> dict[str, object]:
    """Ingest one page range of a big PDF; the part that completes the set indexes the document."""
    outcome = document_parts.document_part_process(document_id=document_id, part_id=part_id)
    return {"document_id": document_id, "part_id": part_id, "status": outcome.status, "chunks": outcome.chunks}


@shared_task(name="knowledge.document_ocr_part", **_RETRY)
def document_ocr_part_task(document_id: int, part_id: int) -> dict[str, object]:
    """Ingest one page range of a big scan with OCR, on the "ocr" queue."""
    return document_ingest_part_task(document_id, part_id)


@shared_task(name="knowledge.document_ocr", **_RETRY)
def document_ocr_task(document_id: int, force: bool = False) -> dict[str, object]:
    """Ingest a scanned document with OCR (about 12 s a page), on its own queue."""
    document = Document.objects.filter(pk=document_id).first()
    if document is None:
        return {"document_id": document_id, "status": "deleted"}
    if document.status == Document.Status.READY and not force:
        return {"document_id": document_id, "status": document.status}
    # A long scan continues as page ranges, one document_ocr_part task each, read side by side.
    parts = document_parts.document_split(document_id=document_id, ocr=True)
    if parts:
        return {"document_id": document_id, "status": "split", "parts": len(parts)}
    outcome = documents.document_process(document_id=document_id, ocr=True, force=force, split=False)
    return {"document_id": document_id, "status": outcome.status, "chunks": outcome.chunks}


@shared_task(name="knowledge.documents_redispatch")
def documents_redispatch_task() -> int:
    """Send again the documents that stayed queued too long (e.g. the broker was down)."""
    return documents.documents_redispatch_stale()


@shared_task(name="knowledge.question_answer", acks_late=True, reject_on_worker_lost=True)
def question_answer_task(task_id: str, params: dict[str, object]) -> dict[str, object]:
    """An "async": true API request; returns the body of the synchronous call, or the error."""
    from ingestion.errors import IngestionError
    from knowledge.errors import KnowledgeError
    from knowledge.services import requests
    from llm.errors import LLMError

    try:
        return {"ok": True, "body": requests.question_run_task(task_id=task_id, params=params)}
    except KnowledgeError as exc:
        return {"ok": False, "error": {"code": exc.code, "detail": exc.message}}
    except (LLMError, IngestionError) as exc:
        return {"ok": False, "error": {"code": exc.code, "detail": str(exc)}}


@shared_task(name="knowledge.index_repair", acks_late=True, reject_on_worker_lost=True)
def index_repair_task() -> dict[str, int]:
    """Bring the index in line with the database (a crash may have left a gap); sent when a worker starts."""
    from knowledge.services import index as index_services

    before = index_services.index_check()
    if before.consistent:
        return {"missing": 0, "extra": 0}
    after = index_services.index_repair()
    return {"missing": len(before.missing), "extra": len(before.extra), "left": len(after.missing) + len(after.extra)}


@worker_ready.connect
def _check_index_when_a_worker_starts(sender: object = None, **kwargs: object) -> None:
    # Sent as a task, so the embedder loads in a pool process and never in the parent before a fork.
    try:
        index_repair_task.delay()
    except Exception:  # the broker just answered the worker; never block its start on this
        logger.exception("Could not queue the start-up index check")
