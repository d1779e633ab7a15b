"""Celery tasks: thin glue that takes ids and calls a service."""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError

from ingestion.errors import IndexBusyError
from knowledge.models import Document
from knowledge.services import documents

_RETRY = {
    "acks_late": True,
    # A worker child killed mid-task (OOM, kill -9) puts the message back instead of losing it.
    "reject_on_worker_lost": True,
    "autoretry_for": (IndexBusyError, OperationalError),
    "retry_backoff": 5,
    "retry_backoff_max": 300,
    "max_retries": 8,
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
    outcome = documents.document_process(document_id=document_id, ocr=False, force=force)
    return {"document_id": document_id, "status": outcome.status, "chunks": outcome.chunks}


@shared_task(name="knowledge.document_ocr", **_RETRY)
def document_ocr_task(document_id: int, force: bool = False) -> dict[str, object]:
    """Ingest a scanned document with OCR (about 12 s a page), on its own queue."""
    if not Document.objects.filter(pk=document_id).exists():
        return {"document_id": document_id, "status": "deleted"}
    outcome = documents.document_process(document_id=document_id, ocr=True, force=force)
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
