"""The ``postgres`` search store: pgvector and BM25 term statistics in the database that ``DATABASE_URL`` names.

Writes run at once on Django's connection, in the caller's transaction (``with store.writer() as w,
transaction.atomic(): ...``): a document's chunks, vectors and lexical entries commit together with its status,
and every process on every machine sees them the moment they commit. A reading process keeps nothing: a view is
a thin object and each of its calls is one SQL query (or a few).

Dense search is an HNSW scan (cosine; the graph built with ``hnsw_m`` and ``hnsw_ef_construction``) with the
collection and document filters in the same query. Its ``hnsw.ef_search`` grows with the store
(``ef_search_per_chunk`` times its chunks, at least 3 k, at most pgvector's 1,000), which keeps recall@10 over
0.95 at a million chunks. pgvector 0.6 has no iterative scan: it filters the ``ef_search`` neighbours it found,
so a filtered scan returns about ``ef_search`` times the allowed share of them, and ``ef_search`` is raised to
bring ``k`` with a margin. A filter allowing at most ``exact_limit`` chunks, or a share so small (the planner's
estimate) that even 1,000 neighbours would hold fewer than ``k`` allowed ones, is searched exactly at once; a
filtered scan that still comes back short is done again with 1,000, then exactly.

BM25 is computed with ``ingestion.language``'s formula, from an inverted index and statistics the writing
transaction keeps (``knowledge.search.schema``): N and the average length over the whole store, df per term
over the whole store; filters restrict which chunks are returned, not the statistics. Each posting carries an
impact fixed when it was written (its term weight without the idf), and the index reads a term's postings in
an allowed collection best first. A question reads, for each of its terms, the best ``lexical_depth`` postings
over the allowed collections (one ordered index scan per collection, merged), and adds up what it read. When
every term is held by at most ``lexical_depth`` chunks, nothing was left unread and these are the exact scores.
Otherwise the best ``candidate_rescore`` chunks by that partial score are scored exactly, over every term of the
question, from their own term lists, and ranked again. What a question costs is thus bounded by its number of
terms times ``lexical_depth``, whatever the size of the store. A filter on a few documents (at most
``exact_limit`` chunks) scores every allowed chunk exactly.

A writer's postings go to a small table first (``search_posting_recent``), so that adding a document does not
grow with the store; a commit that leaves ``merge_after`` of them starts a merge into the big table in a
background thread of the writing process (``merge``), a batch per transaction.

This module holds the store (spaces, writer blocks, merges, export, state); reads are in ``pg_view``, writes
in ``pg_writer``, what they share in ``pg_common``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import psycopg
from django.db import connections, transaction

from ingestion.background import BackgroundRun
from ingestion.errors import REBUILD_HINT, IndexBusyError, IndexMismatchError
from ingestion.language import PassageTerms
from ingestion.store import ExportBatch, PassageEmbeddings, StoreIdentity

from . import schema
from .checks import require_postgres_store
from .pg_common import _describe, _register_vector, _Space
from .pg_view import PostgresView
from .pg_writer import PostgresWriter

__all__ = ["PostgresStore", "PostgresView", "PostgresWriter", "current_identity"]

logger = logging.getLogger(__name__)


def current_identity(using: str = "default") -> StoreIdentity | None:
    """The identity of the vectors the store holds now: None when it holds no chunk (or has no tables yet)."""
    connection = connections[using]
    if not schema.installed(connection):
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT embedder, dimension, companion, companion_dimension FROM search_space WHERE state = 'current' "
            "AND EXISTS (SELECT 1 FROM search_chunk)"
        )
        row = cursor.fetchone()
    return None if row is None else StoreIdentity(row[0], int(row[1]), row[2], int(row[3]))


class PostgresStore:
    """The ``postgres`` search store for ``identity``, on the Django database ``using``.

    Construction reads nothing; the first call checks that the database can hold the store (PostgreSQL with
    pgvector: ``ImproperlyConfigured`` otherwise) and creates the tables when ``migrate`` could not.
    """

    backend = "postgres"
    #: the class of the psycopg cursors the store runs its SQL with (a benchmark's may time each statement)
    cursor_class: type[psycopg.Cursor[Any]] = psycopg.Cursor

    def __init__(
        self,
        identity: StoreIdentity,
        using: str = "default",
        *,
        lock_timeout: float = 60.0,
        exact_limit: int = 5_000,
        hnsw_m: int = 32,
        hnsw_ef_construction: int = 80,
        ef_search: int | None = None,
        ef_search_per_chunk: float = 0.0005,
        lexical_depth: int = 2_000,
        candidate_rescore: int = 500,
        retired_grace: float = 300.0,
        build_memory: str | None = "512MB",
        merge_after: int = 50_000,
        merge_batch: int = 5_000,
        merge_pause: float = 0.25,
    ) -> None:
        connection = connections[using]
        if connection.vendor != "postgresql":
            require_postgres_store(using)  # raises with the message that says what to do
        self.identity = identity
        self.using = using
        #: seconds a writer waits for another writer before IndexBusyError
        self.lock_timeout = lock_timeout
        #: filters allowing at most this many chunks are searched exactly (no HNSW, no truncated postings)
        self.exact_limit = exact_limit
        #: the HNSW graph of a new space (pgvector's m and ef_construction; read when the index is built)
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construction = hnsw_ef_construction
        #: hnsw.ef_search of every HNSW scan (at least k), or None: ``ef_search_per_chunk`` times the chunks the
        #: store holds, at least 3 k, more through a filter (pgvector's largest is 1,000); with m 32 and
        #: ef_construction 80, 300 gave recall@10 0.972 at 300k chunks and 500 gave 0.972 at 1M
        #: (bench/bench_pg_search.py)
        self.ef_search = ef_search
        self.ef_search_per_chunk = ef_search_per_chunk
        #: how many postings of each query term are read, best impact first, over the allowed collections (in each
        #: of them when more than 32 are allowed)
        self.lexical_depth = lexical_depth
        #: how many of the best candidates by partial score are scored exactly when postings were left unread
        self.candidate_rescore = candidate_rescore
        #: seconds a retired space's table stays (for searches that had just read which space is current)
        self.retired_grace = retired_grace
        #: maintenance_work_mem while building an HNSW index in bulk (None: the server's setting)
        self.build_memory = build_memory
        #: a writer's commit that leaves at least this many recent postings starts a merge in the background
        #: (0: never; ``merge()`` by hand)
        self.merge_after = merge_after
        #: postings moved per merge transaction: the writers' lock is held for one batch at a time, so a writer
        #: waits at most about one batch (20,000 took 1.8 s at 1M chunks, and an add then waited up to 4 s)
        self.merge_batch = merge_batch
        #: seconds a background merge leaves between two batches (a writer polling for the lock gets it then)
        self.merge_pause = merge_pause
        self._schema_ready = False
        self._merging = BackgroundRun("search-merge")

    def __repr__(self) -> str:
        return f"PostgresStore({_describe(self.identity)}, using={self.using!r})"

    # ---- connection -------------------------------------------------------------------------------------
    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        """A psycopg cursor on Django's connection (same transaction), with Django's error classes."""
        connection = connections[self.using]
        with connection.wrap_database_errors:
            connection.ensure_connection()
            raw = connection.connection
            _register_vector(raw)
            # a server-side binding cursor (Django's own binds on the client, in text): vectors travel in binary
            with self.cursor_class(raw) as cursor:
                yield cursor

    def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        connection = connections[self.using]
        if not schema.installed(connection):
            require_postgres_store(self.using)
            # migrated before pgvector was there: create the tables now
            with transaction.atomic(using=self.using):
                schema.install(connection)
        self._schema_ready = True

    def _lock(self, cursor: Any) -> None:
        """Take the search writers' lock until the current transaction ends (IndexBusyError after a while)."""
        deadline = time.monotonic() + self.lock_timeout
        while True:
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", (schema.LOCK_KEY,))
            if cursor.fetchone()[0]:
                return
            if time.monotonic() > deadline:
                raise IndexBusyError(
                    f"Another process has been writing to the search store for over {self.lock_timeout:.0f} s "
                    "(a rebuild?): try again later"
                )
            time.sleep(0.05)

    # ---- spaces -----------------------------------------------------------------------------------------
    @staticmethod
    def _current(cursor: Any) -> _Space | None:
        cursor.execute(
            "SELECT id, embedder, dimension, companion, companion_dimension, state FROM search_space "
            "WHERE state = 'current'"
        )
        row = cursor.fetchone()
        if row is None:
            return None
        return _Space(row[0], StoreIdentity(row[1], row[2], row[3], row[4]), row[5])

    @staticmethod
    def _is_empty(cursor: Any) -> bool:
        cursor.execute("SELECT NOT EXISTS (SELECT 1 FROM search_chunk)")
        return bool(cursor.fetchone()[0])

    def _mismatch(self, space: _Space) -> IndexMismatchError:
        return IndexMismatchError(
            f"The search store was built with {_describe(space.identity)} but the configured embedder is "
            f"{_describe(self.identity)}: {REBUILD_HINT}"
        )

    def _create_space(self, cursor: Any, state: str, *, hnsw: bool) -> _Space:
        identity = self.identity
        cursor.execute(
            "INSERT INTO search_space (embedder, dimension, companion, companion_dimension, state) "
            "VALUES (%s, %s, %s, %s, %s) RETURNING id",
            (identity.embedder, identity.dimension, identity.companion, identity.companion_dimension, state),
        )
        space = _Space(cursor.fetchone()[0], identity, state)
        cursor.execute(
            schema.vectors_table_sql(
                space.id, identity, hnsw=hnsw, m=self.hnsw_m, ef_construction=self.hnsw_ef_construction
            )
        )
        return space

    def _readable_space(self) -> _Space | None:
        """The current space when it holds this identity's vectors; None for an empty store; else mismatch."""
        self._ensure_schema()
        with self._cursor() as cursor:
            space = self._current(cursor)
            if space is not None and space.identity == self.identity:
                return space
            if self._is_empty(cursor):
                return None
        assert space is not None
        raise self._mismatch(space)

    def _writable_space(self) -> _Space:
        """The current space for this identity; an empty store (or one without a space) takes it on."""
        self._ensure_schema()
        with self._cursor() as cursor:
            space = self._current(cursor)
            if space is not None and space.identity == self.identity:
                return space
            if space is not None and not self._is_empty(cursor):
                raise self._mismatch(space)
        mismatch = None
        with transaction.atomic(using=self.using), self._cursor() as cursor:
            self._lock(cursor)
            space = self._current(cursor)
            if space is None or space.identity != self.identity:
                if space is not None and not self._is_empty(cursor):
                    mismatch = space
                else:
                    if space is not None:
                        self._retire(cursor)
                    space = self._create_space(cursor, "current", hnsw=True)
        if mismatch is not None:
            raise self._mismatch(mismatch)
        assert space is not None
        return space

    @staticmethod
    def _retire(cursor: Any) -> None:
        cursor.execute("UPDATE search_space SET state = 'retired', changed_at = now() WHERE state = 'current'")

    def _drop_retired(self) -> None:
        """Drop the tables of spaces retired long enough ago that no search still reads them."""
        with self._cursor() as cursor:
            cursor.execute(
                "SELECT id FROM search_space "
                "WHERE state = 'retired' AND changed_at < now() - make_interval(secs => %s)",
                (self.retired_grace,),
            )
            retired = [row[0] for row in cursor.fetchall()]
        if not retired:
            return
        with transaction.atomic(using=self.using), self._cursor() as cursor:
            self._lock(cursor)
            for space_id in retired:
                cursor.execute(f"DROP TABLE IF EXISTS {schema.vectors_table(space_id)}")
            cursor.execute("DELETE FROM search_space WHERE id = ANY(%s::int[])", (retired,))

    # ---- the protocol -----------------------------------------------------------------------------------
    def view(self) -> PostgresView:
        """A read of the store: each call is one query on the current rows (IndexMismatchError when the store
        holds another identity's vectors)."""
        return PostgresView(self, self._readable_space())

    @contextmanager
    def writer(self, *, reset: bool = False) -> Iterator[PostgresWriter]:
        """Change the store in the caller's transaction.

        ``reset=True`` (a rebuild) runs in one transaction of its own (the caller's transactions inside it are
        savepoints): it fills a new space beside the current one and, when the block ends normally, removes the
        chunks it did not write, builds the HNSW index and makes the new space current, all in one commit; every
        search meanwhile reads the old contents. It holds the writers' lock until then."""
        if not reset:
            space = self._writable_space()
            self._drop_retired()
            yield PostgresWriter(self, space)
            return
        self._ensure_schema()
        with transaction.atomic(using=self.using):
            with self._cursor() as cursor:
                self._lock(cursor)
                # every chunk is written again: its postings go straight into the big table
                cursor.execute("SELECT set_config(%s, 'on', true)", (schema.BULK_SETTING,))
                space = self._create_space(cursor, "building", hnsw=False)
            yield PostgresWriter(self, space)
            with self._cursor() as cursor:
                cursor.execute(
                    f"DELETE FROM search_chunk c WHERE NOT EXISTS "
                    f"(SELECT 1 FROM {space.table} v WHERE v.chunk_id = c.chunk_id)"
                )
                if self.build_memory:
                    cursor.execute("SELECT set_config('maintenance_work_mem', %s, true)", (self.build_memory,))
                cursor.execute(
                    schema.hnsw_index_sql(space.id, m=self.hnsw_m, ef_construction=self.hnsw_ef_construction)
                )
                self._retire(cursor)
                cursor.execute(
                    "UPDATE search_space SET state = 'current', changed_at = now() WHERE id = %s", (space.id,)
                )
        self._drop_retired()

    def merge(self, *, pause: float = 0.0) -> int:
        """Move the recent postings into the big posting table, a batch per transaction, in term order; how many
        moved. Stops early when another writer holds the lock (a later commit starts the next merge). ``pause``:
        seconds between two batches, in which a waiting writer (it tries every 50 ms) takes the lock first."""
        self._ensure_schema()
        moved = 0
        while True:
            if moved and pause > 0:
                time.sleep(pause)
            with transaction.atomic(using=self.using), self._cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", (schema.LOCK_KEY,))
                if not cursor.fetchone()[0]:
                    return moved
                cursor.execute("SELECT search_merge_postings(%s)", (max(self.merge_batch, 1),))
                batch = int(cursor.fetchone()[0])
            moved += batch
            if batch < self.merge_batch:
                return moved

    def _merge_soon(self) -> None:
        """Start a merge in a thread of this process (one at a time), on a connection of its own."""
        self._merging.start(self._merge_in_background)

    def _merge_in_background(self) -> None:
        try:
            moved = self.merge(pause=self.merge_pause)
            logger.info("search store: %d recent postings merged", moved)
        except Exception:  # the next writer's commit tries again
            logger.exception("search store: merging the recent postings failed")
        finally:
            connections[self.using].close()

    def wait_for_merge(self, timeout: float | None = None) -> None:
        """Wait for a merge started in the background by this store object (tests, benchmarks)."""
        self._merging.join(timeout)

    def ids(self) -> np.ndarray:
        """Every chunk id the store holds, ascending."""
        self._ensure_schema()
        with self._cursor() as cursor:
            cursor.execute("SELECT chunk_id FROM search_chunk ORDER BY chunk_id")
            return np.fromiter((row[0] for row in cursor), dtype=np.int64)

    def export(self, batch_size: int = 1024) -> Iterator[ExportBatch]:
        """Every chunk with its embeddings and terms, by document (a document never split over two batches).

        Each batch is its own query (keyset pagination), not one snapshot: run it while nothing writes."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        space = self._readable_space()
        if space is None:
            return
        columns = "c.chunk_id, c.document_id, c.collection_id, c.text, c.language, c.term_ids, c.tfs, v.embedding" + (
            ", v.companion" if space.identity.companion_dimension else ""
        )
        base = f"SELECT {columns} FROM search_chunk c JOIN {space.table} v ON v.chunk_id = c.chunk_id"
        after = (-1, -1)
        while True:
            with self._cursor() as cursor:
                cursor.execute(
                    f"{base} WHERE (c.document_id, c.chunk_id) > (%s, %s) ORDER BY c.document_id, c.chunk_id LIMIT %s",
                    (*after, batch_size),
                    binary=True,
                )
                rows = cursor.fetchall()
                if not rows:
                    return
                if len(rows) == batch_size:
                    last_document = rows[-1][1]
                    if rows[0][1] != last_document:
                        # the last document may go on: it starts the next batch instead
                        rows = [row for row in rows if row[1] != last_document]
                    else:
                        cursor.execute(
                            f"{base} WHERE c.document_id = %s AND c.chunk_id > %s ORDER BY c.chunk_id",
                            (last_document, rows[-1][0]),
                            binary=True,
                        )
                        rows += cursor.fetchall()
                cursor.execute(
                    "SELECT id, term FROM search_term WHERE id = ANY(%s::int[])",
                    (sorted({i for row in rows for i in row[5]}),),
                )
                vocabulary = dict(cursor.fetchall())
            after = (rows[-1][1], rows[-1][0])
            yield self._batch(rows, space.identity, vocabulary)

    @staticmethod
    def _batch(rows: Sequence[Any], identity: StoreIdentity, vocabulary: dict[int, str]) -> ExportBatch:
        dense = np.stack([row[7] for row in rows]).astype(np.float32, copy=False)
        companion = None
        if identity.companion_dimension:
            zeros = np.zeros(identity.companion_dimension, dtype=np.float32)
            companion = np.stack([zeros if row[8] is None else row[8] for row in rows]).astype(np.float32)
        return ExportBatch(
            chunk_ids=np.array([row[0] for row in rows], dtype=np.int64),
            document_ids=np.array([row[1] for row in rows], dtype=np.int64),
            collection_ids=np.array([row[2] for row in rows], dtype=np.int64),
            texts=[row[3] for row in rows],
            embeddings=PassageEmbeddings(dense, companion),
            terms=[
                PassageTerms(row[4], {vocabulary[i]: int(tf) for i, tf in zip(row[5], row[6], strict=True)})
                for row in rows
            ],
        )

    def state(self) -> dict[str, Any]:
        """Backend, chunks, the stored identity, and the database's side: space, table sizes, languages."""
        self._ensure_schema()
        connection = connections[self.using]
        with self._cursor() as cursor:
            space = self._current(cursor)
            cursor.execute("SELECT language, chunks FROM search_language_now ORDER BY language")
            languages = {row[0]: int(row[1]) for row in cursor.fetchall()}
            cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            row = cursor.fetchone()
            pgvector = row[0] if row else None
            # the planner's estimate (a count would read the whole vocabulary), counted before the first ANALYZE
            cursor.execute(
                "SELECT CASE WHEN reltuples >= 0 THEN reltuples::bigint ELSE (SELECT count(*) FROM search_term) END "
                "FROM pg_class WHERE relname = 'search_term'"
            )
            row = cursor.fetchone()
            terms = int(row[0]) if row else 0
            size = None
            if space is not None:
                cursor.execute(
                    "SELECT pg_total_relation_size('search_chunk') + pg_total_relation_size(%s::regclass)",
                    (space.table,),
                )
                size = int(cursor.fetchone()[0])
        stored = space.identity if space is not None else self.identity
        chunks = sum(languages.values())
        without = 0
        if space is not None and stored == self.identity:
            without = PostgresView(self, space).chunks_without_companion()
        return {
            "backend": self.backend,
            "chunks": chunks,
            "embedder": stored.embedder,
            "dimension": stored.dimension,
            "companion": stored.companion,
            "companion_dimension": stored.companion_dimension,
            "matches_configuration": stored == self.identity or chunks == 0,
            "chunks_without_companion": without,
            "languages": languages,
            "terms": terms,
            "space": space.id if space is not None else None,
            "vectors_table": space.table if space is not None else None,
            "size_bytes": size,
            "database": connection.settings_dict.get("NAME"),
            "pgvector": pgvector,
        }
