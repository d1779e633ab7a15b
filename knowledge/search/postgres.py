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
"""

from __future__ import annotations

import logging
import math
import struct
import threading
import time
import weakref
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, transaction

from ingestion.errors import IndexBusyError, IndexMismatchError
from ingestion.language import PassageTerms, TextAnalyzer, bm25_idf, bm25_term_weight, passage_terms
from ingestion.store import ChunkFacts, ExportBatch, PassageEmbeddings, StoreIdentity

from . import schema
from .checks import PGVECTOR_IMAGE, require_postgres_store

__all__ = ["PostgresStore", "PostgresView", "PostgresWriter", "current_identity"]

#: rows per INSERT statement (each row of search_chunk has 9 parameters)
_INSERT_ROWS = 500
#: pgvector 0.6's largest hnsw.ef_search
_EF_SEARCH_MAX = 1000
#: up to this many allowed collections, each term's postings are read best first over all of them at once
_MERGED_COLLECTIONS = 32

logger = logging.getLogger(__name__)

_analyzer: TextAnalyzer | None = None
_analyzer_lock = threading.Lock()


def _default_analyzer() -> TextAnalyzer:
    global _analyzer
    with _analyzer_lock:
        if _analyzer is None:
            _analyzer = TextAnalyzer()
        return _analyzer


# ---- pgvector's binary format, straight from and to numpy -------------------------------------------------
class _Vector:
    """A float32 vector as a query parameter (numpy arrays themselves keep their usual adaptation)."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array


_VECTOR_TYPES: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
_VECTOR_TYPES_LOCK = threading.Lock()


def _register_vector(raw: Any) -> None:
    """Teach one psycopg connection pgvector's binary format (once per connection)."""
    with _VECTOR_TYPES_LOCK:
        if raw in _VECTOR_TYPES:
            return
    from psycopg.adapt import Dumper, Loader
    from psycopg.pq import Format

    with raw.cursor() as cursor:
        cursor.execute("SELECT oid FROM pg_type WHERE typname = 'vector'")
        row = cursor.fetchone()
    if row is None:
        raise ImproperlyConfigured(
            "the pgvector extension is not installed in the database of DATABASE_URL: run `manage.py migrate` "
            f"on a server with pgvector (e.g. the {PGVECTOR_IMAGE} image)"
        )
    oid = row[0]

    class VectorDumper(Dumper):
        format = Format.BINARY

        def dump(self, obj: Any) -> bytes:
            values = np.asarray(obj.array, dtype=">f4").reshape(-1)
            return struct.pack(">HH", len(values), 0) + values.tobytes()

    VectorDumper.oid = oid

    class VectorLoader(Loader):
        format = Format.BINARY

        def load(self, data: Any) -> np.ndarray:
            return np.frombuffer(bytes(data), dtype=">f4", offset=4).astype(np.float32)

    raw.adapters.register_dumper(_Vector, VectorDumper)
    raw.adapters.register_loader(oid, VectorLoader)
    with _VECTOR_TYPES_LOCK:
        _VECTOR_TYPES[raw] = True


@dataclass(frozen=True)
class _Space:
    """One set of vectors: the identity that computed them and their table."""

    id: int
    identity: StoreIdentity
    state: str

    @property
    def table(self) -> str:
        return schema.vectors_table(self.id)


@dataclass(frozen=True)
class _Scoring:
    """What BM25 scores a question's postings with: its terms (rarest first), their idfs, the parameters."""

    term_ids: list[int]
    idfs: list[float]
    k1: float
    b: float
    average: float


def _describe(identity: StoreIdentity) -> str:
    text = f"{identity.embedder} (dim {identity.dimension})"
    if identity.companion:
        text += f" with the companion {identity.companion} (dim {identity.companion_dimension})"
    return text


