"""The sentence side of the search: the passage whose one sentence holds the question beats one that scatters it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ingestion.embedding import Embedder
from ingestion.language import TextAnalyzer
from ingestion.search import HybridSearcher, SearchConfig
from ingestion.sentences import sentence_shares
from tests.ingestion.fixtures_engine import add_chunks, e5, open_store

# the same facts twice: chunk 1 says where the ferries leave in one sentence, chunk 2 spreads it over two
TOGETHER = (
    "The harbour office opens at nine. Ferries to the island leave from the north pier every hour. "
    "Tickets are sold on board."
)
SCATTERED = (
    "Ferries leave every hour. The island harbour office at the north pier opens at nine. Tickets are sold on board."
)
CHUNKS = {
    1: (TOGETHER, 1, 1),
    2: (SCATTERED, 2, 1),
    3: ("The museum of the island shows old maps and boats. It opens at ten on weekdays.", 3, 1),
    4: ("Buses to the airport leave from the station square every twenty minutes.", 4, 1),
    5: ("The north beach is guarded in summer; swimming is forbidden when the red flag flies.", 5, 1),
}
QUESTION = "From which pier do the ferries to the island leave?"


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return e5()


@pytest.fixture(scope="module")
def searcher(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> HybridSearcher:
    store = open_store(tmp_path_factory.mktemp("sentences"), embedder)
    add_chunks(store, embedder, CHUNKS)
    return HybridSearcher(store, embedder, SearchConfig())


def _weights(analyzer: TextAnalyzer, question: str) -> dict[str, float]:
    return {term: 1.0 for term in analyzer.query_tokens(question)}


def test_the_best_sentence_holds_the_share_of_the_weighted_terms() -> None:
    analyzer = TextAnalyzer()
    weights = {"ferri": 1.0, "island": 1.0, "pier": 2.0, "north": 1.0}
    assert set(weights) <= set(analyzer.query_tokens("ferries island pier north"))

    together, scattered, none = sentence_shares(analyzer, weights, [TOGETHER, SCATTERED, "Nothing here."])

    assert together == pytest.approx(1.0)  # one sentence holds every term
    assert scattered == pytest.approx(4 / 5)  # "island ... north pier": the ferries are in another sentence
    assert none == 0.0
    assert sentence_shares(analyzer, {}, [TOGETHER]) == [0.0]
    assert sentence_shares(analyzer, weights, [""]) == [0.0]


def test_a_heading_line_does_not_count_as_the_sentence_that_answers() -> None:
    analyzer = TextAnalyzer()
    passage = "Ferries to the island from the north pier\nThe office sells tickets. Boats leave every hour."
    weights = _weights(analyzer, "ferries island north pier")

    assert sentence_shares(analyzer, weights, [passage]) == [0.0]
    # a passage made of nothing else is read as it is
    assert sentence_shares(analyzer, weights, ["Ferries to the island from the north pier"]) == [pytest.approx(1.0)]


def test_a_passage_without_a_language_vote_is_read_in_the_questions() -> None:
    analyzer = TextAnalyzer(("en", "fr"))
    weights = _weights(analyzer, "les horaires des bateaux")  # stemmed as French: "horair", "bateau"
    timetable = "Horaires: bateaux 9h, 10h, 11h"  # no stop word: no vote of its own

    assert sentence_shares(analyzer, weights, [timetable], ["fr"]) == [pytest.approx(1.0)]
    assert sentence_shares(analyzer, weights, [timetable]) < [1.0]  # read as English, "bateaux" is not "bateau"


def test_the_side_puts_first_the_passage_whose_sentence_answers(searcher: HybridSearcher) -> None:
    off = HybridSearcher(searcher.store, searcher.embedder, replace(searcher.config, sentence_weight=0.0))
    before = off.search(QUESTION, 3)
    assert [h.chunk_id for h in before[:2]] == [2, 1]  # the three first sides prefer the scattered one
    assert all(h.sentence_score is None for h in before)

    hits = searcher.search(QUESTION, 3)

    assert [h.chunk_id for h in hits[:2]] == [1, 2]
    assert hits[0].sentence_score == pytest.approx(1.0) and hits[1].sentence_score < 1.0
    fused = {h.chunk_id: h.score for h in before}
    for hit in hits:  # the side adds its weighted share to the fused score
        assert hit.score == pytest.approx(fused[hit.chunk_id] + 0.5 * hit.sentence_score)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_only_the_head_is_scored_and_only_in_a_convex_hybrid_search(searcher: HybridSearcher) -> None:
    head = HybridSearcher(searcher.store, searcher.embedder, replace(searcher.config, sentence_k=2))
    hits = head.search(QUESTION, 5)
    assert [h.sentence_score is not None for h in hits] == [True, True, False, False, False]

    for config in (replace(searcher.config, fusion="rrf"), replace(searcher.config, retrievers="bm25")):
        assert all(
            h.sentence_score is None
            for h in HybridSearcher(searcher.store, searcher.embedder, config).search(QUESTION, 3)
        )
    with pytest.raises(ValueError, match="sentence_weight"):
        HybridSearcher(searcher.store, searcher.embedder, replace(searcher.config, sentence_weight=-1.0))


def test_a_question_without_terms_is_fused_as_before(searcher: HybridSearcher) -> None:
    hits = searcher.search("the of to", 3)  # stop words only: no BM25 side, no sentence side
    assert hits and all(h.sentence_score is None for h in hits)
