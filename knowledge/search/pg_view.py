"""Reading the ``postgres`` store: dense (HNSW or exact), lexical (BM25 from the postings), the companion's
cosines and the chunks' facts (the design: ``knowledge.search.postgres``)."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from django.db import transaction

from ingestion.language import bm25_idf, bm25_term_weight
from ingestion.store import ChunkFacts

from .pg_common import _EF_SEARCH_MAX, _MERGED_COLLECTIONS, _filters, _nothing_allowed, _Scoring, _Space, _Vector

if TYPE_CHECKING:
    from .postgres import PostgresStore

__all__ = ["PostgresView"]


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
    @staticmethod
    def _term_statistics(cursor: Any, terms: Sequence[str]) -> tuple[int, int, list[tuple[int, str, int]]]:
        """The store's chunk count and summed length, and (id, term, df) of each of ``terms`` some chunk holds,
        rarest first: what BM25 is scored with, over the whole store."""
        cursor.execute(
            "SELECT s.n, s.total, t.ids, t.terms, t.dfs FROM "
            "(SELECT coalesce(sum(chunks), 0) AS n, coalesce(sum(length), 0) AS total FROM search_language_now) s, "
            "(SELECT coalesce(array_agg(id ORDER BY df, id), '{}') AS ids, "
            "coalesce(array_agg(term ORDER BY df, id), '{}') AS terms, "
            "coalesce(array_agg(df ORDER BY df, id), '{}') AS dfs "
            "FROM search_term_now WHERE term = ANY(%s::text[]) AND df > 0) t",
            (list(terms),),
        )
        n, total, ids, held, dfs = cursor.fetchone()
        return int(n), int(total), [(int(i), str(t), int(df)) for i, t, df in zip(ids, held, dfs, strict=True)]

    def idfs(self, terms: Sequence[str]) -> dict[str, float]:
        unique = list(dict.fromkeys(terms))
        if self.space is None or not unique:
            return {}
        with self.store._cursor() as cursor:
            n, _, rows = self._term_statistics(cursor, unique)
        found = {term: df for _, term, df in rows}
        return {term: bm25_idf(found.get(term, 0), n) for term in unique}

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
            n, total, rows = self._term_statistics(cursor, unique)
            if not rows or n <= 0:
                return []
            dfs = [df for _, _, df in rows]
            scoring = _Scoring(
                term_ids=[term_id for term_id, _, _ in rows],
                idfs=[bm25_idf(df, n) for df in dfs],
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
            truncated = max(dfs) > depth
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
