"""Ending a looping answer before its first repeated run of four words, whatever the piece sizes."""

from __future__ import annotations

import random

import pytest

from llm.backends.base import AnswerScanner, RepeatGuard
from llm.text import repeated_ngram

LOOP = (
    "The court decides on the debt. It is also empowered to make decisions on the amount of a debt. "
    "It is also empowered to make decisions on the amount of a debt. It is also empowered to make"
)
FIRST_TWO = "The court decides on the debt. It is also empowered to make decisions on the amount of a debt. "


def run(scanner: RepeatGuard | AnswerScanner, text: str, size: int) -> tuple[list[str], bool]:
    """Feed ``text`` in pieces of ``size`` characters, as a backend does; stop when the scanner does."""
    out: list[str] = []
    for start in range(0, len(text), size):
        out.append(scanner.feed(text[start : start + size]))
        if scanner.stopped:
            break
    out.append(scanner.flush())
    return out, scanner.stopped


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        pytest.param(LOOP, FIRST_TWO, id="a looping stream stops before the first repeat"),
        pytest.param(
            "- Paris is the capital [1]\n- Lyon is a large city\n- paris is the capital [2]\n- more",
            "- Paris is the capital [1]\n- Lyon is a large city\n",
            id="a repeated line goes with the dash that opens it",
        ),
        pytest.param("It is a long debt. It is a long debt.", "It is a long debt. ", id="a repeat at the very end"),
        pytest.param(
            "It decides on the amount of a debt on the amount of a debt on the",
            "It decides on the amount of a debt ",
            id="a phrase repeated inside a sentence",
        ),
        pytest.param(
            "The Court decides the case [1]. It is new. the court decides the case [2] again.",
            "The Court decides the case [1]. It is new. ",
            id="citation markers and case do not hide a repeat",
        ),
    ],
)
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 13, 1000])
def test_a_repeated_run_of_words_ends_the_stream_before_it(text: str, shown: str, size: int) -> None:
    out, stopped = run(RepeatGuard(), text, size)

    assert stopped
    assert "".join(out) == shown


@pytest.mark.parametrize(
    "text",
    [
        "Paris is the capital of France. It is also its largest city. It has 2.1 million people.",
        "Yes. Yes. Yes. It is.",  # short runs may come back
        "The sum is 14.2 billion [1]. The total came to 14.2 billion euros [2].",
        "Line one is here\nLine two is here\n\n\nLine three is here",
    ],
)
@pytest.mark.parametrize("size", [1, 2, 7, 1000])
def test_text_without_a_repeat_passes_whole(text: str, size: int) -> None:
    out, stopped = run(RepeatGuard(), text, size)

    assert not stopped
    assert "".join(out) == text


def test_only_the_words_that_may_begin_a_repeat_are_held_back() -> None:
    guard = RepeatGuard()
    assert guard.feed("It is a long debt. ") == "It is a long debt"  # nothing before: shown at once
    assert guard.feed("Then came") == ". Then came"  # no earlier run begins with "Then" or "came"
    assert guard.feed(" more [") == " more"  # "[" may open a citation
    assert guard.feed("1]. It is") == ""  # "It is" begins an earlier run: held, with what precedes it
    assert guard.feed(" a short one.") == " [1]. It is a short one"
    assert guard.flush() == "."


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_answer_scanner_applies_stop_strings_before_repeats(size: int) -> None:
    out, stopped = run(AnswerScanner(["STOP"]), "One two three four. STOP One two three four.", size)

    assert stopped
    assert "".join(out) == "One two three four. "


@pytest.mark.parametrize("size", [1, 1000])
def test_answer_scanner_without_repeat_detection_lets_loops_through(size: int) -> None:
    out, stopped = run(AnswerScanner([], stop_on_repeat=False), LOOP, size)

    assert not stopped
    assert "".join(out) == LOOP


@pytest.mark.parametrize("seed", range(40))
def test_whatever_the_pieces_the_text_shown_is_a_prefix_without_a_repeated_run(seed: int) -> None:
    rng = random.Random(seed)
    vocabulary = ["the", "debt", "is", "due", "court", "[1]", ".", ",", "\n", "- ", "Paris", "[2", "a"]
    text = "".join(rng.choice(vocabulary) + rng.choice(["", " ", " ", "  "]) for _ in range(rng.randint(5, 80)))

    out, stopped = run(RepeatGuard(), text, rng.randint(1, 9))
    shown = "".join(out)

    assert text.startswith(shown)
    assert not repeated_ngram(shown)
    assert stopped == repeated_ngram(text)
    if not stopped:
        assert shown == text
