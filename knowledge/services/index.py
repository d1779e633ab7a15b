"""The FAISS index is derived from the Chunk table: rebuild it, check it, repair it."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from knowledge.models import Chunk, Document
from knowledge.services import engines

logger = logging.getLogger(__name__)

_BATCH = 256


@dataclass(frozen=True)
class RebuildReport:
    documents: int
    vectors: int
    version: int


@dataclass(frozen=True)
class IndexCheckReport:
    chunks: int
    vectors: int
    #: chunk ids of ready documents that have no vector
    missing: list[int] = field(default_factory=list)
    #: vector ids with no chunk of a ready document behind them
    extra: list[int] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not self.missing and not self.extra


def _embed_chunks(chunk_ids: list[int], progress: Callable[[int], None] | None) -> None:
    """Embed the given chunks from their stored text and add them to the index."""
    from ingestion.chunking import embedding_text
    from ingestion.types import ChunkDraft

    embedder = engines.get_embedder()
    config = engines.chunking_config()
    queryset = Chunk.objects.filter(pk__in=chunk_ids).select_related("document").order_by("document_id", "ordinal")
    by_document: dict[tuple[int, int], list[Chunk]] = {}
    for chunk in queryset.iterator(chunk_size=1000):
        by_document.setdefault((chunk.document_id, chunk.document.collection_id), []).append(chunk)
    index = engines.get_index()
    for (document_id, collection_id), chunks in by_document.items():
        for start in range(0, len(chunks), _BATCH):
            batch = chunks[start : start + _BATCH]
            drafts = [
                ChunkDraft(
                    ordinal=c.ordinal,
                    text=c.text,
                    page=c.page,
                    headings=tuple(c.heading.split(" > ")) if c.heading else (),
                    token_count=c.token_count,
                )
                for c in batch
            ]
            vectors = embedder.embed_passages([embedding_text(d, config) for d in drafts])
            with index.writer() as writer:
                writer.add(
                    [c.pk for c in batch],
                    np.asarray(vectors, dtype=np.float32),
                    document_id=document_id,
                    collection_id=collection_id,
                    texts=[c.text for c in batch],
                )
            if progress:
                progress(len(batch))


def index_rebuild(*, progress: Callable[[int], None] | None = None) -> RebuildReport:
    """Rebuild the whole index from the Chunk table of ready documents, with the configured embedder."""
    index = engines.get_index()
    with index.writer(reset=True) as writer:
        writer.clear()
    ready = Document.objects.filter(status=Document.Status.READY)
    chunk_ids = list(Chunk.objects.filter(document__in=ready).values_list("pk", flat=True))
    _embed_chunks(chunk_ids, progress)
    index = engines.get_index()
    Document.objects.filter(status=Document.Status.READY).update(
        index_version=index.version, embedder=engines.get_embedder().name
    )
    return RebuildReport(documents=ready.count(), vectors=len(index), version=index.version)


def index_check() -> IndexCheckReport:
    """Compare the index with the Chunk table of ready documents."""
    index = engines.get_index()
    expected = set(
        Chunk.objects.filter(document__status=Document.Status.READY).values_list("pk", flat=True).iterator()
    )
    present = {int(i) for i in index.ids()}
    return IndexCheckReport(
        chunks=len(expected),
        vectors=len(present),
        missing=sorted(expected - present),
        extra=sorted(present - expected),
    )


def index_repair(*, progress: Callable[[int], None] | None = None) -> IndexCheckReport:
    """Remove vectors that have no chunk, embed chunks that have no vector; return the state after."""
    report = index_check()
    if report.extra:
        with engines.get_index().writer() as writer:
            writer.remove_ids(report.extra)
    if report.missing:
        _embed_chunks(report.missing, progress)
    return index_check()
