"""Parsing: every file of the shared corpus gives the outcome its README promises, plus small
generated cases. No database, no Django."""

from __future__ import annotations

import email.message
import io
import random
import re
import shutil
import subprocess
import sys
import zipfile
from functools import cache
from pathlib import Path

import pytest

from ingestion.errors import (
    DamagedDocumentError,
    EmptyDocumentError,
    EncryptedDocumentError,
    IngestionError,
    UnsupportedFormatError,
)
from ingestion.parsing import SUPPORTED_TYPES, needs_ocr, parse_file, pdf_page_count, sniff_mime
from ingestion.parsing import pdf as pdf_parsing
from ingestion.parsing.encoding import decode_bytes
from ingestion.parsing.text import MAX_BLOCK_CHARS
from ingestion.types import ParsedDocument

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
HAS_TESSERACT = shutil.which("tesseract") is not None

# file -> (type, words the text must contain); the image-only scan has its own tests
READY = {
    "pdf_paper_with_table.pdf": (PDF, ["LayoutParser", "PubLayNet"]),
    "pdf_reliance_3p.pdf": (PDF, ["Reliance", "Corporate Overview"]),
    "pdf_geotopo_117p_de.pdf": (PDF, ["Topologie", "Fundamentalgruppe", "Überlagerungen"]),
    "pdf_images_tables.pdf": (PDF, ["inhibitor concentration", "Langmuir adsorption isotherm"]),
    "pdf_scanned_with_ocr_6p.pdf": (PDF, ["VICKSBURG"]),
    "pdf_owner_pw_copy_protected.pdf": (PDF, ["LayoutParser", "Document Image Analysis"]),
    "pdf_invalid_structure.pdf": (PDF, ["Cybersecurity", "critical infrastructure"]),
    "docx_tables.docx": (DOCX, ["Simple uniform table", "Lorem ipsum | A link example", "g&t"]),
    "pptx_table.pptx": (PPTX, ["A Slide with a Table", "Red | Green | Blue"]),
    "pptx_malformed.pptx": (PPTX, ["Test Slide"]),
    "html_cp1252.html": ("text/html", ["My first paragraph.", "très chaud", "köstlich", "15,50 €", "niño"]),
    "md_codeblock.md": ("text/markdown", ["HTML Example", "Don't forget me this weekend!"]),
    "md_unstructured_readme.md": ("text/markdown", ["Quick Start", "partition"]),
    "md_latin1_umlauts.md": ("text/markdown", ["können", "äöüß"]),
    "eml_with_attachment.eml": ("message/rfc822", ["Here's the attachments!", "Hey this is a fake attachment!"]),
    "xlsx_financial_segments.xlsx": (XLSX, ["Zone NA | 12553", "Nestlé Health Science"]),
    "csv_long_lines.csv": ("text/csv", ["SpearmanCorrelationCoefficient"]),
    "txt_utf8_norwich_city.txt": ("text/plain", ["Norwich City", "–1986 Watford", "£"]),
    "txt_utf8_french_moliere.txt": ("text/plain", ["MOLIÈRE", "écrivains"]),
    "txt_cp1252_french_moliere.txt": ("text/plain", ["MOLIÈRE", "écrivains", "FÉVRIER"]),
}
# file -> (error, message)
FAILED = {
    "pdf_encrypted_password.pdf": (EncryptedDocumentError, "The PDF is password-protected"),
    "pdf_encrypted_known_pw.pdf": (EncryptedDocumentError, "The PDF is password-protected"),
    "pdf_encrypted_aes256.pdf": (EncryptedDocumentError, "The PDF is password-protected"),
    "pdf_truncated_DERIVED.pdf": (DamagedDocumentError, "The PDF is damaged and could not be read"),
}
IMAGE_ONLY = "pdf_image_only_scan.pdf"
MOJIBAKE = ("Ã", "â€", "Â£", "\ufffd")


@pytest.fixture(scope="module")
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.skip("../shared/corpus is not present")
    return CORPUS


@cache
def _parsed(name: str) -> ParsedDocument:
    # the 117-page PDF takes seconds: parse each corpus file once per run
    return parse_file(CORPUS / name, filename=name)


def _text(parsed: ParsedDocument) -> str:
    return "\n".join(block.text for block in parsed.blocks)


# --- the shared corpus -------------------------------------------------------------------------


