"""Excerpts: the sentences of a passage a generative prompt shows, within a token budget."""

from __future__ import annotations

import pytest

from ingestion.excerpt import excerpt


def words(text: str) -> int:
    return len(text.split())


FRENCH = (
    "La tour Eiffel est une tour de fer puddlé de 330 m de hauteur située à Paris. "
    "Elle a été construite par Gustave Eiffel et ses collaborateurs pour l'Exposition universelle de 1889. "
    "Son nom vient de celui de son concepteur. M. Eiffel était ingénieur. "
    "Elle est devenue le symbole de la capitale française. "
    "Elle reçoit environ six millions de visiteurs par an. "
    "Elle a été le monument le plus haut du monde jusqu'en 1930."
)
ENGLISH = (
    "The lighthouse stands on a rock off the northern coast. "
    "It was designed by Dr. Smith, an engineer from Leith, in the spring of 1850. "
    "Its light was first lit in 1854 and could be seen from 20 miles away. "
    "Keepers lived there until the station was automated in 1991. "
    "Today it is a museum open to visitors in summer."
)


@pytest.mark.parametrize(
    ("question", "text", "best"),
    [
        ("Combien de visiteurs la tour reçoit-elle par an ?", FRENCH, "six millions de visiteurs par an"),
        ("When was the station automated?", ENGLISH, "automated in 1991"),
        ("Which engineer designed it?", ENGLISH, "designed by Dr. Smith, an engineer from Leith"),
    ],
)
def test_the_excerpt_holds_the_best_sentence_within_the_budget(question: str, text: str, best: str) -> None:
    for budget in (16, 24, 40):
        shown = excerpt(question, text, budget_tokens=budget, count_tokens=words)
        assert best in shown
        assert words(shown) <= budget
        assert words(shown) < words(text)


def test_the_excerpt_adds_neighbours_in_the_passage_order_and_marks_the_gaps() -> None:
    shown = excerpt("When was the station automated?", ENGLISH, budget_tokens=40, count_tokens=words)
    sentences = [s for s in shown.replace("…", "").split(". ") if s.strip()]
    assert len(sentences) >= 2
    positions = [ENGLISH.index(s.strip()) for s in sentences]
    assert positions == sorted(positions)
    # the previous and the next sentence of the best one are there, the opening one is not
    assert "first lit in 1854" in shown and "museum" in shown
    assert shown.startswith("… ") and "off the northern coast" not in shown


def test_a_question_no_sentence_matches_gets_the_text_s_start() -> None:
    shown = excerpt("Quantum chromodynamics?", ENGLISH, budget_tokens=25, count_tokens=words)
    assert shown.startswith("The lighthouse stands on a rock")
    assert shown.endswith(" …")
    assert words(shown) <= 25


def test_a_text_within_the_budget_or_a_budget_of_zero_gives_the_whole_text() -> None:
    assert excerpt("Who designed it?", f"  {ENGLISH}\n", budget_tokens=500, count_tokens=words) == ENGLISH
    assert excerpt("Who designed it?", FRENCH, budget_tokens=0, count_tokens=words) == FRENCH


def test_a_best_sentence_longer_than_the_budget_is_cut_at_a_word() -> None:
    shown = excerpt("Combien de visiteurs par an ?", FRENCH, budget_tokens=6, count_tokens=words)
    assert words(shown) <= 6
    assert "Elle reçoit environ" in shown
    assert shown.endswith(" …")
