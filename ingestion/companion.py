"""A companion embedder: a second model whose vector each passage keeps beside the primary one, and what a search
store keeps of an embedder's passages (:func:`passage_embeddings`) and names it by (:func:`store_identity`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .store import PassageEmbeddings, StoreIdentity

if TYPE_CHECKING:
    from .embedding import Embedder

__all__ = ["CompanionEmbedder", "passage_embeddings", "store_identity"]

logger = logging.getLogger(__name__)


class CompanionEmbedder:
    """An embedder with a second model beside it, whose vector each passage also keeps (its own array in
    :class:`~ingestion.store.PassageEmbeddings`): the searcher fuses its cosine as a third side.

    Everything the dense side uses (name, dimension, vectors, token counts) is the primary embedder's. The
    companion is loaded on first use (torch and sentence-transformers: a web process loads it on the first
    question in one of ``languages``); its name and dimension are known without loading it.

    ``languages`` are the languages the companion is given: an English-only model such as all-MiniLM-L6-v2
    gives noise on other languages (0.45 nDCG@10 on French PIAF), so a passage whose stop words say it is in
    none of them gets a row of zeros, and a question in none of them is not asked (:meth:`companion_query`).
    """

    def __init__(
        self,
        primary: Embedder,
        make_companion: Callable[[], Embedder],
        companion_name: str,
        languages: Sequence[str],
        *,
        companion_dimension: int | None = None,
    ) -> None:
        self.primary = primary
        self.name = primary.name
        self.dimension = primary.dimension
        self.max_tokens = primary.max_tokens
        self.companion_name = companion_name
        self.companion_languages = tuple(languages)
        self._companion_dimension = companion_dimension
        self._make_companion = make_companion
        self._companion: Embedder | None = None
        self._analyzer: Any = None
        self._lock = threading.Lock()

    @property
    def companion(self) -> Embedder:
        """The companion model, loaded on first use."""
        with self._lock:
            if self._companion is None:
                self._companion = self._make_companion()
            return self._companion

    @property
    def companion_dimension(self) -> int:
        """The dimension of the companion's vectors (read from its folder when it can be; else it is loaded)."""
        if self._companion_dimension is None:
            self._companion_dimension = int(self.companion.dimension)
        return self._companion_dimension

    def count_tokens(self, text: str) -> int:
        return self.primary.count_tokens(text)

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self.primary.embed_passages(texts)

    def embed_query(self, text: str) -> np.ndarray:
        return self.primary.embed_query(text)

    def given_to_companion(self, texts: Sequence[str]) -> list[int]:
        """The positions of ``texts`` that are given to the companion: those that may be in its languages
        (a text whose stop words do not tell is given to it)."""
        return [i for i, text in enumerate(texts) if self.speaks(self._languages_of(text))]

    def embed_companion(self, texts: Sequence[str]) -> np.ndarray:
        """The companion's vectors of ``texts`` (all of them; see :meth:`given_to_companion`), float32."""
        if not texts:
            return np.zeros((0, self.companion_dimension), dtype=np.float32)
        return np.ascontiguousarray(self.companion.embed_passages(texts), dtype=np.float32)

    def speaks(self, languages: Collection[str]) -> bool:
        """Whether a text voted for ``languages`` is given to the companion (True when the vote is empty)."""
        return not languages or any(code in self.companion_languages for code in languages)

    def _languages_of(self, text: str) -> list[str]:
        if self._analyzer is None:
            from .language import TextAnalyzer

            self._analyzer = TextAnalyzer()
        voted: list[str] = self._analyzer.languages_of(text)
        return voted

    def companion_query(self, text: str, corpus_languages: Collection[str] = ()) -> np.ndarray | None:
        """The companion's vector of a question (float32, L2-normalised), or None when it is not asked: the
        question is in none of its languages, or the model cannot embed it (logged; the search goes on).

        A question whose stop words do not tell its language (claims and keyword queries have few) is read
        as being in ``corpus_languages``, those of the chunks searched (asked when that is empty too).
        """
        if not self.speaks(self._languages_of(text) or corpus_languages):
            return None
        try:
            vector = self.companion.embed_query(text)
        except Exception:  # a model that cannot load costs this side, not the search
            logger.exception("The companion search side is skipped: its model could not embed the question")
            return None
        return np.asarray(vector, dtype=np.float32)


def passage_embeddings(embedder: Embedder, texts: Sequence[str]) -> PassageEmbeddings:
    """What a search store keeps of each passage: the dense vectors of ``embedder`` and, for a
    :class:`CompanionEmbedder`, the companion's vectors (zeros for a passage not given to it)."""
    dense = np.ascontiguousarray(embedder.embed_passages(texts), dtype=np.float32).reshape(-1, embedder.dimension)
    if not isinstance(embedder, CompanionEmbedder):
        return PassageEmbeddings(dense)
    companion = np.zeros((len(texts), embedder.companion_dimension), dtype=np.float32)
    spoken = embedder.given_to_companion(texts)
    if spoken:
        companion[spoken] = embedder.embed_companion([texts[i] for i in spoken])
    return PassageEmbeddings(dense, companion)


def store_identity(embedder: Embedder) -> StoreIdentity:
    """The identity of a search store that holds ``embedder``'s passage embeddings.

    The companion's languages are part of it: they decide which passages get a companion vector, so changing
    them asks for ``rebuild_index`` (passages of a newly added language would keep empty ones otherwise)."""
    if isinstance(embedder, CompanionEmbedder):
        companion = f"{embedder.companion_name}@{','.join(embedder.companion_languages)}"
        return StoreIdentity(embedder.name, embedder.dimension, companion, embedder.companion_dimension)
    return StoreIdentity(embedder.name, embedder.dimension)
