"""Real Celery worker processes over the configured broker (Redis when it answers)."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction

from knowledge.models import Chunk, Document, DocumentPart
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


def _index_holds_every_chunk() -> None:
    """Wait until a fresh reader of the index sees every chunk of the database, and nothing else.

    A worker publishes its index generation just after its database commit (its writer's lock held across
    both), so a document reads ready a moment before its vectors can be seen.
    """
    engines.reset()
    reports: list[Any] = []

    def indexed() -> bool:
        reports.append(index_services.index_check())
        return reports[-1].consistent and reports[-1].vectors == Chunk.objects.count()

    try:
        wait_for(indexed, timeout=30, interval=0.2)
    except AssertionError as exc:
        raise AssertionError(f"the index does not hold the database's chunks: {reports[-1]}") from exc


def test_a_real_worker_ingests_an_uploaded_document(celery_worker: Any, corpus_dir: Path) -> None:
    document = _upload(corpus_dir / "pdf_reliance_3p.pdf")
    done = wait_for(lambda: _final(document.pk), timeout=180)
    assert done.status == "ready", done.error
    assert done.chunk_count == Chunk.objects.filter(document=done).count() > 0
    _index_holds_every_chunk()


def test_a_worker_killed_mid_task_leaves_the_document_ready_exactly_once(
    celery_worker_factory: Any, corpus_dir: Path
) -> None:
    # the redelivered task waits for the dead run's lease to run out (RAG_LEASE_S) before taking over
    celery_worker = celery_worker_factory("w1", RAG_LEASE_S=LEASE_S)
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
    assert done.lost_runs == 1
    assert Chunk.objects.filter(document=done).count() == done.chunk_count
    _index_holds_every_chunk()
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
    assert Chunk.objects.exists()
    _index_holds_every_chunk()


# --- A whole worker killed (a crashed container, a lost machine): another one finishes its work -------------
#: the workers renew their leases every LEASE_S/4 s; beat looks for expired ones every LEASE_S/2 s
LEASE_S = "6"
#: the goal: a document ends ready within 3 minutes of another worker being up
RECOVERY_S = 180


def _first_pages(corpus_dir: Path, tmp_path: Path, pages: int) -> Path:
    """The first ``pages`` pages of the corpus's 117-page PDF (the whole of it takes minutes on a small machine)."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    for page in PdfReader(corpus_dir / "pdf_geotopo_117p_de.pdf").pages[:pages]:
        writer.add_page(page)
    path = tmp_path / f"geotopo_{pages}p.pdf"
    with path.open("wb") as out:
        writer.write(out)
    return path


def _processing_with_lease(document_id: int, **extra: Any) -> bool:
    return Document.objects.filter(pk=document_id, status="processing", **extra).exclude(lease_until=None).exists()


def _assert_ready_exactly_once(document_id: int, *, started: float) -> Document:
    done = wait_for(lambda: _final(document_id), timeout=RECOVERY_S - (time.monotonic() - started), interval=0.5)
    assert done.status == "ready", done.error
    assert done.lost_runs == 1  # the run that died, counted once
    ordinals = list(Chunk.objects.filter(document=done).order_by("ordinal").values_list("ordinal", flat=True))
    assert ordinals == list(range(done.chunk_count))  # one set of chunks, none twice
    assert not DocumentPart.objects.filter(document=done).exists()
    _index_holds_every_chunk()
    return done


def test_a_whole_worker_killed_mid_document_is_taken_over_by_the_next_one(
    celery_worker_factory: Any, corpus_dir: Path, tmp_path: Path
) -> None:
    settings = {"RAG_LEASE_S": LEASE_S, "RAG_SPLIT_PAGES": "0"}
    first = celery_worker_factory("w1", **settings)
    document = _upload(_first_pages(corpus_dir, tmp_path, 12))
    wait_for(lambda: _processing_with_lease(document.pk, stage="embedding"), timeout=300, interval=0.1)
    first.kill()  # its message stays unacknowledged: Redis would give it back only after an hour

    second = celery_worker_factory("w2", beat=True, **settings)
    done = _assert_ready_exactly_once(document.pk, started=time.monotonic())
    assert done.page_count == 12
    assert "The worker processing document" in second.log.read_text()


