"""Document parsing: a file in, a ParsedDocument (text blocks with page and heading path) out.

The type is sniffed from the content (the upload name's extension is a hint); each format family
has its own small module, imported only when a file of that family is parsed, so importing this
package loads no parsing library.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ingestion.errors import DamagedDocumentError, DocumentTooLargeError, EmptyDocumentError, IngestionError
from ingestion.parsing.sniffing import (
    CSV,
    DOCX,
    EML,
    HTML,
    MARKDOWN,
    PDF,
    PPTX,
    SUPPORTED_EXTENSIONS,
    SUPPORTED_TYPES,
    TEXT,
    XLSX,
    normalize_mime,
    sniff_mime,
)
from ingestion.parsing.text import finish_blocks
from ingestion.types import ParsedDocument

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "SUPPORTED_TYPES",
    "FileFacts",
    "inspect_file",
    "needs_ocr",
    "parse_file",
    "pdf_page_count",
    "sniff_mime",
]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

#: an e-mail attached to an e-mail attached to an e-mail is read; one level deeper is not
MAX_ATTACHMENT_DEPTH = 3
#: safety limits: a PDF with more pages, or an Office file that unpacks to more, is refused
DEFAULT_MAX_PAGES = 5000
DEFAULT_MAX_UNPACKED_MB = 512
_ZIPPED = frozenset({DOCX, PPTX, XLSX})
_EMPTY = "The document contains no extractable text"


def parse_file(
    path: Path,
    *,
    filename: str | None = None,
    password: str | None = None,
    ocr: bool = True,
    ocr_languages: str = "eng+fra",
    mime_type: str | None = None,
    pages: range | None = None,
    max_pages: int = DEFAULT_MAX_PAGES,
    max_unpacked_mb: int = DEFAULT_MAX_UNPACKED_MB,
) -> ParsedDocument:
    """Parse the file at ``path`` into text blocks in reading order.

    ``filename`` is the original upload name (its extension helps tell text flavours apart);
    ``mime_type`` skips sniffing when the caller already knows the type; ``password`` opens an
    encrypted PDF; ``ocr`` and ``ocr_languages`` (Tesseract codes, "eng+fra") govern OCR of PDF
    pages without text; ``pages`` (1-based page numbers, PDFs only) parses a slice of a PDF, in
    which case a slice without text returns no blocks instead of raising EmptyDocumentError.

    ``max_pages`` (PDF pages) and ``max_unpacked_mb`` (what an Office file unpacks to) bound the
    work one file can cause, so a hostile file fails fast instead of holding a worker.

    Raises UnsupportedFormatError, EncryptedDocumentError, DamagedDocumentError,
    DocumentTooLargeError or EmptyDocumentError, each with a message meant for the person who
    uploaded the file.
    """
    return _parse(
        path,
        filename=filename,
        password=password,
        ocr=ocr,
        ocr_languages=ocr_languages,
        mime_type=mime_type,
        pages=pages,
        depth=0,
        limits=(max_pages, max_unpacked_mb),
    )


@dataclass(frozen=True)
class FileFacts:
    """What a file is, found before it is parsed: its type and, for a PDF, its pages."""

    mime_type: str
    #: pages of a PDF; None for other types
    page_count: int | None = None
    #: 1-based numbers of the PDF pages without a text layer (looked for only when asked)
    scan_pages: tuple[int, ...] = ()


def inspect_file(
    path: Path,
    *,
    filename: str | None = None,
    password: str | None = None,
    scans: bool = False,
    mime_type: str | None = None,
) -> FileFacts:
    """The type of the file at ``path``, with a PDF's page count and, with ``scans``, its pages that need OCR.

    ``mime_type`` (the type sniffed at upload) skips sniffing again.

    Reading a PDF's page tree may inflate its compressed object streams, and sniffing opens ZIP
    directories: like the parse, call it in a memory-limited child (``ingestion.sandbox.run_limited``).
    Raises the errors of :func:`sniff_mime` and, for a PDF, those of :func:`pdf_page_count`.
    """
    path = Path(path)
    mime = normalize_mime(mime_type) if mime_type else sniff_mime(path, filename)
    if mime != PDF:
        return FileFacts(mime_type=mime)
    count = pdf_page_count(path, password)
    return FileFacts(mime_type=mime, page_count=count, scan_pages=tuple(needs_ocr(path, password)) if scans else ())


def pdf_page_count(path: Path, password: str | None = None) -> int:
    """Number of pages of a PDF, to split a big one into page ranges across workers."""
    from ingestion.parsing import pdf

    return _guard(PDF, lambda: pdf.pdf_page_count(Path(path), password))


def needs_ocr(path: Path, password: str | None = None) -> list[int]:
    """1-based numbers of the PDF pages that have no text layer and would be OCR'd."""
    from ingestion.parsing import pdf

    return _guard(PDF, lambda: pdf.needs_ocr(Path(path), password))


