"""The faiss store at scale: build time, memory, search latency and recall, and the cost of growing.

    .venv/bin/python bench/bench_index.py [--sizes 100000 1000000] [--queries 1000] [--runs 3]

For each size, synthetic chunk vectors (384 dimensions, L2-normalised, grouped in topics, see
``synthetic_corpus``) with synthetic lexical terms (``--terms`` per chunk, Zipf-distributed over a 100,000-word
vocabulary, given to the writer as analysed terms) are written through ``ingestion.index.FaissStore`` twice:
with exact segments (IndexFlatIP) and with approximate ones (HNSW, with the product's ``IndexConfig``
parameters unless told otherwise). One writer session adds every document (one ``add`` per 20-chunk document);
it writes a segment per ``--segment-chunks`` chunks (the product's default), and these are then merged into
one (``FaissStore.merge``, timed apart). A fresh process then opens the store, as a web worker does, and
searches it one query at a time through ``view().dense`` (``k`` = the hybrid searcher's dense candidates, as the
product asks) with each filter: none (a reference only: the product always passes the caller's collections),
all five collections (a caller who may read everything), one collection holding 25% of the chunks (HNSW: the
graph walk with a selector) and one holding 3% (under 5% the product scans the allowed vectors exactly); and
through ``view().lexical`` (BM25 of three query words, k1 0.9, b 0.4) with the same filters. Recall@10 (and @k)
of HNSW is measured against the exact store's answers to the same queries and filters. Latencies are the
median over runs of each run's p50/p95/p99; memory is the reader's RSS growth when it opens the store and
after its searches (segments are memory-mapped: their pages count once touched, and are shared by every
process reading the store), the writer's peak RSS growth while it builds and merges, and the saved files' size.

Growing: in the reader's process a second ``FaissStore`` instance (as another process's writer would) adds one
20-chunk document to the full store, ``--adds`` times. "add 1 doc" is the median time of that writer block (a
new segment and a new generation published). After each, a thread of the reader keeps asking questions (all
five collections) while the reader picks the new generation up in the background: "pickup" is the median time
from the end of the write until the reader's snapshot holds the new document (``view()`` polled every
millisecond), "q max" the slowest question answered meanwhile and
"view max" the slowest ``view()`` call (it loads a small new generation itself: ``sync_refresh_chunks``).

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
#: words of the synthetic lexical vocabulary
VOCABULARY = 100_000


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
    """Bytes of the current generation's files, by kind (data.bin, dense.faiss, segment.json, manifest...)."""
    from ingestion.index import generation_files

    current = generation_files(directory)
    sizes: dict[str, int] = {}
    for relative in current[1] if current else []:
        name = Path(relative).name
        kind = "dead.npy" if name.startswith("dead-") else "manifest.json" if "/" not in relative else name
        sizes[kind] = sizes.get(kind, 0) + (directory / relative).stat().st_size
    return sizes


def _identity() -> Any:
    from ingestion.store import StoreIdentity

    return StoreIdentity(EMBEDDER, DIMENSION)


def synthetic_terms(size: int, per_chunk: int, seed: int) -> list[Any]:
    """Per chunk, ``per_chunk`` word draws (Zipf, exponent 1.1, over ``VOCABULARY`` words) as analysed terms."""
    from collections import Counter

    from ingestion.language import PassageTerms

    if per_chunk <= 0:
        return [PassageTerms("en", {}) for _ in range(size)]
    rng = np.random.default_rng(seed + 1)
    weights = 1.0 / np.arange(1, VOCABULARY + 1) ** 1.1
    out = []
    for start in range(0, size, 65_536):  # in slices: one (size, per_chunk) draw is large at 1M
        rows = min(65_536, size - start)
        draws = rng.choice(VOCABULARY, size=(rows, per_chunk), p=weights / weights.sum())
        out += [PassageTerms("en", {f"w{w}": c for w, c in Counter(row).items()}) for row in draws.tolist()]
    return out


