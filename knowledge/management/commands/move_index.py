"""Move the search store to the other backend without re-embedding: ``manage.py move_index --to postgres``.

The chunks, their vectors (and the companion's) and their lexical analysis are read from the source store in
batches and written into the target store in one rebuild (``writer(reset=True)``: the target's previous contents
are replaced when the copy is complete). Then both are compared: the same chunk ids, and every chunk of a ready
document present in the target; the command exits non-zero when they differ. Switch ``RAG_SEARCH_BACKEND`` to
the target afterwards.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from knowledge.models import DOCUMENT_ANSWERING_STATUSES, Chunk

if TYPE_CHECKING:
    from ingestion.store import ExportBatch, SearchStore, StoreIdentity, StoreWriter


def _open(backend: str, identity: StoreIdentity) -> SearchStore:
    if backend == "postgres":
        from knowledge.search.checks import require_postgres_store
        from knowledge.search.postgres import PostgresStore

        require_postgres_store()
        return PostgresStore(identity)
    from ingestion.index import FaissStore, IndexConfig

    config = IndexConfig(directory=settings.INDEX_DIR, approx_threshold=settings.INDEX_APPROX_THRESHOLD)
    return FaissStore(config, identity)  # type: ignore[return-value]  # its writer() is a generator


def _copy(batch: ExportBatch, writer: StoreWriter) -> None:
    """Add one exported batch, a document at a time (a writer's add holds one document's chunks)."""
    start = 0
    n = len(batch.chunk_ids)
    while start < n:
        end = start
        while end < n and batch.document_ids[end] == batch.document_ids[start]:
            end += 1
        rows = range(start, end)
        writer.add(
            batch.chunk_ids[start:end].tolist(),
            batch.embeddings.take(rows),
            document_id=int(batch.document_ids[start]),
            collection_id=int(batch.collection_ids[start]),
            texts=batch.texts[start:end],
            terms=batch.terms[start:end],
        )
        start = end


def _sample(ids: list[int]) -> str:
    shown = ", ".join(str(i) for i in ids[:10])
    return shown + (f", … ({len(ids)} in all)" if len(ids) > 10 else "")


class Command(BaseCommand):
    help = (
        "Copy the search store into the other backend (faiss -> postgres, or back) without re-embedding, then "
        "check that both hold the same chunks. Set RAG_SEARCH_BACKEND to the target afterwards."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--to", required=True, choices=["postgres", "faiss"], help="the backend to move to")
        parser.add_argument("--batch-size", type=int, default=1024, help="chunks read at a time (default 1024)")

    def handle(self, *args: Any, to: str, batch_size: int, **options: Any) -> None:
        from knowledge.services import engines

        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        source_backend = "faiss" if to == "postgres" else "postgres"
        identity = engines.store_identity()
        try:
            source = _open(source_backend, identity)
            target = _open(to, identity)
            total = len(source.view())
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Copying {total} chunks from the {source_backend} store to the {to} store…")
        # a progress bar on standard error, also when it is not a terminal (a log shows where a long move is)
        bar = tqdm(total=total, unit="chunk", file=sys.stderr, mininterval=1.0 if sys.stderr.isatty() else 10.0)
        try:
            with target.writer(reset=True) as writer:
                for batch in source.export(batch_size):
                    _copy(batch, writer)
                    bar.update(len(batch.chunk_ids))
        finally:
            bar.close()

        source_ids = {int(i) for i in source.ids()}
        target_ids = {int(i) for i in target.ids()}
        ready = set(Chunk.objects.filter(document__status__in=DOCUMENT_ANSWERING_STATUSES).values_list("pk", flat=True))
        self.stdout.write(
            f"{len(source_ids)} chunks in the {source_backend} store, {len(target_ids)} in the {to} store, "
            f"{len(ready)} chunks of ready documents in the database."
        )
        problems = []
        if target_ids != source_ids:
            missing = sorted(source_ids - target_ids)
            extra = sorted(target_ids - source_ids)
            problems.append(
                f"the {to} store differs from the {source_backend} store: {len(missing)} missing "
                f"({_sample(missing)}), {len(extra)} extra ({_sample(extra)})"
            )
        absent = sorted(ready - target_ids)
        if absent:
            problems.append(
                f"{len(absent)} chunk(s) of ready documents are not in the {to} store: {_sample(absent)} "
                "(run `manage.py check_index --repair` after switching)"
            )
        if problems:
            raise CommandError("The move is incomplete: " + "; ".join(problems))
        self.stdout.write(self.style.SUCCESS(f"Moved: the {to} store holds the same {len(target_ids)} chunks."))
        if to != settings.RAG_SEARCH_BACKEND:
            self.stdout.write(f"Now set RAG_SEARCH_BACKEND={to} and restart the web and worker processes.")
