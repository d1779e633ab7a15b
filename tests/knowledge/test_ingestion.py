"""Ingestion through the domain: statuses, reasons, chunks and vectors stay in step."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from knowledge.errors import DuplicateDocumentError
from knowledge.models import Chunk, Collection, Document
from knowledge.services import documents as document_services
from knowledge.services import engines
from knowledge.services import index as index_services

pytestmark = pytest.mark.django_db

# Expected outcomes from ../shared/corpus/README.md. "either" files may be read or refused, but a
# refusal must say why in plain words.
FAILS = {
    "pdf_encrypted_password.pdf": "password-protected",
    "pdf_encrypted_known_pw.pdf": "password-protected",
    "pdf_encrypted_aes256.pdf": "password-protected",
}
EITHER = {"pdf_invalid_structure.pdf", "pdf_truncated_DERIVED.pdf", "pptx_malformed.pptx"}
CONTENT = {
    "txt_cp1252_french_moliere.txt": "Molière",
    "txt_utf8_french_moliere.txt": "Molière",
    "html_cp1252.html": "très",
    "md_latin1_umlauts.md": "können",
    "txt_utf8_norwich_city.txt": "Norwich",
    "xlsx_financial_segments.xlsx": "",
}


def _vectors_of(document_id: int) -> int:
    chunk_ids = set(Chunk.objects.filter(document_id=document_id).values_list("pk", flat=True))
    return len(chunk_ids & {int(i) for i in engines.get_store().ids()})


def test_every_corpus_file_ends_as_expected(corpus_dir: Path) -> None:
    out = io.StringIO()
    call_command("ingest", str(corpus_dir), "--sync", "--json", stdout=out)
    records = {Path(r["file"]).name: r for r in map(json.loads, out.getvalue().splitlines())}
    corpus_files = {
        p.name for p in corpus_dir.iterdir() if p.is_file() and p.name not in {"README.md", "MANIFEST.json"}
    }
    assert corpus_files <= set(records)

    for name in sorted(corpus_files):
        record = records[name]
        assert set(record) == {"file", "document_id", "status", "error", "chunks", "pages"}
        document = Document.objects.get(pk=record["document_id"])
        if name in FAILS:
            assert record["status"] == "failed", name
            assert FAILS[name] in record["error"], (name, record["error"])
        elif name == "pdf_image_only_scan.pdf":
            if shutil.which("tesseract"):
                assert record["status"] == "ready", record
                assert document.ocr_pages
            else:
                assert record["status"] == "failed"
                assert "Tesseract" in record["error"]
        elif name in EITHER:
            assert record["status"] in {"ready", "failed"}
            if record["status"] == "failed":
                assert record["error"] and "Traceback" not in record["error"]
        else:
            assert record["status"] == "ready", (name, record["error"])
        if record["status"] == "ready":
            assert record["chunks"] > 0 and record["chunks"] == document.chunks.count()
            assert _vectors_of(document.pk) == record["chunks"]
            if CONTENT.get(name):
                assert any(CONTENT[name] in c.text for c in document.chunks.all()), name
            assert "Ã" not in " ".join(document.chunks.values_list("text", flat=True)), name
        else:
            assert document.chunks.count() == 0
            assert record["chunks"] == 0
            assert "Traceback" not in record["error"]

    report = index_services.index_check()
    assert report.consistent
    assert report.vectors == Chunk.objects.count()
    # PDFs keep their page numbers.
    paper = Document.objects.get(original_name="pdf_reliance_3p.pdf")
    assert set(paper.chunks.values_list("page", flat=True)) <= {1, 2, 3}
    assert paper.page_count == 3


def test_a_duplicate_in_the_same_collection_is_not_ingested_twice(
    ingest: Callable[..., Document], text_file: Callable[[str, str], Path]
) -> None:
    path = text_file("note.txt", "The quarterly report mentions the Oslo office and its budget.\n\nSecond paragraph.")
    first = ingest(path)
    chunks = Chunk.objects.count()
    with pytest.raises(DuplicateDocumentError) as caught, path.open("rb") as handle:
        document_services.document_create(file=handle, filename="copy.txt", dispatch=False)
    assert caught.value.existing == first
    assert Chunk.objects.count() == chunks
    assert Document.objects.count() == 1


def test_the_same_file_may_live_in_two_collections(
    ingest: Callable[..., Document], text_file: Callable[[str, str], Path], other_collection: Collection
) -> None:
    path = text_file("shared.txt", "A memo shared between two teams about the Lisbon launch.")
    a = ingest(path)
    b = ingest(path, collection=other_collection)
    assert a.pk != b.pk and a.status == b.status == "ready"


def test_processing_again_replaces_chunks_and_vectors(
    ingest: Callable[..., Document], text_file: Callable[[str, str], Path]
) -> None:
    path = text_file("guide.md", "# Guide\n\n" + "\n\n".join(f"Paragraph {i} about topic {i}." * 20 for i in range(30)))
    document = ingest(path)
    chunks = document.chunk_count
    assert chunks > 1
    for _ in range(2):
        document_services.document_process(document_id=document.pk, force=True)
    assert Chunk.objects.filter(document=document).count() == chunks
    assert len(engines.get_store().ids()) == chunks
    assert index_services.index_check().consistent


def test_deleting_a_document_removes_chunks_vectors_and_file(
    ingest: Callable[..., Document], text_file: Callable[[str, str], Path], django_capture_on_commit_callbacks: Any
) -> None:
    keep = ingest(text_file("keep.txt", "Penguins live in the southern hemisphere, mostly in Antarctica."))
    gone = ingest(text_file("gone.txt", "The Zanzibar spice market sells cloves, nutmeg and cinnamon."))
    stored = Path(gone.file.path)
    assert stored.exists()
    hits = engines.get_searcher().search("Zanzibar cloves spice market", k=5)
    assert hits and hits[0].document_id == gone.pk

    with django_capture_on_commit_callbacks(execute=True):
        document_services.document_delete(document=gone)

    assert not Document.objects.filter(pk=gone.pk).exists()
    assert not Chunk.objects.filter(document_id=gone.pk).exists()
    assert not stored.exists()
    hits = engines.get_searcher().search("Zanzibar cloves spice market", k=5)
    assert all(hit.document_id == keep.pk for hit in hits)
    assert index_services.index_check().consistent


def test_replacing_a_file_reindexes_it(ingest: Callable[..., Document], text_file: Callable[[str, str], Path]) -> None:
    document = ingest(text_file("policy.txt", "Travel policy: economy class for flights under six hours."))
    new = text_file("policy-v2.txt", "Travel policy: trains are preferred for journeys under four hours.")
    with new.open("rb") as handle:
        document_services.document_replace(document=document, file=handle, filename="policy-v2.txt", dispatch=False)
    document_services.document_process(document_id=document.pk)
    document.refresh_from_db()
    assert document.status == "ready"
    texts = " ".join(document.chunks.values_list("text", flat=True))
    assert "trains" in texts and "economy" not in texts
    assert index_services.index_check().consistent


def test_a_broken_file_fails_with_a_reason_and_leaves_the_rest_untouched(
    ingest: Callable[..., Document], text_file: Callable[[str, str], Path], tmp_path: Path
) -> None:
    good = ingest(text_file("good.txt", "Kept safe: the archive of the Bergen harbour authority."))
    before = set(engines.get_store().ids().tolist())
    for name, payload in [
        ("empty.pdf", b""),
        ("random.bin", bytes(range(256)) * 40),
        ("truncated.docx", b"PK\x03\x04" + b"\x00" * 64),
    ]:
        path = tmp_path / name
        path.write_bytes(payload)
        bad = ingest(path)
        assert bad.status == "failed", name
        assert bad.error and "Traceback" not in bad.error, name
        assert bad.chunks.count() == 0
    assert set(engines.get_store().ids().tolist()) == before
    good.refresh_from_db()
    assert good.status == "ready"


def test_uploaded_names_cannot_escape_the_media_folder(portal_dirs: dict[str, Path], tmp_path: Path) -> None:
    with io.BytesIO(b"plain text that is safe") as handle:
        document = document_services.document_create(file=handle, filename="../../etc/passwd.pdf", dispatch=False)
    stored = Path(document.file.path).resolve()
    assert stored.is_relative_to(Path(portal_dirs["media"]).resolve())
    assert document.original_name == "passwd.pdf"


def test_ingest_command_rejects_a_missing_path(capsys: Any) -> None:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="No such file"):
        call_command("ingest", "/nonexistent/file.pdf", "--sync")
    with pytest.raises(CommandError, match="Unknown collection"):
        call_command("ingest", __file__, "--collection", "nope")


@pytest.mark.stores
def test_rebuild_index_restores_every_vector(
    ingest: Callable[..., Document], text_file: Callable[[str, str], Path]
) -> None:
    ingest(text_file("a.txt", "Alpha document about glaciers in Iceland."))
    ingest(text_file("b.txt", "Beta document about volcanoes in Italy."))
    chunks = Chunk.objects.count()
    with engines.get_store().writer() as writer:
        writer.clear()
    engines.reset()
    out = io.StringIO()
    call_command("rebuild_index", stdout=out)
    assert f"rebuilt: {chunks} chunks" in out.getvalue()
    assert index_services.index_check().consistent
    hits = engines.get_searcher().search("volcanoes Italy", k=1)
    assert Document.objects.get(pk=hits[0].document_id).original_name == "b.txt"


@pytest.mark.stores
def test_check_index_finds_and_repairs_a_gap(
    ingest: Callable[..., Document], text_file: Callable[[str, str], Path]
) -> None:
    document = ingest(text_file("c.txt", "Gamma document about the rivers of Brazil."))
    with engines.get_store().writer() as writer:
        writer.remove_document(document.pk)
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="differ"):
        call_command("check_index", stdout=io.StringIO())
    out = io.StringIO()
    call_command("check_index", "--repair", stdout=out)
    assert "Repaired" in out.getvalue()
    assert index_services.index_check().consistent


@pytest.mark.stores
def test_the_searcher_follows_the_search_settings(
    settings: Any, ingest: Callable[..., Document], text_file: Callable[[str, str], Path]
) -> None:
    ingest(text_file("d.txt", "Delta document: the glaciers of Iceland are retreating every year."))
    engines.reset()
    hits = engines.get_searcher().search("Are the glaciers of Iceland shrinking?", k=1)
    assert hits[0].companion_score is not None  # the companion scores English questions by default
    assert hits[0].sentence_score is not None  # and so does the sentence side

    settings.RAG_FUSION, settings.RAG_COMPANION_WEIGHT = "rrf", 0.0  # a changed setting: a new searcher
    settings.RAG_SENTENCE_WEIGHT = 0.0
    searcher = engines.get_searcher()
    assert (searcher.config.fusion, searcher.config.companion_weight) == ("rrf", 0.0)
    assert searcher.config.sentence_weight == 0.0
    hit = searcher.search("Are the glaciers of Iceland shrinking?", k=1)[0]
    assert hit.companion_score is None and hit.sentence_score is None
