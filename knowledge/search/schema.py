"""The tables of the ``postgres`` search store, and the SQL that keeps its BM25 statistics exact.

- ``search_chunk``: one row per chunk, whatever embedded it: document, collection, text and lexical analysis
  (``term_ids`` with their counts ``tfs``, the passage's ``length`` and ``language``).
- ``search_term`` (term -> id, and how many chunks hold it), ``search_language`` (language -> chunks, total
  length) and ``search_posting`` (one row per term of a chunk: its count, the chunk's length and collection,
  and its impact, read by index-only scans of ``(term_id, collection_id, impact DESC, chunk_id) INCLUDE (tf,
  length)``): the BM25 index and statistics, kept by triggers on ``search_chunk`` in the writing transaction,
  whoever deletes (the store's writer, or a deleted ``knowledge_chunk`` through its own trigger). The writer
  creates a chunk's new terms (df 0) before its row. A transaction's changes to df and to the language totals
  wait in ``search_pending_*`` and are added in once, when it commits (a deferred trigger); readers see
  ``search_term_now`` and ``search_language_now``: the committed statistics plus their own transaction's
  pending changes.
- ``search_posting_recent``: the postings written since the last merge, in a table of the same shape whose
  index stays small (and in memory): adding a document then costs the same whatever the store holds, where an
  insert into the big index touches a page of it per posting. ``PostgresStore.merge`` moves them into
  ``search_posting`` in batches, in term order (in the background after a writer's commit leaves enough of
  them). Readers scan ``search_posting_all``, both tables (an ordered scan is a Merge Append of both indexes).
  A rebuild writes straight into ``search_posting`` (``BULK_SETTING``).
- A posting's ``impact`` is its BM25 term weight without the idf (``IMPACT_K1``, ``IMPACT_B``: the hybrid
  searcher's defaults) against the average length the writer saw when it wrote the chunk (the chunk's
  ``impact_average``): a term's postings in a collection are read best first, and a reader may stop after the
  first few. It is fixed at write time (the delete trigger recomputes it to find the row); exact scores are
  computed at query time from ``tf``, ``length`` and the statistics then.
- ``search_space``: the identities vectors were computed with (embedder, dimension, companion); each space's
  vectors are in their own table ``search_vectors_<id>`` (a pgvector column with an HNSW index, the companion's
  vector in its own nullable column), so that a second set can be filled beside the current one and switched.
  One space is ``current``; a ``building`` one is being filled; ``retired`` ones are dropped a while later.

Every write that changes the statistics takes one transaction-level advisory lock first (``LOCK_KEY``): writers
of the search tables run one after the other (as the faiss store's writers do), which rules out deadlocks
between the rows of common terms, and costs nothing to readers.
"""

from __future__ import annotations

from typing import Any

from ingestion.store import StoreIdentity

__all__ = [
    "BULK_SETTING",
    "IMPACT_B",
    "IMPACT_K1",
    "LOCK_KEY",
    "install",
    "installed",
    "pgvector_available",
    "pgvector_installed",
    "uninstall",
    "vectors_table_sql",
]

#: the advisory lock every writer of the search tables holds until its transaction ends ("kpsearch")
LOCK_KEY = 0x6B70_7365_6172_6368
#: a transaction-local setting: "on" while a rebuild fills a new space (its postings go straight to search_posting)
BULK_SETTING = "kp.search_bulk"
#: the BM25 parameters of the postings' impacts (ingestion.search.SearchConfig's bm25_k1 and bm25_b): they only
#: order each term's postings, whatever parameters a question is scored with
IMPACT_K1 = 0.9
IMPACT_B = 0.4

