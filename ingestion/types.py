"""Plain data passed between the ingestion stages."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Block:
    """A piece of text read from a document, in reading order.

    ``page`` is 1-based (page, slide or sheet number) when the format has pages, else None.
    ``headings`` is the heading path above the block, outermost first.
    ``kind`` is a hint for chunking: "paragraph", "heading", "table_row", "code", "list_item".
    """

    text: str
    page: int | None = None
    headings: tuple[str, ...] = ()
    kind: str = "paragraph"


@dataclass(frozen=True)
class ParsedDocument:
    """The result of parsing one file."""

    blocks: tuple[Block, ...]
    mime_type: str
    page_count: int | None = None
    title: str | None = None
    #: pages read with OCR, and pages that could not be read (damaged), for the status page
    ocr_pages: tuple[int, ...] = ()
    warnings: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class ChunkDraft:
    """A chunk ready to embed: text plus where it came from."""

    ordinal: int
    text: str
    page: int | None
    headings: tuple[str, ...]
    token_count: int

    @property
    def heading_path(self) -> str:
        return " > ".join(self.headings)
