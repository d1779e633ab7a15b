"""The companion embedder: a second model's vector kept beside each chunk, scored as the third search side."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ingestion.embedding import (
    COMPANION_FIRST_ID,
    CompanionEmbedder,
    EmbedderConfig,
    get_embedder,
    passage_rows,
    passage_width,
    rows_name,
    split_rows,
)
from ingestion.index import IndexConfig, VectorIndex
from ingestion.search import HybridSearcher, SearchConfig
from tests.ingestion.fixtures_engine import MINILM_CONFIG, minilm, unit_vectors

COMPANION_CONFIG = EmbedderConfig(backend="e5", batch_size=16, threads=2, companion="minilm")

ENGLISH = [
    "Invoices from Quendrix are paid by bank transfer within thirty days.",
    "The canteen is closed on Friday because of a staff meeting.",
    "To reset a forgotten password, click 'Forgot password' on the sign-in page.",
]
FRENCH = [
    "Les factures de Quendrix sont payées par virement sous trente jours.",
    "L'électricité sera coupée mardi matin dans tout le bâtiment pour des travaux.",
]


@pytest.fixture(scope="module")
def embedder() -> CompanionEmbedder:
    made = get_embedder(COMPANION_CONFIG)
    assert isinstance(made, CompanionEmbedder)
    return made


def test_rows_hold_the_primary_vector_then_the_companion_vector(embedder: CompanionEmbedder) -> None:
    texts = ENGLISH[:2]
    rows = passage_rows(embedder, texts)

    companion = minilm()
    assert rows.shape == (2, passage_width(embedder)) == (2, 384 + 2 * companion.dimension)
    vectors, ids, weights = split_rows(rows, embedder.dimension)
    np.testing.assert_allclose(vectors, embedder.primary.embed_passages(texts), atol=1e-5)
    assert (ids == COMPANION_FIRST_ID + np.arange(companion.dimension)).all()
    np.testing.assert_allclose(weights, companion.embed_passages(texts), atol=1e-5)
    # the index, the dense side and the token counts are the primary's
    assert embedder.name == embedder.primary.name and embedder.dimension == 384
    assert embedder.count_tokens(texts[0]) == embedder.primary.count_tokens(texts[0])
    # cached apart from the bare vectors and from the latent terms
    assert rows_name(embedder) == f"{embedder.name}+{companion.name}@en"
    assert rows_name(embedder) != rows_name(embedder.primary)


def test_passages_in_other_languages_get_no_companion_vector(embedder: CompanionEmbedder) -> None:
    rows = passage_rows(embedder, [FRENCH[0], ENGLISH[0], "Quendrix 2024"])

    vectors, _, weights = split_rows(rows, embedder.dimension)
    assert np.linalg.norm(vectors, axis=1) == pytest.approx([1.0, 1.0, 1.0], abs=1e-4)  # every chunk is indexed
    # French is not given to the English model; a text whose language cannot be told is
    assert np.linalg.norm(weights.astype(np.float32), axis=1) == pytest.approx([0.0, 1.0, 1.0], abs=1e-3)


def test_the_question_terms_score_the_companion_cosine(embedder: CompanionEmbedder) -> None:
    question = "How long does Quendrix wait for its money?"
    ids, components = embedder.query_terms(question)

    companion = get_embedder(MINILM_CONFIG)
    assert (ids == COMPANION_FIRST_ID + np.arange(companion.dimension)).all()
    np.testing.assert_allclose(components, companion.embed_query(question), atol=1e-5)


def test_latent_terms_and_a_companion_are_not_combined() -> None:
    with pytest.raises(ValueError, match="choose one"):
        get_embedder(replace(COMPANION_CONFIG, terms=64))


@pytest.fixture(scope="module")
def searcher(tmp_path_factory: pytest.TempPathFactory, embedder: CompanionEmbedder) -> HybridSearcher:
    directory = tmp_path_factory.mktemp("companion-index")
    index = VectorIndex(IndexConfig(directory), embedder_name=embedder.name, dimension=embedder.dimension)
    texts = ENGLISH + FRENCH
    with index.writer() as writer:
        writer.add(
            list(range(1, len(texts) + 1)), passage_rows(embedder, texts), document_id=1, collection_id=1, texts=texts
        )
    return HybridSearcher(index, embedder, SearchConfig())


def test_the_companion_scores_questions_in_its_languages_only(searcher: HybridSearcher) -> None:
    english = searcher.search("When are the Quendrix invoices paid?", 3)
    assert english[0].chunk_id == 1
    assert all(h.terms_score is not None for h in english)
    assert english[0].terms_score == max(h.terms_score or 0.0 for h in english)

    french = searcher.search("Quand les factures de Quendrix sont-elles payées ?", 3)
    assert french[0].chunk_id == 4
    assert all(h.terms_score is None for h in french)  # all-MiniLM-L6-v2 is asked nothing in French

    # no stop word to tell the language: the side runs, since the corpus holds English chunks
    keywords = searcher.search("Quendrix invoices bank transfer", 3)
    assert all(h.terms_score is not None for h in keywords)


def test_a_companion_question_scores_latent_terms_zero(tmp_path: Path) -> None:
    """Chunks embedded with latent terms, left in an index before its rebuild, get 0 from a companion."""
    index = VectorIndex(IndexConfig(tmp_path), embedder_name="test", dimension=8)
    latent = np.hstack([unit_vectors(1, 8), [[3, 7, 0.5, 0.25]]]).astype(np.float32)
    companion = np.hstack(
        [unit_vectors(1, 8, seed=1), [[COMPANION_FIRST_ID, COMPANION_FIRST_ID + 1, 0.6, 0.8]]]
    ).astype(np.float32)
    with index.writer() as writer:
        writer.add([1], latent, document_id=1, collection_id=1, texts=["a"])
        writer.add([2], companion, document_id=2, collection_id=1, texts=["b"])
    query = np.zeros(COMPANION_FIRST_ID + 2, dtype=np.float32)
    query[COMPANION_FIRST_ID:] = [0.6, 0.8]

    scores = index.snapshot().term_scores([1, 2], query)

    assert scores[0] == 0.0
    assert scores[1] == pytest.approx(1.0, abs=1e-3)


def test_a_companion_that_cannot_load_costs_its_side_not_the_search(
    searcher: HybridSearcher, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> CompanionEmbedder:
        raise OSError("model folder gone")

    embedder = searcher.embedder
    assert isinstance(embedder, CompanionEmbedder)
    failing = CompanionEmbedder(embedder.primary, broken, "st:gone", ("en",))
    degraded = HybridSearcher(searcher.index, failing, SearchConfig())

    hits = degraded.search("When are the Quendrix invoices paid?", 3)

    assert hits[0].chunk_id == 1
    assert all(h.terms_score is None for h in hits)
    assert "third search side is skipped" in caplog.text


def test_the_side_waits_for_a_rebuild_when_some_chunks_were_embedded_without_it(
    tmp_path: Path, embedder: CompanionEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    index = VectorIndex(IndexConfig(tmp_path), embedder_name=embedder.name, dimension=embedder.dimension)
    with index.writer() as writer:  # as before the companion was set: vectors alone
        writer.add([1], embedder.embed_passages(ENGLISH[:1]), document_id=1, collection_id=1, texts=ENGLISH[:1])
        writer.add([2, 3], passage_rows(embedder, ENGLISH[1:]), document_id=2, collection_id=1, texts=ENGLISH[1:])
    searcher = HybridSearcher(index, embedder, SearchConfig())
    question = "When are the Quendrix invoices paid?"

    hits = searcher.search(question, 3)

    # chunk 1 would get nothing from the side and rank under the newer chunks: the side is off instead
    assert hits[0].chunk_id == 1 and all(h.terms_score is None for h in hits)
    assert "rebuild_index" in caplog.text
    with index.writer() as writer:  # what rebuild_index does
        writer.add([1], passage_rows(embedder, ENGLISH[:1]), document_id=1, collection_id=1, texts=ENGLISH[:1])
    assert all(h.terms_score is not None for h in searcher.search(question, 3))
