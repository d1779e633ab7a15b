"""Big text PDFs are processed as page ranges (one task each) and assembled by the last part."""

from __future__ import annotations

import io
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import transaction

from knowledge.models import Chunk, Collection, Document, DocumentPart
from knowledge.services import document_parts, engines
from knowledge.services import documents as document_services
from knowledge.services import index as index_services
from knowledge.tasks import document_ingest_part_task
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db

SPLIT = 5
TOPICS = [
    "granite quarries",
    "river ferries",
    "orchard harvests",
    "textile mills",
    "railway bridges",
    "salt marshes",
    "bell foundries",
    "lighthouse keepers",
    "paper mills",
    "copper mines",
    "wool markets",
    "canal locks",
]


@pytest.fixture(autouse=True)
def _split_pages(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.RAG_SPLIT_PAGES = SPLIT
    monkeypatch.setenv("RAG_SPLIT_PAGES", str(SPLIT))  # for the worker processes started by a test


def _page_lines(number: int) -> list[str]:
    topic = TOPICS[(number - 1) % len(TOPICS)]
    return [
        f"Chapter {number}: the story of the {topic}.",
        f"This page, number {number}, tells how the {topic} shaped the life of the valley",
        "over three centuries, from the first settlers to the modern town council.",
        f"Local archives describe the {topic} in letters, ledgers and maps kept by the parish,",
        "and older residents still remember the seasons when work stopped for the winter.",
        f"Visitors who ask about the {topic} are sent to the small museum near the station,",
        "where a volunteer explains the tools, the wages and the songs of the workers.",
        f"The chapter on the {topic} ends with a list of the families who worked there.",
    ]


def _text_pdf(path: Path, pages: int, *, blank: frozenset[int] = frozenset()) -> Path:
    """A PDF of ``pages`` pages of plain text (Helvetica), each about one topic; ``blank`` pages have none."""
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    kids: list[int] = []
    for number in range(1, pages + 1):
        lines = [] if number in blank else _page_lines(number)
        stream = b"BT /F1 11 Tf 14 TL 56 760 Td " + b" ".join(b"(%s) Tj T*" % line.encode() for line in lines) + b" ET"
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            b"/Contents %d 0 R >>" % len(objects)
        )
        kids.append(len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % kid for kid in kids), pages)
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    path.write_bytes(out.getvalue())
    return path