def _parse(
    path: Path,
    *,
    filename: str | None,
    password: str | None,
    ocr: bool,
    ocr_languages: str,
    mime_type: str | None,
    pages: range | None,
    depth: int,
    limits: tuple[int, int],
) -> ParsedDocument:
    path = Path(path)
    if path.stat().st_size == 0:
        raise EmptyDocumentError("The file is empty")
    mime = normalize_mime(mime_type) if mime_type else sniff_mime(path, filename)
    if pages is not None and mime != PDF:
        raise ValueError(f"pages= applies to PDFs only, not to {SUPPORTED_TYPES[mime]}")
    _check_limits(path, mime, password, pages, *limits)

    def read() -> ParsedDocument:
        if mime == PDF:
            from ingestion.parsing.pdf import parse_pdf

            return parse_pdf(path, password=password, ocr=ocr, ocr_languages=ocr_languages, pages=pages)
        if mime == DOCX:
            from ingestion.parsing.office_docx import parse_docx

            return parse_docx(path)
        if mime == PPTX:
            from ingestion.parsing.office_pptx import parse_pptx

            return parse_pptx(path)
        if mime == XLSX:
            from ingestion.parsing.office_xlsx import parse_xlsx

            return parse_xlsx(path)
        if mime == CSV:
            from ingestion.parsing.csv_table import parse_csv

            return parse_csv(path, filename=filename)
        if mime == HTML:
            from ingestion.parsing.html_page import parse_html

            return parse_html(path)
        if mime == MARKDOWN:
            from ingestion.parsing.markdown_doc import parse_markdown

            return parse_markdown(path)
        if mime == EML:
            from ingestion.parsing.email_message import parse_email

            def parse_attachment(attachment: Path, name: str) -> ParsedDocument:
                return _parse(
                    attachment,
                    filename=name,
                    password=None,
                    ocr=ocr,
                    ocr_languages=ocr_languages,
                    mime_type=None,
                    pages=None,
                    depth=depth + 1,
                    limits=limits,
                )

            return parse_email(path, parse_attachment=parse_attachment if depth < MAX_ATTACHMENT_DEPTH else None)
        if mime == TEXT:
            from ingestion.parsing.plain_text import parse_text

            return parse_text(path)
        raise AssertionError(f"no parser for {mime}")  # SUPPORTED_TYPES and this list disagree

    parsed = _guard(mime, read)
    blocks = tuple(finish_blocks(parsed.blocks))
    if not blocks and pages is None:
        raise EmptyDocumentError(_EMPTY)
    return ParsedDocument(
        blocks=blocks,
        mime_type=mime,
        page_count=parsed.page_count,
        title=parsed.title,
        ocr_pages=parsed.ocr_pages,
        warnings=parsed.warnings,
    )


def _check_limits(
    path: Path, mime: str, password: str | None, pages: range | None, max_pages: int, max_unpacked_mb: int
) -> None:
    """Refuse files whose size once opened would hold a worker for long (zip bombs, endless PDFs)."""
    if mime in _ZIPPED:
        import zipfile

        def unpacked() -> int:
            with zipfile.ZipFile(path) as archive:
                return sum(info.file_size for info in archive.infolist())

        total = _guard(mime, unpacked)
        if total > max_unpacked_mb * 1024 * 1024:
            raise DocumentTooLargeError(
                f"The {SUPPORTED_TYPES[mime]} file unpacks to {total // (1024 * 1024)} MB, over the "
                f"{max_unpacked_mb} MB limit; it was not read"
            )
    elif mime == PDF and pages is None:
        from ingestion.parsing import pdf

        count = _guard(PDF, lambda: pdf.pdf_page_count(path, password))
        if count > max_pages:
            raise DocumentTooLargeError(f"The PDF has {count} pages, over the limit of {max_pages}; it was not read")


def _guard(mime: str, work: Callable[[], _T]) -> _T:
    """Run ``work``; any exception that is not already an IngestionError means a damaged file."""
    try:
        return work()
    except (IngestionError, MemoryError):
        raise
    except Exception as exc:
        # Celery's soft time limit is an Exception too: it must stay a timeout, not become "damaged"
        if type(exc).__name__ == "SoftTimeLimitExceeded":
            raise
        if type(exc).__name__ == "LimitReachedError":  # pypdf's own guard against endless page trees
            raise DocumentTooLargeError(
                f"The {SUPPORTED_TYPES[mime]} file exceeds a safety limit ({exc}); it was not read"
            ) from exc
        logger.info("parsing a %s failed: %r", mime, exc, exc_info=True)
        raise DamagedDocumentError(f"The {SUPPORTED_TYPES[mime]} file is damaged and could not be read") from exc
