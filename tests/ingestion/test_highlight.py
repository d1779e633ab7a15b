"""Highlights: the sentences of a chunk that answer a question, never the title above them."""

from __future__ import annotations

from ingestion.highlight import extractive_answer, heading_lines, highlight, split_sentences

TITLE_AND_TEXT = (
    "Nicolas Berggruen\n"
    "Nicolas Berggruen est un investisseur, philanthrope et collectionneur d'art américano-allemand. "
    "Il est né à Paris en 1961."
)


def test_a_title_that_repeats_the_question_words_is_not_quoted() -> None:
    found = highlight("Qui est Nicolas Berggruen ?", TITLE_AND_TEXT)

    assert found.text.startswith("Nicolas Berggruen est un investisseur")
    assert "\n" not in found.text
    assert found.coverage == 1.0


def test_without_shared_words_the_first_sentence_after_the_title_is_given() -> None:
    found = highlight("Quelle est la couleur du ciel ?", TITLE_AND_TEXT)

    assert found.text.startswith("Nicolas Berggruen est un investisseur") and found.coverage == 0.0


def test_a_sentence_ends_before_the_citation_markers_that_follow_it() -> None:
    text = "Norwich finished in the relegation zone.[49] The 2001–02 season began well.[50][a] It ended in May."
    assert [text[a:b] for a, b in split_sentences(text)] == [
        "Norwich finished in the relegation zone.",
        "The 2001–02 season began well.",
        "It ended in May.",
    ]


def test_a_reference_list_line_is_not_quoted_as_an_answer() -> None:
    passage = (
        "Norwich City played 46 games in the 2004–05 Premier League season and was relegated.\n"
        '55. "Games played by Norwich City in 2004/2005". Soccerbase. (https://www.soccerbase.com/teams/team.sd)\n'
        "^ Games played by Norwich City in the league. Retrieved 3 May 2012."
    )
    found = highlight("How many games did Norwich City play in 2004/2005?", passage)
    assert found.text.startswith("Norwich City played 46 games") and found.coverage > 0
    # a passage that is nothing else is still quoted
    only = highlight("games played", passage.split("\n", 1)[1])
    assert "Games played" in only.text


def test_addresses_and_page_furniture_are_not_quoted_as_answers() -> None:
    passage = (
        "Norwich City\n"
        "https://www.canaries.co.uk/club/history-of-the-club-founded-1902\n"
        "© 2024 Norwich City Football Club, founded 1902. All rights reserved.\n"
        "Partager sur Facebook : le club fondé en 1902\n"
        "The club was founded in 1902 at the Criterion Cafe.\n"
        "Cookies help us run the club's website."
    )
    found = highlight("When was the club founded?", passage)

    assert found.text == "The club was founded in 1902 at the Criterion Cafe."
    assert [text for text, _ in found.sentences] == [found.text]
    # prose that names an address, or cookies, in a long sentence is still prose
    prose = (
        "The club history, written by the supporters' trust and published at https://example.org/history, says "
        "the club was founded in 1902 and explains in detail how the cookies sold at the first match paid its kit."
    )
    assert highlight("When was the club founded?", prose).text == prose


def test_heading_lines_are_titles_above_prose_not_table_rows_or_list_items() -> None:
    text = "Guide\nInstallation\nRun the installer. Then restart.\n\nName | Age\nBob | 42\nAlice | 37"
    spans = split_sentences(text)

    flags = dict(zip((text[a:b] for a, b in spans), heading_lines(text, spans), strict=True))

    assert flags == {
        "Guide": True,
        "Installation": True,
        "Run the installer.": False,
        "Then restart.": False,
        "Name | Age": False,
        "Bob | 42": False,
        "Alice | 37": False,
    }


def test_a_passage_that_is_only_a_heading_is_still_quoted() -> None:
    assert highlight("Berggruen", "Nicolas Berggruen").text == "Nicolas Berggruen"


def test_two_sentences_are_quoted_only_when_the_second_adds_terms_and_both_fit() -> None:
    passage = "The export job is called Zorbulat. It runs every night at two. " + "Filler words here. " * 5
    assert highlight("When does the Zorbulat export job run at night?", passage).text == (
        "The export job is called Zorbulat. It runs every night at two."
    )
    long_passage = "The export job is called Zorbulat " + "and more " * 80 + ". It runs every night at two."
    found = highlight("When does the Zorbulat export job run at night?", long_passage)
    assert len(found.text) <= 600 and found.text.count(".") <= 1


def test_the_extractive_answer_cites_each_quoted_source() -> None:
    first = highlight("Qui est Nicolas Berggruen ?", TITLE_AND_TEXT)
    unrelated = highlight("Qui est Nicolas Berggruen ?", "Le ciel est bleu.")

    assert extractive_answer([first, unrelated]) == f"{first.text} [1]"


def test_a_sentence_found_in_overlapping_chunks_is_quoted_once_with_both_citations() -> None:
    question = "When does the nightly Zorbulat export start?"
    sentence = "The nightly Zorbulat export starts at two in the morning."
    first = highlight(question, f"Operations handbook. {sentence}")
    overlap = highlight(question, f"{sentence} It runs for an hour.")
    other = highlight(question, "Exports are kept for thirty days after the nightly run.")
    answer = extractive_answer([first, overlap, other])
    assert answer.count("Zorbulat export starts at two") == 1
    # the third source adds no question term, but shares one: it follows as the second sentence
    assert answer == f"{sentence} [1][2] Exports are kept for thirty days after the nightly run. [3]"


def test_abbreviations_initials_and_numbers_do_not_end_a_sentence() -> None:
    text = (
        "M. Dupont est né en 52 av. J.-C. Il fonda la ville. "
        "J. K. Rowling vit près d'Édimbourg, etc. et ailleurs. Dr. Who mesure 3.5 m, e.g. beaucoup. "
        "Il compte 1 000 habitants. Fin."
    )
    assert [text[a:b] for a, b in split_sentences(text)] == [
        "M. Dupont est né en 52 av. J.-C.",
        "Il fonda la ville.",
        "J. K. Rowling vit près d'Édimbourg, etc. et ailleurs.",
        "Dr. Who mesure 3.5 m, e.g. beaucoup.",
        "Il compte 1 000 habitants.",
        "Fin.",
    ]


def test_the_extractive_answer_opens_with_the_best_sentence_and_quotes_two_at_most() -> None:
    question = "Which river runs through Zorbville and how long is it?"
    first = highlight(
        question,
        "Zorbville is a small town. The Quarn river runs through Zorbville. Its mayor is elected. Tourism grows.",
    )
    second = highlight(question, "The Quarn is 120 km long. It is fished.")
    third = highlight(question, "The river floods Zorbville every spring.")
    answer = extractive_answer([first, second, third])

    assert answer.startswith("The Quarn river runs through Zorbville. [1]")
    # a second sentence adds "long"; nothing more is quoted
    assert answer.count("[") == 2 and "long" in answer


def test_a_second_sentence_adds_question_terms_if_one_can_else_shares_them() -> None:
    question = "When does the nightly Zorbulat export start?"
    text = "The nightly Zorbulat export starts at two. It is big. The nightly Zorbulat export is big."
    only = highlight(question, text)
    assert (
        extractive_answer([only])
        == "The nightly Zorbulat export starts at two. [1] The nightly Zorbulat export is big. [1]"
    )
    unrelated = highlight(question, "The nightly Zorbulat export starts at two. The canteen opens at noon.")
    assert extractive_answer([unrelated]) == "The nightly Zorbulat export starts at two. [1]"
