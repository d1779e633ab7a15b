"""A companion embedder: other models whose vectors each passage keeps beside the primary one, and what a search
store keeps of an embedder's passages (:func:`passage_embeddings`) and names it by (:func:`store_identity`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .store import PassageEmbeddings, StoreIdentity

if TYPE_CHECKING:
    from .embedding import Embedder

__all__ = [
    "CompanionEmbedder",
    "CompanionModel",
    "companion_entries",
    "companion_label",
    "companion_vectors",
    "passage_embeddings",
    "store_identity",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompanionModel:
    """One model of a companion: its name, how to load it, the languages it is given and its dimension
    (None: learnt by loading it)."""

    name: str
    make: Callable[[], Embedder]
    languages: tuple[str, ...]
    dimension: int | None = None

    def speaks(self, languages: Collection[str]) -> bool:
        """Whether a text voted for ``languages`` is given to this model (True when the vote is empty)."""
        return not languages or any(code in self.languages for code in languages)

    @property
    def label(self) -> str:
        """The model and its languages, as a store identity records them (``name@en,fr``)."""
        return f"{self.name}@{','.join(self.languages)}"


def companion_entries(spec: str, languages: Sequence[str]) -> list[tuple[str, tuple[str, ...]]]:
    """The companion models of ``RAG_COMPANION_EMBEDDER`` with their languages: ``spec`` lists models
    separated by blanks, each ``model`` (given ``languages``) or ``model@en,fr`` (given those)."""
    entries = []
    for entry in spec.split():
        model, _, own = entry.partition("@")
        codes = tuple(code.strip().lower() for code in own.split(",") if code.strip()) if own else tuple(languages)
        entries.append((model, codes))
    return entries


def companion_label(models: Sequence[CompanionModel]) -> str:
    """What a store identity records of companion ``models``: each with its languages (``name@en + name@fr``)."""
    return " + ".join(model.label for model in models)


class CompanionEmbedder:
    """An embedder with companion models beside it, whose vectors each passage also keeps (one array in
    :class:`~ingestion.store.PassageEmbeddings`): the searcher fuses their cosine as a third side.

    Everything the dense side uses (name, dimension, vectors, token counts) is the primary embedder's. Each
    companion model is loaded on first use (a web process loads it on the first question in one of its
    languages); its name and dimension are known without loading it.

    Each model is given the passages and questions of its own ``languages``: an English-only model such as
    all-MiniLM-L6-v2 gives noise on other languages (0.45 nDCG@10 on French PIAF), so a passage whose stop
    words say it is in none of them gets zeros from it, and a question in none of them is not asked. Several
    models (all-MiniLM-L6-v2 for English, multilingual USE for French) each fill their own block of the
    companion vector, so a question embedded by one model meets only that model's passage vectors: the
    other blocks add nothing to the cosine. A passage whose language cannot be told is given to every model
    (its vector normalised as a whole); a question of that kind is asked of the models of the languages of
    the searched chunks.
    """

    def __init__(self, primary: Embedder, models: Sequence[CompanionModel]) -> None:
        if not models:
            raise ValueError("a companion embedder needs at least one companion model")
        self.primary = primary
        self.name = primary.name
        self.dimension = primary.dimension
        self.max_tokens = primary.max_tokens
        self.models = tuple(models)
        self._dimensions = [model.dimension for model in self.models]
        self._loaded: list[Embedder | None] = [None] * len(self.models)
        self._analyzer: Any = None
        self._lock = threading.Lock()

    @property
    def companion_label(self) -> str:
        """What a store identity records of the companion: each model with its languages."""
        return companion_label(self.models)

    def companion_model(self, index: int = 0) -> Embedder:
        """The ``index``-th companion model, loaded on first use."""
        with self._lock:
            loaded = self._loaded[index]
            if loaded is None:
                loaded = self._loaded[index] = self.models[index].make()
            return loaded

    def model_dimension(self, index: int) -> int:
        """The dimension of the ``index``-th companion model's vectors (it is loaded when its folder does not tell)."""
        known = self._dimensions[index]
        if known is None:
            known = self._dimensions[index] = int(self.companion_model(index).dimension)
        return known

    @property
    def companion_dimension(self) -> int:
        """The dimension of the companion vectors: the models' blocks side by side (read from the models'
        folders when they tell; else the models are loaded)."""
        return sum(self.model_dimension(index) for index in range(len(self.models)))

    def count_tokens(self, text: str) -> int:
        return self.primary.count_tokens(text)

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self.primary.embed_passages(texts)

    def embed_query(self, text: str) -> np.ndarray:
        return self.primary.embed_query(text)

    def _slices(self) -> list[slice]:
        """Each companion model's block of the companion vector."""
        slices, start = [], 0
        for index in range(len(self.models)):
            end = start + self.model_dimension(index)
            slices.append(slice(start, end))
            start = end
        return slices

    def blocks(self, texts: Sequence[str]) -> list[tuple[int, slice, list[int]]]:
        """For each companion model: its index, its block of the companion vector and the positions of
        ``texts`` it is given (those that may be in its languages)."""
        votes = [self._languages_of(text) for text in texts]
        return [
            (index, block, [i for i, vote in enumerate(votes) if self.models[index].speaks(vote)])
            for index, block in enumerate(self._slices())
        ]

    def embed_companion(self, texts: Sequence[str], index: int = 0) -> np.ndarray:
        """The ``index``-th companion model's vectors of ``texts`` (all of them; see :meth:`blocks`), float32."""
        if not texts:
            return np.zeros((0, self.model_dimension(index)), dtype=np.float32)
        return np.ascontiguousarray(self.companion_model(index).embed_passages(texts), dtype=np.float32)

    def _languages_of(self, text: str) -> list[str]:
        if self._analyzer is None:
            from .language import TextAnalyzer

            self._analyzer = TextAnalyzer()
        voted: list[str] = self._analyzer.languages_of(text)
        return voted

    def companion_query(self, text: str, corpus_languages: Collection[str] = ()) -> np.ndarray | None:
        """The companion vector of a question (float32, L2-normalised: the block of each model of its
        languages filled), or None when it is not asked: the question is in none of the models' languages, or
        they cannot embed it (logged; the search goes on).

        A question whose stop words do not tell its language (claims and keyword queries have few) is read
        as being in ``corpus_languages``, those of the chunks searched (every model is asked when that is
        empty too).
        """
        languages = self._languages_of(text) or corpus_languages
        vector = np.zeros(self.companion_dimension, dtype=np.float32)
        asked = False
        for index, block in enumerate(self._slices()):
            if not self.models[index].speaks(languages):
                continue
            try:
                vector[block] = self.companion_model(index).embed_query(text)
            except Exception:  # a model that cannot load costs this side, not the search
                logger.exception(
                    "The companion search side is skipped for %s: its model could not embed the question",
                    self.models[index].name,
                )
                continue
            asked = True
        if not asked:
            return None
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0 else None