def test_every_corpus_file_has_an_expected_outcome(corpus: Path) -> None:
    listed = set(re.findall(r"^\| ([\w.-]+\.\w+) \|", (corpus / "README.md").read_text(), re.MULTILINE))
    assert listed, "the corpus README table could not be read"
    assert listed == set(READY) | set(FAILED) | {IMAGE_ONLY}


@pytest.mark.parametrize("name", sorted(READY))
def test_readable_corpus_file_yields_its_text(corpus: Path, name: str) -> None:
    mime, words = READY[name]
    parsed = _parsed(name)
    text = _text(parsed)
    assert parsed.mime_type == mime
    for word in words:
        assert word in text
    assert not any(bad in text for bad in MOJIBAKE)
    assert all(block.text.strip() and len(block.text) <= MAX_BLOCK_CHARS for block in parsed.blocks)


@pytest.mark.parametrize("name", sorted(FAILED))
def test_unreadable_corpus_file_fails_with_reason(corpus: Path, name: str) -> None:
    error, message = FAILED[name]
    with pytest.raises(error) as caught:
        parse_file(corpus / name, filename=name)
    assert caught.value.message == message
    assert str(caught.value) == message


SNIFFABLE = sorted(
    name
    for name in set(READY) | set(FAILED) | {IMAGE_ONLY}
    if name not in READY or READY[name][0] not in ("text/markdown", "text/csv", "text/plain")
)


