"""File → blocks → chunks → vectors: the whole ingestion of one file, without storage."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ingestion.chunking import ChunkingConfig, chunk_blocks, embedding_text
from ingestion.errors import EmptyDocumentError
from ingestion.parsing import parse_file
from ingestion.types import ChunkDraft, ParsedDocument

if TYPE_CHECKING:
    import numpy as np

    from ingestion.embedding import Embedder


@dataclass(frozen=True)
class PipelineOptions:
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    ocr: bool = True
    ocr_languages: str = "eng+fra"
    password: str | None = None


@dataclass(frozen=True)
class PipelineResult:
    parsed: ParsedDocument
    chunks: list[ChunkDraft]
    vectors: np.ndarray
    #: seconds spent in each stage: parse, chunk, embed
    timings: dict[str, float]


def run_pipeline(
    path: Path,
    *,
    embedder: Embedder,
    options: PipelineOptions,
    filename: str | None = None,
    mime_type: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> PipelineResult:
    """Parse, chunk and embed one file. Raises an ``IngestionError`` subclass on bad input."""
    notify = progress or (lambda stage: None)
    timings: dict[str, float] = {}

    notify("parsing")
    started = time.perf_counter()
    parsed = parse_file(
        path,
        filename=filename,
        password=options.password,
        ocr=options.ocr,
        ocr_languages=options.ocr_languages,
        mime_type=mime_type,
    )
    timings["parse"] = time.perf_counter() - started

    notify("chunking")
    started = time.perf_counter()
    chunks = chunk_blocks(
        parsed.blocks,
        count_tokens=embedder.count_tokens,
        config=options.chunking,
        hard_limit=embedder.max_tokens,
    )
    timings["chunk"] = time.perf_counter() - started
    if not chunks:
        raise EmptyDocumentError("The document contains no extractable text")

    notify("embedding")
    started = time.perf_counter()
    vectors = embedder.embed_passages([embedding_text(chunk, options.chunking) for chunk in chunks])
    timings["embed"] = time.perf_counter() - started
    return PipelineResult(parsed=parsed, chunks=chunks, vectors=vectors, timings=timings)
