"""Citation markers and repetitions of an answer's text (pure functions)."""

from __future__ import annotations

import pytest

from llm.text import citations_clean, cited_sources, repeated_ngram, words


@pytest.mark.parametrize(
    ("text", "sources", "expected"),
    [
        ("Paris is the capital [1].", 2, "Paris is the capital [1]."),
        ("Paris is the capital [3].", 2, "Paris is the capital."),
        ("Paris [7] is the capital.", 2, "Paris is the capital."),
        ("Paris[7] is the capital.", 2, "Paris is the capital."),
        ("Paris is the capital [1][1].", 2, "Paris is the capital [1]."),
        ("Paris is the capital [2] [2] [1].", 2, "Paris is the capital [2][1]."),
        ("Paris is the capital [1][5][2].", 2, "Paris is the capital [1][2]."),
        ("Both say so [1, 2].", 3, "Both say so [1][2]."),
        ("All say so [1-3].", 3, "All say so [1][2][3]."),
        ("All say so [1-3].", 2, "All say so [1][2]."),
        ("Nothing cites [0].", 2, "Nothing cites."),
        ("[4] Paris.\n[1] Lyon.", 2, "Paris.\n[1] Lyon."),
        ("Cited twice, far apart [1], then [1].", 1, "Cited twice, far apart [1], then [1]."),
        ("No source at all [1].", 0, "No source at all."),
        ("A year [2019] and a list [a] stay.", 2, "A year [2019] and a list [a] stay."),
        ("    indented [9] code\n    stays", 2, "    indented code\n    stays"),
    ],
)
def test_citations_clean_keeps_only_markers_of_given_sources(text: str, sources: int, expected: str) -> None:
    assert citations_clean(text, sources) == expected


def test_citations_clean_leaves_text_without_markers_unchanged() -> None:
    text = "Une réponse sans citation.\n\n- un point\n- un autre"
    assert citations_clean(text, 3) == text


def test_cited_sources_in_order_of_first_citation() -> None:
    assert cited_sources("B [2], A [1, 3], again [2] and [4-5].") == [2, 1, 3, 4, 5]
    assert cited_sources("No citation.") == []


def test_words_ignore_case_punctuation_and_citations() -> None:
    assert words("L'État, en 2003 [1]: 14,2 milliards!") == ["l", "état", "en", "2003", "14", "2", "milliards"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The debt is due. The debt is due.", True),
        ("is also empowered to make decisions on a debt, is also empowered to make", True),
        ("THE DEBT IS DUE [1]. the debt, is due [2]", True),
        ("The debt is due [1]. It was paid [1].", False),
        ("Paris is the capital of France.", False),
        ("", False),
    ],
)
def test_repeated_ngram_finds_a_four_word_sequence_seen_twice(text: str, expected: bool) -> None:
    assert repeated_ngram(text) is expected


def test_repeated_ngram_size_is_a_parameter() -> None:
    text = "the cat sat; the cat ran"
    assert repeated_ngram(text, 2) is True
    assert repeated_ngram(text, 3) is False
    with pytest.raises(ValueError):
        repeated_ngram(text, 0)
