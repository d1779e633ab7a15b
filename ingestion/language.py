"""Per-language lexical analysis, and the BM25 formula both search stores score with.

Each passage's language is guessed by a stop-word vote (its document's vote when the passage has no stop
words), its stop words are dropped, its words folded to plain letters (so "électricité" and "electricite"
match) and stemmed with that language's Snowball stemmer. Queries are analysed the same way.

BM25 is Lucene's variant, as bm25s computes it: ``idf = ln(1 + (N - df + 0.5) / (df + 0.5))`` and a term's
weight in a passage ``idf * tf / (tf + k1 * (1 - b + b * length / average length))`` (Lucene 8's form, without
the constant ``(k1 + 1)`` factor: scores equal bm25s's, and the earlier releases' ``bm25_score``).
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_LANGUAGES",
    "LANGUAGES",
    "PassageTerms",
    "TextAnalyzer",
    "bm25_idf",
    "bm25_term_weight",
    "fold",
    "passage_terms",
]

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

#: the languages recognised by default, the first one winning ties and unknown texts
DEFAULT_LANGUAGES: tuple[str, ...] = ("en", "fr", "de", "es", "it", "nl", "pt")


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

    def __init__(self, languages: Sequence[str] = DEFAULT_LANGUAGES) -> None:
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

    def term_map(self, words: Iterable[str], language: str) -> dict[str, str]:
        """Each distinct word of ``words`` that is not a stop word of ``language``, with its index term (what
        :meth:`tokens` makes of it): one stemmer call for a whole passage."""
        stop = self._stopwords[language]
        distinct = [w for w in dict.fromkeys(words) if w not in stop]
        return dict(zip(distinct, self.tokens(distinct, language), strict=True))

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


@dataclass(frozen=True)
class PassageTerms:
    """The lexical analysis of one passage: the language it was read in, and its terms with their counts."""

    language: str
    counts: dict[str, int]

    @property
    def length(self) -> int:
        """How many terms the passage has (its BM25 length)."""
        return sum(self.counts.values())


def passage_terms(analyzer: TextAnalyzer, texts: Sequence[str]) -> list[PassageTerms]:
    """The analysis of one document's passages (``texts``, all of the same document).

    A passage is read in the language its stop words vote for; one without a clear vote (a table, a list of
    names) in its document's language (the vote of all ``texts``), or the analyzer's first language.
    """
    words = [analyzer.words(text) for text in texts]
    votes = [analyzer.votes(w) for w in words]
    document_votes = [sum(column) for column in zip(*votes, strict=True)] if votes else []
    from_document = analyzer.winners(document_votes)
    out = []
    for passage_words, passage_votes in zip(words, votes, strict=True):
        own = analyzer.winners(passage_votes)
        if len(own) != 1:
            own = [c for c in from_document if c in own] or from_document or own
        language = own[0] if own else analyzer.languages[0]
        out.append(PassageTerms(language, dict(Counter(analyzer.tokens(passage_words, language)))))
    return out


def bm25_idf(df: int, n: int) -> float:
    """BM25's inverse document frequency of a term found in ``df`` of ``n`` passages (Lucene's, never negative)."""
    return math.log(1.0 + (n - df + 0.5) / (df + 0.5))


def bm25_term_weight(tf: Any, length: Any, average_length: float, k1: float, b: float) -> Any:
    """The term-frequency part of BM25 (multiply by the idf); works on numbers and numpy arrays alike."""
    return tf / (tf + k1 * (1.0 - b + b * length / max(average_length, 1e-9)))
