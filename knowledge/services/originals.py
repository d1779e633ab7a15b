"""A cited passage in its original: the PDF page drawn with the passage marked, or the text around it.

PDF pages are rendered here with pdfium (no browser viewer, nothing fetched from elsewhere). A passage is
found on the page by its letters and digits alone, so the differences between the stored chunk text and the
page's own text layer (spacing, line breaks, hyphenation, ligatures, punctuation) do not matter.
"""

from __future__ import annotations

import io
import re
import threading
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import TYPE_CHECKING, Literal

from knowledge.errors import NotFoundError
from knowledge.selectors import document_chunks

if TYPE_CHECKING:
    import pypdfium2

    from knowledge.models import Chunk, Document

PDF = "application/pdf"
#: pixels per PDF point (72 per inch): 108 dpi, sharp enough to read a page on a screen
RENDER_SCALE = 1.5
#: the longest side of a rendered page, in pixels (a poster is drawn smaller rather than huge)
MAX_RENDER_PIXELS = 2000
#: the highlight drawn over a passage: a translucent yellow (RGBA)
HIGHLIGHT = (255, 214, 0, 96)
#: chunks shown before and after the cited one when a format has no pages to draw
CONTEXT_CHUNKS = 2
#: a run of matching letters shorter than this is taken for a coincidence, not for the passage
MIN_RUN = 12
#: sentences of a passage searched one by one when the passage is not found whole
MAX_SENTENCES = 40

# pdfium may not be called from two threads at once, not even for two documents
_PDFIUM_LOCK = threading.Lock()
_SENTENCE_END = re.compile(r"(?<=[.!?…:;])\s+|\s*\n\s*")

Reason = Literal["missing", "encrypted", "damaged", "page", "not_pdf"]


class OriginalUnavailableError(NotFoundError):
    """The original cannot be shown: its file is missing, damaged or locked, or the page does not exist."""

    code = "original_unavailable"

    def __init__(self, message: str, *, reason: Reason) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ContextPiece:
    """A stretch of a document's text around a cited passage; ``marked`` for the passage itself."""

    text: str
    marked: bool
    page: int | None
    heading: str


def document_is_pdf(*, document: Document) -> bool:
    """Whether the original is drawn as PDF pages (the type was sniffed at upload and at ingestion)."""
    return str(document.mime_type) == PDF


def pdf_page_count(*, document: Document) -> int:
    """The number of pages of the document's PDF, opening it (``OriginalUnavailableError`` when it cannot be)."""
    with _opened_pdf(document) as pdf:
        return len(pdf)


def pdf_page_png(*, document: Document, page: int, passage: str = "") -> bytes:
    """Page ``page`` (1-based) of the document's PDF as a PNG, with ``passage`` marked where the page has it.

    The passage is looked for whole first; when it is not on the page whole (it runs onto the next page, or
    the text layers differ), each of its sentences is, then the longest run of each that the page has.
    A passage the page does not have leaves the page unmarked.
    """
    from PIL import Image, ImageDraw

    with _opened_pdf(document) as pdf:
        if not 1 <= page <= len(pdf):
            raise OriginalUnavailableError(f"The document has no page {page}.", reason="page")
        pdf_page = pdf[page - 1]
        try:
            width, height = pdf_page.get_size()
            scale = min(RENDER_SCALE, MAX_RENDER_PIXELS / max(width, height, 1.0))
            try:
                bitmap = pdf_page.render(scale=scale)
                image = bitmap.to_pil().convert("RGB")
            except Exception as exc:  # pdfium's errors and a page too broken to draw
                raise OriginalUnavailableError("The page cannot be drawn.", reason="damaged") from exc
            boxes = _passage_boxes(pdf_page, passage, image.width, image.height) if passage.strip() else []
        finally:
            pdf_page.close()
    if boxes:
        overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(overlay)
        for box in boxes:
            draw.rectangle(box, fill=HIGHLIGHT)
        image = Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB")
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()


def chunk_context(*, document: Document, chunk: Chunk | None, around: int = CONTEXT_CHUNKS) -> list[ContextPiece]:
    """The cited chunk (marked) between the chunks around it; the document's first chunks without one.

    Consecutive chunks repeat a little text (their overlap): it is shown once, and the cited chunk whole.
    """
    chunks = document_chunks(document=document)
    if chunk is None:
        rows = list(chunks[: 2 * around + 1])
    else:
        rows = list(chunks.filter(ordinal__gte=chunk.ordinal - around, ordinal__lte=chunk.ordinal + around))
    pieces: list[ContextPiece] = []
    for index, row in enumerate(rows):
        text = row.text
        marked = chunk is not None and row.pk == chunk.pk
        if chunk is not None and not marked:
            if row.ordinal < chunk.ordinal and index + 1 < len(rows):
                text = text[: len(text) - _overlap(text, rows[index + 1].text)]
            elif row.ordinal > chunk.ordinal and index > 0:
                text = text[_overlap(rows[index - 1].text, text) :]
        elif chunk is None and index > 0:
            text = text[_overlap(rows[index - 1].text, text) :]
        if text.strip():
            pieces.append(ContextPiece(text=text.strip(), marked=marked, page=row.page, heading=row.heading))
    return pieces


