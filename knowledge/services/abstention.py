"""Abstention: whether the passages found for a question answer it, or the answer should say "not found".

Three signals of the best passage, combined by a logistic model fitted on held-out questions
(bench/README.md, "Abstention"): its cosine to the question (the embedder's own scale), the share of
the question's terms it holds, and the share of the question's terms that no passage of the searched
collections holds at all (a question about a person, a place or a product the documents never name).
A question is answered when the model's probability reaches ``RAG_ANSWER_CONFIDENCE``.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings

from knowledge.services import engines

if TYPE_CHECKING:
    from knowledge.services.answering import Source

__all__ = ["Evidence", "answer_confidence", "evidence_of", "passages_answer"]


@dataclass(frozen=True)
class _Weights:
    cosine: float
    coverage: float
    absent: float
    bias: float


#: fitted for multilingual-e5-small (the default embedder) on piaf-dev with a fifth of its articles left out
_E5 = _Weights(cosine=66.9, coverage=5.28, absent=-0.95, bias=-57.1)
#: any other embedder: its cosines are on another scale, so only the terms count
_TERMS_ONLY = _Weights(cosine=0.0, coverage=6.04, absent=-1.74, bias=-1.37)


@dataclass(frozen=True)
class Evidence:
    """What the best passage found says about a question."""

    #: the best passage's cosine similarity to the question
    cosine: float
    #: share of the question's terms the best passage holds (0..1)
    coverage: float
    #: share of the question's terms that no passage of the searched collections holds (0..1)
    absent: float


def evidence_of(question: str, sources: Sequence[Source], collection_ids: Collection[int]) -> Evidence | None:
    """The evidence of the best of ``sources`` (best first) for ``question``; None when it has no terms."""
    from ingestion.language import passage_terms

    searcher = engines.get_searcher()
    analyzer = searcher.analyzer
    view = searcher.store.view()
    terms = sorted(set(analyzer.query_tokens(question, searcher.corpus_languages(question, view))))
    if not terms or not sources:
        return None
    # each passage read as the index reads it
    held = [set(passage.counts) for passage in passage_terms(analyzer, [source.text for source in sources])]
    # a term held by no passage found may still be in the collections: one BM25 lookup tells
    unseen = [term for term in terms if not any(term in passage for passage in held)]
    allowed = set(collection_ids)
    absent = [
        term
        for term in unseen
        if not view.lexical([term], 1, collections=allowed, k1=searcher.config.bm25_k1, b=searcher.config.bm25_b)
    ]
    return Evidence(
        cosine=sources[0].score,
        coverage=sum(term in held[0] for term in terms) / len(terms),
        absent=len(absent) / len(terms),
    )


def answer_confidence(evidence: Evidence, embedder_name: str) -> float:
    """The probability that the passages answer the question, from their ``evidence``."""
    weights = _E5 if embedder_name.startswith("e5:") else _TERMS_ONLY
    z = (
        weights.bias
        + weights.cosine * evidence.cosine
        + weights.coverage * evidence.coverage
        + weights.absent * evidence.absent
    )
    return 1.0 / (1.0 + math.exp(-z))


def passages_answer(question: str, sources: Sequence[Source], collection_ids: Collection[int]) -> bool:
    """Whether ``sources`` answer ``question``: their confidence reaches ``RAG_ANSWER_CONFIDENCE``."""
    if not sources:
        return False
    threshold = settings.RAG_ANSWER_CONFIDENCE
    if threshold <= 0:
        return True
    evidence = evidence_of(question, sources, collection_ids)
    if evidence is None:  # a question of stop words alone: nothing to weigh, the passages stand
        return True
    return answer_confidence(evidence, engines.get_embedder().name) >= threshold
