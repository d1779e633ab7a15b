"""The companion embedder: a second model's vector kept beside each chunk, scored as the third search side."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ingestion import embedding
from ingestion.embedding import (
    E5_NAME,
    PACKAGED_ST_NAME,
    USE_NAME,
    CompanionEmbedder,
    Embedder,
    UseEmbedder,
    companion_entries,
    expected_identity,
    get_embedder,
    passage_embeddings,
    store_identity,
)
from ingestion.index import FaissStore
from ingestion.search import HybridSearcher, SearchConfig
from ingestion.store import PassageEmbeddings, StoreIdentity
from tests.ingestion.fixtures_engine import BILINGUAL_CONFIG, COMPANION_CONFIG, e5, minilm, open_store

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
    assert made._loaded == [None]  # read from the model folder's configuration


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


def _store_of_every_passage(folder: Path, embedder: CompanionEmbedder) -> FaissStore:
    """A store of the English passages (chunks 1-3) and the French ones (4-5), embedded by ``embedder``."""
    made = open_store(folder, embedder)
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


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, embedder: CompanionEmbedder) -> FaissStore:
    return _store_of_every_passage(tmp_path_factory.mktemp("companion-store"), embedder)


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

    failing = CompanionEmbedder(embedder.primary, [replace(embedder.models[0], make=broken)])
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


# ---- several companion models, one block each (the default: all-MiniLM-L6-v2 for English, USE for French) ----


@pytest.fixture(scope="module")
def bilingual() -> CompanionEmbedder:
    made = get_embedder(BILINGUAL_CONFIG)
    assert isinstance(made, CompanionEmbedder)
    return made


def test_companion_models_are_listed_with_their_own_languages_or_the_default_ones() -> None:
    assert companion_entries("minilm@en use@fr", ("en",)) == [("minilm", ("en",)), ("use", ("fr",))]
    assert companion_entries(" minilm  use@DE, ", ("en", "fr")) == [("minilm", ("en", "fr")), ("use", ("de",))]
    assert companion_entries("", ("en",)) == []


def test_each_companion_model_fills_its_own_block_for_the_passages_of_its_languages(
    bilingual: CompanionEmbedder,
) -> None:
    use = UseEmbedder()
    texts = [ENGLISH[0], FRENCH[0], "Quendrix 2024"]

    companion = passage_embeddings(bilingual, texts).companion

    assert store_identity(bilingual) == StoreIdentity(E5_NAME, 384, f"{PACKAGED_ST_NAME}@en + {USE_NAME}@fr", 896)
    assert companion is not None and companion.shape == (3, 896)
    english, french = companion[:, :384], companion[:, 384:]
    np.testing.assert_allclose(english[0], minilm().embed_passages(ENGLISH[:1])[0], atol=1e-5)
    assert not french[0].any() and not english[1].any()
    np.testing.assert_allclose(french[1], use.embed_passages(FRENCH[:1])[0], atol=1e-5)
    # a text whose language cannot be told is given to both, its row of unit length as a whole
    assert np.linalg.norm(english[2]) == pytest.approx(np.linalg.norm(french[2]), abs=1e-4)
    assert np.linalg.norm(companion, axis=1) == pytest.approx([1.0, 1.0, 1.0], abs=1e-4)


def test_a_question_meets_only_the_block_of_its_language(bilingual: CompanionEmbedder) -> None:
    english = bilingual.companion_query("How long does Quendrix wait for its money?")
    french = bilingual.companion_query("Quand les factures de Quendrix sont-elles payées ?")
    german = bilingual.companion_query("Wann werden die Rechnungen von Quendrix bezahlt, und von wem?")

    assert english is not None and french is not None
    assert english[:384].any() and not english[384:].any()
    assert french[384:].any() and not french[:384].any()
    assert german is None  # no model speaks it
    # no stop word to tell: the models of the searched chunks' languages are asked
    keywords = bilingual.companion_query("Quendrix invoices", {"fr"})
    assert keywords is not None and keywords[384:].any() and not keywords[:384].any()


def test_the_french_companion_scores_french_questions(tmp_path: Path, bilingual: CompanionEmbedder) -> None:
    searcher = HybridSearcher(_store_of_every_passage(tmp_path, bilingual), bilingual, SearchConfig())

    french = searcher.search("Quand les factures de Quendrix sont-elles payées ?", 5)
    english = searcher.search("When are the Quendrix invoices paid?", 5)

    assert french[0].chunk_id == 4 and all(h.companion_score is not None for h in french)
    # English passages hold nothing in the French block: the French model gives them 0
    assert {h.chunk_id: h.companion_score for h in french if h.chunk_id <= 3} == dict.fromkeys(
        [h.chunk_id for h in french if h.chunk_id <= 3], 0.0
    )
    assert english[0].chunk_id == 1 and english[0].companion_score == max(h.companion_score or 0 for h in english)


def test_the_identity_a_configuration_builds_is_known_without_loading_a_model(
    embedder: CompanionEmbedder, bilingual: CompanionEmbedder
) -> None:
    assert expected_identity(BILINGUAL_CONFIG) == store_identity(bilingual)
    assert expected_identity(COMPANION_CONFIG) == store_identity(embedder)
    assert expected_identity(replace(COMPANION_CONFIG, companion="")) == store_identity(embedder.primary)
    assert expected_identity(replace(COMPANION_CONFIG, companion="/no/such/folder")) is None  # only loading tells
