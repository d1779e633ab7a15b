"""PDF: text per page with pdfium (pypdf where pdfium reads none), outline titles as headings, Tesseract OCR for pages
without text."""

from __future__ import annotations

import logging
import shutil
from bisect import bisect_right
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ingestion.errors import (
    DamagedDocumentError,
    DocumentTooLargeError,
    EmptyDocumentError,
    EncryptedDocumentError,
)
from ingestion.parsing.text import layout_paragraphs, useful_title
from ingestion.types import Block, ParsedDocument

if TYPE_CHECKING:
    from pypdf import PdfReader

logger = logging.getLogger(__name__)

MIME_TYPE = "application/pdf"
#: a page with fewer characters than this is taken as a scan and OCR'd
OCR_MIN_CHARS = 20
#: render scale for OCR: 2 × 72 dpi = 144 dpi, enough for body text and twice as fast as 300 dpi
OCR_SCALE = 2.0
OCR_TIMEOUT_S = 120

DAMAGED = "The PDF is damaged and could not be read"
ENCRYPTED = "The PDF is password-protected"


def parse_pdf(
    path: Path,
    *,
    password: str | None = None,
    ocr: bool = True,
    ocr_languages: str = "eng+fra",
    pages: range | None = None,
) -> ParsedDocument:
    """Read a PDF into blocks, one or more paragraphs per page, pages 1-based.

    ``pages`` (1-based page numbers, e.g. ``range(1, 51)``) limits the work to a slice of the
    document; numbers outside the document are ignored.
    """
    reader = open_pdf(path, password)
    page_count = _page_count(reader)
    wanted = [n for n in (pages if pages is not None else range(1, page_count + 1)) if 1 <= n <= page_count]
    outline = _Outline(reader)

    # pdfium reads the text, ten times faster than pypdf's pure-Python extraction; pypdf reads the pages pdfium
    # cannot (or finds empty), and a page that neither reads is reported and skipped.
    texts = _pdfium_texts(path, password, wanted) or {}
    unreadable: list[int] = []
    for number in wanted:
        if len(texts.get(number, "").strip()) >= OCR_MIN_CHARS:
            continue
        try:
            text = reader.pages[number - 1].extract_text() or ""
        except MemoryError:  # out of memory is not a broken page: the memory limit reports it
            raise
        except Exception as exc:  # one broken page must not lose the others
            logger.info("pdf page %s of %s unreadable: %r", number, path, exc)
            if number not in texts:
                unreadable.append(number)
            continue
        if len(text.strip()) > len(texts.get(number, "").strip()):
            texts[number] = text
    if wanted and len(unreadable) == len(wanted):
        raise DamagedDocumentError(DAMAGED)

    warnings: list[str] = []
    if unreadable:
        warnings.append(f"{_pages(unreadable)} could not be read and {_were(unreadable)} skipped.")

    ocr_pages: list[int] = []
    scans = [n for n, text in texts.items() if len(text.strip()) < OCR_MIN_CHARS]
    if scans:
        languages = _ocr_languages(ocr_languages) if ocr else None
        if languages:
            ocr_texts, failed = _ocr(path, scans, password, languages)
            for number, text in ocr_texts.items():
                if len(text.strip()) > len(texts[number].strip()):
                    texts[number] = text
                    ocr_pages.append(number)
            if failed:
                warnings.append(f"OCR failed on {_pages(failed).lower()}.")
        elif not any(text.strip() for text in texts.values()) and pages is None:
            raise EmptyDocumentError(
                "No extractable text: install Tesseract to read scanned PDFs"
                if ocr
                else "No extractable text: the PDF has no text layer and OCR is turned off"
            )
        else:
            reason = "OCR is turned off" if not ocr else "Tesseract is not installed"
            warnings.append(
                f"{_pages(scans)} {'has' if len(scans) == 1 else 'have'} (almost) no text "
                f"and {_were(scans)} not OCR'd ({reason})."
            )

    blocks: list[Block] = []
    for number in sorted(texts):
        headings = outline.path_at(number)
        blocks.extend(
            Block(text=paragraph, page=number, headings=headings) for paragraph in layout_paragraphs(texts[number])
        )
    return ParsedDocument(
        blocks=tuple(blocks),
        mime_type=MIME_TYPE,
        page_count=page_count,
        title=_title(reader),
        ocr_pages=tuple(sorted(ocr_pages)),
        warnings=tuple(warnings),
    )


