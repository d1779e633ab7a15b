"""HTML: readable text in blocks, h1-h6 as the heading path, tables row by row, pre as code."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ingestion.parsing.encoding import decode_bytes, html_declared_charset
from ingestion.parsing.text import HeadingPath, squash
from ingestion.types import Block, ParsedDocument

if TYPE_CHECKING:
    from bs4 import Tag

MIME_TYPE = "text/html"

_DROP = {
    "script",
    "style",
    "noscript",
    "template",
    "head",
    "svg",
    "canvas",
    "iframe",
    "object",
    "embed",
    "button",
    "select",
    "input",
    "textarea",
    "map",
}
_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_LAYOUT_MARKERS = ["table", "p", "div", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote"]
_BLOCKS = {
    "p",
    "div",
    "section",
    "article",
    "main",
    "header",
    "footer",
    "nav",
    "aside",
    "blockquote",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "table",
    "thead",
    "tbody",
    "tfoot",
    "caption",
    "figure",
    "figcaption",
    "form",
    "fieldset",
    "legend",
    "address",
    "details",
    "summary",
    "hr",
    "body",
    "html",
    "center",
    "menu",
    "td",
    "th",
}


def parse_html(path: Path) -> ParsedDocument:
    """Read an HTML file; the charset comes from its ``<meta>`` if any, else is detected."""
    data = Path(path).read_bytes()
    return parse_html_text(decode_bytes(data, html_declared_charset(data)))


def parse_html_text(markup: str) -> ParsedDocument:
    """Read HTML already decoded to str (e-mail bodies use this too)."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(markup, "lxml")
    title_tag = soup.find("title")
    title = squash(title_tag.get_text()) if title_tag is not None else ""
    walker = _Walker()
    walker.walk(soup)
    walker.flush()
    return ParsedDocument(blocks=tuple(walker.blocks), mime_type=MIME_TYPE, title=title or None)


class _Walker:
    """Walks the tree, gathering inline text until a block-level element closes the block."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self.headings = HeadingPath()
        self._buffer: list[str] = []
        self._list_depth = 0

    def walk(self, node: Tag) -> None:
        from bs4.element import NavigableString, PreformattedString, Tag

        for child in node.children:
            if isinstance(child, NavigableString):
                if not isinstance(child, PreformattedString):  # comments, CDATA, doctype
                    self._buffer.append(str(child))
                continue
            if not isinstance(child, Tag):
                continue
            name = (child.name or "").lower()
            if name in _DROP or child.has_attr("hidden") or child.get("aria-hidden") == "true":
                continue
            if name == "br":
                self._buffer.append("\n")
            elif name in _HEADINGS:
                self.flush()
                text = squash(child.get_text(" "))
                if text:
                    path = self.headings.push(int(name[1]), text)
                    self.blocks.append(Block(text=text, headings=path, kind="heading"))
            elif name == "pre":
                self.flush()
                code = child.get_text().strip("\n").rstrip()
                if code.strip():
                    self.blocks.append(Block(text=code, headings=self.headings.path, kind="code"))
            elif name == "tr" and child.find(_LAYOUT_MARKERS) is not None:
                # a layout table (old sites, most HTML e-mails): its cells hold the page itself
                self.flush()
                self.walk(child)
                self.flush()
            elif name == "tr":
                self.flush()
                cells = [squash(cell.get_text(" ")) for cell in child.find_all(["td", "th"], recursive=False)]
                if any(cells):
                    self.blocks.append(Block(text=" | ".join(cells), headings=self.headings.path, kind="table_row"))
            elif name == "li":
                self.flush()
                self._list_depth += 1
                self.walk(child)
                self.flush()
                self._list_depth -= 1
            elif name in _BLOCKS:
                self.flush()
                self.walk(child)
                self.flush()
            else:
                self.walk(child)

    def flush(self) -> None:
        """Emit the gathered inline text as one block, if there is any."""
        raw = "".join(self._buffer)
        self._buffer.clear()
        text = "\n".join(squash(line) for line in raw.split("\n") if line.strip())
        if text:
            kind = "list_item" if self._list_depth else "paragraph"
            self.blocks.append(Block(text=text, headings=self.headings.path, kind=kind))
