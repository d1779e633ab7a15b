"""Token counting helpers and stop-string scanning (pure, no model)."""

from __future__ import annotations

import pytest

from llm.backends.base import StopScanner
from llm.tokens import estimate_tokens, fits, prompt_budget, trim_to_tokens


def words(text: str) -> int:
    return len(text.split())


def chars(text: str) -> int:
    return len(text)


TEXT = "one two three four five six seven eight nine ten"


@pytest.mark.parametrize(
    ("max_tokens", "expected"),
    [
        (100, TEXT),
        (10, TEXT),
        (9, "one two three four five six seven eight nine"),
        (3, "one two three"),
        (1, "one"),
        (0, ""),
        (-5, ""),
    ],
)
def test_trim_to_tokens_keeps_whole_words(max_tokens: int, expected: str) -> None:
    assert trim_to_tokens(TEXT, max_tokens, words) == expected


@pytest.mark.parametrize("max_tokens", [1, 5, 13, 20, 47])
def test_trim_to_tokens_never_exceeds_the_budget(max_tokens: int) -> None:
    trimmed = trim_to_tokens(TEXT, max_tokens, chars)

    assert chars(trimmed) <= max_tokens
    assert TEXT.startswith(trimmed)
    # it is the longest whole-word beginning that fits: one more word would not
    next_space = TEXT.find(" ", len(trimmed) + 1)
    one_more_word = TEXT if next_space == -1 else TEXT[:next_space]
    assert trimmed == TEXT or chars(one_more_word) > max_tokens


def test_trim_to_tokens_cuts_inside_a_word_too_long_to_fit() -> None:
    assert trim_to_tokens("Donaudampfschifffahrt is long", 5, chars) == "Donau"


def test_trim_to_tokens_keeps_text_that_fits_unchanged() -> None:
    assert trim_to_tokens("  spaced  text \n", 10, words) == "  spaced  text \n"


@pytest.mark.parametrize(
    ("context", "max_tokens", "reserve", "expected"),
    [(2048, 512, 16, 1520), (2048, 512, 0, 1536), (512, 600, 16, 0)],
)
def test_prompt_budget_sets_the_answer_aside(context: int, max_tokens: int, reserve: int, expected: int) -> None:
    assert prompt_budget(context, max_tokens, reserve=reserve) == expected


def test_fits_compares_with_the_budget() -> None:
    assert fits("a b c", 3, words)
    assert not fits("a b c d", 3, words)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("Hello world", 4),
        ("données", 4),
        ("2023", 4),
        ("Hi!", 2),
        ("日本", 4),
    ],
)
def test_estimate_tokens(text: str, expected: int) -> None:
    assert estimate_tokens(text) == expected


@pytest.mark.parametrize(
    ("pieces", "stop", "expected"),
    [
        (["Hello", " world"], [], "Hello world"),
        (["Hello", " wor", "ld", "!"], ["world"], "Hello "),
        (["ab", "c##", "#def"], ["###"], "abc"),
        (["no stop ", "here"], ["zzz"], "no stop here"),
        (["first", "END", "more END"], ["END", "st"], "fir"),
        (["x"], [""], "x"),
    ],
)
def test_stop_scanner_cuts_at_the_first_stop_string(pieces: list[str], stop: list[str], expected: str) -> None:
    scanner = StopScanner(stop)
    emitted = [scanner.feed(piece) for piece in pieces]
    emitted.append(scanner.flush())

    assert "".join(emitted) == expected
    assert scanner.stopped == any(s and s in "".join(pieces) for s in stop)


def test_stop_scanner_holds_back_only_what_could_begin_a_stop_string() -> None:
    scanner = StopScanner(["STOP", "\n\n"])

    assert scanner.feed("The end S") == "The end "
    assert scanner.feed("o") == "So"  # "So" begins no stop string
    assert scanner.feed(" far\n") == " far"
    assert scanner.feed("\nmore") == ""
    assert scanner.stopped