def pdf_page_count(path: Path, password: str | None = None) -> int:
    """Number of pages of a PDF (raises EncryptedDocumentError or DamagedDocumentError)."""
    return _page_count(open_pdf(path, password))


def needs_ocr(path: Path, password: str | None = None) -> list[int]:
    """The 1-based numbers of the pages whose text layer is (nearly) empty.

    Read with pdfium, as the parse reads them (pypdf only where pdfium cannot open the file).
    """
    texts = _pdfium_texts(path, password)
    if texts is None:  # pdfium cannot open it: pypdf's reading decides
        reader = open_pdf(path, password)
        texts = {}
        for number in range(1, _page_count(reader) + 1):
            try:
                texts[number] = reader.pages[number - 1].extract_text() or ""
            except MemoryError:
                raise
            except Exception:  # an unreadable page is reported by parse_pdf instead
                continue
    return [number for number, text in texts.items() if len(text.strip()) < OCR_MIN_CHARS]


def _pdfium_texts(path: Path, password: str | None, numbers: list[int] | None = None) -> dict[int, str] | None:
    """pdfium's text of the pages ``numbers`` (all without it) that it reads; None when it cannot open the file."""
    document = _pdfium_document(path, password)
    if document is None:
        return None
    texts: dict[int, str] = {}
    try:
        for number in numbers if numbers is not None else range(1, len(document) + 1):
            try:
                texts[number] = _pdfium_text(document, number)
            except MemoryError:
                raise
            except Exception as exc:  # an unreadable page is reported by parse_pdf instead
                logger.info("pdfium cannot read page %s of %s: %r", number, path, exc)
    finally:
        document.close()
    return texts


def _pdfium_text(document: Any, number: int) -> str:
    page = document[number - 1]
    try:
        textpage = page.get_textpage()
        try:
            text = str(textpage.get_text_range()).replace("\r\n", "\n").replace("\r", "\n")
            # pdfium joins a word hyphenated at a line's end and marks the join with U+FFFE
            return text.replace("\ufffe", "")
        finally:
            textpage.close()
    finally:
        page.close()


def _pdfium_document(path: Path, password: str | None) -> Any:
    """The PDF opened with pdfium (the empty password first, as pypdf tries it), or None."""
    import pypdfium2

    try:
        return pypdfium2.PdfDocument(str(path))
    except pypdfium2.PdfiumError:
        try:
            return pypdfium2.PdfDocument(str(path), password=password)
        except pypdfium2.PdfiumError as exc:
            logger.warning("pdfium cannot open %s: %r", path, exc)
            return None


