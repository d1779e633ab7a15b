"""A document whose parsing needs more memory than RAG_INGEST_MEMORY_MB fails with the reason; nothing else moves."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from ingestion.sandbox import memory_limit_supported
from knowledge.models import Document
from knowledge.services import document_parts, documents, engines, leases
from knowledge.services import index as index_services
from tests.ingestion.test_hostile_files import inflating_pdf
from tests.settings_probe import settings_probe

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(not memory_limit_supported(), reason="the memory limit needs Linux (fork, RLIMIT_AS)"),
]


def test_a_document_past_the_memory_limit_fails_with_the_reason_and_leaves_the_index_untouched(
    ingest: Callable[..., Document], text_file: Callable[[str, str], Path], settings: Any
) -> None:
    good = ingest(text_file("harbour.txt", "Kept safe: the archive of the Bergen harbour authority."))
    assert good.status == "ready"
    before = set(engines.get_store().ids().tolist())

    # a legitimate but big text file (24 MB) with a limit far below what reading it takes
    paragraph = "The minutes of the harbour board record every ship that entered the port that year. "
    big = text_file("minutes.txt", "\n\n".join([paragraph * 8] * 36_000))
    assert big.stat().st_size > 24_000_000
    settings.RAG_INGEST_MEMORY_MB = 16
    document = ingest(big)

    assert document.status == "failed"
    assert document.error == "Reading this document needed more than 16 MB of memory; it was not read"
    assert document.chunks.count() == 0 and document.chunk_count == 0
    assert set(engines.get_store().ids().tolist()) == before
    assert index_services.index_check().consistent
    good.refresh_from_db()
    assert good.status == "ready"

    # the process that ingested it carries on with the next document
    settings.RAG_INGEST_MEMORY_MB = 2048
    after = ingest(text_file("tides.txt", "The tide tables of the harbour for the spring of that year."))
    assert after.status == "ready" and after.chunks.count() > 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", "2048 2048"), ("0", "0 0"), ("512", "512 512"), ("10", "at least 64"), ("lots", "must be an integer")],
)
def test_the_memory_limit_setting_reaches_the_pipeline_or_stops_the_start(
    tmp_path: Path, value: str, expected: str
) -> None:
    extra = {"RAG_INGEST_MEMORY_MB": value} if value else {}
    code = (
        "from knowledge.services import engines; "
        "print(s.RAG_INGEST_MEMORY_MB, engines.pipeline_options().max_memory_mb)"
    )
    result = settings_probe(tmp_path, extra, code)
    if expected[0].isdigit():
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == expected.split()
    else:
        assert result.returncode != 0
        assert "RAG_INGEST_MEMORY_MB" in result.stderr and expected in result.stderr


def _reset_peak_memory() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # the kernel starts this process's VmHWM over


def _peak_memory_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024


def test_planning_a_pdf_of_inflating_streams_leaves_the_worker_memory_alone_and_the_document_fails(
    settings: Any, tmp_path: Path
) -> None:
    path = tmp_path / "inflating.pdf"
    path.write_bytes(inflating_pdf())  # 434 KB, six object streams of 70 MB each
    with path.open("rb") as handle:
        document = documents.document_create(file=handle, filename=path.name, dispatch=False)
    engines.get_embedder()  # loaded before measuring: the worker has it already
    engines.get_store()

    # page counting for the split plan, and the needs-OCR check, read the file in the memory-limited child
    before = _peak_memory_mb()
    _reset_peak_memory()
    assert document_parts.document_split_ranges(document=document, ocr=True) == ([], True)  # 4 blank pages
    assert _peak_memory_mb() - before < 100

    # a delivery of the document fails it with the reason, and the worker stays as it was
    settings.RAG_INGEST_MEMORY_MB = 256
    _reset_peak_memory()
    outcome = documents.document_ingest(document_id=document.pk, ocr=False)
    assert _peak_memory_mb() - before < 100
    assert (outcome.status, outcome.error) == (
        "failed",
        "Reading this document needed more than 256 MB of memory; it was not read",
    )


def _as_a_killed_worker_leaves_it(document: Document) -> None:
    """A run that started and never ended: processing, under a lease nobody renews any more."""
    Document.objects.filter(pk=document.pk).update(
        status="processing", stage="embedding", lease_until=timezone.now() - timedelta(seconds=1)
    )


def test_a_document_that_keeps_killing_its_worker_is_failed_after_max_deliveries(
    settings: Any, text_file: Callable[[str, str], Path], django_capture_on_commit_callbacks: Any
) -> None:
    settings.RAG_MAX_DELIVERIES = 3
    with text_file("bomb.txt", "Every worker that reads this dies.").open("rb") as handle:
        document = documents.document_create(file=handle, filename="bomb.txt", dispatch=False)

    for died in (1, 2):
        _as_a_killed_worker_leaves_it(document)
        with django_capture_on_commit_callbacks() as sent:
            assert documents.documents_recover() == 1  # beat notices the dead run and sends the document again
        assert len(sent) == 1
        document.refresh_from_db()
        assert (document.status, document.lost_runs, document.lease_until) == ("queued", died, None)

    _as_a_killed_worker_leaves_it(document)  # the third delivery dies too
    with django_capture_on_commit_callbacks() as sent:
        assert documents.documents_recover() == 0
    assert not sent  # not read again
    document.refresh_from_db()
    assert (document.status, document.lost_runs, document.chunk_count) == ("failed", 3, 0)
    assert document.error == (
        "This document stopped the worker 3 times while being read (it may be damaged or built to exhaust "
        "memory); it was not read again."
    )


def test_a_delivery_of_a_document_another_live_run_holds_does_nothing_and_waits(
    text_file: Callable[[str, str], Path],
) -> None:
    with text_file("held.txt", "A document another worker is reading right now.").open("rb") as handle:
        document = documents.document_create(file=handle, filename="held.txt", dispatch=False)
    with leases.leased(Document, document.pk) as claim:  # that other run
        assert claim.lease is not None
        Document.objects.filter(pk=document.pk).update(status="processing")
        leases._held.clear()  # as seen from another process
        outcome = documents.document_ingest(document_id=document.pk, ocr=False)
        leases._held[("Document", document.pk)] = claim.lease
    assert outcome.status == "busy" and 0 < outcome.retry_in <= django_settings.RAG_LEASE_S + 1
    document.refresh_from_db()
    assert (document.lost_runs, document.chunk_count, document.lease_until) == (0, 0, None)
    assert documents.document_ingest(document_id=document.pk, ocr=False).status == "ready"  # once it let go
