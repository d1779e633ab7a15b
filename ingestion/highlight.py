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

# A sentence may end at . ! ? … (optionally followed by closing quotes or brackets, and by citation markers such as
# Wikipedia's "[49]" or "[a]") before a space, and always ends at a line break. A full stop ends no sentence after an
# abbreviation ("M.", "Dr.", "av. J.-C.", "e.g.", "etc." before a lowercase word), after an initial ("J. K. Rowling"),
# or before a word in lowercase: French and English sentences begin with a capital.
_SENTENCE_END = re.compile(r"(?<=[.!?…])(?:[\"'»)\]]|\[[^\[\]\n]{1,24}\])*[ \t\u00a0]+|[ \t]*\n+")
# the abbreviations after which a full stop does not end a sentence, casefolded, without their final "."
_ABBREVIATIONS = frozenset(
    [
        "m",
        "mm",
        "mme",
        "mmes",
        "mlle",
        "mlles",
        "mgr",
        "me",
        "dr",
        "drs",
        "pr",
        "prof",
        "st",
        "ste",
        "sts",
        "mr",
        "mrs",
        "ms",
        "messrs",
        "jr",
        "sr",
        "gen",
        "gén",
        "col",
        "cpt",
        "capt",
        "lt",
        "sgt",
        "av",
        "apr",
        "env",
        "cf",
        "vol",
        "p",
        "pp",
        "n",
        "no",
        "nos",
        "art",
        "al",
        "éd",
        "ed",
        "eds",
        "coll",
        "op",
        "cit",
        "ibid",
        "id",
        "chap",
        "ch",
        "fig",
        "fr",
        "éd",
        "réimpr",
        "trad",
        "dir",
        "e.g",
        "i.e",
        "vs",
        "viz",
        "ca",
        "approx",
        "ex",
        "etc",
        "hab",
        "inc",
        "ltd",
        "co",
        "corp",
        "cie",
        "dept",
        "univ",
        "janv",
        "févr",
        "fév",
        "avr",
        "juil",
        "sept",
        "oct",
        "nov",
        "déc",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "dec",
    ]
)
_LAST_WORD = re.compile(r"(\w[\w.\-]*)\.[\"'»)\]]*$")
_NEXT_WORD = re.compile(r"[\s\"'«“(\[]*(\S?)")
_WORD_AFTER_ABBREVIATION = re.compile(r"[\s«“\"']*[A-ZÀ-Ý]")
_MAX_HIGHLIGHT_CHARS = 600
# how many of a passage's best sentences a highlight keeps for the extractive answer to choose from
_KEPT_SENTENCES = 3
# an extractive answer quotes a second sentence only when both together stay within this many words
_MAX_ANSWER_WORDS = 120
# A line of a reference list: numbered ("55. ...") or Wikipedia's "^ ...", pointing somewhere (a URL, a DOI,
# "Retrieved ..."). It names a source; it never answers a question.
_REFERENCE_LINE = re.compile(
    r"^[ \t]*(?:\^|\d{1,4}[.)][ \t]).*?(?:https?://|www\.|\bdoi:|\bRetrieved\b).*$", re.MULTILINE | re.IGNORECASE
)
# A web page's or a document's furniture, in English and French: a copyright line, sharing and cookie notices,
# navigation. Read only in short sentences (_BOILERPLATE_MAX_WORDS): a long one that names "cookies" is prose.
_BOILERPLATE = re.compile(
    r"©|\(c\)\s*\d{4}|\bcopyright\b|\ball rights reserved\b|\btous droits réservés\b|\bcookies?\b"
    r"|\bshare (?:this|on)\b|\bpartager (?:sur|cette|cet)\b|\bskip to (?:main )?content\b|\baller au contenu\b"
    r"|\bback to top\b|\bretour en haut\b|\bprint this page\b|\bimprimer cette page\b|\bsubscribe to our\b"
    r"|\babonnez-vous\b|\bprivacy policy\b|\bpolitique de confidentialité\b|\bterms of (?:use|service)\b"
    r"|\bmentions légales\b|\bplan du site\b|\bsitemap\b|\bnewsletter\b",
    re.IGNORECASE,
)
_BOILERPLATE_MAX_WORDS = 15
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
# a sentence with fewer words than this outside its addresses is an address, not an answer
_MIN_WORDS_BESIDE_URLS = 4
# What an answer's reader (the pages, an API client) takes for a citation: "[2]", "[2, 3]", "[2-4]".
_MARKER_LIKE = re.compile(r"\[(\s*\d+(?:\s*[,;\-–]\s*\d+)*\s*)\]")


