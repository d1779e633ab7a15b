"""Sending the Celery tasks of ``knowledge.tasks`` by name.

The tasks import the services they run; a service that must start a task sends it through this module,
so services and tasks never import each other. A task is sent as Celery's signature of its name: the
registered task where this process has it (``KnowledgeConfig.ready`` registers them in every process, so
``CELERY_TASK_ALWAYS_EAGER`` still runs them inline), else a plain message by name. The queue of each
comes from ``CELERY_TASK_ROUTES``, which routes by name as well.
"""

from __future__ import annotations

from typing import Any

from celery import current_app

DOCUMENT_INGEST = "knowledge.document_ingest"
DOCUMENT_OCR = "knowledge.document_ocr"
DOCUMENT_INGEST_PART = "knowledge.document_ingest_part"
DOCUMENT_OCR_PART = "knowledge.document_ocr_part"
QUESTION_ANSWER = "knowledge.question_answer"
SOURCE_SYNC = "knowledge.source_sync"


def _send(name: str, *args: Any, task_id: str | None = None, **kwargs: Any) -> None:
    current_app.signature(name, args=args, kwargs=kwargs).apply_async(task_id=task_id)


def document_ingest(*, document_id: int) -> None:
    """Send ``knowledge.document_ingest`` for the document (raises when the broker cannot be reached)."""
    _send(DOCUMENT_INGEST, document_id)


def document_ocr(*, document_id: int, force: bool) -> None:
    """Send ``knowledge.document_ocr`` for the document, to the ``ocr`` queue."""
    _send(DOCUMENT_OCR, document_id, force=force)


def document_part(*, document_id: int, part_id: int, ocr: bool) -> None:
    """Send the task of one page range: ``knowledge.document_ocr_part`` (``ocr`` queue) with ``ocr``."""
    _send(DOCUMENT_OCR_PART if ocr else DOCUMENT_INGEST_PART, document_id, part_id)


def question_answer(*, task_id: str, params: dict[str, Any], ip_address: str = "") -> None:
    """Send ``knowledge.question_answer`` under ``task_id`` (the ApiTask's id, so its result is found by it);
    ``ip_address`` is the asker's, for the audit log."""
    _send(QUESTION_ANSWER, task_id, params, ip_address, task_id=task_id)


def source_sync(*, source_id: int, trigger: str) -> None:
    """Send ``knowledge.source_sync`` for the source (``trigger``: schedule, admin or api)."""
    _send(SOURCE_SYNC, source_id, trigger)