@pytest.mark.parametrize("libmagic", [True, False], ids=["libmagic", "byte-checks"])
@pytest.mark.parametrize("name", SNIFFABLE)
def test_sniffing_finds_the_corpus_file_type_without_a_file_name(
    corpus: Path, name: str, libmagic: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ingestion.parsing import sniffing

    if not libmagic:
        monkeypatch.setattr(sniffing, "_libmagic", lambda path: None)
    anonymous = tmp_path / "upload"  # plain text flavours need the extension, so they are not here
    shutil.copyfile(corpus / name, anonymous)
    assert sniff_mime(anonymous) == (READY[name][0] if name in READY else PDF)


# --- PDF ---------------------------------------------------------------------------------------


def test_encrypted_pdf_fails_with_reason(corpus: Path) -> None:
    with pytest.raises(EncryptedDocumentError, match=r"^The PDF is password-protected$"):
        parse_file(corpus / "pdf_encrypted_password.pdf")


def test_encrypted_pdf_opens_with_its_password(corpus: Path) -> None:
    parsed = parse_file(corpus / "pdf_encrypted_known_pw.pdf", password="openpassword")
    assert "Lorem ipsum" in _text(parsed)
    assert {block.page for block in parsed.blocks} == {1}


def test_encrypted_pdf_with_wrong_password_says_so(corpus: Path) -> None:
    with pytest.raises(EncryptedDocumentError, match="password given does not open it"):
        parse_file(corpus / "pdf_encrypted_known_pw.pdf", password="not-the-password")


def test_pdf_blocks_carry_one_based_page_numbers(corpus: Path) -> None:
    parsed = _parsed("pdf_reliance_3p.pdf")
    assert parsed.page_count == 3
    assert {block.page for block in parsed.blocks} == {1, 2, 3}
    assert parsed.blocks[0].page == 1
    assert "Corporate Overview" in parsed.blocks[0].text


def test_pdf_outline_gives_heading_paths_by_page(corpus: Path) -> None:
    parsed = _parsed("pdf_geotopo_117p_de.pdf")
    assert parsed.page_count == 117
    assert not any(block.headings for block in parsed.blocks if block.page is not None and block.page < 5)
    page_10 = [block for block in parsed.blocks if block.page == 10]
    assert page_10
    assert all(block.headings == ("1 Topologische Grundbegriffe", "1.2 Metrische Räume") for block in page_10)


def test_pdf_lines_are_joined_into_paragraphs_and_dehyphenated(corpus: Path) -> None:
    text = _text(_parsed("pdf_scanned_with_ocr_6p.pdf"))
    assert "dangerous for use." in text  # "dan-" at a line end, "gerous" on the next line
    assert "ﬁ" not in _text(_parsed("pdf_owner_pw_copy_protected.pdf"))  # ligatures spelled out


def test_pdf_page_range_parses_only_those_pages(corpus: Path) -> None:
    parsed = parse_file(corpus / "pdf_reliance_3p.pdf", pages=range(2, 3))
    assert {block.page for block in parsed.blocks} == {2}
    assert parsed.page_count == 3


def test_pdf_page_range_outside_the_document_gives_no_blocks_and_no_error(corpus: Path) -> None:
    assert parse_file(corpus / "pdf_reliance_3p.pdf", pages=range(10, 20)).blocks == ()


def test_page_range_is_refused_for_other_formats(corpus: Path) -> None:
    with pytest.raises(ValueError, match="PDFs only"):
        parse_file(corpus / "txt_utf8_french_moliere.txt", pages=range(1, 2))


def test_pdf_page_count_reads_the_page_tree(corpus: Path) -> None:
    assert pdf_page_count(corpus / "pdf_reliance_3p.pdf") == 3
    assert pdf_page_count(corpus / "pdf_encrypted_known_pw.pdf", password="openpassword") == 1
    with pytest.raises(EncryptedDocumentError):
        pdf_page_count(corpus / "pdf_encrypted_aes256.pdf")
    with pytest.raises(DamagedDocumentError):
        pdf_page_count(corpus / "pdf_truncated_DERIVED.pdf")


def test_needs_ocr_lists_pages_without_text(corpus: Path) -> None:
    assert needs_ocr(corpus / IMAGE_ONLY) == [1]
    assert needs_ocr(corpus / "pdf_reliance_3p.pdf") == []


def test_pdf_keeps_readable_pages_when_one_page_fails(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pypdf import PageObject
    from pypdf.errors import PdfReadError

    extract = PageObject.extract_text

    def broken_second_page(self: PageObject, *args: object, **kwargs: object) -> str:
        if self.page_number == 1:
            raise PdfReadError("broken content stream")
        return extract(self, *args, **kwargs)

    pdfium_text = pdf_parsing._pdfium_text

    def pdfium_broken_second_page(document: object, number: int) -> str:
        if number == 2:
            raise RuntimeError("broken content stream")
        return pdfium_text(document, number)

    monkeypatch.setattr(PageObject, "extract_text", broken_second_page)
    monkeypatch.setattr(pdf_parsing, "_pdfium_text", pdfium_broken_second_page)
    parsed = parse_file(corpus / "pdf_reliance_3p.pdf")
    assert {block.page for block in parsed.blocks} == {1, 3}
    assert parsed.warnings == ("Page 2 could not be read and was skipped.",)


@pytest.mark.skipif(not HAS_TESSERACT, reason="Tesseract is not installed")
def test_image_only_pdf_is_read_through_ocr(corpus: Path) -> None:
    parsed = _parsed(IMAGE_ONLY)
    assert parsed.ocr_pages == (1,)
    assert "Lorem ipsum dolor sit amet" in _text(parsed)
    assert {block.page for block in parsed.blocks} == {1}


@pytest.mark.skipif(HAS_TESSERACT, reason="Tesseract is installed: the OCR test covers this file")
def test_image_only_pdf_without_tesseract_asks_for_it(corpus: Path) -> None:
    with pytest.raises(EmptyDocumentError, match=r"^No extractable text: install Tesseract to read scanned PDFs$"):
        parse_file(corpus / IMAGE_ONLY)


def test_image_only_pdf_fails_with_install_hint_when_ocr_is_unavailable(
    corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ingestion.parsing import pdf

    monkeypatch.setattr(pdf, "_ocr_languages", lambda languages: None)
    with pytest.raises(EmptyDocumentError, match="install Tesseract"):
        parse_file(corpus / IMAGE_ONLY)


def test_image_only_pdf_with_ocr_turned_off_fails_as_empty(corpus: Path) -> None:
    with pytest.raises(EmptyDocumentError, match="OCR is turned off"):
        parse_file(corpus / IMAGE_ONLY, ocr=False)


def test_scanned_pages_of_a_text_pdf_are_named_when_not_ocrd(corpus: Path, tmp_path: Path) -> None:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    writer.add_page(PdfReader(corpus / "pdf_paper_with_table.pdf").pages[0])
    writer.add_page(PdfReader(corpus / IMAGE_ONLY).pages[0])
    path = tmp_path / "mixed.pdf"
    writer.write(path)

    parsed = parse_file(path, ocr=False)
    assert {block.page for block in parsed.blocks} == {1}
    assert parsed.ocr_pages == ()
    assert parsed.warnings == ("Page 2 has (almost) no text and was not OCR'd (OCR is turned off).",)
    assert needs_ocr(path) == [2]


def test_pdf_title_ignores_file_names_in_metadata(corpus: Path) -> None:
    assert _parsed("pdf_scanned_with_ocr_6p.pdf").title is None  # metadata says "Binder1.pdf"
    assert _parsed("pdf_invalid_structure.pdf").title.startswith("GAO-23-106826")


# --- Office ------------------------------------------------------------------------------------


def test_docx_headings_build_the_heading_path(tmp_path: Path) -> None:
    import docx

    document = docx.Document()
    document.add_heading("Handbook", level=0)
    document.add_heading("Holidays", level=1)
    document.add_paragraph("Everyone has 25 days.")
    document.add_heading("Carry-over", level=2)
    document.add_paragraph("Up to 5 days move to the next year.")
    document.add_heading("Expenses", level=1)
    document.add_paragraph("Keep every receipt.", style="List Bullet")
    table = document.add_table(rows=2, cols=2)
    for row, values in zip(table.rows, (("Item", "Limit"), ("Hotel", "150 €")), strict=True):
        for cell, value in zip(row.cells, values, strict=True):
            cell.text = value
    path = tmp_path / "handbook.docx"
    document.save(str(path))

    parsed = parse_file(path)
    by_text = {block.text: block for block in parsed.blocks}
    assert parsed.title == "Handbook"
    assert by_text["Everyone has 25 days."].headings == ("Handbook", "Holidays")
    assert by_text["Up to 5 days move to the next year."].headings == ("Handbook", "Holidays", "Carry-over")
    assert by_text["Keep every receipt."].headings == ("Handbook", "Expenses")
    assert by_text["Keep every receipt."].kind == "list_item"
    assert by_text["Hotel | 150 €"].kind == "table_row"
    assert by_text["Hotel | 150 €"].headings == ("Handbook", "Expenses")
    assert [block.kind for block in parsed.blocks][:2] == ["heading", "heading"]


def test_docx_tables_are_read_in_body_order_row_by_row(corpus: Path) -> None:
    blocks = _parsed("docx_tables.docx").blocks
    texts = [block.text for block in blocks]
    assert texts.index("Simple uniform table") < texts.index("Header Col 1 | Header Col 2")
    assert texts.index("Header Col 1 | Header Col 2") < texts.index("Nested Table")
    assert "d | e | f; g&t | h | i" in texts  # the nested table stays inside its cell
    assert "a | b" in texts  # a merged cell appears once
    assert {block.kind for block in blocks if "|" in block.text} == {"table_row"}


def test_pptx_slide_is_a_page_headed_by_its_title(corpus: Path) -> None:
    parsed = _parsed("pptx_table.pptx")
    assert parsed.page_count == 1
    row = next(block for block in parsed.blocks if block.text == "Red | Green | Blue")
    assert row.page == 1
    assert row.headings == ("A Slide with a Table",)
    assert row.kind == "table_row"


def test_pptx_notes_are_read(tmp_path: Path) -> None:
    from pptx import Presentation

    presentation = Presentation()
    slide = presentation.slides.add_slide(presentation.slide_layouts[1])
    slide.shapes.title.text = "Quarterly plan"
    slide.placeholders[1].text_frame.text = "Hire two engineers"
    slide.notes_slide.notes_text_frame.text = "Mention the budget freeze."
    path = tmp_path / "plan.pptx"
    presentation.save(str(path))

    parsed = parse_file(path)
    texts = {block.text: block for block in parsed.blocks}
    assert texts["Hire two engineers"].headings == ("Quarterly plan",)
    assert texts["Mention the budget freeze."].headings == ("Quarterly plan", "Notes")


def test_xlsx_sheets_are_pages_headed_by_their_names(corpus: Path) -> None:
    parsed = _parsed("xlsx_financial_segments.xlsx")
    assert parsed.page_count == 5
    row = next(block for block in parsed.blocks if block.text.startswith("Zone NA | 12553"))
    assert row.page == 1
    assert row.headings == ("OS-Rev.and results 30 06 2023",)
    assert {block.page for block in parsed.blocks} == {1, 2, 3, 4, 5}


def test_damaged_docx_fails_with_reason(tmp_path: Path) -> None:
    path = tmp_path / "report.docx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types")
        archive.writestr("word/document.xml", "not xml at all")
    with pytest.raises(DamagedDocumentError, match=r"^The DOCX file is damaged and could not be read$"):
        parse_file(path)


# --- HTML, Markdown, CSV, e-mail -----------------------------------------------------------------


def test_html_drops_scripts_and_builds_heading_paths(tmp_path: Path) -> None:
    path = tmp_path / "page.html"
    path.write_text(
        "<html><head><title>Travel policy</title><style>p{color:red}</style></head><body>"
        "<script>var secret = 1;</script><h1>Travel</h1><p>Book early.</p>"
        "<h2>Trains</h2><ul><li>Second class</li><li>First class over 4 hours</li></ul>"
        "<table><tr><th>Route</th><th>Class</th></tr><tr><td>Paris-Lyon</td><td>2nd</td></tr></table>"
        "<pre>  indented\n    code</pre><noscript>enable js</noscript></body></html>",
        encoding="utf-8",
    )
    parsed = parse_file(path)
    text = _text(parsed)
    by_text = {block.text: block for block in parsed.blocks}
    assert parsed.title == "Travel policy"
    assert "secret" not in text and "color" not in text and "enable js" not in text
    assert by_text["Book early."].headings == ("Travel",)
    assert by_text["Second class"].kind == "list_item"
    assert by_text["Second class"].headings == ("Travel", "Trains")
    assert by_text["Paris-Lyon | 2nd"].kind == "table_row"
    assert by_text["  indented\n    code"].kind == "code"


def test_html_declared_charset_is_honoured(tmp_path: Path) -> None:
    path = tmp_path / "ru.html"
    path.write_bytes(
        '<html><head><meta charset="windows-1251"></head><body><p>Привет, мир</p></body></html>'.encode("cp1251")
    )
    assert "Привет, мир" in _text(parse_file(path))


def test_markdown_headings_build_the_heading_path(corpus: Path) -> None:
    blocks = _parsed("md_unstructured_readme.md").blocks
    block = next(b for b in blocks if b.text.startswith("The following instructions are intended"))
    assert block.headings == (":eight_pointed_black_star: Quick Start", "Run the library in a container")
    heading = next(b for b in blocks if b.kind == "heading" and b.text == "Installing the library")
    assert heading.headings == (":eight_pointed_black_star: Quick Start", "Installing the library")


def test_markdown_code_fences_stay_whole(corpus: Path) -> None:
    code = [block for block in _parsed("md_codeblock.md").blocks if block.kind == "code"]
    assert len(code) == 3
    assert code[0].text.startswith('<!DOCTYPE html>\n<html lang="en">')
    assert code[0].headings == ("HTML Example",)
    assert code[1].headings == ("XML Example",)


def test_csv_rows_become_blocks_and_huge_cells_are_split(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    huge = "x" * 200_000
    path.write_text(f"name;city;notes\nAda;Paris;short\nBob;Lyon;{huge}\n", encoding="utf-8")
    parsed = parse_file(path)
    assert parsed.blocks[0].text == "name | city | notes"
    assert parsed.blocks[1].text == "Ada | Paris | short"
    assert all(len(block.text) <= MAX_BLOCK_CHARS for block in parsed.blocks)
    assert sum(block.text.count("x") for block in parsed.blocks) == len(huge)


def test_csv_with_very_long_lines_reads_every_row(corpus: Path) -> None:
    parsed = _parsed("csv_long_lines.csv")
    assert len(parsed.blocks) >= 11
    assert all(block.kind == "table_row" for block in parsed.blocks)


def test_email_headers_body_and_attachments_are_read(corpus: Path) -> None:
    parsed = _parsed("eml_with_attachment.eml")
    assert parsed.title == "Fake email with attachment"
    assert parsed.blocks[0].text.startswith("Subject: Fake email with attachment\nFrom: Mallori Harrell")
    attachment = [block for block in parsed.blocks if block.headings == ("fake-attachment.txt",)]
    assert [block.text for block in attachment] == ["Hey this is a fake attachment!"]


def test_email_html_body_and_pdf_attachment_are_read_and_unsupported_ones_skipped(corpus: Path, tmp_path: Path) -> None:
    message = email.message.EmailMessage()
    message["From"] = "Zoé <zoe@example.org>"
    message["To"] = "team@example.org"
    message["Subject"] = "Réunion de lundi"
    message.set_content("<html><body><h1>Ordre du jour</h1><p>Budget 2025</p></body></html>", subtype="html")
    message.add_attachment(
        (corpus / "pdf_paper_with_table.pdf").read_bytes(), maintype="application", subtype="pdf", filename="paper.pdf"
    )
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.bin", b"\x00\x01")
    message.add_attachment(archive.getvalue(), maintype="application", subtype="zip", filename="files.zip")
    path = tmp_path / "mail.eml"
    path.write_bytes(bytes(message))

    parsed = parse_file(path)
    assert parsed.title == "Réunion de lundi"
    assert "From: Zoé <zoe@example.org>" in parsed.blocks[0].text
    body = next(block for block in parsed.blocks if block.text == "Budget 2025")
    assert body.headings == ("Ordre du jour",)
    pdf_blocks = [block for block in parsed.blocks if block.headings[:1] == ("paper.pdf",)]
    assert any("PubLayNet" in block.text for block in pdf_blocks)
    assert {block.page for block in pdf_blocks} == {1}
    assert len(parsed.warnings) == 1
    assert parsed.warnings[0].startswith("Attachment 'files.zip' was skipped: Unsupported file type")


def test_attached_email_is_read_under_its_subject(tmp_path: Path) -> None:
    inner = email.message.EmailMessage()
    inner["Subject"] = "Contract draft"
    inner.set_content("The notice period is three months.")
    outer = email.message.EmailMessage()
    outer["Subject"] = "Fwd: Contract draft"
    outer.set_content("See below.")
    outer.add_attachment(inner)
    path = tmp_path / "forward.eml"
    path.write_bytes(bytes(outer))

    blocks = parse_file(path).blocks
    forwarded = next(block for block in blocks if block.text == "The notice period is three months.")
    assert forwarded.headings == ("Attached message: Contract draft",)


# --- sniffing ------------------------------------------------------------------------------------


def test_sniffing_wins_over_a_wrong_extension(corpus: Path, tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    shutil.copyfile(corpus / "pdf_paper_with_table.pdf", path)
    assert sniff_mime(path) == PDF
    assert parse_file(path, filename="notes.txt").mime_type == PDF


def test_text_about_pdfs_is_not_taken_for_a_pdf(tmp_path: Path) -> None:
    path = tmp_path / "notes"
    path.write_text("Every PDF starts with %PDF-1.7 and ends with a trailer.\n")  # libmagic says PDF
    assert sniff_mime(path) == "text/plain"


def test_pdf_with_bytes_before_its_header_is_still_a_pdf(corpus: Path, tmp_path: Path) -> None:
    path = tmp_path / "download.pdf"
    path.write_bytes(b"\x00\x01junk\n" + (corpus / "pdf_paper_with_table.pdf").read_bytes())
    assert sniff_mime(path) == PDF
    assert "PubLayNet" in _text(parse_file(path))


def test_upload_name_tells_markdown_from_html(corpus: Path, tmp_path: Path) -> None:
    stored = tmp_path / "b81f2c"  # storage names have no extension
    shutil.copyfile(corpus / "md_codeblock.md", stored)
    assert sniff_mime(stored, "notes.md") == "text/markdown"
    assert sniff_mime(stored, "notes.txt") == "text/plain"


def test_email_and_html_are_recognised_by_content(tmp_path: Path) -> None:
    mail = tmp_path / "message"
    mail.write_bytes(b"Received: from mx.example.org\r\nFrom: a@example.org\r\nSubject: hi\r\n\r\nHello\r\n")
    page = tmp_path / "page"
    page.write_bytes(b"\n<!DOCTYPE html><html><body><p>Hi</p></body></html>")
    assert sniff_mime(mail) == "message/rfc822"
    assert sniff_mime(page) == "text/html"


def test_random_binary_is_unsupported_with_the_supported_list(tmp_path: Path) -> None:
    path = tmp_path / "blob.txt"
    path.write_bytes(random.Random(7).randbytes(4096))
    with pytest.raises(UnsupportedFormatError) as caught:
        parse_file(path)
    assert caught.value.message.startswith("Unsupported file type: ")
    assert "Supported: PDF, DOCX, PPTX, XLSX, CSV, HTML, Markdown, E-mail (EML), Text." in caught.value.message


def test_zip_archive_and_legacy_office_files_are_unsupported(tmp_path: Path) -> None:
    archive = tmp_path / "files.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme.txt", "hello")
    legacy = tmp_path / "old.doc"
    legacy.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(4088))
    with pytest.raises(UnsupportedFormatError, match="ZIP archive"):
        sniff_mime(archive)
    with pytest.raises(UnsupportedFormatError, match="legacy Microsoft Office"):
        sniff_mime(legacy)


def test_given_mime_type_skips_sniffing(corpus: Path) -> None:
    parsed = parse_file(corpus / "md_codeblock.md", mime_type="text/plain")
    assert parsed.mime_type == "text/plain"
    with pytest.raises(UnsupportedFormatError):
        parse_file(corpus / "md_codeblock.md", mime_type="image/png")


def test_supported_types_name_every_type_for_messages() -> None:
    assert SUPPORTED_TYPES["application/pdf"] == "PDF"
    assert set(SUPPORTED_TYPES) == {
        PDF,
        DOCX,
        PPTX,
        XLSX,
        "text/csv",
        "text/html",
        "text/markdown",
        "message/rfc822",
        "text/plain",
    }


# --- encodings and empty files ----------------------------------------------------------------


def test_empty_file_fails_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.pdf"
    path.touch()
    with pytest.raises(EmptyDocumentError, match=r"^The file is empty$"):
        parse_file(path)


def test_blank_text_fails_as_having_no_text(tmp_path: Path) -> None:
    path = tmp_path / "blank.txt"
    path.write_text("   \n\n\t\n")
    with pytest.raises(EmptyDocumentError, match=r"^The document contains no extractable text$"):
        parse_file(path)


def test_cp1252_text_is_decoded(tmp_path: Path) -> None:
    path = tmp_path / "note.txt"
    path.write_bytes("Le café coûte 3 € – très cher, dit Molière.\n".encode("cp1252"))
    assert parse_file(path).blocks[0].text == "Le café coûte 3 € – très cher, dit Molière."


def test_utf8_bom_is_stripped(tmp_path: Path) -> None:
    path = tmp_path / "note.txt"
    path.write_bytes(b"\xef\xbb\xbf" + "Bonjour à tous\n\nSecond paragraphe".encode())
    parsed = parse_file(path)
    assert [block.text for block in parsed.blocks] == ["Bonjour à tous", "Second paragraphe"]


@pytest.mark.parametrize(
    ("data", "declared", "expected"),
    [
        ("Molière".encode(), None, "Molière"),
        ("Molière".encode("cp1252"), None, "Molière"),
        (b"k\xf6nnen", "iso-8859-1", "können"),
        (b"\xe4\xf6\xfc\xdf", None, "äöüß"),
        (
            "Привет, как дела? Это текст на русском языке.".encode("cp1251"),
            None,
            "Привет, как дела? Это текст на русском языке.",
        ),
        ("können".encode(), "iso-8859-1", "können"),  # a wrong Western declaration loses to UTF-8
        ("Привет".encode("koi8-r"), "koi8-r", "Привет"),
        ("MoliÃ¨re â€“ Â£5".encode(), None, "Molière – £5"),  # UTF-8 saved twice
        ("Hello".encode("utf-16"), None, "Hello"),
    ],
)
def test_decode_bytes_prefers_declared_then_utf8_then_cp1252(data: bytes, declared: str | None, expected: str) -> None:
    assert decode_bytes(data, declared) == expected


def test_errors_are_ingestion_errors_with_codes() -> None:
    for error in (UnsupportedFormatError, EncryptedDocumentError, DamagedDocumentError, EmptyDocumentError):
        assert issubclass(error, IngestionError)
        assert error("x").code != IngestionError.code


def test_importing_the_package_loads_no_parsing_library() -> None:
    heavy = [
        "pypdf",
        "docx",
        "pptx",
        "openpyxl",
        "bs4",
        "lxml",
        "markdown_it",
        "charset_normalizer",
        "magic",
        "pytesseract",
        "pypdfium2",
        "PIL",
        "django",
    ]
    code = f"import sys, ingestion.parsing; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.stdout.strip() == "[]"
