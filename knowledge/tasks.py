"""Celery tasks: thin glue that takes ids and calls a service."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings
from django.db import OperationalError

from ingestion.errors import IndexBusyError, IngestionError
from knowledge.errors import KnowledgeError
from knowledge.services import audit, document_parts, documents, index, requests, sources
from knowledge.services.document_runs import BUSY, ProcessOutcome
from llm.errors import LLMError

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


#: seconds between two tries of a document while the search store is being rebuilt
REBUILD_RETRY_SECONDS = 60


@contextmanager
def _waiting_for_rebuild(task: Any) -> Iterator[None]:
    """A document that finds the store held by a rebuild waits for its end, however long (a re-embedding of a
    large store takes hours): its tries meanwhile are not counted in max_retries."""
    try:
        yield
    except IndexBusyError as exc:
        if not index.rebuild_running():
            raise  # another writer held the lock too long: an ordinary, counted retry
        raise task.retry(countdown=REBUILD_RETRY_SECONDS, max_retries=task.request.retries + 1) from exc


def _result(task: Any, outcome: ProcessOutcome, **ids: int) -> dict[str, object]:
    if outcome.status == BUSY:
        # Another live run holds the work (this is a second delivery of it): look again when its lease
        # would run out, which it does only if that run died. Not one of the retries of max_retries.
        raise task.retry(countdown=outcome.retry_in, max_retries=task.request.retries + 1)
    result: dict[str, object] = {"document_id": outcome.document_id, **ids, "status": outcome.status}
    if outcome.parts:
        result["parts"] = outcome.parts
    elif outcome.status not in {"ocr", "deleted"}:
        result["chunks"] = outcome.chunks
    return result


@shared_task(bind=True, name="knowledge.document_ingest", **_RETRY)
def document_ingest_task(self: Any, document_id: int, force: bool = False) -> dict[str, object]:
    """Ingest one document; documents with pages that need OCR continue on the slower "ocr" queue.

    A big PDF continues as page ranges, one document_ingest_part task each.
    """
    with _waiting_for_rebuild(self):
        return _result(self, documents.document_ingest(document_id=document_id, ocr=False, force=force))


@shared_task(bind=True, name="knowledge.document_ingest_part", **_RETRY)
def document_ingest_part_task(self: Any, document_id: int, part_id: int) -> dict[str, object]:
    """Ingest one page range of a big PDF; the part that completes the set indexes the document."""
    with _waiting_for_rebuild(self):
        outcome = document_parts.document_part_process(document_id=document_id, part_id=part_id)
    return _result(self, outcome, part_id=part_id)


@shared_task(bind=True, name="knowledge.document_ocr_part", **_RETRY)
def document_ocr_part_task(self: Any, document_id: int, part_id: int) -> dict[str, object]:
    """Ingest one page range of a big scan with OCR, on the "ocr" queue."""
    with _waiting_for_rebuild(self):
        outcome = document_parts.document_part_process(document_id=document_id, part_id=part_id)
    return _result(self, outcome, part_id=part_id)


@shared_task(bind=True, name="knowledge.document_ocr", **_RETRY)
def document_ocr_task(self: Any, document_id: int, force: bool = False) -> dict[str, object]:
    """Ingest a scanned document with OCR (about 12 s a page), on its own queue.

    A long scan continues as page ranges, one document_ocr_part task each, read side by side.
    """
    with _waiting_for_rebuild(self):
        return _result(self, documents.document_ingest(document_id=document_id, ocr=True, force=force))


@shared_task(name="knowledge.documents_redispatch")
def documents_redispatch_task() -> int:
    """Send again the work of workers that died (expired leases) and the documents left queued or idle."""
    return documents.documents_recover()


@shared_task(name="knowledge.question_answer", acks_late=True, reject_on_worker_lost=True)
def question_answer_task(task_id: str, params: dict[str, object], ip_address: str = "") -> dict[str, object]:
    """An "async": true API request; returns its answer as plain data (``Answer.as_record()``, which the task
    status view turns into the synchronous call's body; the key stays "body" for results stored by earlier
    releases, which hold the body itself), or the error."""
    try:
        return {"ok": True, "body": requests.question_run_task(task_id=task_id, params=params, ip_address=ip_address)}
    except KnowledgeError as exc:
        return {"ok": False, "error": {"code": exc.code, "detail": exc.message}}
    except (LLMError, IngestionError) as exc:
        return {"ok": False, "error": {"code": exc.code, "detail": str(exc)}}


@shared_task(name="knowledge.index_repair", acks_late=True, reject_on_worker_lost=True)
def index_repair_task() -> dict[str, int]:
    """Bring the index in line with the database (a crash may have left a gap); sent when a worker starts."""
    before = index.index_check()
    if before.consistent:
        return {"missing": 0, "extra": 0}
    after = index.index_repair()
    return {"missing": len(before.missing), "extra": len(before.extra), "left": len(after.missing) + len(after.extra)}


@shared_task(name="knowledge.index_rebuild")
def index_rebuild_task() -> dict[str, object]:
    """Rebuild the search store (sent by the admin's action); its progress is recorded for the admin."""
    report = index.index_rebuild()
    return {"documents": report.documents, "chunks": report.vectors, "backend": report.backend}


@worker_ready.connect
def _check_index_when_a_worker_starts(sender: object = None, **kwargs: object) -> None:
    # Sent as tasks, so the embedder loads in a pool process and never in the parent before a fork.
    # A worker that starts may replace one that died: its work is sent again as soon as its lease runs out.
    try:
        index_repair_task.delay()
        documents_redispatch_task.delay()
    except Exception:  # the broker just answered the worker; never block its start on this
        logger.exception("Could not queue the start-up index check")


@shared_task(name="knowledge.audit_prune")
def audit_prune_task() -> int:
    """Delete the audit events older than ``AUDIT_RETENTION_DAYS`` (sent by beat)."""
    return audit.audit_prune()


@shared_task(name="knowledge.source_sync", acks_late=True, reject_on_worker_lost=True)
def source_sync_task(source_id: int, trigger: str = "schedule") -> dict[str, object]:
    """Sync one document source (``knowledge.services.sources``); a killed run is taken over by the next."""
    return sources.source_sync_task(source_id=source_id, trigger=trigger)


@shared_task(name="knowledge.sources_sync_due")
def sources_sync_due_task() -> int:
    """Send the syncs of the sources whose scheduled run is due (beat, every minute)."""
    return sources.sources_dispatch_due()
