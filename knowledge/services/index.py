"""The search store is derived from the Chunk table: rebuild it, check it, repair it (both backends)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils import timezone

from ingestion.errors import REBUILD_HINT
from knowledge.models import DOCUMENT_ANSWERING_STATUSES, Chunk, Document, DocumentVersion, SearchRebuild
from knowledge.services import documents as document_services
from knowledge.services import engines

if TYPE_CHECKING:
    from ingestion.store import StoreWriter

logger = logging.getLogger(__name__)

_BATCH = 256


@dataclass(frozen=True)
class RebuildReport:
    documents: int
    vectors: int
    backend: str
    #: documents that had failed because the store awaited this rebuild, queued again
    requeued: int = 0


@dataclass(frozen=True)
class IndexCheckReport:
    chunks: int
    vectors: int
    #: chunk ids of answering documents (ready, or queued or processing again) that have no vector
    missing: list[int] = field(default_factory=list)
    #: vector ids with no chunk of an answering document behind them
    extra: list[int] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not self.missing and not self.extra


def _whole_documents(chunk_ids: list[int]) -> Iterator[list[Chunk]]:
    """The chunks of ``chunk_ids`` in batches of about ``_BATCH``, a document's chunks never split over two
    (its passages are analysed together: one without stop words is read in its document's language)."""
    wanted = sorted(set(chunk_ids))
    rows = list(Chunk.objects.filter(pk__in=wanted).order_by("document_id", "ordinal").values_list("pk", "document_id"))
    batch: list[int] = []
    for position, (pk, document_id) in enumerate(rows):
        batch.append(pk)
        last_of_document = position + 1 == len(rows) or rows[position + 1][1] != document_id
        if last_of_document and len(batch) >= _BATCH:
            yield _chunks(batch)
            batch = []
    if batch:
        yield _chunks(batch)


def _chunks(ids: list[int]) -> list[Chunk]:
    found = Chunk.objects.filter(pk__in=ids).select_related("document").order_by("document_id", "ordinal")
    return list(found)


def _embed_into(writer: StoreWriter, chunk_ids: list[int], progress: Callable[[int], None] | None) -> None:
    """Embed the given chunks from their stored text and add them through ``writer``, a document at a time."""
    from ingestion.chunking import embedding_text
    from ingestion.embedding import passage_embeddings
    from knowledge.services.documents import chunk_draft

    embedder = engines.get_embedder()
    config = engines.chunking_config()
    for batch in _whole_documents(chunk_ids):
        embeddings = passage_embeddings(embedder, [embedding_text(chunk_draft(c), config) for c in batch])
        start = 0
        while start < len(batch):
            document = batch[start].document
            end = start
            while end < len(batch) and batch[end].document_id == document.pk:
                end += 1
            writer.add(
                [c.pk for c in batch[start:end]],
                embeddings.take(range(start, end)),
                document_id=document.pk,
                collection_id=document.collection_id,
                texts=[c.text for c in batch[start:end]],
            )
            start = end
        if progress:
            progress(len(batch))


class _RecordedProgress:
    """Counts embedded chunks into a ``SearchRebuild`` row (at most every second), so that the admin shows how
    far a rebuild is. The postgres store rebuilds in one transaction, whose writes nobody sees before its end:
    the row is then written through a connection of its own."""

    def __init__(self, run: SearchRebuild, forward: Callable[[int], None] | None) -> None:
        self.run = run
        self.forward = forward
        self.saved_at = 0.0
        self._connection: Any = None

    def __call__(self, count: int) -> None:
        self.run.done += count
        if time.monotonic() - self.saved_at >= 1.0:
            self.save()
        if self.forward:
            self.forward(count)

    def save(self) -> None:
        self.saved_at = time.monotonic()
        if not connections[DEFAULT_DB_ALIAS].in_atomic_block:
            SearchRebuild.objects.filter(pk=self.run.pk).update(done=self.run.done, updated_at=timezone.now())
            return
        if self._connection is None:
            self._connection = connections.create_connection(DEFAULT_DB_ALIAS)
        with self._connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {SearchRebuild._meta.db_table} SET done = %s, updated_at = %s WHERE id = %s",
                [self.run.done, timezone.now(), self.run.pk],
            )

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def rebuild_running() -> bool:
    """Whether a rebuild of the search store is in progress (documents then wait for its end)."""
    return SearchRebuild.objects.running().exists()


