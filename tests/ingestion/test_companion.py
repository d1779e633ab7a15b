"""The companion embedder: a second model's vector kept beside each chunk, scored as the third search side."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ingestion import embedding
from ingestion.embedding import (
    E5_NAME,
    PACKAGED_ST_NAME,
    CompanionEmbedder,
    Embedder,
    get_embedder,
    passage_embeddings,
    store_identity,
)
from ingestion.index import FaissStore
from ingestion.search import HybridSearcher, SearchConfig
from ingestion.store import PassageEmbeddings, StoreIdentity
from tests.ingestion.fixtures_engine import COMPANION_CONFIG, e5, minilm, open_store

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


def test_passage_embeddings_hold_the_primary_vectors_and_the_companion_vectors(embedder: CompanionEmbedder) -> None:
    texts = ENGLISH[:2]
    embeddings = passage_embeddings(embedder, texts)

    companion = minilm()
    assert embeddings.dense.shape == (2, 384) and embeddings.dense.dtype == np.float32
    np.testing.assert_allclose(embeddings.dense, embedder.primary.embed_passages(texts), atol=1e-5)
    assert embeddings.companion is not None and embeddings.companion.dtype == np.float32
    assert embeddings.companion.shape == (2, companion.dimension)
    np.testing.assert_allclose(embeddings.companion, companion.embed_passages(texts), atol=1e-5)
    # the dense side and the token counts are the primary's
    assert embedder.name == embedder.primary.name and embedder.dimension == 384
    assert embedder.count_tokens(texts[0]) == embedder.primary.count_tokens(texts[0])
    # a store of these embeddings records both models
    assert store_identity(embedder) == StoreIdentity(E5_NAME, 384, f"{PACKAGED_ST_NAME}@en", 384)
    assert store_identity(embedder.primary) == StoreIdentity(E5_NAME, 384)
    assert passage_embeddings(embedder.primary, texts).companion is None


def test_passages_in_other_languages_get_a_zero_companion_vector(embedder: CompanionEmbedder) -> None:
    embeddings = passage_embeddings(embedder, [FRENCH[0], ENGLISH[0], "Quendrix 2024"])

    assert np.linalg.norm(embeddings.dense, axis=1) == pytest.approx([1.0, 1.0, 1.0], abs=1e-4)  # all are indexed
    # French is not given to the English model; a text whose language cannot be told is
    assert embeddings.companion is not None
    assert np.linalg.norm(embeddings.companion, axis=1) == pytest.approx([0.0, 1.0, 1.0], abs=1e-3)
    assert passage_embeddings(embedder, []).companion.shape == (0, 384)  # type: ignore[union-attr]


def test_the_companion_is_asked_about_questions_in_its_languages_only(embedder: CompanionEmbedder) -> None:
    question = "How long does Quendrix wait for its money?"

    vector = embedder.companion_query(question)

    assert vector is not None and vector.dtype == np.float32
    np.testing.assert_allclose(vector, minilm().embed_query(question), atol=1e-5)
    assert embedder.companion_query("Quand les factures de Quendrix sont-elles payées ?") is None
    # no stop word to tell: read in the languages of the chunks searched (asked when none is known)
    assert embedder.companion_query("Quendrix invoices", {"fr"}) is None
    assert embedder.companion_query("Quendrix invoices", {"fr", "en"}) is not None
    assert embedder.companion_query("Quendrix invoices") is not None


def test_the_companion_is_not_loaded_to_learn_its_dimension(monkeypatch: pytest.MonkeyPatch) -> None:
    primary = e5()  # the session's e5, not a second one
    monkeypatch.setattr(embedding, "_create_primary", lambda config: primary)
    made = embedding.create_embedder(COMPANION_CONFIG)
    assert isinstance(made, CompanionEmbedder)

    assert store_identity(made) == StoreIdentity(E5_NAME, 384, f"{PACKAGED_ST_NAME}@en", 384)
    assert made._companion is None  # read from the model folder's configuration


def test_a_companion_folder_gives_its_dimension_from_its_configuration(tmp_path: Path) -> None:
    def module(index: int, kind: str, path: str = "", **config: object) -> dict[str, object]:
        if config:
            (tmp_path / path).mkdir(exist_ok=True)
            (tmp_path / path / "config.json").write_text(json.dumps(config))
        return {"idx": index, "name": str(index), "path": path, "type": f"sentence_transformers.models.{kind}"}

    modules = [
        module(0, "Transformer"),
        module(
            1,
            "Pooling",
            "1_Pooling",
            word_embedding_dimension=256,
            pooling_mode_cls_token=True,
            pooling_mode_mean_tokens=True,
            pooling_mode_max_tokens=False,
        ),
    ]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    assert embedding._sentence_transformer_dimension(str(tmp_path)) == 512  # two pooled vectors side by side

    modules.append(module(2, "Dense", "2_Dense", in_features=512, out_features=128))
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    assert embedding._sentence_transformer_dimension(str(tmp_path)) == 128

    modules.append(module(3, "SomethingNew"))
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    assert embedding._sentence_transformer_dimension(str(tmp_path)) is None  # then the model is loaded to learn it
    assert embedding._sentence_transformer_dimension(str(tmp_path / "missing")) is None
    assert embedding._sentence_transformer_dimension("") == minilm().dimension == 384


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, embedder: CompanionEmbedder) -> FaissStore:
    made = open_store(tmp_path_factory.mktemp("companion-store"), embedder)
    texts = ENGLISH + FRENCH
    with made.writer() as writer:
        writer.add(
            list(range(1, len(texts) + 1)),
            passage_embeddings(embedder, texts),
            document_id=1,
            collection_id=1,
            texts=texts,
        )
    return made


def test_the_companion_scores_questions_in_its_languages_only(store: FaissStore, embedder: CompanionEmbedder) -> None:
    searcher = HybridSearcher(store, embedder, SearchConfig())

    english = searcher.search("When are the Quendrix invoices paid?", 3)
    assert english[0].chunk_id == 1
    assert all(h.companion_score is not None for h in english)
    assert english[0].companion_score == max(h.companion_score or 0.0 for h in english)

    french = searcher.search("Quand les factures de Quendrix sont-elles payées ?", 3)
    assert french[0].chunk_id == 4
    assert all(h.companion_score is None for h in french)  # all-MiniLM-L6-v2 is asked nothing in French

    # no stop word to tell the language: the side runs, since the store holds English chunks
    keywords = searcher.search("Quendrix invoices bank transfer", 3)
    assert all(h.companion_score is not None for h in keywords)


def test_a_companion_weight_of_zero_turns_the_side_off(store: FaissStore, embedder: CompanionEmbedder) -> None:
    searcher = HybridSearcher(store, embedder, SearchConfig(companion_weight=0.0))

    hits = searcher.search("When are the Quendrix invoices paid?", 3)

    assert hits[0].chunk_id == 1 and all(h.companion_score is None for h in hits)


def test_a_companion_that_cannot_load_costs_its_side_not_the_search(
    store: FaissStore, embedder: CompanionEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> Embedder:
        raise OSError("model folder gone")

    failing = CompanionEmbedder(
        embedder.primary, broken, embedder.companion_name, ("en",), companion_dimension=embedder.companion_dimension
    )
    degraded = HybridSearcher(store, failing, SearchConfig())

    hits = degraded.search("When are the Quendrix invoices paid?", 3)

    assert hits[0].chunk_id == 1
    assert all(h.companion_score is None for h in hits)
    assert "companion search side is skipped" in caplog.text


def test_a_store_without_the_companion_is_refused(tmp_path: Path, embedder: CompanionEmbedder) -> None:
    from ingestion.errors import IndexMismatchError

    plain = open_store(tmp_path, embedder.primary)

    with pytest.raises(IndexMismatchError, match="companion"):
        HybridSearcher(plain, embedder, SearchConfig())


def test_the_side_waits_for_a_rebuild_when_some_chunks_were_embedded_without_it(
    tmp_path: Path, embedder: CompanionEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(tmp_path, embedder)
    with store.writer() as writer:  # as before the companion was set: dense vectors alone
        writer.add(
            [1],
            PassageEmbeddings(embedder.embed_passages(ENGLISH[:1])),
            document_id=1,
            collection_id=1,
            texts=ENGLISH[:1],
        )
        writer.add([2, 3], passage_embeddings(embedder, ENGLISH[1:]), document_id=2, collection_id=1, texts=ENGLISH[1:])
    searcher = HybridSearcher(store, embedder, SearchConfig())
    question = "When are the Quendrix invoices paid?"

    hits = searcher.search(question, 3)

    # chunk 1 would get nothing from the side and rank under the newer chunks: the side is off instead
    assert hits[0].chunk_id == 1 and all(h.companion_score is None for h in hits)
    assert "rebuild_index" in caplog.text
    with store.writer() as writer:  # what rebuild_index does
        writer.add([1], passage_embeddings(embedder, ENGLISH[:1]), document_id=1, collection_id=1, texts=ENGLISH[:1])
    assert all(h.companion_score is not None for h in searcher.search(question, 3))