def companion_vectors(
    embedder: CompanionEmbedder, texts: Sequence[str], embed: Callable[[int, list[str]], np.ndarray]
) -> np.ndarray:
    """The companion vectors of ``texts``: each model's ``embed(index, texts)`` in its block, for the texts it
    is given (zeros elsewhere), each row L2-normalised as a whole (zero when no model is given the text)."""
    rows = np.zeros((len(texts), embedder.companion_dimension), dtype=np.float32)
    for index, block, positions in embedder.blocks(texts):
        if positions:
            rows[positions, block] = embed(index, [texts[i] for i in positions])
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    np.divide(rows, norms, out=rows, where=norms > 0)
    return rows


def passage_embeddings(embedder: Embedder, texts: Sequence[str]) -> PassageEmbeddings:
    """What a search store keeps of each passage: the dense vectors of ``embedder`` and, for a
    :class:`CompanionEmbedder`, the companion's vectors (zeros for a passage not given to it)."""
    dense = np.ascontiguousarray(embedder.embed_passages(texts), dtype=np.float32).reshape(-1, embedder.dimension)
    if not isinstance(embedder, CompanionEmbedder):
        return PassageEmbeddings(dense)
    return PassageEmbeddings(
        dense, companion_vectors(embedder, texts, lambda index, given: embedder.embed_companion(given, index))
    )


def store_identity(embedder: Embedder) -> StoreIdentity:
    """The identity of a search store that holds ``embedder``'s passage embeddings.

    The companion's languages are part of it: they decide which passages get a companion vector, so changing
    them asks for ``rebuild_index`` (passages of a newly added language would keep empty ones otherwise)."""
    if isinstance(embedder, CompanionEmbedder):
        return StoreIdentity(embedder.name, embedder.dimension, embedder.companion_label, embedder.companion_dimension)
    return StoreIdentity(embedder.name, embedder.dimension)