def test_a_whole_worker_killed_in_a_page_range_of_a_split_pdf_is_taken_over(
    celery_worker_factory: Any, corpus_dir: Path, tmp_path: Path
) -> None:
    settings = {"RAG_LEASE_S": LEASE_S, "RAG_SPLIT_PAGES": "4"}
    first = celery_worker_factory("w1", **settings)
    document = _upload(_first_pages(corpus_dir, tmp_path, 12))

    def part_embedding() -> bool:
        running = DocumentPart.objects.filter(document_id=document.pk).exclude(lease_until=None).exists()
        return running and Document.objects.filter(pk=document.pk, stage__startswith="embedding").exists()

    wait_for(part_embedding, timeout=300, interval=0.1)
    first.kill()
    assert DocumentPart.objects.filter(document_id=document.pk, status="pending").count() == 3

    second = celery_worker_factory("w2", beat=True, **settings)
    done = _assert_ready_exactly_once(document.pk, started=time.monotonic())
    pages = list(Chunk.objects.filter(document=done).order_by("ordinal").values_list("page", flat=True))
    assert pages == sorted(pages) and pages[0] == 1 and pages[-1] == 12 == done.page_count
    assert "The worker processing part" in second.log.read_text()


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="Tesseract is not installed")
def test_a_whole_worker_killed_during_ocr_is_taken_over(celery_worker_factory: Any, corpus_dir: Path) -> None:
    settings = {"RAG_LEASE_S": LEASE_S, "RAG_OCR": "true"}
    first = celery_worker_factory("w1", **settings)
    document = _upload(corpus_dir / "pdf_image_only_scan.pdf")
    # only the "ocr" queue's delivery processes a scan: the text queue's inspects it and hands it over
    wait_for(lambda: _processing_with_lease(document.pk, stage="parsing"), timeout=300, interval=0.1)
    first.kill()

    second = celery_worker_factory("w2", beat=True, **settings)
    done = _assert_ready_exactly_once(document.pk, started=time.monotonic())
    assert done.ocr_pages == [1]
    assert "knowledge.document_ocr[" in second.log.read_text()


@pytest.fixture
def embedded_broker(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Send this process's tasks through the embedded broker (kombu's SQLAlchemy transport over SQLite)."""
    from portal.celery import app

    urls = {
        "CELERY_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}",
        "CELERY_RESULT_BACKEND": f"db+sqlite:///{tmp_path / 'results.sqlite3'}",
    }
    real = app.conf.broker_url, app.conf.broker_write_url, app.conf.broker_transport_options

    def use(broker: str, write: str, options: dict[str, Any]) -> None:
        app.conf.broker_url, app.conf.broker_write_url, app.conf.broker_transport_options = broker, write, options
        app._pool = None  # the connection and producer pools belong to the broker they were built for
        app.amqp._producer_pool = None

    use(urls["CELERY_BROKER_URL"], urls["CELERY_BROKER_URL"], {})
    yield urls
    use(*real)


def test_a_whole_worker_killed_mid_document_is_taken_over_on_the_embedded_broker(
    celery_worker_factory: Any, embedded_broker: dict[str, str], corpus_dir: Path, tmp_path: Path
) -> None:
    settings = {"RAG_LEASE_S": LEASE_S, "RAG_SPLIT_PAGES": "0", **embedded_broker}
    first = celery_worker_factory("w1", **settings)
    document = _upload(_first_pages(corpus_dir, tmp_path, 12))
    wait_for(lambda: _processing_with_lease(document.pk, stage="embedding"), timeout=300, interval=0.1)
    first.kill()  # the SQLAlchemy transport never gives an unacknowledged message back

    second = celery_worker_factory("w2", beat=True, **settings)
    _assert_ready_exactly_once(document.pk, started=time.monotonic())
    assert "sqla+sqlite" in second.log.read_text()