def open_pdf(path: Path, password: str | None = None) -> PdfReader:
    """Open and, if needed, decrypt a PDF: the empty password first, then ``password``."""
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, PdfReadError

    try:
        reader = PdfReader(str(path), strict=False)
    except (PdfReadError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise DamagedDocumentError(DAMAGED) from exc
    if not reader.is_encrypted:
        return reader
    try:
        if _decrypt(reader, ""):
            return reader
        if password and _decrypt(reader, password):
            return reader
    except DependencyError as exc:
        raise EncryptedDocumentError(
            f"{ENCRYPTED} with AES encryption, which needs the 'cryptography' package"
        ) from exc
    if password:
        raise EncryptedDocumentError(f"{ENCRYPTED} and the password given does not open it")
    raise EncryptedDocumentError(ENCRYPTED)


def _decrypt(reader: PdfReader, password: str) -> bool:
    from pypdf import PasswordType
    from pypdf.errors import PdfReadError

    try:
        return reader.decrypt(password) != PasswordType.NOT_DECRYPTED
    except PdfReadError:
        return False


def _page_count(reader: PdfReader) -> int:
    from pypdf.errors import LimitReachedError

    try:
        return len(reader.pages)
    except LimitReachedError as exc:  # pypdf's own guard against endless page trees
        raise DocumentTooLargeError(f"The PDF exceeds a safety limit ({exc}); it was not read") from exc
    except MemoryError:  # a PDF whose streams inflate past the memory limit is not damaged: the limit says so
        raise
    except Exception as exc:  # pypdf raises many kinds on a broken page tree
        raise DamagedDocumentError(DAMAGED) from exc


def _title(reader: PdfReader) -> str | None:
    try:
        metadata = reader.metadata
        title = metadata.title if metadata is not None else None
    except Exception:  # the title is optional; bad metadata must not fail the file
        return None
    return useful_title(title)


class _Outline:
    """Heading paths from the PDF outline (bookmarks), at page granularity.

    Entries are sorted by the page they point to; the path of page ``n`` is the stack of
    entries opened on or before page ``n``. A heading that starts mid-page thus also covers
    the top of that page: good enough for retrieval, and robust to any outline.
    """

    def __init__(self, reader: PdfReader) -> None:
        entries: list[tuple[int, int, str]] = []  # (page, depth, title)
        try:
            self._walk(reader, reader.outline, 0, entries)
        except Exception as exc:  # a broken outline only loses the headings
            logger.info("pdf outline unreadable: %r", exc)
        entries.sort(key=lambda entry: entry[0])
        self._pages: list[int] = []
        self._paths: list[tuple[str, ...]] = []
        stack: list[str] = []
        for page, depth, title in entries:
            stack = [*stack[:depth], title]
            if self._pages and self._pages[-1] == page:
                self._paths[-1] = tuple(stack)
            else:
                self._pages.append(page)
                self._paths.append(tuple(stack))

    def _walk(self, reader: PdfReader, items: Any, depth: int, out: list[tuple[int, int, str]]) -> None:
        for item in items:
            if isinstance(item, list):
                self._walk(reader, item, depth + 1, out)
                continue
            title = " ".join(str(getattr(item, "title", "") or "").split())
            try:
                index = reader.get_destination_page_number(item)
            except Exception:  # a dangling destination only loses that heading
                index = None
            if title and index is not None and index >= 0:
                out.append((index + 1, depth, title))

    def path_at(self, page: int) -> tuple[str, ...]:
        at = bisect_right(self._pages, page)
        return self._paths[at - 1] if at else ()


def tesseract_available() -> bool:
    """Whether the ``tesseract`` program is on the PATH."""
    return shutil.which("tesseract") is not None


@lru_cache(maxsize=8)
def _ocr_languages(requested: str) -> str | None:
    if not tesseract_available():
        return None
    try:
        import pytesseract

        installed = set(pytesseract.get_languages(config=""))
    except Exception as exc:  # a broken Tesseract install means no OCR, not a failure
        logger.warning("tesseract unusable: %r", exc)
        return None
    wanted = [lang for lang in requested.split("+") if lang in installed]
    if not wanted:
        logger.warning("none of the OCR languages %r is installed (have %s)", requested, sorted(installed))
        return None
    return "+".join(wanted)


def _ocr(path: Path, numbers: list[int], password: str | None, languages: str) -> tuple[dict[int, str], list[int]]:
    import pytesseract

    texts: dict[int, str] = {}
    failed: list[int] = []
    document = _pdfium_document(path, password)
    if document is None:
        return {}, list(numbers)
    try:
        for number in numbers:
            try:
                page = document[number - 1]
                try:
                    image = page.render(scale=OCR_SCALE).to_pil()
                finally:
                    page.close()
                texts[number] = pytesseract.image_to_string(image, lang=languages, timeout=OCR_TIMEOUT_S)
            except Exception as exc:  # one page failing OCR must not lose the others
                logger.warning("OCR of page %s of %s failed: %r", number, path, exc)
                failed.append(number)
    finally:
        document.close()
    return texts, failed


def _pages(numbers: list[int]) -> str:
    return f"Page {numbers[0]}" if len(numbers) == 1 else f"Pages {_ranges(numbers)}"


def _were(numbers: list[int]) -> str:
    return "was" if len(numbers) == 1 else "were"


def _ranges(numbers: list[int]) -> str:
    """Page numbers written compactly: [1, 3, 4, 5, 9] gives "1, 3-5, 9"."""
    parts: list[str] = []
    start = previous = None
    for n in sorted(numbers):
        if start is None:
            start = previous = n
        elif previous is not None and n == previous + 1:
            previous = n
        else:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
            start = previous = n
    if start is not None:
        parts.append(str(start) if start == previous else f"{start}-{previous}")
    return ", ".join(parts)
