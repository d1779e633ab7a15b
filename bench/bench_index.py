"""The vector index at scale: build time, memory, search latency and recall of the product's VectorIndex.

    .venv/bin/python bench/bench_index.py [--sizes 100000 1000000] [--queries 1000] [--runs 3]

For each size, synthetic chunk vectors (384 dimensions, L2-normalised, grouped in topics, see
``synthetic_corpus``) are written through ``ingestion.index.VectorIndex`` twice: as the exact index
(IndexFlatIP) and as the approximate one (HNSW, with the product's ``IndexConfig`` parameters unless
told otherwise). A fresh process then loads each saved index, as a web worker does, and searches it one
query at a time through ``VectorIndex.search`` (``k`` = the hybrid searcher's dense candidates, as the
product asks) with each filter: none (a reference only: the product always passes the caller's
collections), all five collections (a caller who may read everything), one collection holding 25% of
the chunks (HNSW: the graph walk with a selector) and one holding 3% (under 5% the product scans the
allowed vectors exactly). Recall@10 (and @k) of HNSW is measured against the exact index's answers to
the same queries and filters. Latencies are the median over runs of each run's p50/p95/p99; memory is
the reader's RSS growth when it loads the index, the writer's peak RSS growth while it builds and saves,
and the saved files' size. "1 more doc" is the time to add one 20-chunk document to the full index and
save the new version, as every ingestion does.

FAISS threads: the product never calls ``faiss.omp_set_num_threads``, so FAISS uses OpenMP's default
(one thread per core); ``--threads N`` sets it in the writer and the readers to compare.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DIMENSION = 384
EMBEDDER = "synthetic-384"
CHUNKS_PER_DOCUMENT = 20
CHUNKS_PER_TOPIC = 1000
#: collection id -> share of the documents
COLLECTION_SHARES = {1: 0.50, 2: 0.25, 3: 0.19, 4: 0.03, 5: 0.03}
#: name -> the collections a search may read (None: no filter)
FILTERS: dict[str, frozenset[int] | None] = {
    "none": None,  # never what the product does: it always passes the caller's collections
    "all 5 colls": frozenset(COLLECTION_SHARES),  # a caller who may read every collection
    "collection 25%": frozenset({2}),
    "collection 3%": frozenset({4}),
}
# the shape of the synthetic vectors (see synthetic_corpus)
TOPIC_DIMENSIONS = 16
TOPIC_SPREAD = 0.5
NOISE = 0.3
QUERY_NOISE = 0.4


@dataclass
class Corpus:
    vectors: np.ndarray  # (n, 384) float32, rows normalised, grouped by document
    document_ids: np.ndarray  # per document
    collection_ids: np.ndarray  # per document
    queries: np.ndarray  # (q, 384) float32, normalised

    @property
    def size(self) -> int:
        return len(self.vectors)


def _normalise(matrix: np.ndarray) -> np.ndarray:
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix


def synthetic_corpus(size: int, queries: int, seed: int = 0) -> Corpus:
    """Vectors shaped a little like text embeddings rather than uniform noise (HNSW's worst case).

    One topic per 1,000 chunks: a random unit centre and a random 16-dimensional subspace. A document
    is 20 consecutive chunks of one topic; a chunk is ``centre + 0.5 * (a Gaussian point of the topic's
    subspace) + 0.3 * (isotropic Gaussian noise)``, normalised (cosine to its centre about 0.87).
    Documents fall in 5 collections (50/25/19/3/3% of them). A query is a chunk drawn at random plus
    isotropic noise of norm 0.4, normalised (cosine about 0.93 to that chunk; its 10th neighbour is at
    about 0.80, its 100th at about 0.76: a crowded neighbourhood, like real passages).
    """
    rng = np.random.default_rng(seed)
    documents = math.ceil(size / CHUNKS_PER_DOCUMENT)
    topics = max(1, size // CHUNKS_PER_TOPIC)
    centres = _normalise(rng.standard_normal((topics, DIMENSION), dtype=np.float32))
    document_topic = rng.integers(0, topics, documents)
    chunk_topic = np.repeat(document_topic, CHUNKS_PER_DOCUMENT)[:size]
    vectors = rng.standard_normal((size, DIMENSION), dtype=np.float32)
    vectors *= NOISE / math.sqrt(DIMENSION)
    order = np.argsort(chunk_topic, kind="stable")
    bounds = np.searchsorted(chunk_topic[order], np.arange(topics + 1))
    for topic in range(topics):
        rows = order[bounds[topic] : bounds[topic + 1]]
        basis, _ = np.linalg.qr(rng.standard_normal((DIMENSION, TOPIC_DIMENSIONS)).astype(np.float32))
        latent = rng.standard_normal((len(rows), TOPIC_DIMENSIONS), dtype=np.float32)
        latent *= TOPIC_SPREAD / math.sqrt(TOPIC_DIMENSIONS)
        vectors[rows] += centres[topic] + latent @ basis.T
    _normalise(vectors)
    shares = np.array(list(COLLECTION_SHARES.values()))
    collection_ids = rng.choice(np.array(list(COLLECTION_SHARES)), size=documents, p=shares / shares.sum())
    sources = rng.integers(0, size, queries)
    noise = rng.standard_normal((queries, DIMENSION), dtype=np.float32) * (QUERY_NOISE / math.sqrt(DIMENSION))
    return Corpus(
        vectors=vectors,
        document_ids=np.arange(1, documents + 1, dtype=np.int64),
        collection_ids=collection_ids.astype(np.int64),
        queries=_normalise(vectors[sources] + noise),
    )


class PeakRss:
    """Samples this process's RSS in a thread: the peak growth over the value at the start."""

    def __init__(self, interval: float = 0.05) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.start_rss: int = self._process.memory_info().rss
        self.peak_rss: int = self.start_rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak_rss = max(self.peak_rss, self._process.memory_info().rss)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, int(self._process.memory_info().rss))
        return self.peak_rss - self.start_rss


