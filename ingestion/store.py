"""The search store: one interface, two implementations (``RAG_SEARCH_BACKEND``).

- ``faiss`` (``ingestion.index``): the embedded default, on one machine's disk, in segments.
- ``postgres`` (``knowledge.search.postgres``): pgvector columns and BM25 term statistics in the
  portal's own PostgreSQL database, written in the same transaction as the document's status.

Everything above a store (fusion, the companion's side, reranking, highlights, permissions) is in
``ingestion.search.HybridSearcher`` and works the same on both. A store knows chunks by id, with their
document, collection, text, passage embedding and lexical analysis (``ingestion.language``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .language import PassageTerms

__all__ = [
    "ChunkFacts",
    "ExportBatch",
    "PassageEmbeddings",
    "SearchStore",
    "StoreIdentity",
    "StoreView",
    "StoreWriter",
]


@dataclass(frozen=True)
class PassageEmbeddings:
    """The embeddings of a batch of passages, typed: the dense vectors and, when a companion model is
    configured, its vectors in their own array (a row of zeros: that passage was not given to it)."""

    #: (n, dimension) float32, L2-normalised
    dense: np.ndarray
    #: (n, companion dimension) float32, L2-normalised or zero; None without a companion
    companion: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.dense.ndim != 2:
            raise ValueError(f"dense vectors of shape (n, dimension) expected, got {self.dense.shape}")
        if self.companion is not None and (self.companion.ndim != 2 or len(self.companion) != len(self.dense)):
            raise ValueError(
                f"one companion vector per passage expected: {self.companion.shape} for {len(self.dense)} passages"
            )

    def __len__(self) -> int:
        return len(self.dense)

    def take(self, rows: Sequence[int] | np.ndarray) -> PassageEmbeddings:
        """The embeddings of ``rows`` only, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        return PassageEmbeddings(self.dense[rows], None if self.companion is None else self.companion[rows])

    @staticmethod
    def concatenate(parts: Sequence[PassageEmbeddings], *, dimension: int) -> PassageEmbeddings:
        """Several batches as one (an empty list gives an empty batch of ``dimension``)."""
        if not parts:
            return PassageEmbeddings(np.zeros((0, dimension), dtype=np.float32))
        companions = [p.companion for p in parts]
        if any(c is None for c in companions) and not all(c is None for c in companions):
            raise ValueError("batches with and without companion vectors cannot be joined")
        return PassageEmbeddings(
            np.concatenate([p.dense for p in parts]).astype(np.float32, copy=False),
            None if companions[0] is None else np.concatenate(companions).astype(np.float32, copy=False),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class StoreIdentity:
    """What built a store's vectors: a store opened with another identity refuses to search or write
    (``IndexMismatchError``) until it is rebuilt or re-embedded."""

    embedder: str
    dimension: int
    #: the companion model's name and dimension, "" and 0 without one
    companion: str = ""
    companion_dimension: int = 0


@dataclass(frozen=True)
class ChunkFacts:
    """What a store holds of one chunk, for the searcher's last steps (reranking, cosines of BM25 hits)."""

    document_id: int
    text: str
    dense: np.ndarray


@dataclass(frozen=True)
class ExportBatch:
    """Chunks read out of a store in bulk (to move them to another store, or to back them up)."""

    chunk_ids: np.ndarray
    document_ids: np.ndarray
    collection_ids: np.ndarray
    texts: list[str]
    embeddings: PassageEmbeddings
    terms: list[PassageTerms]


class StoreWriter(Protocol):
    """Changes to a store. The faiss store publishes them when the ``writer()`` block ends; the postgres
    store writes them at once, in the caller's database transaction."""

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
        """Add (or replace) chunks of one document. ``terms``: their lexical analysis, computed from
        ``texts`` with ``ingestion.language.passage_terms`` when not given (all of a document's chunks
        in one call, so that a passage without stop words is read in its document's language)."""
        ...

    def remove_document(self, document_id: int) -> None: ...

    def remove_ids(self, chunk_ids: Collection[int]) -> None: ...

    def clear(self) -> None: ...


class StoreView(Protocol):
    """One consistent read of a store: every call of one search sees the same chunks."""

    def __len__(self) -> int:
        """How many chunks the store holds."""
        ...

    def dense(
        self, vector: np.ndarray, k: int, *, collections: Collection[int] | None, documents: Collection[int] | None
    ) -> list[tuple[int, float]]:
        """The ``k`` chunks nearest to ``vector`` that the filters allow: (chunk id, cosine), best first.
        The filters are part of the search itself: ``k`` results whenever ``k`` chunks are allowed."""
        ...

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
        """The ``k`` best allowed chunks by BM25 over the query's ``terms`` (analysed like passages):
        (chunk id, score), best first; only chunks with at least one of the terms."""
        ...

    def idfs(self, terms: Sequence[str]) -> dict[str, float]:
        """BM25's inverse document frequency of each of ``terms`` over the whole store, as :meth:`lexical` scores
        them (a term no chunk holds gets the highest)."""
        ...

    def languages(self) -> frozenset[str]:
        """The languages the stored chunks were analysed in (to read an unclear question)."""
        ...

    def companion_scores(self, chunk_ids: Sequence[int], vector: np.ndarray) -> dict[int, float]:
        """The cosine of each chunk's companion vector with ``vector`` (0 for one not given to the companion;
        absent when the store has no companion vectors)."""
        ...

    def chunks_without_companion(self) -> int:
        """Chunks stored without a companion vector while the store has some (embedded before it was set)."""
        ...

    def facts(self, chunk_ids: Sequence[int]) -> dict[int, ChunkFacts]:
        """Document, text and dense vector of each of ``chunk_ids`` the store holds."""
        ...


class SearchStore(Protocol):
    """A search store: reads through :meth:`view`, changes through :meth:`writer`."""

    #: "faiss" or "postgres"
    backend: str
    identity: StoreIdentity

    def view(self) -> StoreView:
        """A consistent read of the current contents (never waits for a writer or a reload)."""
        ...

    def writer(self, *, reset: bool = False) -> AbstractContextManager[StoreWriter]:
        """Change the store; ``reset=True`` starts from an empty store (rebuilds), replacing the current
        contents only when the block ends normally: questions are answered from the old ones meanwhile."""
        ...

    def ids(self) -> np.ndarray:
        """Every chunk id the store holds (int64), for consistency checks."""
        ...

    def export(self, batch_size: int = 1024) -> Iterator[ExportBatch]:
        """Every chunk with its embeddings and terms, in batches (one document never split over two)."""
        ...

    def state(self) -> dict[str, Any]:
        """What a status page shows: backend, chunks, embedder, dimension, companion, and backend details."""
        ...
