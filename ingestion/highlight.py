"""Highlights: the sentences of a passage that best answer a question.

Scored with the same per-language analysis as BM25 (stop words out, accents folded, Snowball
stems), so "électricité" in a question finds "electricite" in a passage. Measured on French
questions with the right passage, the best-overlapping sentence holds the answer far more often
than a 135M-parameter model's generated answer does, so highlights are the visible ground truth.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from ingestion.search import TextAnalyzer

# A sentence ends at . ! ? … (optionally followed by a closing quote or bracket) before a space,
# or at a line break; abbreviations such as "e.g." may split a sentence, which costs little here.
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'»)\]]*\s+|\n+")
_MAX_HIGHLIGHT_CHARS = 600


@dataclass(frozen=True)
class Highlight:
    text: str
    #: share of the question's terms the highlight contains (0..1)
    coverage: float
    start: int
    end: int


@lru_cache(maxsize=1)
def _analyzer() -> TextAnalyzer:
    return TextAnalyzer()


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of ``text`` (whitespace-only spans dropped)."""
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        if text[start : match.start()].strip():
            spans.append((start, match.start()))
        start = match.end()
    if text[start:].strip():
        spans.append((start, len(text)))
    return spans


def _terms(analyzer: TextAnalyzer, text: str, language: str | None) -> set[str]:
    words = analyzer.words(text)
    lang = language or analyzer.detect(words) or analyzer.languages[0]
    return set(analyzer.tokens(words, lang))


def highlight(question: str, passage: str, *, max_sentences: int = 2) -> Highlight:
    """The one or two consecutive sentences of ``passage`` that share the most terms with ``question``.

    Rare terms weigh more than common ones (an idf over the passage's sentences); with no shared
    term at all the passage's first sentence is returned with coverage 0.
    """
    analyzer = _analyzer()
    spans = split_sentences(passage)
    if not spans:
        return Highlight(text=passage.strip()[:_MAX_HIGHLIGHT_CHARS], coverage=0.0, start=0, end=len(passage))
    language = analyzer.detect(analyzer.words(passage))
    query = analyzer.query_tokens(question, candidates=(language,) if language else ())
    query_terms = set(query)
    sentence_terms = [_terms(analyzer, passage[a:b], language) & query_terms for a, b in spans]
    # idf over sentences: a term found in every sentence tells little about where the answer is
    n = len(spans)
    weight = {
        term: math.log(1 + n / (1 + sum(term in terms for terms in sentence_terms))) + 0.5 for term in query_terms
    }

    def score(terms: set[str]) -> float:
        return sum(weight[t] for t in terms)

    best = (0.0, 0, 1)
    for i in range(n):
        for width in range(1, max_sentences + 1):
            if i + width > n:
                break
            terms = set().union(*sentence_terms[i : i + width])
            value = score(terms)
            # a second sentence must add something of its own to be worth its length
            if width > 1 and value <= score(set().union(*sentence_terms[i : i + width - 1])) + 1e-9:
                continue
            if value > best[0] + 1e-9:
                best = (value, i, width)
    value, i, width = best
    start, end = spans[i][0], spans[i + width - 1][1]
    text = passage[start:end].strip()
    if len(text) > _MAX_HIGHLIGHT_CHARS:
        text = text[: _MAX_HIGHLIGHT_CHARS - 1].rsplit(" ", 1)[0] + "…"
    matched = set().union(*sentence_terms[i : i + width]) if value > 0 else set()
    coverage = len(matched) / len(query_terms) if query_terms else 0.0
    return Highlight(text=text, coverage=coverage, start=start, end=end)


def extractive_answer(highlights: Sequence[Highlight], *, max_sources: int = 3) -> str:
    """An answer made of the best highlights, each followed by its source number: "… [1] … [2]".

    ``highlights[i]`` belongs to source number i + 1. Sources whose highlight shares no term with
    the question are left out, unless none does (then the first one is quoted).
    """
    ranked = [(i, h) for i, h in enumerate(highlights) if h.coverage > 0][:max_sources]
    if not ranked and highlights:
        ranked = [(0, highlights[0])]
    return " ".join(f"{h.text} [{i + 1}]" for i, h in ranked)