def _set_threads(threads: int | None) -> int:
    import faiss

    if threads:
        faiss.omp_set_num_threads(threads)
    return int(faiss.omp_get_max_threads())


def _saved_sizes(directory: Path) -> dict[str, int]:
    from ingestion.index import CURRENT_FILE

    folder = directory / (directory / CURRENT_FILE).read_text(encoding="ascii").strip()
    return {path.name: path.stat().st_size for path in folder.iterdir() if path.is_file()}


def _add_documents(writer: Any, corpus: Corpus, documents: range, id_offset: int = 0, text: str = "") -> None:
    for number in documents:
        start = number * CHUNKS_PER_DOCUMENT
        stop = min(start + CHUNKS_PER_DOCUMENT, corpus.size)
        writer.add(
            np.arange(start + 1 + id_offset, stop + 1 + id_offset, dtype=np.int64),
            corpus.vectors[start:stop],
            document_id=int(corpus.document_ids[number]) + id_offset,
            collection_id=int(corpus.collection_ids[number]),
            texts=[text] * (stop - start),
        )


def build(config: Any, size: int, queries: int, seed: int, text: str, threads: int | None) -> dict[str, Any]:
    """In a fresh process: write the corpus through the product's writer (one ``add`` per document, one save).

    Returns the timings, the writer's peak RSS growth, and the queries (the same for every kind).
    """
    from ingestion.index import VectorIndex

    _set_threads(threads)
    corpus = synthetic_corpus(size, queries, seed=seed)
    index = VectorIndex(config, embedder_name=EMBEDDER, dimension=DIMENSION)
    gc.collect()
    rss = PeakRss()
    started = time.perf_counter()
    with index.writer() as writer:
        _add_documents(writer, corpus, range(len(corpus.document_ids)), text=text)
        added = time.perf_counter()
    finished = time.perf_counter()
    growth = rss.stop()
    # the cost of ingesting one more document once the index is this large (a new version is saved)
    one_more = time.perf_counter()
    with index.writer() as writer:
        _add_documents(writer, corpus, range(1), id_offset=corpus.size + CHUNKS_PER_DOCUMENT, text=text)
    one_more_s = time.perf_counter() - one_more
    return {
        "kind": index.kind,
        "documents": len(corpus.document_ids),
        "build_s": finished - started,
        "adds_s": added - started,
        "build_save_s": finished - added,
        "writer_peak_rss_mb": growth / 2**20,
        "add_one_document_s": one_more_s,
        "queries": corpus.queries,
    }


def exact_answers(snapshot: Any, queries: np.ndarray, k: int, collections: frozenset[int] | None) -> np.ndarray:
    """The exact index's answers to all queries at once (one batched FAISS call, same filter as the product)."""
    from ingestion.index import faiss  # the SWIG module, typed Any (its stubs miss keyword arguments)

    mask = snapshot.allowed(collections)
    if mask is None:
        _, positions = snapshot.index.search(queries, k)
    else:
        bits = np.packbits(mask, bitorder="little")
        selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
        _, positions = snapshot.index.search(queries, k, params=faiss.SearchParameters(sel=selector))
    return np.where(positions >= 0, snapshot.labels[np.maximum(positions, 0)], -1)


