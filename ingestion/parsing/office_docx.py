"""DOCX: body paragraphs and tables in document order, Word heading styles as the heading path.

Named ``office_docx`` so that it never shadows the ``docx`` package (python-docx).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ingestion.parsing.text import HeadingPath, squash, useful_title
from ingestion.types import Block, ParsedDocument

if TYPE_CHECKING:
    from docx.table import Table, _Cell
    from docx.text.paragraph import Paragraph

MIME_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
# English style names, plus the names Word gives its built-in heading styles in a few locales
_HEADING_STYLE = re.compile(r"^(heading|titre|überschrift|titolo|título|kop)\s*(\d)$", re.IGNORECASE)


def parse_docx(path: Path) -> ParsedDocument:
    """Read the body of a Word document into heading, paragraph, list and table-row blocks."""
    import docx
    from docx.table import Table

    document = docx.Document(str(path))
    headings = HeadingPath()
    blocks: list[Block] = []
    first_title: str | None = None
    for item in _body_items(document.element.body, document._body):
        if isinstance(item, Table):
            blocks.extend(Block(text=row, headings=headings.path, kind="table_row") for row in _table_rows(item))
            continue
        text = item.text.strip()
        if not text:
            continue
        level = _heading_level(item)
        if level is not None:
            title = squash(text)
            if level == 0 and first_title is None:
                first_title = title
            blocks.append(Block(text=title, headings=headings.push(level, title), kind="heading"))
        else:
            kind = "list_item" if _is_list_item(item) else "paragraph"
            blocks.append(Block(text=text, headings=headings.path, kind=kind))
    return ParsedDocument(
        blocks=tuple(blocks), mime_type=MIME_TYPE, title=useful_title(document.core_properties.title) or first_title
    )


def _body_items(element: Any, parent: Any) -> Iterator[Paragraph | Table]:
    """Paragraphs and tables in order, looking inside content controls (``w:sdt``) too."""
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    for child in element.iterchildren():
        if child.tag == f"{_W}p":
            yield Paragraph(child, parent)
        elif child.tag == f"{_W}tbl":
            yield Table(child, parent)
        elif child.tag == f"{_W}sdt":
            content = child.find(f"{_W}sdtContent")
            if content is not None:
                yield from _body_items(content, parent)


def _heading_level(paragraph: Paragraph) -> int | None:
    """0 for Title, 1-9 for Heading 1-9 (by style name or outline level), else None."""
    style = paragraph.style
    name = (style.name or "") if style is not None else ""
    if name.lower() in ("title", "titre"):
        return 0
    match = _HEADING_STYLE.match(name.strip())
    if match:
        return int(match.group(2))
    for element in (paragraph._p, style.element if style is not None else None):
        if element is None:
            continue
        levels = element.xpath("./w:pPr/w:outlineLvl/@w:val")
        if levels and levels[0].isdigit() and int(levels[0]) < 9:
            return int(levels[0]) + 1
    return None


def _is_list_item(paragraph: Paragraph) -> bool:
    if paragraph._p.xpath("./w:pPr/w:numPr"):
        return True
    style = paragraph.style
    return style is not None and (style.name or "").lower().startswith("list")


def _table_rows(table: Table) -> Iterator[str]:
    for row in table.rows:
        cells: list[str] = []
        seen: list[Any] = []
        for cell in row.cells:
            # a merged cell is returned once per grid column it spans: keep it once
            if any(cell._tc is element for element in seen):
                continue
            seen.append(cell._tc)
            cells.append(_cell_text(cell))
        if any(cells):
            yield " | ".join(cells)


def _cell_text(cell: _Cell) -> str:
    from docx.table import Table

    parts: list[str] = []
    for item in _body_items(cell._tc, cell):
        if isinstance(item, Table):
            parts.append("; ".join(_table_rows(item)))
        else:
            parts.append(item.text)
    return squash(" ".join(parts))
