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

from ingestion.language import TextAnalyzer

# A sentence ends at . ! ? … (optionally followed by closing quotes or brackets, and by citation markers such as
# Wikipedia's "[49]" or "[a]") before a space, or at a line break; abbreviations such as "e.g." may split a
# sentence, which costs little here.
_SENTENCE_END = re.compile(r"(?<=[.!?…])(?:[\"'»)\]]|\[[^\[\]\n]{1,24}\])*\s+|\n+")
_MAX_HIGHLIGHT_CHARS = 600
# A line of a reference list: numbered ("55. ...") or Wikipedia's "^ ...", pointing somewhere (a URL, a DOI,
# "Retrieved ..."). It names a source; it never answers a question.
_REFERENCE_LINE = re.compile(
    r"^[ \t]*(?:\^|\d{1,4}[.)][ \t]).*?(?:https?://|www\.|\bdoi:|\bRetrieved\b).*$", re.MULTILINE | re.IGNORECASE
)
# What an answer's reader (the pages, an API client) takes for a citation: "[2]", "[2, 3]", "[2-4]".
_MARKER_LIKE = re.compile(r"\[(\s*\d+(?:\s*[,;\-–]\s*\d+)*\s*)\]")


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


_HEADING_MAX_WORDS = 16
_FINAL_PUNCTUATION = (".", "!", "?", "…", ":", ";", "»", '"', ")", "]")


def heading_lines(text: str, spans: Sequence[tuple[int, int]]) -> list[bool]:
    """Which sentence spans of a chunk's ``text`` are heading lines, such as the title that opens a document.

    A heading line is short, has no final punctuation, and is followed by one line break and by another
    heading line or by prose (a sentence that ends with punctuation or goes on in the same paragraph), as
    chunking writes a heading block above its text. Table rows and list items are not: what follows them is
    neither.
    """
    result = [False] * len(spans)
    for i in range(len(spans) - 2, -1, -1):
        start, end = spans[i]
        following_start, following_end = spans[i + 1]
        line = text[start:end].strip()
        if text[end:following_start] != "\n" or line.endswith(_FINAL_PUNCTUATION):
            continue
        if len(line.split()) > _HEADING_MAX_WORDS:
            continue
        following = text[following_start:following_end].strip()
        continues = text[following_end : following_end + 1] == " "
        result[i] = result[i + 1] or following.endswith(_FINAL_PUNCTUATION) or continues
    return result


def _terms(analyzer: TextAnalyzer, text: str, language: str | None) -> set[str]:
    words = analyzer.words(text)
    lang = language or analyzer.detect(words) or analyzer.languages[0]
    return set(analyzer.tokens(words, lang))


def highlight(question: str, passage: str, *, max_sentences: int = 2) -> Highlight:
    """The one or two consecutive sentences of ``passage`` that share the most terms with ``question``.

    Rare terms weigh more than common ones (an idf over the passage's sentences); with no shared
    term at all the passage's first sentence is returned with coverage 0. Heading lines (the title a
    chunk opens with, see :func:`heading_lines`) and the lines of a reference list ("55. ... (https://...)")
    are not quoted unless the passage is nothing else, and
    several sentences are quoted only when they fit the highlight's length limit together.
    """
    analyzer = _analyzer()
    spans = split_sentences(passage)
    if not spans:
        return Highlight(text=passage.strip()[:_MAX_HIGHLIGHT_CHARS], coverage=0.0, start=0, end=len(passage))
    language = analyzer.detect(analyzer.words(passage))
    query = analyzer.query_tokens(question, candidates=(language,) if language else ())
    query_terms = set(query)
    sentence_terms = [_terms(analyzer, passage[a:b], language) & query_terms for a, b in spans]
    n = len(spans)
    # a heading line (a document's title above its text) names the topic, so it shares the question's
    # words, but it never holds the answer: it is not quoted, unless the passage is nothing else
    # nor does a line of a reference list
    references = [(m.start(), m.end()) for m in _REFERENCE_LINE.finditer(passage)]
    quotable = [
        not heading and not any(a <= start and end <= b for a, b in references)
        for heading, (start, end) in zip(heading_lines(passage, spans), spans, strict=True)
    ]
    if not any(quotable):
        quotable = [True] * n
    # idf over sentences: a term found in every sentence tells little about where the answer is
    counted = [terms for terms, ok in zip(sentence_terms, quotable, strict=True) if ok]
    weight = {
        term: math.log(1 + len(counted) / (1 + sum(term in terms for terms in counted))) + 0.5 for term in query_terms
    }

    def score(terms: set[str]) -> float:
        return sum(weight[t] for t in terms)

    first = quotable.index(True)
    best = (0.0, first, 1)
    for i in range(n):
        for width in range(1, max_sentences + 1):
            if i + width > n or not quotable[i + width - 1]:
                break
            # several sentences must fit whole: cutting them would drop the end of the answer
            if width > 1 and len(passage[spans[i][0] : spans[i + width - 1][1]].strip()) > _MAX_HIGHLIGHT_CHARS:
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


def without_citation_markers(text: str) -> str:
    """``text`` with its own bracketed numbers ("[2]") written in full-width brackets ("［2］").

    Answers cite their sources as "[n]"; a document's footnote quoted in an answer, or shown to the
    model as a source, must not read as one. The full-width form keeps what the text says.
    """
    return _MARKER_LIKE.sub(lambda match: f"［{match.group(1)}］", text)


def extractive_answer(highlights: Sequence[Highlight], *, max_sources: int = 3) -> str:
    """An answer made of the best highlights, each followed by its source number: "… [1] … [2]".

    ``highlights[i]`` belongs to source number i + 1. Sources whose highlight shares no term with
    the question are left out, unless none does (then the first one is quoted). A sentence is
    quoted once: when overlapping chunks give the same highlight (or one inside another), the
    longer one is quoted with every source that holds it, as in "… [1][2]". Only those markers are
    citations: bracketed numbers of the quoted text are kept in full-width brackets.
    """
    ranked = [(i, h) for i, h in enumerate(highlights) if h.coverage > 0]
    if not ranked and highlights:
        ranked = [(0, highlights[0])]
    quoted: list[tuple[str, str, list[int]]] = []  # (text, comparable text, source numbers)
    for i, h in ranked:
        key = " ".join(h.text.casefold().split())
        for position, (text, seen, numbers) in enumerate(quoted):
            if key in seen or seen in key:
                quoted[position] = (h.text, key, numbers) if len(key) > len(seen) else (text, seen, numbers)
                numbers.append(i + 1)
                break
        else:
            if len(quoted) < max_sources:
                quoted.append((h.text, key, [i + 1]))
    return " ".join(
        f"{without_citation_markers(text)} " + "".join(f"[{n}]" for n in numbers) for text, _, numbers in quoted
    )
