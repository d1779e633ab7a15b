"""Plain text: paragraphs split on blank lines."""

from __future__ import annotations

from pathlib import Path

from ingestion.parsing.encoding import decode_bytes
from ingestion.parsing.text import clean_text, text_paragraphs
from ingestion.types import Block, ParsedDocument

MIME_TYPE = "text/plain"


def parse_text(path: Path) -> ParsedDocument:
    """Read a text file in any common encoding into paragraph blocks."""
    return parse_plain_text(decode_bytes(Path(path).read_bytes()))


def parse_plain_text(text: str) -> ParsedDocument:
    """Split already decoded text into paragraph blocks (e-mail bodies use this too)."""
    paragraphs = text_paragraphs(clean_text(text))
    return ParsedDocument(blocks=tuple(Block(text=p) for p in paragraphs), mime_type=MIME_TYPE)
