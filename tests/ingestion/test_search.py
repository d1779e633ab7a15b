"""Hybrid search (e5 + BM25) over a real faiss search store."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ingestion.embedding import E5_NAME, PACKAGED_ST_NAME, Embedder, passage_embeddings
from ingestion.errors import IndexMismatchError
from ingestion.index import FaissStore, IndexConfig
from ingestion.language import TextAnalyzer
from ingestion.search import HybridSearcher, SearchConfig, fuse
from ingestion.store import StoreIdentity, StoreView
from tests.ingestion.fixtures_engine import add_chunks, e5, open_store

# near-identical supplier names: the dense side cannot tell them apart, BM25 can
NAMES = ["Quendrax", "Quandrix", "Kwendrix", "Quendrik", "Quindrex", "Quendrino", "Qendrix", "Quendrox", "Quentrix"]
GOODS = ["paper", "toner", "coffee", "fruit", "cables", "chairs", "water", "milk", "bread"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
SUPPLIERS = [
    f"{n} comes with the {g} on {DAYS[i % 5]} at seven in the morning."
    for i, (n, g) in enumerate(zip(NAMES, GOODS, strict=True))
]
TARGET = "Invoices from Quendrix are paid by bank transfer within thirty days."
OTHERS = [
    "L'électricité sera coupée mardi matin dans tout le bâtiment pour des travaux.",
    "Les congés payés doivent être posés avant la fin du mois de mai.",
    "Der Rhein fließt von den Alpen bis zur Nordsee und ist einer der längsten Flüsse Europas.",
    "Die Kantine bleibt am Freitag wegen einer Betriebsversammlung geschlossen.",
    "To reset a forgotten password, click 'Forgot password' on the sign-in page.",
]
# chunk id -> (text, document, collection)
CHUNKS: dict[int, tuple[str, int, int]] = {
    **{10 + i: (text, 1, 1) for i, text in enumerate(SUPPLIERS)},
    30: (TARGET, 2, 1),
    **{40 + i: (text, 3, 1) for i, text in enumerate(OTHERS)},
    90: ("Quendrix also supplies the secret archive: payment terms are confidential.", 9, 2),
}


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return e5()


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Path:
    directory = tmp_path_factory.mktemp("store")
    add_chunks(open_store(directory, embedder), embedder, CHUNKS)
    return directory


@pytest.fixture(scope="module")
def searcher(store_dir: Path, embedder: Embedder) -> HybridSearcher:
    return HybridSearcher(open_store(store_dir, embedder), embedder, SearchConfig())


def _dense(view: StoreView, vector: np.ndarray, k: int, **filters: object) -> list[tuple[int, float]]:
    return view.dense(vector, k, collections=filters.get("collections"), documents=filters.get("documents"))  # type: ignore[arg-type]


@pytest.mark.parametrize("query", ["Quendrix schedule", "At what hour is the Quendrix delivery?"])
def test_hybrid_finds_an_exact_keyword_match_that_dense_alone_ranks_low(
    searcher: HybridSearcher, embedder: Embedder, query: str
) -> None:
    dense = [c for c, _ in _dense(searcher.store.view(), embedder.embed_query(query), 20, collections=[1])]
    assert dense.index(30) >= 5  # the dense side alone buries it under the look-alike names

    hits = searcher.search(query, 3, collections=[1])

    assert hits[0].chunk_id == 30
    assert hits[0].document_id == 2
    assert hits[0].bm25_score is not None and hits[0].bm25_score > 0
    assert hits[0].dense_score == pytest.approx(
        float(embedder.embed_passages([TARGET])[0] @ embedder.embed_query(query)), abs=1e-3
    )
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_filters_hold_on_both_sides(searcher: HybridSearcher) -> None:
    query = "Quendrix payment terms"

    everywhere = [h.chunk_id for h in searcher.search(query, 5)]
    assert 90 in everywhere
    allowed = searcher.search(query, 20, collections=[1])
    assert allowed and all(h.chunk_id != 90 for h in allowed)
    assert all(chunk_id != 90 for chunk_id, _ in searcher.bm25(query, 20, collections=[1]))
    only = searcher.search(query, 5, collections=[2])
    assert [h.chunk_id for h in only] == [90]
    by_document = searcher.search(query, 5, documents=[2, 3])
    assert by_document and {h.document_id for h in by_document} <= {2, 3}
    assert searcher.search(query, 5, collections=[]) == []


def test_bm25_folds_accents_and_stems_each_language(searcher: HybridSearcher) -> None:
    assert searcher.bm25("electricite coupee", 3)[0][0] == 40  # typed without accents
    assert searcher.bm25("Flusse", 3)[0][0] == 42  # "Flüsse", stemmed and folded
    assert searcher.bm25("geschlossene Kantinen", 3)[0][0] == 43
    assert searcher.bm25("le la les de", 3) == []  # nothing but stop words


def test_a_hit_found_by_bm25_alone_still_carries_its_cosine(store_dir: Path, embedder: Embedder) -> None:
    searcher = HybridSearcher(open_store(store_dir, embedder), embedder, SearchConfig(dense_k=1, bm25_k=5))
    query = "Quendrix schedule"

    hit = next(h for h in searcher.search(query, 5, collections=[1]) if h.chunk_id == 30)

    expected = float(embedder.embed_passages([TARGET])[0] @ embedder.embed_query(query))
    assert hit.dense_score == pytest.approx(expected, abs=1e-3)


def test_a_new_document_is_found_once_the_store_has_it(embedder: Embedder, tmp_path: Path) -> None:
    reader = open_store(tmp_path, embedder)
    searcher = HybridSearcher(reader, embedder, SearchConfig())
    assert searcher.search("Zorbulat", 3) == []

    other_process = open_store(tmp_path, embedder)
    text = "The nightly export job is called Zorbulat."
    with other_process.writer() as writer:
        writer.add([7], passage_embeddings(embedder, [text]), document_id=5, collection_id=1, texts=[text])
    reader.refresh()  # what the store does by itself, in the background, when it sees a new generation

    hits = searcher.search("Zorbulat", 3)  # nothing rebuilt in the searcher: the store scores BM25
    assert [h.chunk_id for h in hits] == [7] and hits[0].bm25_score is not None and hits[0].document_id == 5


def test_every_side_of_a_search_reads_one_view_of_the_store(searcher: HybridSearcher) -> None:
    views: list[StoreView] = []
    store = searcher.store

    class Recording:
        backend, identity = store.backend, store.identity

        def view(self) -> StoreView:
            views.append(store.view())
            return views[-1]

    recorded = HybridSearcher(Recording(), searcher.embedder, searcher.config)  # type: ignore[arg-type]

    assert recorded.search("Quendrix payment terms", 3)
    assert len(views) == 1


@pytest.mark.parametrize(
    "identity",
    [
        StoreIdentity("st:other", 384),
        StoreIdentity(E5_NAME, 768),
        StoreIdentity(E5_NAME, 384, PACKAGED_ST_NAME, 384),
    ],
    ids=["embedder", "dimension", "companion"],
)
def test_a_searcher_refuses_a_store_of_another_embedder(
    tmp_path: Path, embedder: Embedder, identity: StoreIdentity
) -> None:
    store = FaissStore(IndexConfig(tmp_path), identity)

    with pytest.raises(IndexMismatchError, match="rebuild_index"):
        HybridSearcher(store, embedder, SearchConfig())


def test_language_vote_and_query_analysis() -> None:
    analyzer = TextAnalyzer()
    words = analyzer.words

    assert analyzer.detect(words("The cat is sleeping on the table and it is warm")) == "en"
    assert analyzer.detect(words("Le chat dort sur la table et il fait chaud dans la maison")) == "fr"
    assert analyzer.detect(words("Die Katze schläft auf dem Tisch und es ist warm im Haus")) == "de"
    assert analyzer.detect(words("Quendrix 4471")) is None
    assert analyzer.languages_of("Le chat dort sur la table") == ["fr"]
    assert analyzer.languages_of("Quendrix 4471") == []
    assert analyzer.query_tokens("Les classes Python") == ["class", "python"]
    assert analyzer.query_tokens("Wie lang ist der Rhein?") == ["lang", "rhein"]
    # without a clue the query is read in each candidate language (here French and German stems differ)
    assert analyzer.query_tokens("électricités") == analyzer.query_tokens("electricites") == ["electricit"]
    assert set(analyzer.query_tokens("Flüssen", ["fr", "de"])) == {"flussen", "fluss"}
    # a passage's distinct words mapped to their terms, as tokens() reads them (stop words left out)
    passage = words("Les électricités et les électricités de la ville")
    assert analyzer.term_map(passage, "fr") == {"électricités": "electricit", "ville": "vill"}
    assert list(analyzer.term_map(passage, "fr").values()) == list(dict.fromkeys(analyzer.tokens(passage, "fr")))


def test_weights_change_the_fusion(searcher: HybridSearcher) -> None:
    config = replace(searcher.config, fusion="rrf", dense_weight=1.0, bm25_weight=0.0, companion_weight=0.0)
    dense_only = HybridSearcher(searcher.store, searcher.embedder, config)

    hits = dense_only.search("Quendrix schedule", 3, collections=[1])

    assert hits[0].chunk_id != 30
    assert np.isclose(hits[0].score, 1 / 61)


@pytest.mark.parametrize("fusion", ["rrf", "convex"])
def test_one_retriever_alone_keeps_its_own_order(searcher: HybridSearcher, fusion: str) -> None:
    query = "At what hour is the Quendrix delivery?"
    vector = searcher.embedder.embed_query(query)
    dense = HybridSearcher(
        searcher.store, searcher.embedder, replace(searcher.config, retrievers="dense", fusion=fusion)
    )
    bm25 = HybridSearcher(searcher.store, searcher.embedder, replace(searcher.config, retrievers="bm25", fusion=fusion))

    assert [h.chunk_id for h in dense.search(query, 4)] == [c for c, _ in _dense(searcher.store.view(), vector, 4)]
    bm25_hits = bm25.search(query, 4)
    assert [h.chunk_id for h in bm25_hits] == [c for c, _ in searcher.bm25(query, 4)]
    assert all(h.dense_score is not None for h in bm25_hits)  # every hit still carries its cosine


def test_an_unknown_fusion_or_retriever_is_refused(searcher: HybridSearcher) -> None:
    with pytest.raises(ValueError, match="unknown fusion"):
        HybridSearcher(searcher.store, searcher.embedder, replace(searcher.config, fusion="max"))
    with pytest.raises(ValueError, match="unknown retrievers"):
        HybridSearcher(searcher.store, searcher.embedder, replace(searcher.config, retrievers="sparse"))


def test_bm25_takes_its_parameters_from_the_config(searcher: HybridSearcher) -> None:
    query = "Quendrix invoices paid by bank transfer"
    saturated = HybridSearcher(searcher.store, searcher.embedder, replace(searcher.config, bm25_k1=0.0))

    scores = searcher.bm25(query, 5)
    plain = saturated.bm25(query, 5)

    assert scores[0][0] == plain[0][0] == 30
    assert {c for c, _ in plain} == {c for c, _ in scores}
    assert [s for _, s in plain] != pytest.approx([s for _, s in scores])


def test_no_hit_without_a_question_or_a_chunk(searcher: HybridSearcher, tmp_path: Path) -> None:
    assert searcher.search("   ", 3) == []
    assert searcher.search("Quendrix", 0) == []
    assert (
        HybridSearcher(open_store(tmp_path, searcher.embedder), searcher.embedder, SearchConfig()).search("Quendrix", 3)
        == []
    )


def test_the_companion_ranking_is_normalised_over_its_own_candidates() -> None:
    config = SearchConfig(fusion="convex", dense_k=3, bm25_k=3, dense_weight=0.5, bm25_weight=0.5, companion_weight=0.5)

    fused = fuse([(1, 0.9), (2, 0.5), (3, 0.1)], [(2, 7.0), (1, 1.0)], config, [(3, 4.0), (2, 2.0), (1, 1.0)])

    # dense 1 / 0.5 / 0; BM25 0 / 1 / -; companion 0 / 1/3 / 1
    assert fused[1] == pytest.approx(0.5)
    assert fused[2] == pytest.approx(0.5 * 0.5 + 0.5 + 0.5 / 3)
    assert fused[3] == pytest.approx(0.5)
    # without weight, the companion ranking changes nothing
    plain = fuse([(1, 0.9), (2, 0.5), (3, 0.1)], [(2, 7.0), (1, 1.0)], config)
    assert fuse(
        [(1, 0.9), (2, 0.5), (3, 0.1)],
        [(2, 7.0), (1, 1.0)],
        replace(config, companion_weight=0.0),
        [(3, 4.0), (2, 2.0)],
    ) == pytest.approx(plain)