def _overlap(before: str, after: str) -> int:
    """Length of the longest end of ``before`` that ``after`` starts with."""
    for size in range(min(len(before), len(after)), 0, -1):
        if before.endswith(after[:size]):
            return size
    return 0


@contextmanager
def _opened_pdf(document: Document) -> Iterator[pypdfium2.PdfDocument]:
    import pypdfium2

    with _PDFIUM_LOCK:
        if not document.file:
            raise OriginalUnavailableError("The document has no file.", reason="missing")
        try:
            handle = document.file.open("rb")
        except OSError as exc:
            raise OriginalUnavailableError("The document's file is missing from storage.", reason="missing") from exc
        try:
            try:
                pdf = pypdfium2.PdfDocument(handle)
            except pypdfium2.PdfiumError as exc:
                if getattr(exc, "err_code", None) == pypdfium2.raw.FPDF_ERR_PASSWORD:
                    raise OriginalUnavailableError("The PDF is password-protected.", reason="encrypted") from exc
                raise OriginalUnavailableError("The PDF is damaged and cannot be drawn.", reason="damaged") from exc
            try:
                yield pdf
            finally:
                pdf.close()
        finally:
            handle.close()


# --- finding a passage on a page -----------------------------------------------------------------


def _fold(text: str) -> str:
    """What is compared of a text: its letters and digits, ligatures split, case folded."""
    return "".join(c for c in unicodedata.normalize("NFKC", text).casefold() if c.isalnum())


def _page_letters(textpage: pypdfium2.PdfTextPage) -> tuple[str, list[int]]:
    """The page's folded letters, and for each the index of the page character it comes from."""
    import pypdfium2

    letters: list[str] = []
    owners: list[int] = []
    for index in range(textpage.count_chars()):
        code = pypdfium2.raw.FPDFText_GetUnicode(textpage, index)
        if not code or code > 0x10FFFF:
            continue
        folded = _fold(chr(code))
        letters.append(folded)
        owners.extend([index] * len(folded))
    return "".join(letters), owners


def _matched_runs(page: str, passage: str) -> list[tuple[int, int]]:
    """Ranges [start, end) of ``page`` (folded letters) that show ``passage``: whole, else sentence by sentence."""
    whole = _fold(passage)
    if whole:
        start = page.find(whole)
        if start >= 0:
            return [(start, start + len(whole))]
    runs: list[tuple[int, int]] = []
    after = 0  # sentences are looked for in reading order first
    for sentence in [s for s in _SENTENCE_END.split(passage) if s.strip()][:MAX_SENTENCES]:
        needle = _fold(sentence)
        if len(needle) < MIN_RUN:
            continue
        start = page.find(needle, after)
        if start < 0:
            start = page.find(needle)
        if start >= 0:
            runs.append((start, start + len(needle)))
            after = start + len(needle)
            continue
        match = SequenceMatcher(None, page, needle, autojunk=False).find_longest_match(0, len(page), 0, len(needle))
        if match.size >= MIN_RUN:
            runs.append((match.a, match.a + match.size))
    return runs


def _passage_boxes(
    pdf_page: pypdfium2.PdfPage, passage: str, width: int, height: int
) -> list[tuple[int, int, int, int]]:
    """Pixel boxes (left, top, right, bottom) of the passage's lines on the page drawn ``width`` × ``height``."""
    textpage = pdf_page.get_textpage()
    try:
        page_letters, owners = _page_letters(textpage)
        boxes: list[tuple[int, int, int, int]] = []
        for start, end in _matched_runs(page_letters, passage):
            first, last = owners[start], owners[end - 1]
            for rect in range(textpage.count_rects(first, last - first + 1)):
                left, bottom, right, top = textpage.get_rect(rect)
                x0, y0 = _to_device(pdf_page, width, height, left, top)
                x1, y1 = _to_device(pdf_page, width, height, right, bottom)
                boxes.append((min(x0, x1) - 1, min(y0, y1) - 1, max(x0, x1) + 1, max(y0, y1) + 1))
        return boxes
    finally:
        textpage.close()


def _to_device(pdf_page: pypdfium2.PdfPage, width: int, height: int, x: float, y: float) -> tuple[int, int]:
    """A point of the page (PDF units) on the drawn image: pdfium does the sums, page rotation included."""
    import ctypes

    import pypdfium2

    device_x, device_y = ctypes.c_int(), ctypes.c_int()
    pypdfium2.raw.FPDF_PageToDevice(
        pdf_page, 0, 0, width, height, 0, x, y, ctypes.byref(device_x), ctypes.byref(device_y)
    )
    return device_x.value, device_y.value