def _scan_pdf(path: Path, pages: int) -> Path:
    """A PDF of ``pages`` scanned pages: images of text, with no text layer (only OCR can read them)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=28)
    images = []
    for number in range(1, pages + 1):
        image = Image.new("L", (1240, 1754), 255)  # A4 at 150 dpi
        draw = ImageDraw.Draw(image)
        for row, line in enumerate(_page_lines(number)[:4]):
            draw.text((80, 120 + 48 * row), line, fill=0, font=font)
        images.append(image)
    images[0].save(path, "PDF", resolution=150, save_all=True, append_images=images[1:])
    return path


def _create(path: Path, collection: Collection | None = None) -> Document:
    with path.open("rb") as handle:
        return document_services.document_create(file=handle, filename=path.name, collection=collection, dispatch=False)


def _chunks(document: Document) -> list[tuple[str, int | None, str]]:
    return [(c.text, c.page, c.heading) for c in Chunk.objects.filter(document=document).order_by("ordinal")]


def _assert_index_matches_chunks() -> None:
    engines.reset()
    report = index_services.index_check()
    assert report.consistent, report
    assert report.vectors == Chunk.objects.filter(document__status="ready").count()


def test_only_big_pdfs_are_planned_as_page_ranges(settings: Any, tmp_path: Path, text_file: Any) -> None:
    big = _create(_text_pdf(tmp_path / "big.pdf", 12))
    assert document_parts.document_split_ranges(document=big, ocr=True) == (
        [range(1, 6), range(6, 11), range(11, 13)],
        False,
    )

    small = _create(_text_pdf(tmp_path / "small.pdf", SPLIT))
    text = _create(text_file("notes.txt", "Notes about the canal locks.\n" * 200))
    assert document_parts.document_split_ranges(document=small, ocr=True) == ([], False)
    assert document_parts.document_split_ranges(document=text, ocr=True) == ([], False)

    # a page without text is read with OCR: such a PDF is split in ranges of RAG_SPLIT_OCR_PAGES pages
    settings.RAG_OCR = True
    settings.RAG_SPLIT_OCR_PAGES = 4
    scanned = _create(_text_pdf(tmp_path / "scanned.pdf", 12, blank=frozenset({4})))
    assert document_parts.document_split_ranges(document=scanned, ocr=True) == (
        [range(1, 5), range(5, 9), range(9, 13)],
        True,
    )
    assert len(document_parts.document_split_ranges(document=scanned, ocr=False)[0]) == 3
    settings.RAG_SPLIT_OCR_PAGES = 0
    assert document_parts.document_split_ranges(document=scanned, ocr=True) == ([], True)

    settings.RAG_MAX_PAGES = 10  # refused whole, with its reason, as before
    assert document_parts.document_split_ranges(document=big, ocr=True) == ([], False)
    settings.RAG_MAX_PAGES = 5000
    settings.RAG_SPLIT_PAGES = 0
    assert document_parts.document_split_ranges(document=big, ocr=True) == ([], False)


def test_a_split_pdf_ingested_in_process_matches_an_unsplit_ingestion(settings: Any, tmp_path: Path) -> None:
    path = _text_pdf(tmp_path / "big.pdf", 12)
    out = io.StringIO()
    call_command("ingest", str(path), "--sync", "--json", stdout=out)
    record = json.loads(out.getvalue().strip().splitlines()[-1])
    assert record["status"] == "ready", record
    assert record["pages"] == 12

    document = Document.objects.get(pk=record["document_id"])
    split = _chunks(document)
    assert record["chunks"] == len(split) == document.chunk_count > 0
    assert list(Chunk.objects.filter(document=document).order_by("ordinal").values_list("ordinal", flat=True)) == list(
        range(len(split))
    )
    pages = [page for _, page, _ in split]
    assert pages == sorted(pages) and set(pages) == set(range(1, 13))
    for text, page, _ in split:
        assert f"the {TOPICS[page - 1]}" in text
    assert not DocumentPart.objects.exists()
    _assert_index_matches_chunks()

    settings.RAG_SPLIT_PAGES = 0
    other = Collection.objects.create(slug="unsplit", name="Unsplit")
    whole = _create(path, collection=other)
    document_services.document_process(document_id=whole.pk)
    whole.refresh_from_db()
    assert whole.status == "ready", whole.error
    assert _chunks(whole) == split
    assert (whole.page_count, whole.title) == (document.page_count, document.title)
    _assert_index_matches_chunks()


def test_the_stage_says_which_part_is_being_processed(tmp_path: Path) -> None:
    document = _create(_text_pdf(tmp_path / "big.pdf", 12))
    seen: list[str] = []
    outcome = document_services.document_process(
        document_id=document.pk, progress=lambda stage: seen.append(Document.objects.get(pk=document.pk).stage)
    )
    assert outcome.status == "ready"
    assert outcome.pages == 12
    assert {"parsing (part 1 of 3)", "embedding (part 2 of 3)", "embedding (part 3 of 3)", "indexing"} <= set(seen)


def _watch_pipeline(
    monkeypatch: pytest.MonkeyPatch, *, on_parse: Callable[[Any, Any], None], on_embed: Callable[[Any], None]
) -> None:
    """Call ``on_parse(options, started parse)`` after each parse is started, ``on_embed(chunks)`` before each
    embedding; the real parse and embedding run."""
    import ingestion.pipeline as pipeline

    parse_ahead, embed_chunks = pipeline.parse_ahead, pipeline.embed_chunks

    def parse(path: Path, **kwargs: Any) -> Any:
        parsing = parse_ahead(path, **kwargs)
        on_parse(kwargs["options"], parsing)
        return parsing

    def embed(chunks: Any, **kwargs: Any) -> Any:
        on_embed(chunks)
        return embed_chunks(chunks, **kwargs)

    monkeypatch.setattr(pipeline, "parse_ahead", parse)
    monkeypatch.setattr(pipeline, "embed_chunks", embed)


def test_in_process_the_next_part_is_parsed_while_this_one_is_embedded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    events: list[str] = []
    _watch_pipeline(
        monkeypatch,
        on_parse=lambda options, _: events.append(f"parse {options.pages[0]}"),
        on_embed=lambda chunks: events.append(f"embed {chunks[0].page}"),
    )
    document = _create(_text_pdf(tmp_path / "big.pdf", 12))
    assert document_services.document_process(document_id=document.pk).status == "ready"
    # each part's parse is started before the part ahead of it embeds, in its own child
    assert events == ["parse 1", "parse 6", "embed 1", "parse 11", "embed 6", "embed 11"]
    _assert_index_matches_chunks()


def test_in_process_the_plan_does_not_read_the_pages_the_parse_reads(
    settings: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings.RAG_OCR = True
    inspections = _count_inspections(monkeypatch)
    document = _create(_text_pdf(tmp_path / "big.pdf", 12))
    assert document_services.document_process(document_id=document.pk).status == "ready"
    assert inspections == [False]  # the page count only: each part's parse finds the pages that need OCR


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="Tesseract is not installed")
def test_in_process_a_long_scan_is_read_with_ocr_part_by_part(
    settings: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings.RAG_OCR = True
    settings.RAG_SPLIT_PAGES = 2
    inspections = _count_inspections(monkeypatch)
    document = _create(_scan_pdf(tmp_path / "scan.pdf", 3))
    outcome = document_services.document_process(document_id=document.pk)
    assert outcome.status == "ready", outcome.error
    assert inspections == [False]
    document.refresh_from_db()
    assert (document.page_count, document.ocr_pages) == (3, [1, 2, 3])
    assert [page for _, page, _ in _chunks(document)] == [1, 2, 3]
    assert not DocumentPart.objects.exists()


def test_a_run_that_stops_early_leaves_no_parse_running(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    started: list[Any] = []

    def embed(chunks: Any) -> None:
        if chunks[0].page == 6:
            raise RuntimeError("the embedder broke")

    _watch_pipeline(monkeypatch, on_parse=lambda _, parsing: started.append(parsing), on_embed=embed)
    document = _create(_text_pdf(tmp_path / "big.pdf", 12))
    outcome = document_services.document_process(document_id=document.pk)
    assert outcome.status == "failed"
    assert "unexpected error" in outcome.error
    assert len(started) == 3  # the third part's parse had started when the second part failed
    for parsing in started:  # every child was collected or stopped: none is left behind
        assert parsing._pid is None
    assert not DocumentPart.objects.exists()
    assert not Chunk.objects.filter(document=document).exists()


def _count_inspections(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record each inspection of a file by the services (whether it looked for pages that need OCR)."""
    from knowledge.services import document_runs

    inspect = document_runs.document_inspect
    seen: list[bool] = []

    def recorded(*, document: Document, scans: bool = False) -> Any:
        seen.append(scans)
        return inspect(document=document, scans=scans)

    monkeypatch.setattr(document_runs, "document_inspect", recorded)
    monkeypatch.setattr(document_services, "document_inspect", recorded)
    return seen


