"""Small text helpers shared by the format parsers (no third-party imports)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator

from ingestion.types import Block

#: blocks longer than this are split at line, sentence or word boundaries, so that one huge
#: paragraph (a log file, a page without blank lines) never becomes one huge chunk
MAX_BLOCK_CHARS = 8000

_LIGATURES = str.maketrans(
    {
        "\ufb00": "ff",
        "\ufb01": "fi",
        "\ufb02": "fl",
        "\ufb03": "ffi",
        "\ufb04": "ffl",
        "\ufb05": "st",
        "\ufb06": "st",
    }
)
# C0/C1 controls (tab and newline kept), soft hyphens and zero-width marks: invisible, yet they
# break JSON, databases and word matching
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u200b\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")
_HYPHEN_BREAK = re.compile(r"(?<=[^\W\d_])[-\u00ad]$")


def clean_text(text: str) -> str:
    """Normalise newlines, NFC, ligatures and control characters; keep indentation."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = unicodedata.normalize("NFC", text).translate(_LIGATURES)
    return _CONTROL.sub("", text)


def squash(text: str) -> str:
    """Collapse every run of whitespace, newlines included, into one space."""
    return " ".join(text.split())


def join_lines(lines: Iterable[str]) -> str:
    """Join wrapped lines into one paragraph, undoing end-of-line hyphenation.

    "im-" + "portant" gives "important"; "Nord-" + "Süd" keeps its hyphen ("Nord-Süd").
    """
    out = ""
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if not out:
            out = line
        elif _HYPHEN_BREAK.search(out) and line[0].islower():
            out = out[:-1] + line
        elif _HYPHEN_BREAK.search(out):
            out = (out[:-1] if out.endswith("\u00ad") else out) + line
        else:
            out = f"{out} {line}"
    return out


def text_paragraphs(text: str) -> list[str]:
    """Split plain text on blank lines; each paragraph keeps its own line breaks."""
    paragraphs = re.split(r"\n[ \t]*\n", text)
    return [p.strip("\n").rstrip() for p in paragraphs if p.strip()]


def layout_paragraphs(text: str) -> list[str]:
    """Rebuild paragraphs from line-broken page text (PDF extraction, OCR output).

    A blank line ends a paragraph; so does a short line that ends a sentence (the last line of
    a paragraph is usually shorter than the column). Lines are joined and de-hyphenated.
    """
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    widths = sorted(len(line) for line in lines if line)
    if not widths:
        return []
    column = widths[(len(widths) * 3) // 4]
    paragraphs: list[str] = []
    current: list[str] = []

    def flush() -> None:
        if current:
            paragraph = join_lines(current)
            if paragraph:
                paragraphs.append(paragraph)
            current.clear()

    for line in lines:
        if not line:
            flush()
            continue
        current.append(line)
        if line[-1] in ".!?:…" and len(line) < 0.7 * column:
            flush()
    flush()
    return paragraphs


def split_long(text: str, limit: int = MAX_BLOCK_CHARS) -> list[str]:
    """Cut ``text`` into pieces of at most ``limit`` characters at the gentlest boundary found."""
    if len(text) <= limit:
        return [text]
    pieces: list[str] = []
    rest = text
    while len(rest) > limit:
        window = rest[:limit]
        cut = window.rfind("\n", limit // 2)
        if cut < 0:
            ends = [m.end() for m in _SENTENCE_END.finditer(window) if m.end() > limit // 2]
            cut = ends[-1] if ends else window.rfind(" ", limit // 2)
        if cut <= 0:
            cut = limit
        pieces.append(rest[:cut].strip())
        rest = rest[cut:].lstrip()
    if rest.strip():
        pieces.append(rest.strip())
    return [piece for piece in pieces if piece]


def finish_blocks(blocks: Iterable[Block]) -> Iterator[Block]:
    """Clean every block, drop empty ones and split the ones that are too long."""
    for block in blocks:
        text = clean_text(block.text)
        if block.kind != "code":
            text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n"))
        text = text.strip("\n")
        if not text.strip():
            continue
        headings = tuple(h for h in (squash(clean_text(h)) for h in block.headings) if h)
        for piece in split_long(text):
            yield Block(text=piece, page=block.page, headings=headings, kind=block.kind)


_FILE_NAME = re.compile(r".+\.(pdf|docx?|pptx?|xlsx?|txt|rtf|odt|html?|jpe?g|png|tiff?|bmp|gif|indd|qxd)", re.I)
_PLACEHOLDER_TITLES = {
    "untitled",
    "untitled document",
    "document",
    "presentation",
    "powerpoint presentation",
    "slide 1",
    "title",
    "sheet1",
    "book1",
    "microsoft word document",
}


def useful_title(title: str | None) -> str | None:
    """A metadata title worth showing, or None for empty, default ("PowerPoint Presentation")
    and file-name titles ("Binder1.pdf", "Microsoft Word - report.docx")."""
    if not title:
        return None
    title = squash(clean_text(str(title)))
    title = re.sub(r"^microsoft (word|powerpoint|excel) - ", "", title, flags=re.I)
    if not title or title.lower() in _PLACEHOLDER_TITLES or _FILE_NAME.fullmatch(title):
        return None
    return title


class HeadingPath:
    """The stack of open headings; ``push`` closes the headings at the same or a deeper level."""

    def __init__(self) -> None:
        self._stack: list[tuple[int, str]] = []

    def push(self, level: int, title: str) -> tuple[str, ...]:
        """Open a heading of ``level`` (smaller is outer) and return the new path."""
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        self._stack.append((level, title))
        return self.path

    @property
    def path(self) -> tuple[str, ...]:
        """The titles of the open headings, outermost first."""
        return tuple(title for _, title in self._stack)
