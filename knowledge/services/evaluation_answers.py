"""What ``manage.py evaluate`` measures of the answers: gold answers quoted, their length, and abstention.

The answers are the product's own (:func:`knowledge.services.answering.answer_question`), given the
collection the retrieval measures ran on. A leave-out run (see :func:`left_out_ids`) holds back a seeded
share of the corpus's articles, so that some questions have no answer in the collection: those should
get "not found", the others should not.
"""

from __future__ import annotations

import random
import re
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from llm.text import repeated_ngram

__all__ = [
    "AbstentionCounts",
    "AnswerCounts",
    "answer_contains",
    "answer_words",
    "first_sentence",
    "left_out_ids",
]


def _normalized(text: str) -> str:
    return " ".join(text.casefold().split())


def answer_contains(answer: str, golds: Iterable[str]) -> bool:
    """Whether ``answer`` contains one of ``golds``, ignoring case and whitespace differences."""
    text = _normalized(answer)
    return any(gold and gold in text for gold in (_normalized(g) for g in golds))


#: the citation markers that follow a quote: " [1]", "[1][2]"
_CITATION_GROUP = re.compile(r"(?:\s*\[\d{1,3}\])+")


def _without_markers(answer: str) -> str:
    return _CITATION_GROUP.sub(" ", answer)


def first_sentence(answer: str) -> str:
    """The first sentence an answer quotes (its text up to the first citation or sentence end)."""
    from ingestion.highlight import split_sentences

    head = _CITATION_GROUP.split(answer, maxsplit=1)[0]
    spans = split_sentences(head)
    return head[spans[0][0] : spans[0][1]] if spans else head


def answer_words(answer: str) -> int:
    """How many words an answer has, its citation markers left out."""
    return len(_without_markers(answer).split())


def left_out_ids(corpus: Sequence[tuple[str, str, str]], share: float, seed: int) -> set[str]:
    """The corpus ids of a seeded ``share`` of the corpus's articles, to leave out of the collection.

    The paragraphs of one article (corpus lines with the same title, as PIAF's Wikipedia paragraphs) are
    left out together; a line without a title is an article of its own.
    """
    if not 0.0 < share < 1.0:
        return set()
    articles: dict[str, list[str]] = {}
    for cid, title, _ in corpus:
        articles.setdefault(title.strip() or f"\0{cid}", []).append(cid)
    keys = sorted(articles)
    chosen = random.Random(seed).sample(keys, round(share * len(keys)))
    return {cid for key in chosen for cid in articles[key]}


@dataclass
class AnswerCounts:
    """Answers checked against gold answers."""

    mode: str
    questions: int = 0
    contains: int = 0
    contains_first: int = 0
    repeated: int = 0
    words: list[int] = field(default_factory=list)
    #: of the first source's highlight (the quote the API gives with each source): how often it holds a gold
    #: answer (a question without sources counts as a miss), and its words
    highlight_contains: int = 0
    highlight_words: list[int] = field(default_factory=list)
    #: of the answers a model wrote: prompt tokens, seconds to the first streamed piece, seconds in all
    prompt_tokens: list[int] = field(default_factory=list)
    first_piece_s: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def add_cost(self, *, prompt_tokens: int, first_piece_s: float | None, seconds: float) -> None:
        """What one answer cost; answers no model wrote (extractive, "not found") are not counted."""
        if prompt_tokens <= 0:
            return
        self.prompt_tokens.append(prompt_tokens)
        self.seconds.append(seconds)
        if first_piece_s is not None:
            self.first_piece_s.append(first_piece_s)

    def add(self, output: str, golds: Sequence[str], *, highlight: str | None = None) -> None:
        """Count one answer; ``highlight`` is its first source's (None: it has no source)."""
        self.questions += 1
        self.contains += answer_contains(output, golds)
        self.contains_first += answer_contains(first_sentence(output), golds)
        self.repeated += repeated_ngram(output)
        self.words.append(answer_words(output))
        if highlight is not None:
            self.highlight_contains += answer_contains(highlight, golds)
            self.highlight_words.append(answer_words(highlight))

    def metrics(self) -> dict[str, Any]:
        n = max(1, self.questions)
        result: dict[str, Any] = {
            "answer_contains": round(self.contains / n, 4),
            "answer_mode": self.mode,
            "answers": self.questions,
        }
        if self.mode == "extractive":
            result["answer_contains_first"] = round(self.contains_first / n, 4)
        else:
            result["answer_repeated_4gram"] = round(self.repeated / n, 4)
        result["answer_words_median"] = statistics.median(self.words) if self.words else 0
        result["highlight_contains"] = round(self.highlight_contains / n, 4)
        result["highlight_words_median"] = statistics.median(self.highlight_words) if self.highlight_words else 0
        if self.prompt_tokens:
            result["prompt_tokens_median"] = statistics.median(self.prompt_tokens)
            result["answer_seconds_median"] = round(statistics.median(self.seconds), 2)
        if self.first_piece_s:
            result["first_token_seconds_median"] = round(statistics.median(self.first_piece_s), 2)
        return result


@dataclass
class AbstentionCounts:
    """How often "not found" came, for the questions whose documents were left out and for the others."""

    unanswerable: int = 0
    unanswerable_abstained: int = 0
    answerable: int = 0
    answerable_abstained: int = 0

    def add(self, *, answerable: bool, answered: bool) -> None:
        if answerable:
            self.answerable += 1
            self.answerable_abstained += not answered
        else:
            self.unanswerable += 1
            self.unanswerable_abstained += not answered

    def metrics(self) -> dict[str, Any]:
        return {
            "abstain_unanswerable": round(self.unanswerable_abstained / max(1, self.unanswerable), 4),
            "abstain_answerable": round(self.answerable_abstained / max(1, self.answerable), 4),
            "questions_unanswerable": self.unanswerable,
            "questions_answerable": self.answerable,
        }


def abstention_measure(
    questions: Sequence[tuple[str, bool]],
    answer: Callable[[str], bool],
    progress: Callable[[], Any] | None = None,
) -> AbstentionCounts:
    """``answer(question)`` (whether it was answered) for each (question, answerable) pair, counted."""
    counts = AbstentionCounts()
    for question, answerable in questions:
        counts.add(answerable=answerable, answered=answer(question))
        if progress is not None:
            progress()
    return counts


def question_kinds(qrels: Mapping[str, Mapping[str, int]], left_out: set[str]) -> tuple[set[str], set[str]]:
    """(answerable, unanswerable) query ids: all their documents kept, or all left out (mixed: neither)."""
    answerable: set[str] = set()
    unanswerable: set[str] = set()
    for qid, relevant in qrels.items():
        held = [cid in left_out for cid in relevant]
        if not any(held):
            answerable.add(qid)
        elif all(held):
            unanswerable.add(qid)
    return answerable, unanswerable