TABLES_SQL = f"""
CREATE TABLE IF NOT EXISTS search_space (
    id serial PRIMARY KEY,
    embedder text NOT NULL,
    dimension integer NOT NULL CHECK (dimension > 0),
    companion text NOT NULL DEFAULT '',
    companion_dimension integer NOT NULL DEFAULT 0 CHECK (companion_dimension >= 0),
    state text NOT NULL CHECK (state IN ('building', 'current', 'retired')),
    created_at timestamptz NOT NULL DEFAULT now(),
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS search_space_one_current ON search_space (state) WHERE state = 'current';

CREATE TABLE IF NOT EXISTS search_chunk (
    chunk_id bigint PRIMARY KEY,
    document_id bigint NOT NULL,
    collection_id bigint NOT NULL,
    text text NOT NULL,
    language text NOT NULL,
    length integer NOT NULL,
    impact_average real NOT NULL,
    term_ids integer[] NOT NULL,
    tfs integer[] NOT NULL,
    CHECK (cardinality(term_ids) = cardinality(tfs))
);
CREATE INDEX IF NOT EXISTS search_chunk_document ON search_chunk (document_id, chunk_id);
CREATE INDEX IF NOT EXISTS search_chunk_collection ON search_chunk (collection_id);

-- room left in each page: a df change stays on its page (a HOT update), with no new entries in the two indexes
CREATE TABLE IF NOT EXISTS search_term (
    term text PRIMARY KEY,
    id integer GENERATED ALWAYS AS IDENTITY UNIQUE,
    df integer NOT NULL
) WITH (fillfactor = 70);
ALTER TABLE search_term SET (fillfactor = 70);
CREATE TABLE IF NOT EXISTS search_language (
    language text PRIMARY KEY,
    chunks bigint NOT NULL,
    length bigint NOT NULL
);
-- a posting's impact: its term weight without the idf, fixed when written (IMMUTABLE: the delete finds the row)
CREATE OR REPLACE FUNCTION search_impact(tf integer, length integer, average real) RETURNS real
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN (tf / (tf + {IMPACT_K1}::float8 * (1 - {IMPACT_B}::float8
                                              + {IMPACT_B}::float8 * length / greatest(average, 1e-9)::float8)))::real;

-- the inverted index: one row per (term, chunk), read best first by index-only scans of its covering index
CREATE TABLE IF NOT EXISTS search_posting (
    chunk_id bigint NOT NULL,
    collection_id bigint NOT NULL,
    term_id integer NOT NULL,
    impact real NOT NULL,
    tf integer NOT NULL,
    length integer NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS search_posting_impact
    ON search_posting (term_id, collection_id, impact DESC, chunk_id) INCLUDE (tf, length);
-- the postings written since the last merge: a small table whose index stays in memory, so that adding a document
-- costs the same whatever the size of the store (inserting into the big index touches a page per posting); moved
-- into search_posting in batches, in term order, by search_merge_postings (PostgresStore.merge, in the background)
CREATE TABLE IF NOT EXISTS search_posting_recent (LIKE search_posting);
CREATE UNIQUE INDEX IF NOT EXISTS search_posting_recent_impact
    ON search_posting_recent (term_id, collection_id, impact DESC, chunk_id) INCLUDE (tf, length);
-- what readers scan: both (an ordered scan of the view is a Merge Append of the two indexes)
CREATE OR REPLACE VIEW search_posting_all AS
    SELECT chunk_id, collection_id, term_id, impact, tf, length FROM search_posting
    UNION ALL SELECT chunk_id, collection_id, term_id, impact, tf, length FROM search_posting_recent;

-- moves up to ``batch`` recent postings into search_posting (the caller holds the writers' lock); how many moved
CREATE OR REPLACE FUNCTION search_merge_postings(batch integer) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    moved bigint;
BEGIN
    WITH taken AS (
        DELETE FROM search_posting_recent r
        USING (SELECT ctid AS row FROM search_posting_recent LIMIT batch) s
        WHERE r.ctid = s.row
        RETURNING r.chunk_id, r.collection_id, r.term_id, r.impact, r.tf, r.length
    )
    INSERT INTO search_posting (chunk_id, collection_id, term_id, impact, tf, length)
        SELECT * FROM taken ORDER BY term_id, collection_id, impact DESC, chunk_id;
    GET DIAGNOSTICS moved = ROW_COUNT;
    RETURN moved;
END $$;

-- A transaction's changes to the statistics, added into search_term and search_language when it commits (once
-- per term and transaction: updating a row again and again in one long transaction, a rebuild, would make
-- every later update walk the whole chain of its versions). Only the writing transaction sees its own rows.
CREATE TABLE IF NOT EXISTS search_pending_term (term_id integer NOT NULL, n integer NOT NULL);
CREATE INDEX IF NOT EXISTS search_pending_term_id ON search_pending_term (term_id);
CREATE TABLE IF NOT EXISTS search_pending_language (
    language text NOT NULL,
    chunks bigint NOT NULL,
    length bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS search_pending_commit (txid bigint PRIMARY KEY);

-- what readers use: the statistics as committed, plus the reading transaction's own pending changes
CREATE OR REPLACE VIEW search_term_now AS
    SELECT t.term, t.id,
           t.df + coalesce((SELECT sum(p.n) FROM search_pending_term p WHERE p.term_id = t.id), 0) AS df
    FROM search_term t;
CREATE OR REPLACE VIEW search_language_now AS
    SELECT language, sum(chunks) AS chunks, sum(length) AS length
    FROM (SELECT language, chunks, length FROM search_language
          UNION ALL SELECT language, chunks, length FROM search_pending_language) s
    GROUP BY language HAVING sum(chunks) > 0;

CREATE OR REPLACE FUNCTION search_schedule_fold() RETURNS void LANGUAGE sql AS $$
    INSERT INTO search_pending_commit (txid) VALUES (txid_current()) ON CONFLICT (txid) DO NOTHING
$$;

CREATE OR REPLACE FUNCTION search_fold() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- at commit (a deferred trigger), under the writers' lock: the pending rows are this transaction's
    UPDATE search_term t SET df = t.df + p.n
        FROM (SELECT term_id, sum(n) AS n FROM search_pending_term GROUP BY term_id ORDER BY term_id) p
        WHERE t.id = p.term_id;
    DELETE FROM search_term WHERE df <= 0 AND id IN (SELECT term_id FROM search_pending_term);
    INSERT INTO search_language AS s (language, chunks, length)
        SELECT language, sum(chunks), sum(length) FROM search_pending_language GROUP BY language ORDER BY language
        ON CONFLICT (language) DO UPDATE SET chunks = s.chunks + excluded.chunks, length = s.length + excluded.length;
    DELETE FROM search_language WHERE chunks <= 0;
    DELETE FROM search_pending_term;
    DELETE FROM search_pending_language;
    DELETE FROM search_pending_commit;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS search_fold ON search_pending_commit;
CREATE CONSTRAINT TRIGGER search_fold AFTER INSERT ON search_pending_commit
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION search_fold();

CREATE OR REPLACE FUNCTION search_chunk_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM added) THEN
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock({LOCK_KEY});
    IF current_setting('{BULK_SETTING}', true) = 'on' THEN
        -- a rebuild: straight into the big table (its rows would all be moved again)
        INSERT INTO search_posting (chunk_id, collection_id, term_id, impact, tf, length)
            SELECT a.chunk_id, a.collection_id, u.id, search_impact(u.tf, a.length, a.impact_average), u.tf,
                   a.length
            FROM added a, unnest(a.term_ids, a.tfs) AS u(id, tf);
    ELSE
        INSERT INTO search_posting_recent (chunk_id, collection_id, term_id, impact, tf, length)
            SELECT a.chunk_id, a.collection_id, u.id, search_impact(u.tf, a.length, a.impact_average), u.tf,
                   a.length
            FROM added a, unnest(a.term_ids, a.tfs) AS u(id, tf);
    END IF;
    INSERT INTO search_pending_term (term_id, n)
        SELECT u.id, count(*) FROM added a, unnest(a.term_ids) AS u(id) GROUP BY u.id;
    INSERT INTO search_pending_language (language, chunks, length)
        SELECT a.language, count(*), sum(a.length) FROM added a GROUP BY a.language;
    PERFORM search_schedule_fold();
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION search_chunk_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM removed) THEN
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock({LOCK_KEY});
    IF NOT EXISTS (SELECT 1 FROM search_chunk) THEN
        -- the store was emptied: no need to count what left
        DELETE FROM search_posting;
        DELETE FROM search_posting_recent;
        DELETE FROM search_term;
        DELETE FROM search_language;
        DELETE FROM search_pending_term;
        DELETE FROM search_pending_language;
        RETURN NULL;
    END IF;
    -- each posting is in one of the two tables (a data-modifying WITH runs to completion)
    WITH g AS MATERIALIZED (
        SELECT u.id, r.collection_id, search_impact(u.tf, r.length, r.impact_average) AS impact, r.chunk_id
        FROM removed r, unnest(r.term_ids, r.tfs) AS u(id, tf)
    ), recent AS (
        DELETE FROM search_posting_recent p USING g
        WHERE p.term_id = g.id AND p.collection_id = g.collection_id AND p.impact = g.impact
          AND p.chunk_id = g.chunk_id
    )
    DELETE FROM search_posting p USING g
        WHERE p.term_id = g.id AND p.collection_id = g.collection_id AND p.impact = g.impact
          AND p.chunk_id = g.chunk_id;
    INSERT INTO search_pending_term (term_id, n)
        SELECT u.id, -count(*) FROM removed r, unnest(r.term_ids) AS u(id) GROUP BY u.id;
    INSERT INTO search_pending_language (language, chunks, length)
        SELECT language, -count(*), -sum(length) FROM removed GROUP BY language;
    PERFORM search_schedule_fold();
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS search_chunk_added ON search_chunk;
CREATE TRIGGER search_chunk_added AFTER INSERT ON search_chunk
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION search_chunk_added();
DROP TRIGGER IF EXISTS search_chunk_removed ON search_chunk;
CREATE TRIGGER search_chunk_removed AFTER DELETE ON search_chunk
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION search_chunk_removed();

-- A deleted knowledge chunk leaves nothing behind in the search tables, whoever deletes it.
CREATE OR REPLACE FUNCTION search_knowledge_chunk_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM search_chunk s USING removed r WHERE s.chunk_id = r.id;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION search_knowledge_chunk_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE search_chunk CASCADE;
    TRUNCATE search_term, search_language, search_posting, search_posting_recent, search_pending_term,
        search_pending_language;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS search_knowledge_chunk_deleted ON knowledge_chunk;
CREATE TRIGGER search_knowledge_chunk_deleted AFTER DELETE ON knowledge_chunk
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION search_knowledge_chunk_deleted();
DROP TRIGGER IF EXISTS search_knowledge_chunk_truncated ON knowledge_chunk;
CREATE TRIGGER search_knowledge_chunk_truncated AFTER TRUNCATE ON knowledge_chunk
    FOR EACH STATEMENT EXECUTE FUNCTION search_knowledge_chunk_truncated();
"""

