"""CSV: the dialect is sniffed; the header row and every data row become one block each."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ingestion.parsing.encoding import decode_bytes
from ingestion.parsing.text import squash
from ingestion.types import Block, ParsedDocument

MIME_TYPE = "text/csv"
_SAMPLE_CHARS = 64 * 1024
# the csv module refuses fields over 128 KiB by default; real exports have longer ones
_FIELD_LIMIT = 64 * 1024 * 1024


def parse_csv(path: Path, *, filename: str | None = None) -> ParsedDocument:
    """Read a delimited text file row by row (``a | b | c``), skipping empty rows."""
    text = decode_bytes(Path(path).read_bytes())
    dialect = _dialect(text, tab_default=Path(filename or path).suffix.lower() == ".tsv")
    if csv.field_size_limit() < _FIELD_LIMIT:
        csv.field_size_limit(_FIELD_LIMIT)
    blocks: list[Block] = []
    for row in csv.reader(io.StringIO(text, newline=""), dialect):
        cells = [squash(cell) for cell in row]
        if any(cells):
            blocks.append(Block(text=" | ".join(cells), kind="table_row"))
    return ParsedDocument(blocks=tuple(blocks), mime_type=MIME_TYPE)


def _dialect(text: str, *, tab_default: bool) -> type[csv.Dialect] | csv.Dialect:
    sample = text[:_SAMPLE_CHARS]
    if len(text) > _SAMPLE_CHARS and "\n" in sample:
        sample = sample[: sample.rindex("\n")]  # whole lines only, or the sniffer miscounts
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        return csv.excel_tab if tab_default else csv.excel