def _filters(
    alias: str, collections: Collection[int] | None, documents: Collection[int] | None
) -> tuple[str, list[Any]]:
    clauses, params = [], []
    if collections is not None:
        clauses.append(f"{alias}collection_id = ANY(%s::bigint[])")
        params.append(sorted(int(c) for c in collections))
    if documents is not None:
        clauses.append(f"{alias}document_id = ANY(%s::bigint[])")
        params.append(sorted(int(d) for d in documents))
    return "".join(f" AND {c}" for c in clauses), params


def _nothing_allowed(collections: Collection[int] | None, documents: Collection[int] | None) -> bool:
    return (collections is not None and len(collections) == 0) or (documents is not None and len(documents) == 0)


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
        merge_batch: int = 20_000,
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
        #: postings moved per merge transaction (the writers' lock is held for one batch at a time)
        self.merge_batch = merge_batch
        self._schema_ready = False
        self._merging: threading.Thread | None = None
        self._merging_lock = threading.Lock()

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
            f"{_describe(self.identity)}: run `manage.py rebuild_index`"
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

    def merge(self) -> int:
        """Move the recent postings into the big posting table, a batch per transaction, in term order; how many
        moved. Stops early when another writer holds the lock (its commit starts the next merge)."""
        self._ensure_schema()
        moved = 0
        while True:
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
        with self._merging_lock:
            if self._merging is not None and self._merging.is_alive():
                return
            self._merging = threading.Thread(target=self._merge_in_background, name="search-merge", daemon=True)
            self._merging.start()

    def _merge_in_background(self) -> None:
        try:
            moved = self.merge()
            logger.info("search store: %d recent postings merged", moved)
        except Exception:  # the next writer's commit tries again
            logger.exception("search store: merging the recent postings failed")
        finally:
            connections[self.using].close()

    def wait_for_merge(self, timeout: float | None = None) -> None:
        """Wait for a merge started in the background by this store object (tests, benchmarks)."""
        thread = self._merging
        if thread is not None:
            thread.join(timeout)

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