UNINSTALL_SQL = """
DROP TRIGGER IF EXISTS search_knowledge_chunk_deleted ON knowledge_chunk;
DROP TRIGGER IF EXISTS search_knowledge_chunk_truncated ON knowledge_chunk;
DROP FUNCTION IF EXISTS search_knowledge_chunk_deleted();
DROP FUNCTION IF EXISTS search_knowledge_chunk_truncated();
DROP VIEW IF EXISTS search_term_now, search_language_now, search_posting_all;
DROP TABLE IF EXISTS search_chunk, search_posting, search_posting_recent, search_term, search_language, search_space,
    search_pending_term, search_pending_language, search_pending_commit CASCADE;
DROP FUNCTION IF EXISTS search_chunk_added();
DROP FUNCTION IF EXISTS search_chunk_removed();
DROP FUNCTION IF EXISTS search_fold();
DROP FUNCTION IF EXISTS search_schedule_fold();
DROP FUNCTION IF EXISTS search_merge_postings(integer);
DROP FUNCTION IF EXISTS search_impact(integer, integer, real);
"""


def vectors_table(space_id: int) -> str:
    """The name of the table holding the vectors of space ``space_id``."""
    return f"search_vectors_{int(space_id)}"


def vectors_table_sql(
    space_id: int, identity: StoreIdentity, *, hnsw: bool, m: int = 16, ef_construction: int = 64
) -> str:
    """The DDL of a space's vector table (``hnsw=False``: without its HNSW index, built after a bulk fill)."""
    table = vectors_table(space_id)
    companion = f",\n    companion vector({int(identity.companion_dimension)})" if identity.companion_dimension else ""
    sql = f"""
CREATE TABLE {table} (
    chunk_id bigint PRIMARY KEY REFERENCES search_chunk (chunk_id) ON DELETE CASCADE,
    document_id bigint NOT NULL,
    collection_id bigint NOT NULL,
    embedding vector({int(identity.dimension)}) NOT NULL{companion}
);
CREATE INDEX {table}_document ON {table} (document_id);
CREATE INDEX {table}_collection ON {table} (collection_id);
"""
    if identity.companion_dimension:
        # chunks embedded before the companion was configured: counted without reading the whole table
        sql += f"CREATE INDEX {table}_no_companion ON {table} (chunk_id) WHERE companion IS NULL;\n"
    if hnsw:
        sql += hnsw_index_sql(space_id, m=m, ef_construction=ef_construction)
    return sql


