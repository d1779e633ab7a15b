"""Hybrid search over a search store: dense and lexical (BM25) results fused (see :func:`fuse`).

The searcher works on one :meth:`~ingestion.store.SearchStore.view` per question, whichever the store
(``ingestion.store``): the dense side is the store's nearest neighbours, the lexical side its BM25 over the
question's terms, analysed as the passages were (``ingestion.language``: per-language stop words, accent
folding and Snowball stems). Both take the collection and document filters inside their own search.

A third side, when the embedder has a companion model (``ingestion.embedding.CompanionEmbedder``), rescores
the union of the dense and BM25 candidates with the companion's cosine, for questions in the companion's
languages. It finds nothing new, so it needs no index of its own; it reorders what the two others found, and
fuses with them like a third ranking. The best fused candidates are then scored again by their best sentence
(``ingestion.sentences``: the share of the question's idf-weighted terms one sentence holds), and a configured
cross-encoder (``ingestion.rerank``) reorders them last.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from .embedding import CompanionEmbedder, Embedder, store_identity
from .errors import REBUILD_HINT, IndexMismatchError
from .language import DEFAULT_LANGUAGES, TextAnalyzer
from .rerank import Reranker
from .sentences import sentence_shares
from .store import ChunkFacts, SearchStore, StoreIdentity, StoreView

__all__ = ["HybridSearcher", "SearchConfig", "SearchHit", "fuse"]

logger = logging.getLogger(__name__)

#: fusion methods: reciprocal rank fusion, or a weighted sum of min-max normalised scores
FUSIONS = ("rrf", "convex")
#: which first-stage retrievers run: both (fused), or one alone (for comparisons and special corpora)
RETRIEVERS = ("hybrid", "dense", "bm25")


@dataclass(frozen=True)
class SearchConfig:
    """How many candidates each side retrieves and how they are fused."""

    #: "hybrid" (dense and BM25, fused), "dense" or "bm25" alone
    retrievers: str = "hybrid"
    dense_k: int = 100
    bm25_k: int = 100
    #: "rrf": score = sum(weight / (rrf_k + rank)); "convex": score = sum(weight * min-max normalised score)
    fusion: str = "convex"
    #: the constant of reciprocal rank fusion
    rrf_k: int = 60
    dense_weight: float = 0.5
    bm25_weight: float = 0.5
    #: weight of the companion's side (0 = off; it also needs an embedder and a store with a companion)
    companion_weight: float = 0.5
    #: BM25 (Lucene variant): term-frequency saturation and document-length normalisation
    bm25_k1: float = 0.9
    bm25_b: float = 0.4
    #: how many of the best fused candidates a configured reranker reorders (the rest follow them)
    rerank_k: int = 30
    #: weight of the sentence side (convex fusion of the hybrid search; 0 = off): the share of the question's
    #: idf-weighted terms that a candidate's best sentence holds, added to the fused score of the best
    #: ``sentence_k`` candidates, which are then ordered again (the rest follow them)
    sentence_weight: float = 0.5
    sentence_k: int = 30
    #: languages the lexical analysis of questions recognises, the first one winning ties and unknown texts
    languages: tuple[str, ...] = DEFAULT_LANGUAGES


@dataclass(frozen=True)
class SearchHit:
    """One retrieved chunk.

    ``score`` is the fused score (see :func:`fuse`); ``dense_score`` the cosine similarity of
    the chunk to the query (computed for BM25-only hits as well); ``bm25_score`` the BM25 score,
    None when BM25 did not retrieve the chunk; ``rerank_score`` the reranker's score when a reranker
    ordered the hit (the reranked hits come first, in that order, then the others by fused score).
    """

    chunk_id: int
    score: float
    dense_score: float | None
    bm25_score: float | None
    document_id: int
    rerank_score: float | None = None
    #: the companion's cosine (None when that side did not run)
    companion_score: float | None = None
    #: the share of the question's weighted terms the chunk's best sentence holds (None when that side did not
    #: score the chunk)
    sentence_score: float | None = None


def _validate(config: SearchConfig) -> None:
    if config.fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {config.fusion!r}: choose among {FUSIONS}")
    if config.retrievers not in RETRIEVERS:
        raise ValueError(f"unknown retrievers {config.retrievers!r}: choose among {RETRIEVERS}")
    if config.sentence_weight < 0 or config.sentence_k < 0:
        raise ValueError("sentence_weight and sentence_k must not be negative")


def fuse(
    dense: Sequence[tuple[int, float]],
    lexical: Sequence[tuple[int, float]],
    config: SearchConfig,
    companion: Sequence[tuple[int, float]] = (),
) -> dict[int, float]:
    """The fused score of every chunk of any ranking (each a list of (chunk id, score), best first).

    ``rrf``: each ranking gives ``weight / (rrf_k + rank)``. ``convex``: each ranking's scores are
    min-max normalised (its best 1, its ``dense_k``-th or ``bm25_k``-th 0, below that 0 as well, so
    that asking for more hits does not change the scores of the first ones; a lone candidate gets 1)
    and weighted; a chunk missing from a ranking gets nothing from it. ``companion``, the companion's
    scores of the other two rankings' candidates, is normalised over all of them.
    """
    _validate(config)
    fused: dict[int, float] = {}
    sides = (
        (config.dense_weight, dense, config.dense_k),
        (config.bm25_weight, lexical, config.bm25_k),
        (config.companion_weight, companion, len(companion)),
    )
    for weight, results, depth in sides:
        if not results:
            continue
        if config.fusion == "rrf":
            for rank, (chunk_id, _) in enumerate(results, start=1):
                fused[chunk_id] = fused.get(chunk_id, 0.0) + weight / (config.rrf_k + rank)
        else:
            high = results[0][1]
            low = results[min(len(results), max(1, depth)) - 1][1]
            span = high - low
            for chunk_id, score in results:
                # a lone candidate (or all tied at the top) gets 1, what ranks below the anchor 0
                top = 1.0 if score >= high else 0.0
                normalised = max(0.0, (score - low) / span) if span > 0 else top
                fused[chunk_id] = fused.get(chunk_id, 0.0) + weight * normalised
    return fused


class HybridSearcher:
    """Dense + BM25 (+ companion) search over one :class:`~ingestion.store.SearchStore`, with collection
    and document filters.

    ``config`` may be replaced on a live searcher (to try another fusion, say) except for its
    ``languages``, which the analyzer was built with. A store built by another embedder or companion
    than ``embedder`` is refused (``IndexMismatchError``).
    """

    def __init__(
        self, store: SearchStore, embedder: Embedder, config: SearchConfig, reranker: Reranker | None = None
    ) -> None:
        _validate(config)
        expected = store_identity(embedder)
        if store.identity != expected:
            raise IndexMismatchError(
                f"The search store was built with {_describe(store.identity)} but the configured embedder is "
                f"{_describe(expected)}: {REBUILD_HINT}"
            )
        self.store = store
        self.embedder = embedder
        self.config = config
        self.reranker = reranker
        self.analyzer = TextAnalyzer(config.languages)
        self._lock = threading.Lock()
        self._warned_missing = 0

    def search(
        self,
        query: str,
        k: int,
        *,
        collections: Collection[int] | None = None,
        documents: Collection[int] | None = None,
    ) -> list[SearchHit]:
        """The ``k`` best chunks for ``query`` among the allowed collections and documents (None: all)."""
        if k <= 0 or not query.strip():
            return []
        view = self.store.view()  # every side reads the same chunks
        if len(view) == 0:
            return []
        # the query vector is needed even without the dense side: every hit carries its cosine
        vector = self.embedder.embed_query(query)
        config = self.config
        corpus = self.corpus_languages(query, view) if config.retrievers != "dense" else frozenset[str]()
        # a question without stop words is read in each language of the stored chunks
        terms = self.analyzer.query_tokens(query, corpus) if config.retrievers != "dense" else []
        dense: list[tuple[int, float]] = []
        lexical: list[tuple[int, float]] = []
        if config.retrievers != "bm25":
            dense = view.dense(vector, max(config.dense_k, k), collections=collections, documents=documents)
        if config.retrievers != "dense":
            lexical = self._lexical(terms, max(config.bm25_k, k), view, collections, documents)
        hybrid = config.retrievers == "hybrid"
        companion = self._companion(query, view, corpus, dense, lexical) if hybrid else []
        return self._fuse(query, view, vector, dense, lexical, k, companion, terms if hybrid else [])

    def bm25(
        self,
        query: str,
        k: int,
        *,
        view: StoreView | None = None,
        collections: Collection[int] | None = None,
        documents: Collection[int] | None = None,
    ) -> list[tuple[int, float]]:
        """BM25 alone: the ``k`` best allowed chunks as (chunk id, BM25 score), best first."""
        view = view or self.store.view()
        terms = self.analyzer.query_tokens(query, self.corpus_languages(query, view))
        return self._lexical(terms, k, view, collections, documents)

    def corpus_languages(self, query: str, view: StoreView) -> frozenset[str]:
        """The languages of the stored chunks when ``query``'s stop words do not tell its own (the only case
        where they are needed: a store may have to count them), else none."""
        return frozenset() if self.analyzer.languages_of(query) else view.languages()

    def _lexical(
        self,
        terms: Sequence[str],
        k: int,
        view: StoreView,
        collections: Collection[int] | None,
        documents: Collection[int] | None,
    ) -> list[tuple[int, float]]:
        if k <= 0 or not terms:
            return []
        config = self.config
        return view.lexical(terms, k, collections=collections, documents=documents, k1=config.bm25_k1, b=config.bm25_b)

    def _companion(
        self,
        query: str,
        view: StoreView,
        corpus: frozenset[str],
        dense: Sequence[tuple[int, float]],
        lexical: Sequence[tuple[int, float]],
    ) -> list[tuple[int, float]]:
        """The companion's scores of the dense and BM25 candidates, best first ([] when that side is off)."""
        embedder = self.embedder
        if self.config.companion_weight <= 0 or not isinstance(embedder, CompanionEmbedder):
            return []
        candidates = list(dict.fromkeys([c for c, _ in dense] + [c for c, _ in lexical]))
        if not candidates:
            return []
        missing = view.chunks_without_companion()
        if missing:
            # scored as 0, they would rank under every chunk embedded since: the side waits for a rebuild
            self._warn_once(
                missing,
                f"The companion search side is off: {missing} chunks of the search store were embedded without "
                "it (before RAG_COMPANION_EMBEDDER was set); run `manage.py rebuild_index`",
            )
            return []
        # a question whose stop words do not tell is read in the languages of the stored chunks
        vector = embedder.companion_query(query, corpus)
        if vector is None:
            return []
        scores = view.companion_scores(candidates, vector)
        # stable: equal scores keep the candidates' order (dense first, then BM25)
        return sorted(((c, float(scores[c])) for c in candidates if c in scores), key=lambda item: -item[1])

    def _warn_once(self, missing: int, message: str) -> None:
        with self._lock:
            if self._warned_missing == missing:
                return
            self._warned_missing = missing
        logger.warning(message)

    def _sentence_shares(
        self, query: str, view: StoreView, terms: Sequence[str], head: Sequence[int], facts: dict[int, ChunkFacts]
    ) -> dict[int, float]:
        """The sentence side's score of each chunk of ``head``: the share of the question's idf-weighted terms its
        best sentence holds (``ingestion.sentences``)."""
        texts = [facts[c].text if c in facts else "" for c in head]
        found = sentence_shares(self.analyzer, view.idfs(terms), texts, self.analyzer.languages_of(query))
        return dict(zip(head, found, strict=True))

    def _fuse(
        self,
        query: str,
        view: StoreView,
        vector: np.ndarray,
        dense: list[tuple[int, float]],
        lexical: list[tuple[int, float]],
        k: int,
        companion: Sequence[tuple[int, float]] = (),
        terms: Sequence[str] = (),
    ) -> list[SearchHit]:
        config = self.config
        fused = fuse(dense, lexical, config, companion)
        cosines = dict(dense)
        bm25_scores = dict(lexical)
        companion_scores = dict(companion)
        facts: dict[int, ChunkFacts] = {}

        def by_fused(chunk_id: int) -> tuple[float, float]:
            return -fused[chunk_id], -cosines.get(chunk_id, -2.0)

        def read(chunk_ids: Sequence[int]) -> None:
            missing = [c for c in chunk_ids if c not in facts]
            if missing:
                facts.update(view.facts(missing))

        ordered = sorted(fused, key=by_fused)
        shares: dict[int, float] = {}
        if terms and config.sentence_weight > 0 and config.sentence_k > 0 and config.fusion == "convex":
            head = ordered[: config.sentence_k]
            read(head)
            shares = self._sentence_shares(query, view, terms, head, facts)
            for chunk_id, share in shares.items():
                fused[chunk_id] += config.sentence_weight * share
            ordered = sorted(head, key=by_fused) + ordered[len(head) :]
        reranked: dict[int, float] = {}
        if self.reranker is not None and config.rerank_k > 0:
            head = ordered[: config.rerank_k]
            read(head)
            texts = [facts[c].text if c in facts else "" for c in head]
            scores = self.reranker.scores(query, texts)
            reranked = {c: float(v) for c, v in zip(head, scores.tolist(), strict=True)}
            # stable: equal reranker scores keep their fused order
            ordered = sorted(head, key=lambda c: -reranked[c]) + ordered[len(head) :]
        best = ordered[:k]
        read(best)
        hits = []
        for chunk_id in best:
            fact = facts.get(chunk_id)
            if chunk_id not in cosines and fact is not None:
                cosines[chunk_id] = float(fact.dense @ vector)
            hits.append(
                SearchHit(
                    chunk_id=chunk_id,
                    score=fused[chunk_id],
                    dense_score=cosines.get(chunk_id),
                    bm25_score=bm25_scores.get(chunk_id),
                    document_id=fact.document_id if fact is not None else -1,
                    rerank_score=reranked.get(chunk_id),
                    companion_score=companion_scores.get(chunk_id),
                    sentence_score=shares.get(chunk_id),
                )
            )
        return hits


def _describe(identity: StoreIdentity) -> str:
    companion = (
        f"the companion {identity.companion} (dim {identity.companion_dimension})"
        if identity.companion
        else "no companion"
    )
    return f"{identity.embedder} (dim {identity.dimension}) and {companion}"