@dataclass(frozen=True)
class Highlight:
    text: str
    #: share of the question's terms the highlight contains (0..1)
    coverage: float
    start: int
    end: int
    #: the question terms (analysed) the highlight contains
    terms: frozenset[str] = frozenset()
    #: the passage's best single sentences that share terms with the question, best first, each with those terms:
    #: what an extractive answer quotes (see :func:`extractive_answer`)
    sentences: tuple[tuple[str, frozenset[str]], ...] = ()


@lru_cache(maxsize=1)
def _analyzer() -> TextAnalyzer:
    return TextAnalyzer()


def _ends_sentence(text: str, end: int, following: int) -> bool:
    """Whether the punctuation before ``end`` in ``text`` (a boundary candidate up to ``following``) ends a sentence."""
    if "\n" in text[end:following]:
        return True
    head = text[max(0, end - 40) : end]
    word = _LAST_WORD.search(head)
    if word is None:  # "!", "?", "…", or a full stop after a bracket, a quote, a symbol
        nxt = _NEXT_WORD.match(text, following)
        return not (nxt and nxt.group(1)[:1].islower())
    token = word.group(1)
    nxt = _NEXT_WORD.match(text, following)
    first = nxt.group(1)[:1] if nxt else ""
    if first.islower():
        return False
    folded = token.casefold()
    if folded == "j.-c" or folded.endswith(".-c"):  # "av. J.-C." ends a sentence only before a capital
        return True
    if folded in _ABBREVIATIONS and folded not in {"etc", "al"}:
        return False
    # an initial ("J. K. Rowling", "U.S."), but not a sentence's last word of one letter in lowercase
    if len(token) == 1 and token.isupper():
        return False
    return not ("." in token and token[:1].isupper() and all(len(part) <= 2 for part in token.split(".")))


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of ``text`` (whitespace-only spans dropped)."""
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        if not _ends_sentence(text, match.start(), match.end()):
            continue
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


def _clipped(text: str) -> str:
    if len(text) > _MAX_HIGHLIGHT_CHARS:
        return text[: _MAX_HIGHLIGHT_CHARS - 1].rsplit(" ", 1)[0] + "…"
    return text


def _furniture(sentence: str) -> bool:
    """Whether ``sentence`` is an address or a page's furniture (a copyright line, a sharing or cookie notice),
    which names something but never answers a question."""
    if len(_URL.sub(" ", sentence).split()) < _MIN_WORDS_BESIDE_URLS and _URL.search(sentence):
        return True
    return len(sentence.split()) <= _BOILERPLATE_MAX_WORDS and _BOILERPLATE.search(sentence) is not None


def highlight(question: str, passage: str, *, max_sentences: int = 2) -> Highlight:
    """The one or two consecutive sentences of ``passage`` that share the most terms with ``question``.

    Rare terms weigh more than common ones (an idf over the passage's sentences); with no shared
    term at all the passage's first sentence is returned with coverage 0. Heading lines (the title a
    chunk opens with, see :func:`heading_lines`), the lines of a reference list ("55. ... (https://...)"),
    bare addresses and a page's furniture ("© 2024 ... All rights reserved.") are not quoted unless the
    passage is nothing else, and
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
    # nor does a line of a reference list, an address alone or a page's furniture
    references = [(m.start(), m.end()) for m in _REFERENCE_LINE.finditer(passage)]
    quotable = [
        not heading and not any(a <= start and end <= b for a, b in references) and not _furniture(passage[start:end])
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
    text = _clipped(text)
    matched = set().union(*sentence_terms[i : i + width]) if value > 0 else set()
    coverage = len(matched) / len(query_terms) if query_terms else 0.0
    singles = sorted(
        (i for i in range(n) if quotable[i] and sentence_terms[i]), key=lambda i: (-score(sentence_terms[i]), i)
    )
    sentences = tuple(
        (_clipped(passage[spans[i][0] : spans[i][1]].strip()), frozenset(sentence_terms[i]))
        for i in singles[:_KEPT_SENTENCES]
    )
    return Highlight(text=text, coverage=coverage, start=start, end=end, terms=frozenset(matched), sentences=sentences)


def without_citation_markers(text: str) -> str:
    """``text`` with its own bracketed numbers ("[2]") written in full-width brackets ("［2］").

    Answers cite their sources as "[n]"; a document's footnote quoted in an answer, or shown to the
    model as a source, must not read as one. The full-width form keeps what the text says.
    """
    return _MARKER_LIKE.sub(lambda match: f"［{match.group(1)}］", text)


def extractive_answer(highlights: Sequence[Highlight], *, max_sources: int = 3) -> str:
    """A short answer: the one or two sentences that best answer, each followed by its source numbers: "… [1] … [2]".

    ``highlights[i]`` belongs to source number i + 1. The answer opens with the best sentence of the best-ranked
    source whose highlight shares a term with the question (the first source when none does). A second sentence
    follows when both fit in ``_MAX_ANSWER_WORDS``: among the rest of that source and the best sentences of the
    next sources, up to ``max_sources`` sources in all, the one adding the most question terms the first lacks
    (else the one sharing the most), the better-ranked on ties (bench/README.md, "Answers", has the measures).
    A sentence is quoted once: when overlapping chunks hold the same sentence (or one inside another), the longer
    one is quoted with every source that holds it, as in "… [1][2]".
    Only those markers are citations: bracketed numbers of the quoted text are kept in full-width brackets.
    """
    ranked = [(i, h) for i, h in enumerate(highlights) if h.coverage > 0]
    if not ranked:
        return f"{without_citation_markers(highlights[0].text)} [1]" if highlights else ""
    ranked = ranked[: max(1, max_sources)]
    # (text, terms, source number) of each sentence a source offers, best first; a highlight made without its
    # terms (by hand) counts as adding terms of its own
    offered = [
        [(text, terms, i + 1) for text, terms in h.sentences] or [(h.text, h.terms or frozenset({f"\0{i}"}), i + 1)]
        for i, h in ranked
    ]
    first_text, first_terms, first_number = offered[0][0]
    chosen = [(first_text, first_number)]
    candidates = offered[0][1:] + [sentences[0] for sentences in offered[1:]]
    adding = [
        c
        for c in candidates
        if c[1] - first_terms
        and _comparable(c[0]) not in _comparable(first_text)
        and len(first_text.split()) + len(c[0].split()) <= _MAX_ANSWER_WORDS
    ]
    if not adding:
        # no sentence adds a term: the next best one that shares any still often holds the answer
        adding = [
            c
            for c in candidates
            if c[1]
            and _comparable(c[0]) not in _comparable(first_text)
            and len(first_text.split()) + len(c[0].split()) <= _MAX_ANSWER_WORDS
        ]
    if adding:
        text, _, number = max(adding, key=lambda c: (len(c[1] - first_terms), len(c[1]), -c[2]))
        chosen.append((text, number))
    quoted: list[tuple[str, str, list[int]]] = []  # (text, comparable text, source numbers)
    for text, number in chosen:
        key = _comparable(text)
        for position, (kept, seen, numbers) in enumerate(quoted):
            if key in seen or seen in key:
                quoted[position] = (text, key, numbers) if len(key) > len(seen) else (kept, seen, numbers)
                if number not in numbers:
                    numbers.append(number)
                break
        else:
            quoted.append((text, key, [number]))
    # the sources that hold a quoted sentence too (overlapping chunks) are cited with it
    for i, h in enumerate(highlights):
        for _, seen, numbers in quoted:
            if i + 1 not in numbers and any(seen in _comparable(t) for t, _ in h.sentences or ((h.text, h.terms),)):
                numbers.append(i + 1)
    return " ".join(
        f"{without_citation_markers(text)} " + "".join(f"[{n}]" for n in sorted(numbers)) for text, _, numbers in quoted
    )


def _comparable(text: str) -> str:
    return " ".join(text.casefold().split())
