"""XLSX: each worksheet is a page (1-based sheet index) headed by its name; one block per row."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from ingestion.parsing.text import squash, useful_title
from ingestion.types import Block, ParsedDocument

MIME_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def parse_xlsx(path: Path) -> ParsedDocument:
    """Read cell values (not formulas) of every worksheet, row by row, skipping empty cells and rows."""
    from openpyxl import load_workbook

    workbook = load_workbook(str(path), read_only=True, data_only=True)
    try:
        blocks: list[Block] = []
        sheets = workbook.worksheets
        for number, sheet in enumerate(sheets, start=1):
            name = squash(sheet.title)
            headings = (name,) if name else ()
            if name:
                blocks.append(Block(text=name, page=number, headings=headings, kind="heading"))
            for row in sheet.iter_rows(values_only=True):
                # merged and layout cells leave many empty columns; they carry no meaning in text
                cells = [text for text in (_cell_text(value) for value in row) if text]
                if cells:
                    blocks.append(Block(text=" | ".join(cells), page=number, headings=headings, kind="table_row"))
        title = useful_title(workbook.properties.title)
        return ParsedDocument(blocks=tuple(blocks), mime_type=MIME_TYPE, page_count=len(sheets), title=title)
    finally:
        workbook.close()


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float):
        # what a spreadsheet shows: 0.3, not 0.30000000000000004
        return format(value, ".15g")
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ", timespec="minutes") if value.time() != dt.time() else value.date().isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return squash(str(value))
