"""The sentence side of the search: how much of a question the best single sentence of a passage holds.

BM25 and the embeddings read a passage as a whole, while a question is mostly answered by one of its sentences:
a passage that holds the question's rare terms in one sentence is a better answer than one that scatters them.
The best candidates of the fusion are scored again by the share of the question's terms, each weighted by its
idf over the store, that their best sentence holds (heading lines aside), and the share is added to their fused
score with ``SearchConfig.sentence_weight`` (see :class:`ingestion.search.HybridSearcher`). Measured in
bench/README.md (*The sentence side*).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .highlight import heading_lines, split_sentences
from .language import TextAnalyzer

__all__ = ["sentence_shares"]


def sentence_shares(
    analyzer: TextAnalyzer, weights: Mapping[str, float], passages: Sequence[str], languages: Sequence[str] = ()
) -> list[float]:
    """For each of ``passages``: the share (0..1) of the question's terms' weight (``weights``: term -> idf) that
    its best single sentence holds. A passage is read in the language its stop words vote for, else in the
    first of ``languages`` (the question's), else in the analyzer's first language."""
    total = sum(weights.values())
    if total <= 0:
        return [0.0] * len(passages)
    shares = []
    for passage in passages:
        spans = split_sentences(passage)
        if not spans:
            shares.append(0.0)
            continue
        # a heading line names the topic, so it shares the question's words without answering it
        body = [span for span, heading in zip(spans, heading_lines(passage, spans), strict=True) if not heading]
        words = [analyzer.words(passage[start:end]) for start, end in body or spans]
        everything = [word for sentence in words for word in sentence]
        language = analyzer.detect(everything) or next(iter(languages), analyzer.languages[0])
        # the words whose term is one of the question's, with that term
        wanted = {word: term for word, term in analyzer.term_map(everything, language).items() if term in weights}
        best = max(sum(weights[term] for term in {wanted[w] for w in sentence if w in wanted}) for sentence in words)
        shares.append(best / total)
    return shares
