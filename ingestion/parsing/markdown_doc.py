"""Markdown: markdown-it tokens; headings build the path, code fences stay whole, tables row by row."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ingestion.parsing.encoding import decode_bytes
from ingestion.parsing.text import HeadingPath, squash
from ingestion.types import Block, ParsedDocument

if TYPE_CHECKING:
    from markdown_it.token import Token

MIME_TYPE = "text/markdown"


def parse_markdown(path: Path) -> ParsedDocument:
    """Read a Markdown file (CommonMark plus tables) into heading, paragraph, list, code and table-row blocks."""
    from markdown_it import MarkdownIt

    text = decode_bytes(Path(path).read_bytes())
    tokens = MarkdownIt("commonmark", {"html": True}).enable("table").parse(text)
    headings = HeadingPath()
    blocks: list[Block] = []
    first_title: str | None = None
    list_depth = 0
    row: list[str] | None = None
    pending_heading: int | None = None

    for token in tokens:
        kind = token.type
        if kind in ("bullet_list_open", "ordered_list_open"):
            list_depth += 1
        elif kind in ("bullet_list_close", "ordered_list_close"):
            list_depth -= 1
        elif kind == "heading_open":
            pending_heading = int(token.tag[1])
        elif kind == "tr_open":
            row = []
        elif kind == "tr_close" and row is not None:
            if any(row):
                blocks.append(Block(text=" | ".join(row), headings=headings.path, kind="table_row"))
            row = None
        elif kind == "inline":
            content = _inline_text(token)
            if row is not None:
                row.append(squash(content))
            elif pending_heading is not None:
                title = squash(content)
                if title:
                    first_title = first_title or title
                    blocks.append(Block(text=title, headings=headings.push(pending_heading, title), kind="heading"))
                pending_heading = None
            elif content.strip():
                blocks.append(
                    Block(text=content.strip(), headings=headings.path, kind="list_item" if list_depth else "paragraph")
                )
        elif kind in ("fence", "code_block"):
            code = token.content.strip("\n").rstrip()
            if code.strip():
                blocks.append(Block(text=code, headings=headings.path, kind="code"))
        elif kind == "html_block":
            html_text = _html_text(token.content)
            if html_text:
                blocks.append(Block(text=html_text, headings=headings.path))
    return ParsedDocument(blocks=tuple(blocks), mime_type=MIME_TYPE, title=first_title)


def _inline_text(token: Token) -> str:
    """Plain text of an inline token: link and emphasis marks dropped, image alt text kept."""
    parts: list[str] = []
    for child in token.children or ():
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type == "softbreak":
            parts.append(" ")
        elif child.type == "hardbreak":
            parts.append("\n")
        elif child.type == "image" and not child.content.startswith(("http://", "https://")):
            parts.append(child.content)  # alt text; badges use their URL as alt text, which says nothing
        elif child.type == "html_inline" and child.content.lower().startswith("<br"):
            parts.append("\n")
    return "".join(parts)


def _html_text(markup: str) -> str:
    from bs4 import BeautifulSoup

    return squash(BeautifulSoup(markup, "lxml").get_text(" "))