def query_words(queries: int, seed: int) -> list[list[str]]:
    """Three words per query among ranks 10 to 20,000 (the commonest are stop-word-like, the rarest in few chunks)."""
    rng = np.random.default_rng(seed + 2)
    return [[f"w{w}" for w in rng.integers(10, 20_000, 3).tolist()] for _ in range(queries)]


def _add_documents(
    writer: Any, corpus: Corpus, documents: range, terms: list[Any], id_offset: int = 0, text: str = ""
) -> None:
    from ingestion.store import PassageEmbeddings

    for number in documents:
        start = number * CHUNKS_PER_DOCUMENT
        stop = min(start + CHUNKS_PER_DOCUMENT, corpus.size)
        writer.add(
            np.arange(start + 1 + id_offset, stop + 1 + id_offset, dtype=np.int64),
            PassageEmbeddings(corpus.vectors[start:stop]),
            document_id=int(corpus.document_ids[number]) + id_offset,
            collection_id=int(corpus.collection_ids[number]),
            texts=[text] * (stop - start),
            terms=terms[start:stop],
        )


def build(config: Any, size: int, options: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: write the corpus through the product's writer (one ``add`` per document, one
    session), then merge its segments into one.

    Returns the timings, the writer's peak RSS growth, and the queries (the same for every kind).
    """
    from ingestion.index import FaissStore

    _set_threads(options["threads"])
    corpus = synthetic_corpus(size, options["queries"], seed=options["seed"])
    terms = synthetic_terms(size, options["terms"], options["seed"])
    store = FaissStore(config, _identity())
    gc.collect()
    rss = PeakRss()
    started = time.perf_counter()
    with store.writer() as writer:
        _add_documents(writer, corpus, range(len(corpus.document_ids)), terms, text=options["text"])
        added = time.perf_counter()
    finished = time.perf_counter()
    segments = store.view().segments
    store.merge(force=True)
    merged = time.perf_counter()
    growth = rss.stop()
    return {
        "kind": store.kind,
        "documents": len(corpus.document_ids),
        "build_s": finished - started,
        "adds_s": added - started,
        "build_save_s": finished - added,
        "segments_written": segments,
        "merge_s": merged - finished,
        "writer_peak_rss_mb": growth / 2**20,
        "queries": corpus.queries,
    }


def exact_answers(view: Any, queries: np.ndarray, k: int, collections: frozenset[int] | None) -> np.ndarray:
    """The exact store's answers to every query at once (one batched FAISS call per segment, the product's
    filter masks)."""
    from ingestion.index import faiss  # the SWIG module, typed Any (its stubs miss keyword arguments)

    scores, labels = [], []
    for part, mask in zip(view.parts, view._filter_masks(collections, None), strict=True):
        segment = part.segment
        if mask is None:
            distances, positions = segment.index.search(queries, k)
        else:
            bits = np.packbits(mask, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
            distances, positions = segment.index.search(queries, k, params=faiss.SearchParameters(sel=selector))
        scores.append(np.where(positions >= 0, distances, -np.inf))
        labels.append(np.where(positions >= 0, segment.chunk_ids[np.maximum(positions, 0)], -1))
    all_scores, all_labels = np.hstack(scores), np.hstack(labels)
    best = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(all_labels, best, axis=1)


def _percentiles(seconds: np.ndarray) -> tuple[float, float, float]:
    p50, p95, p99 = np.percentile(seconds * 1000, [50, 95, 99])
    return float(p50), float(p95), float(p99)


def grow(store: Any, config: Any, queries: np.ndarray, options: dict[str, Any]) -> dict[str, Any]:
    """Another instance adds one 20-chunk document, ``adds`` times; the reader picks each up while answering."""
    from ingestion.index import FaissStore
    from ingestion.language import PassageTerms
    from ingestion.store import PassageEmbeddings

    writer_store = FaissStore(config, _identity())  # as another process's writer: its own snapshot
    rng = np.random.default_rng(options["seed"] + 3)
    first_id = 10 * (int(store.ids().max()) + 1)
    add_s, pickup_s, view_ms, question_ms = [], [], [], []
    for number in range(options["adds"]):
        first = first_id + number * CHUNKS_PER_DOCUMENT
        ids = np.arange(first, first + CHUNKS_PER_DOCUMENT, dtype=np.int64)
        vectors = _normalise(rng.standard_normal((CHUNKS_PER_DOCUMENT, DIMENSION), dtype=np.float32))
        words = rng.integers(0, 20_000, (CHUNKS_PER_DOCUMENT, max(1, options["terms"]))).tolist()
        terms = [PassageTerms("en", {f"w{w}": 1 for w in row}) for row in words]
        started = time.perf_counter()
        with writer_store.writer() as writer:
            writer.add(
                ids,
                PassageEmbeddings(vectors),
                document_id=int(first),
                collection_id=1,
                texts=[options["text"]] * CHUNKS_PER_DOCUMENT,
                terms=terms,
            )
        written = time.perf_counter()
        add_s.append(written - started)
        # questions go on in a thread while this one watches for the new generation (every millisecond)
        stop = threading.Event()

        def ask(stop: threading.Event = stop) -> None:
            row = 0
            while not stop.is_set():
                tick = time.perf_counter()
                store.view().dense(
                    queries[row % len(queries)], options["k"], collections=FILTERS["all 5 colls"], documents=None
                )
                question_ms.append((time.perf_counter() - tick) * 1000)
                row += 1

        asking = threading.Thread(target=ask, daemon=True)
        asking.start()
        while True:
            tick = time.perf_counter()
            view = store.view()  # starts the background load, never waits for it
            view_ms.append((time.perf_counter() - tick) * 1000)
            if view.generation >= writer_store.version:
                pickup_s.append(time.perf_counter() - written)
                break
            if time.perf_counter() - written > 120:
                raise RuntimeError("the reader did not pick the new document up within 120 s")
            time.sleep(0.001)
        stop.set()
        asking.join()
    return {
        "add_one_document_s": statistics.median(add_s),
        "add_one_document_max_s": max(add_s),
        "pickup_s": statistics.median(pickup_s),
        "pickup_max_s": max(pickup_s),
        "view_call_max_ms": max(view_ms),
        "questions_during_pickup": len(question_ms),
        "question_during_pickup_max_ms": max(question_ms, default=0.0),
    }


def read_and_search(config: Any, queries: np.ndarray, timed: int, options: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: open the saved store as a web worker does, then search it one query at a time.

    The first ``timed`` queries are timed, ``runs`` times each, through ``view().dense`` and ``view().lexical``.
    The answers returned are the approximate store's (first run; ``timed`` must then be all queries) or the
    exact store's to every query (batched: the recall's reference). Then the growing measurements (:func:`grow`).
    """
    import psutil

    from ingestion.index import FLAT, FaissStore

    k, runs = options["k"], options["runs"]
    used_threads = _set_threads(options["threads"])
    process = psutil.Process()
    gc.collect()
    before = process.memory_info().rss
    started = time.perf_counter()
    store = FaissStore(config, _identity())
    load_s = time.perf_counter() - started
    growth = process.memory_info().rss - before
    for query in queries[:20]:  # warm-up: page in what the first searches touch
        store.view().dense(query, k, collections=None, documents=None)
    exact = store.kind == FLAT
    if not exact and timed < len(queries):
        raise ValueError("the approximate store must answer every query (its answers give the recall)")
    words = query_words(len(queries), options["seed"])
    out: dict[str, Any] = {
        "kind": store.kind,
        "count": len(store.view()),
        "segments": store.view().segments,
        "threads": used_threads,
        "load_s": load_s,
        "reader_rss_mb": growth / 2**20,
        "timed_queries": timed,
        "latency": {},
        "lexical_latency": {},
        "ids": {},
    }
    for name, collections in FILTERS.items():
        dense_runs, lexical_runs = [], []
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        for run in range(runs):
            seconds = np.empty(timed)
            for row, query in enumerate(queries[:timed]):
                tick = time.perf_counter()
                hits = store.view().dense(query, k, collections=collections, documents=None)
                seconds[row] = time.perf_counter() - tick
                if run == 0 and not exact:
                    ids[row, : len(hits)] = [chunk_id for chunk_id, _ in hits]
            dense_runs.append(_percentiles(seconds))
            if options["terms"] > 0:
                seconds = np.empty(timed)
                for row in range(timed):
                    tick = time.perf_counter()
                    store.view().lexical(words[row], k, collections=collections, documents=None, k1=0.9, b=0.4)
                    seconds[row] = time.perf_counter() - tick
                lexical_runs.append(_percentiles(seconds))
        for key, measured in (("latency", dense_runs), ("lexical_latency", lexical_runs)):
            if measured:
                out[key][name] = {
                    f"{label}_ms": statistics.median(run[i] for run in measured)
                    for i, label in enumerate(("p50", "p95", "p99"))
                }
        out["ids"][name] = exact_answers(store.view(), queries, k, collections) if exact else ids
    out["reader_rss_after_mb"] = (process.memory_info().rss - before) / 2**20
    out.update(grow(store, config, queries, options))
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
    options = {
        "queries": args.queries,
        "seed": args.seed,
        "text": "x" * args.text_chars,
        "threads": args.threads,
        "terms": args.terms,
        "k": args.k,
        "runs": args.runs,
        "adds": args.adds,
    }
    results: dict[str, Any] = {"size": size}
    queries: np.ndarray | None = None
    print(f"\n{size:,} chunks", flush=True)
    for kind in args.kinds:
        directory = workdir / f"{size}-{kind}"
        # exact: never over the threshold, even merged; approximate: always over it
        threshold = 2 * size + 1000 if kind == "flat" else 1
        config = replace(base_config, directory=directory, approx_threshold=threshold)
        print(f"  {kind}: building...", flush=True)
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            built = pool.submit(build, config, size, options).result()
        if queries is None:
            queries = built["queries"]
        assert np.array_equal(queries, built.pop("queries"))
        sizes = _saved_sizes(directory)
        print(
            f"  {kind}: built in {built['build_s']:.1f} s ({built['segments_written']} segments, merged in "
            f"{built['merge_s']:.1f} s), searching...",
            flush=True,
        )
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            timed = min(args.queries, args.flat_queries or args.queries) if kind == "flat" else args.queries
            read = pool.submit(read_and_search, config, queries, timed, options).result()
        assert read["kind"] == kind == built["kind"], (kind, read["kind"], built["kind"])
        shutil.rmtree(directory, ignore_errors=True)
        results[kind] = {
            **built,
            "saved_mb": sum(sizes.values()) / 2**20,
            "saved_files_mb": {name: value / 2**20 for name, value in sizes.items()},
            **{key: value for key, value in read.items() if key not in ("kind", "count")},
        }
        row = results[kind]
        latencies = "   ".join(
            f"{name} p50 {value['p50_ms']:.2f} / p95 {value['p95_ms']:.2f} ms" for name, value in row["latency"].items()
        )
        print(
            f"  {kind}: saved {row['saved_mb']:.0f} MB, loaded in {row['load_s']:.2f} s "
            f"(+{row['reader_rss_mb']:.0f} MB RSS, +{row['reader_rss_after_mb']:.0f} MB after searching); {latencies}; "
            f"add 1 doc {row['add_one_document_s'] * 1000:.0f} ms, picked up in {row['pickup_s'] * 1000:.0f} ms "
            f"(slowest question meanwhile {row['question_during_pickup_max_ms']:.1f} ms)",
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
    lines = [f"{result['size']:,} chunks"]
    if "flat" in result and result["flat"]["timed_queries"] < args.queries:
        lines[0] += f" (flat latency over the first {result['flat']['timed_queries']} queries)"
    lines.append(
        f"  {'kind':<5} {'build s':>8} {'(adds':>7} {'+ save)':>8} {'merge s':>8} {'writer +MB':>11} {'saved MB':>9} "
        f"{'load s':>7} {'reader +MB':>11} {'add 1 doc ms':>13} {'pickup ms':>10} {'q max ms':>9} {'view max ms':>12}"
    )
    for kind in kinds:
        row = result[kind]
        lines.append(
            f"  {kind:<5} {row['build_s']:>8.1f} {row['adds_s']:>7.1f} {row['build_save_s']:>8.1f} "
            f"{row['merge_s']:>8.1f} {row['writer_peak_rss_mb']:>11.0f} {row['saved_mb']:>9.0f} {row['load_s']:>7.2f} "
            f"{row['reader_rss_after_mb']:>11.0f} {row['add_one_document_s'] * 1000:>13.0f} "
            f"{row['pickup_s'] * 1000:>10.0f} {row['question_during_pickup_max_ms']:>9.1f} "
            f"{row['view_call_max_ms']:>12.2f}"
        )
    header = f"  {'filter':<15}" + "".join(f" {kind + ' p50/p95 ms':>20}" for kind in kinds)
    if "recall" in result:
        header += f" {'p95 hnsw/flat':>14} {'recall@10':>10} {'recall@' + str(args.k):>11}"
    if args.terms > 0:
        header += f" {'bm25 p50/p95 ms':>20}"
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
        if args.terms > 0:
            value = result[kinds[0]]["lexical_latency"][name]
            line += f" {value['p50_ms']:>9.2f} / {value['p95_ms']:>7.2f}"
        lines.append(line)
    return "\n".join(lines)


def rounded(value: Any) -> Any:
    """``value`` with its floats rounded to 4 places, in nested dicts and lists too (for the JSON summary)."""
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item) for item in value]
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
        help="time only this many queries on the exact store (slow at 1M); its answers to all still give the recall",
    )
    parser.add_argument("--k", type=int, default=SearchConfig.dense_k, help="results per search (the product's)")
    parser.add_argument("--kinds", nargs="+", choices=["flat", "hnsw"], default=["flat", "hnsw"])
    parser.add_argument("--hnsw-m", type=int, default=defaults["hnsw_m"])
    parser.add_argument("--ef-construction", type=int, default=defaults["hnsw_ef_construction"])
    parser.add_argument("--ef-search", type=int, default=defaults["hnsw_ef_search"])
    parser.add_argument("--threads", type=int, default=None, help="faiss.omp_set_num_threads (default: untouched)")
    parser.add_argument("--text-chars", type=int, default=0, help="characters of stored text per chunk")
    parser.add_argument("--terms", type=int, default=50, help="lexical term draws per chunk (0: no lexical side)")
    parser.add_argument("--segment-chunks", type=int, default=defaults["segment_chunks"], help="the writer's buffer")
    parser.add_argument("--adds", type=int, default=5, help="20-chunk documents added to the full store, one by one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the stores (default: a temp dir)")
    args = parser.parse_args()

    threads = _set_threads(args.threads)
    base_config = IndexConfig(
        directory=Path("."),
        hnsw_m=args.hnsw_m,
        hnsw_ef_construction=args.ef_construction,
        hnsw_ef_search=args.ef_search,
        segment_chunks=args.segment_chunks,
        background_merge=False,  # the build merges explicitly, timed; the adds stay under the tiers' merges
    )
    print(
        f"FaissStore at {', '.join(f'{s:,}' for s in args.sizes)} chunks: {args.queries} queries x {args.runs} "
        f"runs, k={args.k}, HNSW M={args.hnsw_m} efConstruction={args.ef_construction} "
        f"efSearch={args.ef_search}, {args.terms} terms a chunk, FAISS threads {threads}"
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
            "terms": args.terms,
            "segment_chunks": args.segment_chunks,
            "adds": args.adds,
        },
        "results": results,
    }
    print(json.dumps(rounded(summary)))


if __name__ == "__main__":
    main()
