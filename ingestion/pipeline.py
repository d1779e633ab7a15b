"""File → blocks → chunks → embeddings and lexical analysis: the whole ingestion of one file, without storage."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ingestion.chunking import ChunkingConfig, chunk_blocks, embedding_text
from ingestion.errors import EmptyDocumentError
from ingestion.language import PassageTerms, TextAnalyzer, passage_terms
from ingestion.parsing import DEFAULT_MAX_PAGES, DEFAULT_MAX_UNPACKED_MB, parse_file
from ingestion.sandbox import DEFAULT_MEMORY_MB, Limited, start_limited
from ingestion.types import ChunkDraft, ParsedDocument

if TYPE_CHECKING:
    from ingestion.embedding import Embedder
    from ingestion.store import PassageEmbeddings


@dataclass(frozen=True)
class PipelineOptions:
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    ocr: bool = True
    ocr_languages: str = "eng+fra"
    password: str | None = None
    #: safety limits passed to the parser: PDF pages, and what an Office file may unpack to
    max_pages: int = DEFAULT_MAX_PAGES
    max_unpacked_mb: int = DEFAULT_MAX_UNPACKED_MB
    #: memory (MB) the parse may use on top of the process's own, in a forked child (``ingestion.sandbox``);
    #: 0 = no limit, parse in this process
    max_memory_mb: int = DEFAULT_MEMORY_MB
    #: folder of the on-disk cache of passage vectors (see ``ingestion.embedding_cache``); "" = no cache
    embed_cache_dir: str = ""
    #: 1-based page numbers: process only this slice of a PDF (one part of a big one); a slice without
    #: text then gives no chunks instead of EmptyDocumentError. None = the whole file
    pages: range | None = None


@dataclass(frozen=True)
class PipelineResult:
    parsed: ParsedDocument
    chunks: list[ChunkDraft]
    #: one row per chunk: the dense vectors, and the companion's when one is configured
    embeddings: PassageEmbeddings
    #: the lexical analysis of each chunk's text (``ChunkDraft.text``, what a search store keeps)
    terms: list[PassageTerms]
    #: seconds spent in each stage: parse, chunk (lexical analysis included), embed
    timings: dict[str, float]


@dataclass(frozen=True)
class PreparedDocument:
    """A parsed and chunked file, not embedded yet."""

    parsed: ParsedDocument
    chunks: list[ChunkDraft]
    #: the lexical analysis of each chunk's text, read together as one document's
    terms: list[PassageTerms]
    #: seconds spent in each stage: parse, chunk (lexical analysis included)
    timings: dict[str, float]


#: the ``nice`` increment of a background parse: the lowest priority
_BACKGROUND_NICENESS = 19


@functools.cache
def _analyzer() -> TextAnalyzer:
    return TextAnalyzer()


def analyse_chunks(chunks: Sequence[ChunkDraft]) -> list[PassageTerms]:
    """The lexical analysis of one document's chunks (their stored text), as a search store keeps it."""
    return passage_terms(_analyzer(), [chunk.text for chunk in chunks])


def parse_ahead(
    path: Path,
    *,
    options: PipelineOptions,
    filename: str | None = None,
    mime_type: str | None = None,
    background: bool = False,
) -> Limited[ParsedDocument]:
    """Start parsing ``path`` (``options.pages`` of it) in a memory-limited child and return at once.

    Parsing is where hostile files explode (zip and decompression bombs), hence the child under
    ``options.max_memory_mb``; the embedder is used in this process only, which meanwhile may embed what
    an earlier parse gave. Pass the result to :func:`prepare_file` (``parsing=``), or ``.cancel()`` it.
    A ``background`` parse runs at the lowest CPU priority: it takes the CPU the embedder leaves idle and
    never slows it down (on 2 cores, a parse at the same priority made the embedding slower by more than
    the parse saved; ``bench/README.md``).
    """
    return start_limited(
        lambda: parse_file(
            path,
            filename=filename,
            password=options.password,
            ocr=options.ocr,
            ocr_languages=options.ocr_languages,
            mime_type=mime_type,
            pages=options.pages,
            max_pages=options.max_pages,
            max_unpacked_mb=options.max_unpacked_mb,
        ),
        memory_mb=options.max_memory_mb,
        niceness=_BACKGROUND_NICENESS if background else 0,
    )


def prepare_file(
    path: Path,
    *,
    embedder: Embedder,
    options: PipelineOptions,
    filename: str | None = None,
    mime_type: str | None = None,
    progress: Callable[[str], None] | None = None,
    parsing: Limited[ParsedDocument] | None = None,
) -> PreparedDocument:
    """Parse and chunk one file (chunks measured with ``embedder``'s tokenizer).

    ``parsing``: the file's parse, already started by :func:`parse_ahead`, to wait for instead of starting one.
    Raises an ``IngestionError`` subclass on bad input, ``EmptyDocumentError`` when it has no text,
    ``MemoryLimitError`` when parsing needed more than ``options.max_memory_mb``.
    """
    notify = progress or (lambda stage: None)
    timings: dict[str, float] = {}

    notify("parsing")
    started = time.perf_counter()
    if parsing is None:
        parsing = parse_ahead(path, options=options, filename=filename, mime_type=mime_type)
    parsed = parsing.result()
    timings["parse"] = time.perf_counter() - started

    notify("chunking")
    started = time.perf_counter()
    chunks = chunk_blocks(
        parsed.blocks,
        count_tokens=embedder.count_tokens,
        config=options.chunking,
        hard_limit=embedder.max_tokens,
    )
    if not chunks and options.pages is None:
        raise EmptyDocumentError("The document contains no extractable text")
    terms = analyse_chunks(chunks)
    timings["chunk"] = time.perf_counter() - started
    return PreparedDocument(parsed=parsed, chunks=chunks, terms=terms, timings=timings)


def embed_chunks(chunks: Sequence[ChunkDraft], *, embedder: Embedder, options: PipelineOptions) -> PassageEmbeddings:
    """The embeddings of ``chunks`` (one row each), through the embedding cache when one is configured.

    Chunks of several documents may be embedded together: batches then fill up across documents.
    """
    from ingestion.embedding_cache import embed_passages_cached, open_cache

    cache = open_cache(options.embed_cache_dir) if options.embed_cache_dir else None
    texts = [embedding_text(chunk, options.chunking) for chunk in chunks]
    return embed_passages_cached(embedder, texts, cache)


def embed_prepared(
    prepared: PreparedDocument,
    *,
    embedder: Embedder,
    options: PipelineOptions,
    progress: Callable[[str], None] | None = None,
) -> PipelineResult:
    """Embed a prepared file's chunks: the last stage of one file's ingestion, after :func:`prepare_file`."""
    if progress:
        progress("embedding")
    started = time.perf_counter()
    embeddings = embed_chunks(prepared.chunks, embedder=embedder, options=options)
    timings = {**prepared.timings, "embed": time.perf_counter() - started}
    return PipelineResult(
        parsed=prepared.parsed, chunks=prepared.chunks, embeddings=embeddings, terms=prepared.terms, timings=timings
    )
