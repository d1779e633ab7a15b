"""The on-disk cache of passage vectors: keyed by model and exact text, never in the way."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ingestion.embedding import CompanionEmbedder, CompanionModel, passage_embeddings
from ingestion.embedding_cache import EmbeddingCache, embed_passages_cached, open_cache, text_digest
from ingestion.language import TextAnalyzer, passage_terms
from ingestion.pipeline import PipelineOptions, embed_prepared, prepare_file


class CountingEmbedder:
    """A deterministic fake embedder that records what it was asked to embed."""

    dimension = 8
    max_tokens = 64

    def __init__(self, name: str = "test:counting") -> None:
        self.name = name
        self.calls: list[list[str]] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split()) + 2

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        rows = [np.random.default_rng(int.from_bytes(text_digest(t)[:4], "little")).standard_normal(8) for t in texts]
        out = np.asarray(rows, dtype=np.float32).reshape(-1, self.dimension)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def embed_query(self, text: str) -> np.ndarray:
        row: np.ndarray = self.embed_passages([text])[0]
        return row

    @property
    def embedded(self) -> list[str]:
        return [t for call in self.calls for t in call]


def test_only_texts_missing_from_the_cache_are_embedded(tmp_path: Path) -> None:
    embedder = CountingEmbedder()
    cache = EmbeddingCache(tmp_path)

    first = embed_passages_cached(embedder, ["alpha", "beta"], cache).dense
    second_embeddings = embed_passages_cached(embedder, ["beta", "gamma", "alpha"], cache)
    second = second_embeddings.dense

    assert embedder.embedded == ["alpha", "beta", "gamma"]
    assert second_embeddings.companion is None
    np.testing.assert_array_equal(second[0], first[1])
    np.testing.assert_array_equal(second[2], first[0])
    assert second.dtype == np.float32 and second.shape == (3, 8)
    assert cache.count() == cache.count(embedder.name) == 3


def test_a_text_repeated_in_one_call_is_embedded_once(tmp_path: Path) -> None:
    embedder = CountingEmbedder()

    vectors = embed_passages_cached(embedder, ["same", "other", "same"], EmbeddingCache(tmp_path)).dense

    assert embedder.embedded == ["same", "other"]
    np.testing.assert_array_equal(vectors[0], vectors[2])


def test_the_key_is_the_embedder_and_the_exact_text(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    one, other = CountingEmbedder("test:one"), CountingEmbedder("test:other")
    embed_passages_cached(one, ["Text"], cache)

    embed_passages_cached(other, ["Text"], cache)  # another model: another vector
    embed_passages_cached(one, ["Text "], cache)  # not the same text
    embed_passages_cached(one, ["Text"], cache)

    assert one.embedded == ["Text", "Text "]
    assert other.embedded == ["Text"]


def test_vectors_survive_the_process_and_a_wrong_dimension_is_a_miss(tmp_path: Path) -> None:
    embedder = CountingEmbedder()
    stored = embed_passages_cached(embedder, ["kept"], EmbeddingCache(tmp_path)).dense

    reopened = EmbeddingCache(tmp_path)  # a new connection, as another process would have
    assert reopened.get_many(embedder.name, ["kept", "never"], 8)[1] is None
    np.testing.assert_array_equal(reopened.get_many(embedder.name, ["kept"], 8)[0], stored[0])  # type: ignore[arg-type]
    assert reopened.get_many(embedder.name, ["kept"], 16) == [None]


def test_a_broken_cache_file_only_costs_the_computation(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "vectors.sqlite3").write_bytes(b"this is not a database" * 100)
    embedder = CountingEmbedder()

    vectors = embed_passages_cached(embedder, ["a", "b"], EmbeddingCache(tmp_path)).dense

    assert vectors.shape == (2, 8) and embedder.embedded == ["a", "b"]
    assert "embedding cache" in caplog.text


def test_without_a_cache_everything_is_embedded() -> None:
    embedder = CountingEmbedder()

    embed_passages_cached(embedder, ["a", "a"], None)

    assert embedder.embedded == ["a", "a"]


def test_put_many_refuses_a_vector_count_that_does_not_match(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected 2 vectors"):
        EmbeddingCache(tmp_path).put_many("test:x", ["a", "b"], np.zeros((1, 8), dtype=np.float32))


def test_open_cache_gives_one_instance_per_folder(tmp_path: Path) -> None:
    assert open_cache(tmp_path) is open_cache(str(tmp_path))
    assert open_cache(tmp_path / "other") is not open_cache(tmp_path)


def test_the_pipeline_uses_the_cache_when_configured(tmp_path: Path) -> None:
    document = tmp_path / "notes.md"
    document.write_text("# Notes\n\nThe export job is called Zorbulat.\n\nIt runs at night.\n", encoding="utf-8")
    options = PipelineOptions(ocr=False, embed_cache_dir=str(tmp_path / "cache"))
    embedder = CountingEmbedder()

    first = _ingested(document, embedder, options)
    second = _ingested(document, embedder, options)
    uncached = _ingested(document, embedder, PipelineOptions(ocr=False))

    assert len(embedder.calls) == 2  # the second run found everything in the cache; the third has none
    np.testing.assert_array_equal(first.embeddings.dense, second.embeddings.dense)
    np.testing.assert_allclose(first.embeddings.dense, uncached.embeddings.dense)
    assert set(second.timings) == {"parse", "chunk", "embed"}
    # the lexical analysis of the text each chunk keeps (without its headings), read as one document's
    assert second.terms == passage_terms(TextAnalyzer(), [chunk.text for chunk in second.chunks])
    assert any("zorbulat" in terms.counts for terms in second.terms)
    with sqlite3.connect(tmp_path / "cache" / "vectors.sqlite3") as connection:
        assert connection.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == len(first.chunks)


def _with_companion(
    primary: CountingEmbedder, companion: CountingEmbedder, languages: tuple[str, ...] = ("en",)
) -> CompanionEmbedder:
    return CompanionEmbedder(primary, [CompanionModel(companion.name, lambda: companion, languages, 8)])


ENGLISH = ["The canteen is closed on Friday.", "Invoices are paid within thirty days."]
FRENCH = "La cantine est fermée le vendredi et le lundi."


def test_dense_and_companion_vectors_are_cached_apart_under_each_model(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    primary, companion = CountingEmbedder("test:primary"), CountingEmbedder("test:companion")
    embedder = _with_companion(primary, companion)

    first = embed_passages_cached(embedder, [*ENGLISH, FRENCH], cache)
    again = embed_passages_cached(embedder, [FRENCH, *ENGLISH], cache)

    assert primary.embedded == [*ENGLISH, FRENCH]
    assert companion.embedded == ENGLISH  # the French passage is not given to an English companion
    assert first.companion is not None and again.companion is not None
    np.testing.assert_array_equal(first.companion[:2], again.companion[1:])
    assert not first.companion[2].any() and not again.companion[0].any()
    reference = passage_embeddings(embedder, [*ENGLISH, FRENCH])
    np.testing.assert_array_equal(first.dense, reference.dense)
    np.testing.assert_array_equal(first.companion, reference.companion)  # type: ignore[arg-type]
    assert cache.count("test:primary") == 3 and cache.count("test:companion") == 2


def test_turning_a_companion_on_reuses_the_cached_dense_vectors(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    primary = CountingEmbedder("test:primary")
    embed_passages_cached(primary, ENGLISH, cache)
    companion = CountingEmbedder("test:companion")

    embeddings = embed_passages_cached(_with_companion(primary, companion), ENGLISH, cache)

    assert primary.embedded == ENGLISH  # embedded once, before the companion was set
    assert companion.embedded == ENGLISH
    assert embeddings.companion is not None and embeddings.companion.shape == (2, 8)


def test_the_companion_languages_decide_which_vectors_are_looked_up(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    companion = CountingEmbedder("test:companion")
    english_only = _with_companion(CountingEmbedder("test:primary"), companion)
    embed_passages_cached(english_only, [FRENCH], cache)
    assert companion.embedded == []

    both = _with_companion(CountingEmbedder("test:primary"), companion, ("en", "fr"))
    embeddings = embed_passages_cached(both, [FRENCH], cache)

    assert companion.embedded == [FRENCH]
    assert embeddings.companion is not None and np.linalg.norm(embeddings.companion[0]) == pytest.approx(1.0)


def _ingested(path: Path, embedder: Any, options: PipelineOptions) -> Any:
    prepared = prepare_file(path, embedder=embedder, options=options)
    return embed_prepared(prepared, embedder=embedder, options=options)