class PostgresView:
    """A read of the ``postgres`` store: each call is one query (or a few) on the committed rows.

    ``space`` None: the store holds nothing (every search finds nothing)."""

    def __init__(self, store: PostgresStore, space: _Space | None) -> None:
        self.store = store
        self.space = space

    def __len__(self) -> int:
        if self.space is None:
            return 0
        with self.store._cursor() as cursor:
            cursor.execute("SELECT coalesce(sum(chunks), 0) FROM search_language_now")
            return int(cursor.fetchone()[0])

    def languages(self) -> frozenset[str]:
        if self.space is None:
            return frozenset()
        with self.store._cursor() as cursor:
            cursor.execute("SELECT language FROM search_language_now")
            return frozenset(row[0] for row in cursor.fetchall())

    # ---- dense ------------------------------------------------------------------------------------------
    def dense(
        self, vector: np.ndarray, k: int, *, collections: Collection[int] | None, documents: Collection[int] | None
    ) -> list[tuple[int, float]]:
        space = self.space
        if space is None or k <= 0 or _nothing_allowed(collections, documents):
            return []
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if query.shape[0] != space.identity.dimension:
            raise ValueError(
                f"a query vector of dimension {query.shape[0]} for a store of dimension {space.identity.dimension}"
            )
        where, params = _filters("", collections, documents)
        store = self.store
        with transaction.atomic(using=store.using, savepoint=False), store._cursor() as cursor:
            ef_search = self._ef_search(cursor, k, where, params)
            if ef_search is None:
                return self._exact(cursor, query, k, where, params)
            hits = self._hnsw(cursor, query, k, where, params, ef_search)
            if len(hits) < k and where and ef_search < _EF_SEARCH_MAX:
                # an exact scan of a wide filter costs far more than a second HNSW scan
                hits = self._hnsw(cursor, query, k, where, params, _EF_SEARCH_MAX)
            if len(hits) < k:
                if not where:
                    cursor.execute(f"SELECT count(*) FROM (SELECT 1 FROM {space.table} LIMIT %s) allowed", (k,))
                    if int(cursor.fetchone()[0]) <= len(hits):
                        return hits
                return self._exact(cursor, query, k, where, params)
            return hits

    def _ef_search(self, cursor: Any, k: int, where: str, params: list[Any]) -> int | None:
        """The hnsw.ef_search of this search, or None when the allowed rows are better searched exactly.

        pgvector 0.6 filters the ``ef_search`` nearest neighbours it found: about ``ef_search * share`` of them are
        allowed. A filter allowing at most ``exact_limit`` rows, or so few that even the largest ``ef_search``
        would leave fewer than ``k`` of them (the planner's estimate), is searched exactly at once; otherwise
        ``ef_search`` is large enough for the store's size and for ``k`` allowed rows with a margin (3 k: at 1M
        chunks and a 25% filter, 1.5 k left one question in twenty short, and its exact scan took 0.8 s)."""
        store = self.store
        assert self.space is not None
        table = self.space.table
        if where:
            # a bounded count: what it costs does not grow with the allowed set
            cursor.execute(
                f"SELECT count(*) FROM (SELECT 1 FROM {table} WHERE true{where} LIMIT %s) allowed",
                (*params, store.exact_limit + 1),
            )
            if int(cursor.fetchone()[0]) <= store.exact_limit:
                return None
        # the planner's row count (0 before the table was first analysed)
        cursor.execute("SELECT greatest(reltuples, 0) FROM pg_class WHERE oid = %s::regclass", (table,))
        total = float(cursor.fetchone()[0])
        if store.ef_search is not None:
            ef_search = max(store.ef_search, k)
        else:
            ef_search = max(3 * k, math.ceil(total * store.ef_search_per_chunk))
        if where and total > 0:
            cursor.execute(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {table} WHERE true{where}", params)
            share = min(float(cursor.fetchone()[0][0]["Plan"]["Plan Rows"]) / total, 1.0)
            if _EF_SEARCH_MAX * share < k:
                return None
            # pgvector's filtered yield varies from question to question: a wide margin
            ef_search = max(ef_search, math.ceil(3 * k / max(share, 1e-9)))
        return min(ef_search, _EF_SEARCH_MAX)

    def _hnsw(
        self, cursor: Any, query: np.ndarray, k: int, where: str, params: list[Any], ef_search: int
    ) -> list[tuple[int, float]]:
        assert self.space is not None
        cursor.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(min(ef_search, _EF_SEARCH_MAX)),))
        cursor.execute(
            f"SELECT chunk_id, 1 - (embedding <=> %b) FROM {self.space.table} WHERE true{where} "
            "ORDER BY embedding <=> %b LIMIT %s",
            (_Vector(query), *params, _Vector(query), k),
        )
        return [(int(row[0]), float(row[1])) for row in cursor.fetchall()]

    def _exact(self, cursor: Any, query: np.ndarray, k: int, where: str, params: list[Any]) -> list[tuple[int, float]]:
        assert self.space is not None
        # ordered by an expression the HNSW index cannot serve: every allowed row is compared
        cursor.execute(
            f"SELECT chunk_id, 1 - d FROM (SELECT chunk_id, (embedding <=> %b) + 0 AS d FROM {self.space.table} "
            f"WHERE true{where}) scored ORDER BY d, chunk_id LIMIT %s",
            (_Vector(query), *params, k),
        )
        return [(int(row[0]), float(row[1])) for row in cursor.fetchall()]

    # ---- lexical ----------------------------------------------------------------------------------------
    def lexical(
        self,
        terms: Sequence[str],
        k: int,
        *,
        collections: Collection[int] | None,
        documents: Collection[int] | None,
        k1: float,
        b: float,
    ) -> list[tuple[int, float]]:
        if self.space is None or k <= 0 or not terms or _nothing_allowed(collections, documents):
            return []
        unique = list(dict.fromkeys(terms))
        store = self.store
        with store._cursor() as cursor:
            cursor.execute(
                "SELECT s.n, s.total, t.ids, t.dfs FROM "
                "(SELECT coalesce(sum(chunks), 0) AS n, coalesce(sum(length), 0) AS total FROM search_language_now) s, "
                "(SELECT coalesce(array_agg(id ORDER BY df, id), '{}') AS ids, "
                "coalesce(array_agg(df ORDER BY df, id), '{}') AS dfs "
                "FROM search_term_now WHERE term = ANY(%s::text[]) AND df > 0) t",
                (unique,),
            )
            n, total, ids, dfs = cursor.fetchone()
            if not ids or n <= 0:
                return []
            n, total = int(n), int(total)
            scoring = _Scoring(
                term_ids=[int(i) for i in ids],
                idfs=[bm25_idf(int(df), n) for df in dfs],
                k1=float(k1),
                b=float(b),
                average=max(total / n, 1e-9),
            )
            if documents is not None:
                where, filter_params = _filters("", collections, documents)
                cursor.execute(
                    f"SELECT count(*) FROM (SELECT 1 FROM search_chunk WHERE true{where} LIMIT %s) allowed",
                    (*filter_params, store.exact_limit + 1),
                )
                if int(cursor.fetchone()[0]) <= store.exact_limit:
                    # a few documents: every allowed chunk holding a term is scored exactly
                    cursor.execute(
                        f"SELECT chunk_id FROM search_chunk WHERE true{where} AND term_ids && %s::int[]",
                        (*filter_params, scoring.term_ids),
                    )
                    return self._exact_scores(cursor, [int(row[0]) for row in cursor.fetchall()], scoring)[:k]
            if collections is None:
                # every collection the store holds (a skip scan of the collection index: one probe each)
                cursor.execute(
                    "WITH RECURSIVE c(id) AS (SELECT min(collection_id) FROM search_chunk UNION ALL "
                    "SELECT (SELECT min(collection_id) FROM search_chunk WHERE collection_id > c.id) FROM c "
                    "WHERE c.id IS NOT NULL) SELECT coalesce(array_agg(id), '{}') FROM c WHERE id IS NOT NULL"
                )
                allowed_collections = [int(c) for c in cursor.fetchone()[0]]
            else:
                allowed_collections = sorted(int(c) for c in collections)
            depth = max(store.lexical_depth, 1)
            # a term held by more chunks than the depth may have postings left unread: scores then are partial
            truncated = int(max(dfs)) > depth
            document_clause = (
                ""
                if documents is None
                else " AND q.chunk_id IN (SELECT chunk_id FROM search_chunk"
                " WHERE document_id = ANY(%(documents)s::bigint[]))"
            )
            if len(allowed_collections) <= _MERGED_COLLECTIONS:
                # each term's best postings over the allowed collections: one ordered index scan per collection,
                # merged (a Merge Append that stops after the depth): at most depth + collections rows a term
                branches = " UNION ALL ".join(
                    f"(SELECT q.chunk_id, q.term_id, q.tf, q.length, q.impact FROM search_posting_all q "
                    f"WHERE q.term_id = t.id AND q.collection_id = %(c{i})s{document_clause} "
                    "ORDER BY q.impact DESC, q.chunk_id)"
                    for i in range(len(allowed_collections))
                )
                best = f"SELECT * FROM ({branches}) b ORDER BY b.impact DESC, b.chunk_id LIMIT %(depth)s"
                sources = "unnest(%(terms)s::int[]) AS t(id)"
            else:
                # many collections: the depth in each
                best = (
                    "SELECT q.chunk_id, q.term_id, q.tf, q.length FROM search_posting_all q "
                    f"WHERE q.term_id = t.id AND q.collection_id = c.id{document_clause} "
                    "ORDER BY q.impact DESC, q.chunk_id LIMIT %(depth)s"
                )
                sources = "unnest(%(terms)s::int[]) AS t(id) CROSS JOIN unnest(%(collections)s::bigint[]) AS c(id)"
            # and their term weights, ingestion.language.bm25_term_weight's, operation for operation (each posting's
            # idf looked up in the query's arrays: no join for the planner to misjudge)
            weight = (
                "(%(idfs)s::float8[])[array_position(%(terms)s::int[], p.term_id)] * p.tf"
                " / (p.tf + %(k1)s * (%(one_minus_b)s + %(b)s * p.length / %(average)s))"
            )
            parameters = {
                "idfs": scoring.idfs,
                "terms": scoring.term_ids,
                "collections": allowed_collections,
                **{f"c{i}": c for i, c in enumerate(allowed_collections)},
                "k1": scoring.k1,
                "one_minus_b": 1.0 - scoring.b,
                "b": scoring.b,
                "average": scoring.average,
                "depth": depth,
                "limit": max(k, store.candidate_rescore) if truncated else k,
                "documents": None if documents is None else sorted(int(d) for d in documents),
            }
            cursor.execute(
                f"SELECT p.chunk_id, sum({weight}) AS score FROM {sources} CROSS JOIN LATERAL ({best}) p "
                "GROUP BY p.chunk_id ORDER BY score DESC, p.chunk_id LIMIT %(limit)s",
                parameters,
            )
            if not truncated:  # every posting read: the sums are the scores
                return [(int(row[0]), float(row[1])) for row in cursor.fetchall()]
            # postings left unread: the best candidates by what was read of them are scored exactly (ordering them
            # by an upper bound instead, what was read plus the last weight read of each term whose list was cut
            # without them, found fewer of the exact top 10 in bench/bench_pg_search.py: 0.78 against 0.88 at 300k)
            found = [int(row[0]) for row in cursor.fetchall()]
            return self._exact_scores(cursor, found, scoring)[:k]

    @staticmethod
    def _exact_scores(cursor: Any, chunk_ids: Sequence[int], scoring: _Scoring) -> list[tuple[int, float]]:
        """The BM25 scores of ``chunk_ids`` over every query term, best first (ties: the smaller id first)."""
        if not chunk_ids:
            return []
        # (chunk, its length, the position of a query term, that term's count): only the terms the chunk holds
        cursor.execute(
            "SELECT c.chunk_id, c.length, q.i, c.tfs[q.at] FROM search_chunk c CROSS JOIN LATERAL "
            "(SELECT u.i, array_position(c.term_ids, u.id) AS at FROM unnest(%s::int[]) WITH ORDINALITY AS u(id, i)) q "
            "WHERE c.chunk_id = ANY(%s::bigint[]) AND q.at IS NOT NULL",
            (scoring.term_ids, list(chunk_ids)),
        )
        held: dict[int, tuple[int, dict[int, int]]] = {}
        for chunk, length, position, tf in cursor.fetchall():
            held.setdefault(int(chunk), (int(length), {}))[1][int(position) - 1] = int(tf)
        scored = []
        for chunk, (length, tfs) in held.items():
            # summed in the terms' order (rarest first)
            score = 0.0
            for position, idf in enumerate(scoring.idfs):
                if position in tfs:
                    score += idf * bm25_term_weight(tfs[position], length, scoring.average, scoring.k1, scoring.b)
            scored.append((chunk, float(score)))
        scored.sort(key=lambda hit: (-hit[1], hit[0]))
        return scored

    # ---- companion and facts ----------------------------------------------------------------------------
    def companion_scores(self, chunk_ids: Sequence[int], vector: np.ndarray) -> dict[int, float]:
        space = self.space
        if space is None or not space.identity.companion_dimension or len(chunk_ids) == 0:
            return {}
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if query.shape[0] != space.identity.companion_dimension:
            raise ValueError(
                f"a companion query vector of dimension {query.shape[0]} for companion vectors of dimension "
                f"{space.identity.companion_dimension}"
            )
        norm = float(np.linalg.norm(query))
        if norm == 0.0:
            return {int(i): 0.0 for i in chunk_ids}
        query = query / norm
        with self.store._cursor() as cursor:
            # stored companion vectors are unit length or zero (not given): the inner product is the cosine, 0
            cursor.execute(
                f"SELECT chunk_id, coalesce(-(companion <#> %b), 0) FROM {space.table} "
                "WHERE chunk_id = ANY(%s::bigint[])",
                (_Vector(query), [int(i) for i in chunk_ids]),
            )
            return {int(row[0]): float(row[1]) for row in cursor.fetchall()}

    def chunks_without_companion(self) -> int:
        space = self.space
        if space is None or not space.identity.companion_dimension:
            return 0
        with self.store._cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {space.table} WHERE companion IS NULL")
            return int(cursor.fetchone()[0])

    def facts(self, chunk_ids: Sequence[int]) -> dict[int, ChunkFacts]:
        space = self.space
        if space is None or len(chunk_ids) == 0:
            return {}
        with self.store._cursor() as cursor:
            cursor.execute(
                f"SELECT c.chunk_id, c.document_id, c.text, v.embedding FROM search_chunk c "
                f"JOIN {space.table} v ON v.chunk_id = c.chunk_id WHERE c.chunk_id = ANY(%s::bigint[])",
                ([int(i) for i in chunk_ids],),
                binary=True,
            )
            return {int(row[0]): ChunkFacts(int(row[1]), row[2], row[3]) for row in cursor.fetchall()}