def test_the_ingest_task_sends_one_task_per_part(
    eager_celery: None,
    django_capture_on_commit_callbacks: Any,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    settings.RAG_OCR = True
    inspections = _count_inspections(monkeypatch)
    path = _text_pdf(tmp_path / "big.pdf", 12)
    with django_capture_on_commit_callbacks(execute=True) as callbacks, path.open("rb") as handle:
        document = document_services.document_create(file=handle, filename=path.name)
    assert len(callbacks) == 2  # the document's task, then its plan's part tasks
    assert inspections == [True]  # the plan is decided from one reading of the file
    document.refresh_from_db()
    assert document.status == "ready", document.error
    assert document.page_count == 12
    assert document.attempts == 1
    assert not DocumentPart.objects.exists()
    _assert_index_matches_chunks()


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="Tesseract is not installed")
def test_a_long_scan_is_read_with_ocr_as_page_ranges_on_the_ocr_queue(
    eager_celery: None,
    django_capture_on_commit_callbacks: Any,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from portal.celery import app

    settings.RAG_OCR = True
    settings.RAG_SPLIT_OCR_PAGES = 1
    # the parts of a scan are the OCR queue's work, never the text queue's
    monkeypatch.setattr(
        document_ingest_part_task, "apply_async", lambda *args, **kwargs: pytest.fail("sent to the text queue")
    )
    assert app.amqp.router.route({}, "knowledge.document_ocr_part")["queue"].name == "ocr"

    inspections = _count_inspections(monkeypatch)
    path = _scan_pdf(tmp_path / "scan.pdf", 3)
    with django_capture_on_commit_callbacks(execute=True) as callbacks, path.open("rb") as handle:
        document = document_services.document_create(file=handle, filename=path.name)
    assert len(callbacks) == 2  # the document's task (which hands it to the OCR task), then the parts
    # its pages are looked through once, on the text queue; the OCR queue only counts them
    assert inspections == [True, False]
    document.refresh_from_db()
    assert document.status == "ready", document.error
    assert (document.page_count, document.ocr_pages) == (3, [1, 2, 3])
    chunks = _chunks(document)
    assert [page for _, page, _ in chunks] == [1, 2, 3]
    assert [topic in text.lower() for (text, _, _), topic in zip(chunks, TOPICS[:3], strict=True)] == [True] * 3
    assert not DocumentPart.objects.exists()
    _assert_index_matches_chunks()


def test_a_part_delivered_twice_does_not_duplicate_chunks(tmp_path: Path) -> None:
    document = _create(_text_pdf(tmp_path / "big.pdf", 12))
    first, second, third = document_parts.document_split(document_id=document.pk, ocr=False, dispatch=False)

    assert document_ingest_part_task(document.pk, first)["status"] == "processing"
    assert document_ingest_part_task(document.pk, first)["status"] == "processing"  # already done: skipped
    assert DocumentPart.objects.get(pk=first).status == "done"
    assert document_ingest_part_task(document.pk, second)["status"] == "processing"
    assert document_ingest_part_task(document.pk, third)["status"] == "ready"
    assert document_ingest_part_task(document.pk, third)["status"] == "skipped"  # redelivered after the end
    assert document_ingest_part_task(document.pk, second)["status"] == "skipped"

    document.refresh_from_db()
    assert document.status == "ready"
    assert document.chunk_count == Chunk.objects.filter(document=document).count() == 12
    _assert_index_matches_chunks()


def test_parts_whose_tasks_were_lost_are_sent_again(
    eager_celery: None, django_capture_on_commit_callbacks: Any, settings: Any, tmp_path: Path
) -> None:
    """The broker went down after the plan was committed: beat sends the pending parts again."""
    document = _create(_text_pdf(tmp_path / "big.pdf", 12))
    first, _, _ = document_parts.document_split(document_id=document.pk, ocr=False, dispatch=False)
    assert document_ingest_part_task(document.pk, first)["status"] == "processing"  # one part ran, two were lost

    # a document that made progress recently is left alone (its parts may be running)
    settings.RAG_REDISPATCH_AFTER_S, settings.RAG_INGEST_TIME_LIMIT = 600, 3600
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert document_services.documents_redispatch_stale() == 0
    assert not callbacks

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert document_services.documents_redispatch_stale(older_than_s=0) == 1
    assert len(callbacks) == 1
    document.refresh_from_db()
    assert document.status == "ready", document.error
    assert document.chunk_count == Chunk.objects.filter(document=document).count() == 12
    assert not DocumentPart.objects.exists()
    _assert_index_matches_chunks()


def test_a_failing_part_fails_the_whole_document_and_leaves_nothing_behind(tmp_path: Path) -> None:
    document = _create(_text_pdf(tmp_path / "big.pdf", 12))
    document_services.document_process(document_id=document.pk)
    document.refresh_from_db()
    assert document.status == "ready" and document.chunk_count > 0

    document_services.document_reingest(document=document, dispatch=False)
    first, second, third = document_parts.document_split(document_id=document.pk, ocr=False, dispatch=False)
    assert document_parts.document_part_process(document_id=document.pk, part_id=first).status == "processing"
    Path(document.file.path).unlink()  # a permanent error for the parts still to come

    outcome = document_parts.document_part_process(document_id=document.pk, part_id=second)
    assert outcome.status == "failed"
    assert outcome.error == "The stored file of this document is missing; upload it again."
    assert document_parts.document_part_process(document_id=document.pk, part_id=third).status == "skipped"

    document.refresh_from_db()
    assert (document.status, document.chunk_count, document.stage) == ("failed", 0, "")
    assert document.error == outcome.error
    assert not Chunk.objects.filter(document=document).exists()
    assert not DocumentPart.objects.exists()
    _assert_index_matches_chunks()
    assert index_services.index_check().vectors == 0


def test_parts_of_a_replaced_or_deleted_document_do_nothing(tmp_path: Path, text_file: Any) -> None:
    document = _create(_text_pdf(tmp_path / "big.pdf", 12))
    first, second, third = document_parts.document_split(document_id=document.pk, ocr=False, dispatch=False)
    assert document_parts.document_part_process(document_id=document.pk, part_id=first).status == "processing"
    with text_file("notes.txt", "Notes about the canal locks and the wool markets.").open("rb") as handle:
        document_services.document_replace(document=document, file=handle, filename="notes.txt", dispatch=False)

    assert document_parts.document_part_process(document_id=document.pk, part_id=second).status == "skipped"
    assert document_parts.document_part_process(document_id=document.pk, part_id=third).status == "skipped"
    document.refresh_from_db()
    assert (document.status, document.chunk_count) == ("queued", 0)

    # the replacement is processed whole; the outdated parts go, and their tasks stay no-ops
    assert document_services.document_process(document_id=document.pk).status == "ready"
    assert not DocumentPart.objects.exists()
    assert document_parts.document_part_process(document_id=document.pk, part_id=third).status == "skipped"
    assert [page for _, page, _ in _chunks(document)] == [None]

    other = _create(_text_pdf(tmp_path / "other.pdf", 7))
    part_ids = document_parts.document_split(document_id=other.pk, ocr=False, dispatch=False)
    assert len(part_ids) == 2
    document_services.document_delete(document=other)
    assert document_parts.document_part_process(document_id=other.pk, part_id=part_ids[0]).status == "skipped"
    _assert_index_matches_chunks()


@pytest.mark.worker
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_ingests_a_big_pdf_as_parts(celery_worker: Any, tmp_path: Path) -> None:
    path = _text_pdf(tmp_path / "big.pdf", 12)
    with transaction.atomic(), path.open("rb") as handle:
        document = document_services.document_create(file=handle, filename=path.name)

    def final() -> Document | None:
        current = Document.objects.get(pk=document.pk)
        return current if current.status in {"ready", "failed"} else None

    done = wait_for(final, timeout=300)
    assert done.status == "ready", done.error
    assert done.page_count == 12
    pages = [page for _, page, _ in _chunks(done)]
    assert pages == sorted(pages) and set(pages) == set(range(1, 13))
    assert done.chunk_count == len(pages)
    assert not DocumentPart.objects.exists()
    _assert_index_matches_chunks()
    log = celery_worker.log.read_text()
    assert len(re.findall(r"knowledge\.document_ingest_part\[[^\]]+\] succeeded", log)) == 3