def read_and_search(
    config: Any, queries: np.ndarray, timed: int, k: int, runs: int, threads: int | None
) -> dict[str, Any]:
    """In a fresh process: load the saved index as a web worker does, then search it one query at a time.

    The first ``timed`` queries are timed, ``runs`` times each, through ``VectorIndex.search``. The answers
    returned are the approximate index's (first run; ``timed`` must then be all queries) or the exact
    index's to every query (batched: the recall's reference).
    """
    import psutil

    from ingestion.index import FLAT, VectorIndex

    used_threads = _set_threads(threads)
    process = psutil.Process()
    gc.collect()
    before = process.memory_info().rss
    started = time.perf_counter()
    index = VectorIndex(config, embedder_name=EMBEDDER, dimension=DIMENSION)
    load_s = time.perf_counter() - started
    growth = process.memory_info().rss - before
    for query in queries[:20]:  # warm-up: page in what the first searches touch
        index.search(query, k)
    exact = index.kind == FLAT
    if not exact and timed < len(queries):
        raise ValueError("the approximate index must answer every query (its answers give the recall)")
    out: dict[str, Any] = {
        "kind": index.kind,
        "count": index.count,
        "threads": used_threads,
        "load_s": load_s,
        "reader_rss_mb": growth / 2**20,
        "timed_queries": timed,
        "latency": {},
        "ids": {},
    }
    for name, collections in FILTERS.items():
        p50s, p95s, p99s = [], [], []
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        for run in range(runs):
            seconds = np.empty(timed)
            for row, query in enumerate(queries[:timed]):
                tick = time.perf_counter()
                hits = index.search(query, k, collections=collections)
                seconds[row] = time.perf_counter() - tick
                if run == 0 and not exact:
                    ids[row, : len(hits)] = [chunk_id for chunk_id, _ in hits]
            p50, p95, p99 = np.percentile(seconds * 1000, [50, 95, 99])
            p50s.append(p50)
            p95s.append(p95)
            p99s.append(p99)
        out["latency"][name] = {
            "p50_ms": statistics.median(p50s),
            "p95_ms": statistics.median(p95s),
            "p99_ms": statistics.median(p99s),
        }
        out["ids"][name] = exact_answers(index.snapshot(), queries, k, collections) if exact else ids
    return out


def recall(exact: np.ndarray, approximate: np.ndarray, at: int) -> float:
    """Mean share of the exact top ``at`` (ignoring padding) that the approximate top ``at`` found."""
    shares = []
    for truth, found in zip(exact[:, :at], approximate[:, :at], strict=True):
        expected = set(truth[truth >= 0].tolist())
        if expected:
            shares.append(len(expected & set(found.tolist())) / len(expected))
    return float(np.mean(shares)) if shares else float("nan")


def bench_size(size: int, args: argparse.Namespace, base_config: Any, workdir: Path) -> dict[str, Any]:
    text = "x" * args.text_chars
    results: dict[str, Any] = {"size": size}
    queries: np.ndarray | None = None
    print(f"\n{size:,} vectors", flush=True)
    for kind in args.kinds:
        directory = workdir / f"{size}-{kind}"
        # exact: never over the threshold, even one document later; approximate: always over it
        threshold = 2 * size + 1000 if kind == "flat" else 1
        config = replace(base_config, directory=directory, approx_threshold=threshold)
        print(f"  {kind}: building...", flush=True)
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            built = pool.submit(build, config, size, args.queries, args.seed, text, args.threads).result()
        if queries is None:
            queries = built["queries"]
        assert np.array_equal(queries, built.pop("queries"))
        sizes = _saved_sizes(directory)
        print(f"  {kind}: built in {built['build_s']:.1f} s, searching...", flush=True)
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            timed = min(args.queries, args.flat_queries or args.queries) if kind == "flat" else args.queries
            read = pool.submit(read_and_search, config, queries, timed, args.k, args.runs, args.threads).result()
        assert read["kind"] == kind == built["kind"], (kind, read["kind"], built["kind"])
        shutil.rmtree(directory, ignore_errors=True)
        results[kind] = {
            **built,
            "saved_mb": sum(sizes.values()) / 2**20,
            "saved_files_mb": {name: value / 2**20 for name, value in sizes.items()},
            **{key: read[key] for key in ("load_s", "reader_rss_mb", "threads", "timed_queries", "latency", "ids")},
        }
        row = results[kind]
        latencies = "   ".join(
            f"{name} p50 {value['p50_ms']:.2f} / p95 {value['p95_ms']:.2f} ms" for name, value in row["latency"].items()
        )
        print(
            f"  {kind}: saved {row['saved_mb']:.0f} MB, loaded in {row['load_s']:.1f} s "
            f"(+{row['reader_rss_mb']:.0f} MB RSS); {latencies}",
            flush=True,
        )
    if "flat" in results and "hnsw" in results:
        results["recall"] = {
            name: {
                "recall@10": recall(results["flat"]["ids"][name], results["hnsw"]["ids"][name], 10),
                f"recall@{args.k}": recall(results["flat"]["ids"][name], results["hnsw"]["ids"][name], args.k),
            }
            for name in FILTERS
        }
    for kind in args.kinds:
        del results[kind]["ids"]
    return results