def hnsw_index_sql(space_id: int, *, m: int = 16, ef_construction: int = 64) -> str:
    """The DDL of a space's HNSW index (cosine; ``m`` and ``ef_construction`` as pgvector's defaults unless
    given)."""
    table = vectors_table(space_id)
    return (
        f"CREATE INDEX {table}_hnsw ON {table} USING hnsw (embedding vector_cosine_ops) "
        f"WITH (m = {int(m)}, ef_construction = {int(ef_construction)});\n"
    )


def _scalar(connection: Any, sql: str, params: tuple[Any, ...] = ()) -> Any:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return None if row is None else row[0]


def pgvector_available(connection: Any) -> bool:
    """Whether the server can install the ``vector`` extension (``connection``: a Django connection)."""
    if connection.vendor != "postgresql":
        return False
    return bool(_scalar(connection, "SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'"))


def pgvector_installed(connection: Any) -> bool:
    """Whether the ``vector`` extension is installed in the database."""
    if connection.vendor != "postgresql":
        return False
    return bool(_scalar(connection, "SELECT count(*) FROM pg_extension WHERE extname = 'vector'"))


def installed(connection: Any) -> bool:
    """Whether the search tables exist in the database."""
    if connection.vendor != "postgresql":
        return False
    return _scalar(connection, "SELECT to_regclass('search_space')") is not None


def install(connection: Any) -> None:
    """Create the ``vector`` extension (when missing) and the search tables, functions and triggers.

    Idempotent; raises the database's error when the extension cannot be created (not available, or a role
    without the right to create it).
    """
    with connection.cursor() as cursor:
        if not pgvector_installed(connection):
            cursor.execute("CREATE EXTENSION IF NOT EXISTS vector")
        cursor.execute(TABLES_SQL)


def uninstall(connection: Any) -> None:
    """Drop the search tables (and every space's vectors), functions and triggers; the extension stays."""
    if not installed(connection):
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM search_space")
        for (space_id,) in cursor.fetchall():
            cursor.execute(f"DROP TABLE IF EXISTS {vectors_table(space_id)}")
        cursor.execute(UNINSTALL_SQL)
