"""The FAISS index is derived from the Chunk table: rebuild it, check it, repair it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.conf import settings

from knowledge.models import Chunk, Document
from knowledge.services import engines

if TYPE_CHECKING:
    from ingestion.index import IndexWriter

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


def _embed_into(writer: IndexWriter, chunk_ids: list[int], progress: Callable[[int], None] | None) -> None:
    """Embed the given chunks from their stored text and add them through ``writer``."""
    from ingestion.chunking import embedding_text
    from ingestion.embedding import passage_rows
    from knowledge.services.documents import chunk_draft

    embedder = engines.get_embedder()
    config = engines.chunking_config()
    for start in range(0, len(chunk_ids), _BATCH):
        batch = list(
            Chunk.objects.filter(pk__in=chunk_ids[start : start + _BATCH])
            .select_related("document")
            .order_by("document_id", "ordinal")
        )
        texts = [embedding_text(chunk_draft(c), config) for c in batch]
        vectors = passage_rows(embedder, texts)
        # one add per document: the index keeps each vector's document and collection for filtering
        for offset, chunk in enumerate(batch):
            if offset and batch[offset - 1].document_id == chunk.document_id:
                continue
            rows = [i for i, c in enumerate(batch) if c.document_id == chunk.document_id]
            writer.add(
                [batch[i].pk for i in rows],
                vectors[rows],
                document_id=chunk.document_id,
                collection_id=chunk.document.collection_id,
                texts=[batch[i].text for i in rows],
            )
        if progress:
            progress(len(batch))


def index_rebuild(*, progress: Callable[[int], None] | None = None) -> RebuildReport:
    """Rebuild the whole index from the Chunk table of ready documents, with the configured embedder.

    Works after a change of embedder too (the old index is not loaded). Documents chunked for
    another embedder keep their chunks; re-ingest them if the new model's limit is smaller.
    One writer session: the new version replaces the old one atomically when complete.
    """
    from ingestion.index import IndexConfig, VectorIndex

    embedder = engines.get_embedder()
    index = VectorIndex(
        IndexConfig(directory=settings.INDEX_DIR, approx_threshold=settings.INDEX_APPROX_THRESHOLD),
        embedder_name=embedder.name,
        dimension=embedder.dimension,
        load=False,
    )
    with index.writer(reset=True) as writer:
        writer.clear()
        ready = Document.objects.filter(status=Document.Status.READY)
        chunk_ids = list(Chunk.objects.filter(document__in=ready).order_by("pk").values_list("pk", flat=True))
        _embed_into(writer, chunk_ids, progress)
    engines.reset()
    Document.objects.filter(status=Document.Status.READY).update(index_version=index.version, embedder=embedder.name)
    return RebuildReport(documents=ready.count(), vectors=len(index), version=index.version)


def index_check() -> IndexCheckReport:
    """Compare the index with the Chunk table of ready documents."""
    index = engines.get_index()
    expected = set(Chunk.objects.filter(document__status=Document.Status.READY).values_list("pk", flat=True).iterator())
    present = {int(i) for i in index.ids()}
    return IndexCheckReport(
        chunks=len(expected),
        vectors=len(present),
        missing=sorted(expected - present),
        extra=sorted(present - expected),
    )


def index_repair(*, progress: Callable[[int], None] | None = None) -> IndexCheckReport:
    """Remove vectors that have no chunk, embed chunks that have no vector; return the state after.

    The comparison runs under the writers' lock: ingestions hold it until their database commit,
    so a document being indexed right now is never mistaken for a gap.
    """
    with engines.get_index().writer() as writer:
        report = index_check()
        if report.extra:
            writer.remove_ids(report.extra)
        if report.missing:
            _embed_into(writer, report.missing, progress)
    return index_check()
