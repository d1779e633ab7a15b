"""Writing to the ``postgres`` store, in the caller's transaction (the design: ``knowledge.search.postgres``)."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
from django.db import transaction

from ingestion.language import PassageTerms, passage_terms
from ingestion.store import PassageEmbeddings

from .pg_common import _INSERT_ROWS, _default_analyzer, _Space, _Vector

if TYPE_CHECKING:
    from .postgres import PostgresStore

__all__ = ["PostgresWriter"]


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