def _table(result: dict[str, Any], args: argparse.Namespace) -> str:
    kinds = [kind for kind in args.kinds if kind in result]
    lines = [f"{result['size']:,} vectors"]
    if "flat" in result and result["flat"]["timed_queries"] < args.queries:
        lines[0] += f" (flat latency over the first {result['flat']['timed_queries']} queries)"
    lines.append(
        f"  {'kind':<5} {'build s':>8} {'(adds':>7} {'+ save)':>8} {'writer +MB':>11} {'saved MB':>9} "
        f"{'load s':>7} {'reader +MB':>11} {'1 more doc s':>13}"
    )
    for kind in kinds:
        row = result[kind]
        lines.append(
            f"  {kind:<5} {row['build_s']:>8.1f} {row['adds_s']:>7.1f} {row['build_save_s']:>8.1f} "
            f"{row['writer_peak_rss_mb']:>11.0f} {row['saved_mb']:>9.0f} {row['load_s']:>7.2f} "
            f"{row['reader_rss_mb']:>11.0f} {row['add_one_document_s']:>13.2f}"
        )
    header = f"  {'filter':<15}" + "".join(f" {kind + ' p50/p95 ms':>20}" for kind in kinds)
    if "recall" in result:
        header += f" {'p95 hnsw/flat':>14} {'recall@10':>10} {'recall@' + str(args.k):>11}"
    lines.append(header)
    for name in FILTERS:
        line = f"  {name:<15}"
        for kind in kinds:
            value = result[kind]["latency"][name]
            line += f" {value['p50_ms']:>9.2f} / {value['p95_ms']:>7.2f}"
        if "recall" in result:
            ratio = result["hnsw"]["latency"][name]["p95_ms"] / result["flat"]["latency"][name]["p95_ms"]
            scores = result["recall"][name]
            line += f" {ratio:>14.3f} {scores['recall@10']:>10.3f} {scores[f'recall@{args.k}']:>11.3f}"
        lines.append(line)
    return "\n".join(lines)


def _rounded(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    if isinstance(value, float):
        return round(value, 4)
    return value


def main() -> None:
    from ingestion.index import IndexConfig
    from ingestion.search import SearchConfig

    defaults = {field.name: field.default for field in fields(IndexConfig)}
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=1000, help="queries per filter and run")
    parser.add_argument("--runs", type=int, default=3, help="latency runs over the queries (median reported)")
    parser.add_argument(
        "--flat-queries",
        type=int,
        default=None,
        help="time only this many queries on the exact index (slow at 1M); its answers to all still give the recall",
    )
    parser.add_argument("--k", type=int, default=SearchConfig.dense_k, help="results per search (the product's)")
    parser.add_argument("--kinds", nargs="+", choices=["flat", "hnsw"], default=["flat", "hnsw"])
    parser.add_argument("--hnsw-m", type=int, default=defaults["hnsw_m"])
    parser.add_argument("--ef-construction", type=int, default=defaults["hnsw_ef_construction"])
    parser.add_argument("--ef-search", type=int, default=defaults["hnsw_ef_search"])
    parser.add_argument("--threads", type=int, default=None, help="faiss.omp_set_num_threads (default: untouched)")
    parser.add_argument("--text-chars", type=int, default=0, help="characters of stored text per chunk (BM25's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the indexes (default: a temp dir)")
    args = parser.parse_args()

    threads = _set_threads(args.threads)
    base_config = IndexConfig(
        directory=Path("."),
        hnsw_m=args.hnsw_m,
        hnsw_ef_construction=args.ef_construction,
        hnsw_ef_search=args.ef_search,
    )
    print(
        f"VectorIndex at {', '.join(f'{s:,}' for s in args.sizes)} vectors: {args.queries} queries x {args.runs} "
        f"runs, k={args.k}, HNSW M={args.hnsw_m} efConstruction={args.ef_construction} "
        f"efSearch={args.ef_search}, FAISS threads {threads}"
        + ("" if args.threads else " (OpenMP default, as the product)"),
        flush=True,
    )
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kp-bench-index-", dir=args.workdir) as workdir:
        results = [bench_size(size, args, base_config, Path(workdir)) for size in args.sizes]
    print()
    for result in results:
        print(_table(result, args))
    summary = {
        "params": {
            "queries": args.queries,
            "runs": args.runs,
            "k": args.k,
            "hnsw_m": args.hnsw_m,
            "ef_construction": args.ef_construction,
            "ef_search": args.ef_search,
            "threads": threads,
            "text_chars": args.text_chars,
        },
        "results": results,
    }
    print(json.dumps(_rounded(summary)))


if __name__ == "__main__":
    main()
