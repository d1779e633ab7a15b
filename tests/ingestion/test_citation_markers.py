"""A document's own bracketed numbers never read as an answer's citations."""

from __future__ import annotations

import pytest

from ingestion.highlight import Highlight, extractive_answer, without_citation_markers


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("as the contract says [2].", "as the contract says ［2］."),
        ("see [2, 3] and [4-5]", "see ［2, 3］ and ［4-5］"),
        ("arrays like a[i] and [x] stay", "arrays like a[i] and [x] stay"),
    ],
)
def test_bracketed_numbers_of_a_text_are_kept_in_full_width_brackets(text: str, shown: str) -> None:
    assert without_citation_markers(text) == shown


def test_an_extractive_answer_writes_only_its_own_markers() -> None:
    quoted = Highlight(text="The warranty lasts five years [2].", coverage=1.0, start=0, end=33)
    other = Highlight(text="The warranty covers the engine.", coverage=0.5, start=0, end=31)
    assert (
        extractive_answer([quoted, other])
        == "The warranty lasts five years ［2］. [1] The warranty covers the engine. [2]"
    )