def index_rebuild(*, progress: Callable[[int], None] | None = None) -> RebuildReport:
    """Rebuild the whole search store from the Chunk table of ready documents, with the configured embedder.

    Works after a change of embedder too, without downtime: the new vectors are built beside the old ones,
    questions are answered from the old ones (embedded with the previous model) meanwhile, and the new ones
    replace them when complete. Documents uploaded meanwhile wait for the rebuild to end (their tasks are
    retried every minute for as long as it runs, see ``knowledge.tasks``); those that failed before it started,
    because the store held another model's vectors, are queued again at its end. Documents chunked for another
    embedder keep their chunks; re-ingest them if the new model's limit is smaller. The run and its progress
    are recorded in ``SearchRebuild`` (shown in the admin).
    """
    identity = engines.store_identity()
    engines.remember_embedder(identity)
    previous = engines.saved_identity()
    # a document queued or processing again (a new version) answers from its current chunks: they are rebuilt too
    ready = Document.objects.filter(status__in=DOCUMENT_ANSWERING_STATUSES)
    chunk_ids = list(Chunk.objects.filter(document__in=ready).order_by("pk").values_list("pk", flat=True))
    run = SearchRebuild.objects.create(
        backend=settings.RAG_SEARCH_BACKEND,
        embedder=identity.embedder,
        previous_embedder=previous.embedder if previous is not None and previous != identity else "",
        total=len(chunk_ids),
    )
    recorded = _RecordedProgress(run, progress)
    try:
        store = engines.open_store(identity, load=False)
        with store.writer(reset=True) as writer:
            writer.clear()
            _embed_into(writer, chunk_ids, recorded)
        merge = getattr(store, "merge", None)
        if merge is not None:  # the faiss store: one searchable segment now, not at the next writer's turn
            merge()
    except BaseException as exc:
        recorded.close()
        SearchRebuild.objects.filter(pk=run.pk).update(
            status=SearchRebuild.Status.FAILED, done=run.done, error=str(exc)[:2000], finished_at=timezone.now()
        )
        raise
    recorded.close()
    SearchRebuild.objects.filter(pk=run.pk).update(
        status=SearchRebuild.Status.DONE, done=run.done, finished_at=timezone.now()
    )
    engines.reset()
    Document.objects.filter(pk__in=ready.values("pk")).update(embedder=identity.embedder)
    vectors = len(engines.get_store().ids())
    return RebuildReport(
        documents=ready.count(), vectors=vectors, backend=store.backend, requeued=_requeue_awaiting_rebuild()
    )


def _requeue_awaiting_rebuild() -> int:
    """Queue again the documents, and the new versions of documents, that failed because the store awaited a
    rebuild (uploaded after a change of embedding model, or while the index could not be read): their files were
    kept, and they can be indexed now."""
    awaiting = list(Document.objects.filter(status=Document.Status.FAILED, error__contains=REBUILD_HINT).order_by("pk"))
    for document in awaiting:
        document_services.document_reingest(document=document)
    versions = DocumentVersion.objects.filter(
        status=DocumentVersion.Status.FAILED, error__contains=REBUILD_HINT, document__status=Document.Status.READY
    ).order_by("pk")
    count = len(awaiting) + sum(document_services.document_version_retry(version=version) for version in versions)
    if count:
        logger.info("%s documents that failed while the search store awaited a rebuild were queued again", count)
    return count


def index_check() -> IndexCheckReport:
    """Compare the search store with the Chunk table of the documents that answer (``DOCUMENT_ANSWERING_STATUSES``)."""
    store = engines.get_store()
    refresh = getattr(store, "refresh", None)
    if refresh is not None:  # the faiss store: what is saved now, even a big merge still loading in the background
        refresh()
    # the store first: a document committing between the two reads then looks missing (embedded again, the
    # same rows), never extra (its rows removed)
    present = {int(i) for i in store.ids()}
    expected = set(
        Chunk.objects.filter(document__status__in=DOCUMENT_ANSWERING_STATUSES).values_list("pk", flat=True).iterator()
    )
    return IndexCheckReport(
        chunks=len(expected),
        vectors=len(present),
        missing=sorted(expected - present),
        extra=sorted(present - expected),
    )


def index_verify() -> str | None:
    """Read every part of the search store and check that its files agree (the faiss store; the postgres
    store's rows are the database's business). None when they do, else what is wrong, in a sentence."""
    from ingestion.errors import IndexCorruptError

    verify = getattr(engines.get_store(), "verify", None)
    if verify is None:
        return None
    try:
        verify()
    except IndexCorruptError as exc:
        return str(exc)
    return None


def index_repair(*, progress: Callable[[int], None] | None = None) -> IndexCheckReport:
    """Remove search entries that have no chunk, embed chunks that have none; return the state after.

    The comparison runs inside the writer (the faiss store's lock, which ingestions hold until their
    database commit; the postgres store's transaction), so a document being indexed right now is never
    mistaken for a gap.
    """
    with engines.get_store().writer() as writer, transaction.atomic():
        report = index_check()
        if report.extra:
            writer.remove_ids(report.extra)
        if report.missing:
            _embed_into(writer, report.missing, progress)
    return index_check()
