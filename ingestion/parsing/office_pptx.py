"""PPTX: one page per slide, the slide title as heading, text frames, table rows and notes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ingestion.parsing.text import squash, useful_title
from ingestion.types import Block, ParsedDocument

MIME_TYPE = "application/vnd.openxmlformats-officedocument.presentationml.presentation"


def parse_pptx(path: Path) -> ParsedDocument:
    """Read each slide (page = slide number) into heading, text, table-row and notes blocks."""
    from pptx import Presentation

    presentation = Presentation(str(path))
    blocks: list[Block] = []
    first_title: str | None = None
    slide_count = 0
    for number, slide in enumerate(presentation.slides, start=1):
        slide_count = number
        title_shape = slide.shapes.title
        title = squash(title_shape.text_frame.text) if title_shape is not None else ""
        headings: tuple[str, ...] = (title,) if title else ()
        if title:
            first_title = first_title or title
            blocks.append(Block(text=title, page=number, headings=headings, kind="heading"))
        for shape in _reading_order(slide.shapes):
            if title_shape is not None and shape.shape_id == title_shape.shape_id:
                continue
            blocks.extend(_shape_blocks(shape, number, headings))
        if slide.has_notes_slide:
            notes_frame = slide.notes_slide.notes_text_frame
            notes = notes_frame.text.strip() if notes_frame is not None else ""
            if notes:
                blocks.append(Block(text=notes, page=number, headings=(*headings, "Notes")))
    return ParsedDocument(
        blocks=tuple(blocks),
        mime_type=MIME_TYPE,
        page_count=slide_count,
        title=useful_title(presentation.core_properties.title) or first_title,
    )


def _reading_order(shapes: Iterable[Any]) -> list[Any]:
    # shapes come in z-order; top-to-bottom, left-to-right is closer to how a slide is read
    return sorted(shapes, key=lambda shape: (shape.top or 0, shape.left or 0))


def _shape_blocks(shape: Any, page: int, headings: tuple[str, ...]) -> Iterator[Block]:
    from pptx.enum.shapes import MSO_SHAPE_TYPE, PP_PLACEHOLDER

    if shape.is_placeholder and shape.placeholder_format.type in (
        PP_PLACEHOLDER.DATE,
        PP_PLACEHOLDER.FOOTER,
        PP_PLACEHOLDER.SLIDE_NUMBER,
    ):
        return  # repeated on every slide, says nothing about this one
    if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
        for child in _reading_order(shape.shapes):
            yield from _shape_blocks(child, page, headings)
        return
    if getattr(shape, "has_table", False) and shape.has_table:
        for row in shape.table.rows:
            cells = [squash(cell.text) for cell in row.cells]
            if any(cells):
                yield Block(text=" | ".join(cells), page=page, headings=headings, kind="table_row")
        return
    if getattr(shape, "has_text_frame", False) and shape.has_text_frame:
        lines = [squash(paragraph.text) for paragraph in shape.text_frame.paragraphs]
        text = "\n".join(line for line in lines if line)
        if text:
            yield Block(text=text, page=page, headings=headings)
