from __future__ import annotations

import time

import pytest

from ingestion.followup import contextual_query, rewrite_messages, rewrite_parse

EIFFEL = [("Qui a conçu la tour Eiffel ?", "Gustave Eiffel et ses ingénieurs Maurice Koechlin et Émile Nouguier [1].")]
NINTENDO = [("Who founded Nintendo?", "Fusajiro Yamauchi founded it in Kyoto in 1889 [1].")]


@pytest.mark.parametrize(
    ("question", "history"),
    [
        ("Quelle est la capitale de la France ?", EIFFEL),
        ("En quelle année Jakob Böhme tombe-t-il malade ?", EIFFEL),
        ("Quel est le premier poste tenu par Satoru Iwata chez Nintendo ?", EIFFEL),
        ("What is the population of Paris in France?", NINTENDO),
        ("When did Sony release the PlayStation?", NINTENDO),
    ],
)
def test_standalone_question_is_unchanged(question: str, history: list[tuple[str, str]]) -> None:
    assert contextual_query(question, history) == question


@pytest.mark.parametrize("history", [[], [("", "")], [("  ", "an answer")]])
def test_without_history_the_question_is_unchanged(history: list[tuple[str, str]]) -> None:
    assert contextual_query("Quand a-t-elle été construite ?", history) == "Quand a-t-elle été construite ?"


def test_french_pronoun_gets_the_previous_subject() -> None:
    query = contextual_query("Quand a-t-elle été construite ?", EIFFEL)

    assert query.startswith("Quand a-t-elle été construite ?")
    assert "tour" in query.split()
    assert "Eiffel" in query.split()
    assert "Qui" not in query.split()  # interrogatives and stop words are not salient
    assert "la" not in query.split()


def test_english_pronoun_gets_the_previous_subject() -> None:
    query = contextual_query("When did it start making video games?", NINTENDO)

    assert query.startswith("When did it start making video games?")
    assert "Nintendo" in query.split()
    assert "Who" not in query.split()


def test_ellipsis_with_a_year_gets_the_previous_question_terms() -> None:
    history = [("Combien d'habitants compte Lyon en 2010 ?", "484 344 habitants.")]

    query = contextual_query("et en 2020 ?", history)

    assert query.startswith("et en 2020 ?")
    assert {"habitants", "compte", "Lyon"} <= set(query.split())
    assert "2010" in query.split()  # the question's own year stays, the previous one is a term like another


def test_english_ellipsis_and_what_about() -> None:
    history = [("What was the revenue of Nintendo in 2019?", "About 1.2 trillion yen.")]

    assert {"revenue", "Nintendo"} <= set(contextual_query("and in 2020?", history).split())
    assert {"revenue", "Nintendo"} <= set(contextual_query("What about Sony?", history).split())


def test_question_without_a_named_subject_gets_the_context() -> None:
    history = [("Combien de sièges compte le parlement de Nouvelle-Zélande ?", "120 sièges.")]

    query = contextual_query("Combien de chambres possède le parlement ?", history)

    assert {"Nouvelle", "Zélande"} <= set(query.split())
    assert query.split().count("parlement") == 1  # a term the question has is not added again


def test_question_repeating_the_conversation_subject_is_unchanged() -> None:
    history = [("Quand est né Napoléon ?", "En 1769, à Ajaccio.")]
    question = "Quel est le rôle de Napoléon dans sa campagne ?"

    assert contextual_query(question, history) == question  # "sa" is Napoléon, named again
    lowercase = "quel est le rôle du blocus continental ?"  # two words of the last question: the same subject
    assert contextual_query(lowercase, [("Qui a décidé le blocus continental ?", "")]) == lowercase


def test_continuation_expands_even_a_named_question() -> None:
    assert "Nintendo" in contextual_query("And Sony?", NINTENDO).split()
    assert "Lyon" in contextual_query("Et Marseille ?", [("Combien d'habitants compte Lyon ?", "")]).split()


def test_names_of_older_turns_and_of_the_last_answer() -> None:
    history = [
        ("Qui a fondé Nintendo ?", "Fusajiro Yamauchi, en 1889."),
        ("Et son siège ?", "À Kyoto, au Japon."),
    ]

    words = contextual_query("Depuis quand ?", history).split()

    assert "Nintendo" in words  # the subject was named two turns ago
    assert "Kyoto" in words  # a name of the last answer
    assert "Depuis" not in words[2:]


def test_answer_terms_can_be_left_out() -> None:
    assert "Koechlin" not in contextual_query("Quand a-t-elle été construite ?", EIFFEL, answer_terms=0)
    assert "Koechlin" in contextual_query("Quand a-t-elle été construite ?", EIFFEL)


def test_only_the_last_turns_are_read_and_the_query_stays_short() -> None:
    history = [(f"Question {n} sur Alpha{n} et Beta{n} et Gamma{n} ?", "") for n in range(10)]

    words = contextual_query("et celui-ci ?", history).split()

    assert "Alpha9" in words
    assert "Alpha0" not in words
    assert len(words) <= 3 + 12


def test_is_fast() -> None:
    contextual_query("Quand a-t-elle été construite ?", EIFFEL)  # loads the stop words once
    started = time.perf_counter()
    for _ in range(100):
        contextual_query("Quand a-t-elle été construite ?", EIFFEL)
    assert (time.perf_counter() - started) / 100 < 0.005  # well under 1 ms on a quiet machine


def test_rewrite_messages_show_the_conversation_and_the_question() -> None:
    long_answer = "Gustave Eiffel. " + "mot " * 400
    messages = rewrite_messages("Quand a-t-elle été construite ?", [("Qui a conçu la tour Eiffel ?", long_answer)])

    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert "User: Qui a conçu la tour Eiffel ?" in user
    assert "Assistant: Gustave Eiffel." in user
    assert "Last question: Quand a-t-elle été construite ?" in user
    assert len(user) < 1000  # long answers are cut


@pytest.mark.parametrize(
    "reply",
    [
        "Quand la tour Eiffel a-t-elle été construite ?",
        '"Quand la tour Eiffel a-t-elle été construite ?"',
        "Standalone question: Quand la tour Eiffel a-t-elle été construite ?",
        "Question : « Quand la tour Eiffel a-t-elle été construite ? »",
        "\n  Quand la tour Eiffel a-t-elle été construite ?\nIt was built from 1887 to 1889.",
    ],
)
def test_rewrite_parse_reads_the_first_line(reply: str) -> None:
    assert rewrite_parse(reply, "Quand a-t-elle été construite ?") == "Quand la tour Eiffel a-t-elle été construite ?"


@pytest.mark.parametrize("reply", ["", "   \n  ", '""', "Standalone question:", "word " * 200])
def test_rewrite_parse_falls_back_to_the_question(reply: str) -> None:
    assert rewrite_parse(reply, "Quand a-t-elle été construite ?") == "Quand a-t-elle été construite ?"