class PostgresWriter:
    """Changes to the ``postgres`` store, each executed at once in the caller's transaction."""

    def __init__(self, store: PostgresStore, space: _Space) -> None:
        self.store = store
        self.space = space
        #: (chunks, total length) the postings' impacts are computed against: read at the first add, then kept up
        #: to date with what this writer adds (reading it again at each add of a rebuild would grow with it)
        self._lengths: tuple[int, int] | None = None

    def _impact_average(self, cursor: Any, lengths: Sequence[int]) -> float:
        """The average length the impacts of a batch with ``lengths`` are computed against (then counted in)."""
        if self._lengths is None:
            cursor.execute("SELECT coalesce(sum(chunks), 0), coalesce(sum(length), 0) FROM search_language_now")
            chunks, total = cursor.fetchone()
            self._lengths = (int(chunks), int(total))
        chunks, total = self._lengths
        self._lengths = (chunks + len(lengths), total + sum(lengths))
        if chunks <= 0:  # an empty store: the batch's own average
            chunks, total = self._lengths
        return max(total / max(chunks, 1), 1.0)

    @contextmanager
    def _writing(self) -> Iterator[Any]:
        store = self.store
        with transaction.atomic(using=store.using, savepoint=False), store._cursor() as cursor:
            store._lock(cursor)
            yield cursor

    def add(
        self,
        chunk_ids: Sequence[int],
        embeddings: PassageEmbeddings,
        *,
        document_id: int,
        collection_id: int,
        texts: Sequence[str],
        terms: Sequence[PassageTerms] | None = None,
    ) -> None:
        identity = self.space.identity
        ids = [int(i) for i in chunk_ids]
        n = len(ids)
        if len(embeddings) != n or len(texts) != n or (terms is not None and len(terms) != n):
            raise ValueError(
                f"{n} chunk ids for {len(embeddings)} embeddings, {len(texts)} texts"
                + ("" if terms is None else f" and {len(terms)} analyses")
            )
        if len(set(ids)) != n:
            raise ValueError("the same chunk id twice in one add")
        dense = np.asarray(embeddings.dense, dtype=np.float32)
        if dense.shape[1] != identity.dimension:
            raise ValueError(
                f"vectors of dimension {dense.shape[1]} given to a search store of dimension {identity.dimension}"
            )
        companion = embeddings.companion
        if companion is not None:
            if not identity.companion_dimension:
                raise ValueError("companion vectors given to a search store without a companion")
            if companion.shape[1] != identity.companion_dimension:
                raise ValueError(
                    f"companion vectors of dimension {companion.shape[1]} given to a search store whose companion "
                    f"has dimension {identity.companion_dimension}"
                )
        if n == 0:
            return
        analyses = list(terms) if terms is not None else passage_terms(_default_analyzer(), texts)
        vocabulary = sorted({term for analysis in analyses for term in analysis.counts})
        with self._writing() as cursor:
            cursor.execute("DELETE FROM search_chunk WHERE chunk_id = ANY(%s::bigint[])", (ids,))
            # new terms first (df 0: the chunks' rows count them), in term order
            cursor.execute(
                "INSERT INTO search_term (term, df) SELECT term, 0 FROM unnest(%s::text[]) AS term "
                "ON CONFLICT (term) DO NOTHING",
                (vocabulary,),
            )
            cursor.execute("SELECT term, id FROM search_term WHERE term = ANY(%s::text[])", (vocabulary,))
            term_ids = dict(cursor.fetchall())
            impact_average = self._impact_average(cursor, [analysis.length for analysis in analyses])
            for start in range(0, n, _INSERT_ROWS):
                rows = range(start, min(n, start + _INSERT_ROWS))
                params: list[Any] = []
                for i in rows:
                    analysis = analyses[i]
                    params += [
                        ids[i],
                        int(document_id),
                        int(collection_id),
                        texts[i],
                        analysis.language,
                        analysis.length,
                        impact_average,
                        [term_ids[term] for term in analysis.counts],
                        [int(count) for count in analysis.counts.values()],
                    ]
                values = ", ".join(["(%s, %s, %s, %s, %s, %s, %s::real, %s::int[], %s::int[])"] * len(rows))
                cursor.execute(
                    "INSERT INTO search_chunk (chunk_id, document_id, collection_id, text, language, length, "
                    f"impact_average, term_ids, tfs) VALUES {values}",
                    params,
                )
                vector_params: list[Any] = []
                for i in rows:
                    vector_params += [ids[i], int(document_id), int(collection_id), _Vector(dense[i])]
                    if identity.companion_dimension:
                        vector_params.append(None if companion is None else _Vector(companion[i]))
                placeholder = "(%s, %s, %s, %b, %b)" if identity.companion_dimension else "(%s, %s, %s, %b)"
                columns = "chunk_id, document_id, collection_id, embedding" + (
                    ", companion" if identity.companion_dimension else ""
                )
                cursor.execute(
                    f"INSERT INTO {self.space.table} ({columns}) VALUES {', '.join([placeholder] * len(rows))}",
                    vector_params,
                )
            store = self.store
            if store.merge_after > 0 and self.space.state != "building":
                cursor.execute(
                    "SELECT count(*) FROM (SELECT 1 FROM search_posting_recent LIMIT %s) recent", (store.merge_after,)
                )
                if int(cursor.fetchone()[0]) >= store.merge_after:
                    transaction.on_commit(store._merge_soon, using=store.using)

    def remove_document(self, document_id: int) -> None:
        with self._writing() as cursor:
            cursor.execute("DELETE FROM search_chunk WHERE document_id = %s", (int(document_id),))

    def remove_ids(self, chunk_ids: Collection[int]) -> None:
        ids = sorted(int(i) for i in chunk_ids)
        if not ids:
            return
        with self._writing() as cursor:
            cursor.execute("DELETE FROM search_chunk WHERE chunk_id = ANY(%s::bigint[])", (ids,))

    def clear(self) -> None:
        with self._writing() as cursor:
            cursor.execute("DELETE FROM search_chunk")
