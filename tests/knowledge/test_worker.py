"""Real Celery worker processes over the configured broker (Redis when it answers)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction

from knowledge.models import Chunk, Document
from knowledge.services import documents as document_services
from knowledge.services import engines
from knowledge.services import index as index_services
from tests.conftest import wait_for

pytestmark = [pytest.mark.worker, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _upload(path: Path) -> Document:
    with transaction.atomic(), path.open("rb") as handle:
        # dispatch happens on commit, as in a web request
        return document_services.document_create(file=handle, filename=path.name)


def _final(document_id: int) -> Document | None:
    document = Document.objects.get(pk=document_id)
    return document if document.status in {"ready", "failed"} else None


def test_a_real_worker_ingests_an_uploaded_document(celery_worker: Any, corpus_dir: Path) -> None:
    document = _upload(corpus_dir / "pdf_reliance_3p.pdf")
    done = wait_for(lambda: _final(document.pk), timeout=180)
    assert done.status == "ready", done.error
    assert done.chunk_count == Chunk.objects.filter(document=done).count() > 0
    engines.reset()
    assert index_services.index_check().consistent


def test_a_worker_killed_mid_task_leaves_the_document_ready_exactly_once(celery_worker: Any, corpus_dir: Path) -> None:
    document = _upload(corpus_dir / "txt_utf8_norwich_city.txt")
    wait_for(
        lambda: Document.objects.filter(pk=document.pk, status="processing", stage="embedding").exists(),
        timeout=180,
        interval=0.1,
    )
    children = celery_worker.child_pids()
    assert children
    for pid in children:
        os.kill(pid, signal.SIGKILL)

    done = wait_for(lambda: _final(document.pk), timeout=300, interval=0.5)
    assert done.status == "ready", done.error
    assert done.attempts >= 2
    assert Chunk.objects.filter(document=done).count() == done.chunk_count
    engines.reset()
    report = index_services.index_check()
    assert report.consistent
    assert report.vectors == Chunk.objects.count()
    assert "WorkerLostError" in celery_worker.log.read_text() or "SIGKILL" in celery_worker.log.read_text()


def test_two_workers_ingesting_at_once_keep_index_and_database_consistent(
    celery_worker_factory: Any, tmp_path: Path
) -> None:
    celery_worker_factory("w1")
    celery_worker_factory("w2")
    uploaded = []
    for i in range(6):
        path = tmp_path / f"doc{i}.txt"
        path.write_text(
            "\n\n".join(f"Document {i}, section {j}: notes on subject {i * 10 + j} and its history." for j in range(12))
        )
        uploaded.append(_upload(path))
    started = time.monotonic()
    for document in uploaded:
        done = wait_for(lambda d=document: _final(d.pk), timeout=max(30, 300 - (time.monotonic() - started)))
        assert done.status == "ready", done.error
    engines.reset()
    report = index_services.index_check()
    assert report.consistent, report
    assert report.vectors == Chunk.objects.count() > 0
