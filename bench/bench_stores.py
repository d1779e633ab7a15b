"""Both search stores side by side at scale: the faiss store and the postgres (pgvector) store, in one run.

    .venv/bin/python bench/bench_stores.py [--sizes 100000 1000000] [--stores faiss postgres] [--queries 100] [--runs 3]

For each size, one synthetic corpus is loaded into each store through the store's own writer: the chunk
vectors of ``bench_index.synthetic_corpus`` (384 dimensions, grouped in topics, 20 chunks a document, 5
collections of 50/25/19/3/3% of the documents) and chunk texts of real sentences (about 180 words: runs of
consecutive sentences of SciFact abstracts, 80% of the documents, or of PIAF's French paragraphs, 20%, read
from ``../shared/eval`` at run time, each chunk starting at a random sentence, with two or three made-up
names per document so that the vocabulary keeps growing with the corpus). Then, each in fresh processes:

- **load**: one ``writer(reset=True)`` block, as a rebuild (faiss: with its background merge, waited for;
  postgres: one transaction, the HNSW index built at its end, then VACUUM ANALYZE);
- **search**: p50/p95 of ``view.dense`` (k = 100, the hybrid searcher's dense candidates), of the lexical side
  alone (``query_tokens`` then ``view.lexical``, k = 100) and of a whole hybrid question
  (``ingestion.search.HybridSearcher.search``, 10 results; its embedder is a stand-in that returns each
  question's synthetic vector, so no model runs) with a collection filter: all five
  collections, one of 25% and one of 3%; recall@10 of the dense side against exact search (numpy, same
  filter); the reader's RSS after answering;
- **add one document**: one 20-chunk document added through the writer (its texts analysed by the writer,
  as in the product) to the full store, median of ``--adds``;
- **questions under writes**: a reader process asks questions for ``--load-seconds`` while idle, then as long
  again while a writer process adds a 20-chunk document every ``--write-interval`` seconds; p99 of both
  phases, and how many new chunks the reader saw;
- **cold start**: from starting a fresh Python process to its first hybrid answer (interpreter, imports,
  opening the store, first search; no embedding model is loaded, whose own load time comes on top in the
  product), median of ``--runs``.

The postgres store runs on a pgvector server the script starts with the PyPI ``pgserver`` package (PostgreSQL
16 with pgvector) in ``--workdir`` (or a temporary folder); a database per size is created and Django's
``migrate`` makes the schema. A table is printed per size, each store's figures as JSON as soon as they are
known, and the last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _path in (str(REPO), str(BENCH)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from bench_index import CHUNKS_PER_DOCUMENT, COLLECTION_SHARES, DIMENSION, rounded, synthetic_corpus  # noqa: E402

EVAL = REPO.parent / "shared" / "eval"
EMBEDDER = "synthetic-384"
STORES = ("faiss", "postgres")
#: name -> the collections a question may read (the product always passes the caller's collections)
FILTERS: dict[str, list[int]] = {
    "all 5 colls": sorted(COLLECTION_SHARES),
    "collection 25%": [2],
    "collection 3%": [4],
}
#: the filter of the cold start and of the questions under writes
MAIN_FILTER = "collection 25%"
DENSE_K = 100  # SearchConfig.dense_k
ANSWER_K = 10  # the chunks a question returns
RECALL_AT = 10
#: a chunk ends with the sentence that reaches this many words (with its names, 170-180 words a chunk)
WORDS_PER_CHUNK = 150
FRENCH_SHARE = 0.2
NAMES_PER_DOCUMENT = 3
#: the product's INDEX_APPROX_THRESHOLD default (the faiss store's exact index below it, HNSW above)
APPROX_THRESHOLD = 200_000
PG_DATABASE = "kp_bench_{size}"
#: pgvector's server settings for the run (ALTER SYSTEM; a restart applies shared_buffers)
PG_SETTINGS = {
    "shared_buffers": "1GB",
    "maintenance_work_mem": "3GB",  # an HNSW graph that fits builds in memory (else pgvector warns and crawls)
    "max_parallel_maintenance_workers": "1",  # 2 cores: the leader and one worker build the HNSW graph
    "max_wal_size": "8GB",  # no checkpoint storm during the bulk load
    "effective_cache_size": "8GB",
}


# ---------------------------------------------------------------------------------------------------------
# Real-text chunks


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_CONSONANTS = "bcdfgklmnprstvz"
_VOWELS = "aeiou"


class TextSource:
    """Chunk texts of real sentences, and their lexical analysis as ``passage_terms`` computes it.

    The sentences of SciFact's abstracts (English) and PIAF's paragraphs (French) are read from
    ``../shared/eval`` at run time. A document is English or French (80/20) and has three made-up names;
    each of its 20 chunks is a run of consecutive sentences from a random place, at least 180 words, with
    one or two of the names inserted between two sentences. Everything follows from the document's
    number, so every process rebuilds the same texts.

    The analysis is additive over words, so each sentence is analysed once and a chunk's terms are the
    sum of its sentences' (in the language ``passage_terms`` would read the chunk in, decided from the
    same stop-word votes): a million chunks are analysed in a minute, not an hour. :meth:`verify`
    checks it against ``passage_terms`` itself.
    """

    def __init__(self, eval_dir: Path, seed: int) -> None:
        from ingestion.language import TextAnalyzer

        self.analyzer = TextAnalyzer()
        self.seed = seed
        self.pools: dict[str, list[str]] = {
            "en": self._sentences(eval_dir / "scifact-dev" / "corpus.jsonl"),
            "fr": self._sentences(eval_dir / "piaf-dev" / "corpus.jsonl"),
        }
        self.words = {lang: [self.analyzer.words(s) for s in pool] for lang, pool in self.pools.items()}
        self.lengths = {lang: [len(w) for w in words] for lang, words in self.words.items()}
        self.votes = {lang: [tuple(self.analyzer.votes(w)) for w in words] for lang, words in self.words.items()}
        # (pool, sentence, language read in) -> terms; the pool's own language precomputed
        self._tokens: dict[tuple[str, int, str], list[str]] = {}
        for lang, words in self.words.items():
            for i, sentence_words in enumerate(words):
                self._tokens[lang, i, lang] = self.analyzer.tokens(sentence_words, lang)

    @staticmethod
    def _sentences(path: Path) -> list[str]:
        sentences = []
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                text = json.loads(line)["text"]
                sentences.extend(s.strip() for s in _SENTENCE_END.split(text) if s.strip())
        if not sentences:
            raise SystemExit(f"no text in {path}")
        return sentences

    def _terms_of(self, pool: str, sentence: int, language: str) -> list[str]:
        key = (pool, sentence, language)
        if key not in self._tokens:
            self._tokens[key] = self.analyzer.tokens(self.words[pool][sentence], language)
        return self._tokens[key]

    @staticmethod
    def _name(rng: random.Random) -> str:
        syllables = rng.randint(2, 4)
        word = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(syllables))
        return (word + rng.choice(("", "n", "r", "s", "l"))).capitalize()

    def document(self, number: int, *, with_terms: bool = True) -> tuple[list[str], list[Any] | None]:
        """The texts of document ``number``'s 20 chunks, and their ``PassageTerms`` (or None)."""
        from ingestion.language import PassageTerms

        rng = random.Random(self.seed * 1_000_000_007 + number)
        pool = "fr" if rng.random() < FRENCH_SHARE else "en"
        sentences, lengths, all_votes = self.pools[pool], self.lengths[pool], self.votes[pool]
        names = [self._name(rng) for _ in range(NAMES_PER_DOCUMENT)]
        name_words = [self.analyzer.words(name) for name in names]
        texts: list[str] = []
        layouts: list[tuple[list[int], list[int]]] = []  # per chunk: its sentences, and the names it holds
        for _ in range(CHUNKS_PER_DOCUMENT):
            position = rng.randrange(len(sentences))
            chosen: list[int] = []
            words = 0
            while words < WORDS_PER_CHUNK:
                chosen.append(position)
                words += lengths[position]
                position = (position + 1) % len(sentences)
            held = rng.sample(range(NAMES_PER_DOCUMENT), rng.randint(1, 2))
            at = rng.randint(0, len(chosen))
            parts = [sentences[i] for i in chosen]
            parts.insert(at, " ".join(names[n] for n in held))
            texts.append(" ".join(parts))
            layouts.append((chosen, held))
        if not with_terms:
            return texts, None
        analyzer = self.analyzer
        chunk_votes = []
        for chosen, held in layouts:
            votes = np.zeros(len(analyzer.languages), dtype=np.int64)
            for i in chosen:
                votes += all_votes[i]
            for n in held:
                votes += analyzer.votes(name_words[n])
            chunk_votes.append(votes)
        from_document = analyzer.winners([int(v) for v in np.sum(chunk_votes, axis=0)])
        terms = []
        for (chosen, held), votes in zip(layouts, chunk_votes, strict=True):
            # the same choice as ingestion.language.passage_terms
            own = analyzer.winners([int(v) for v in votes])
            if len(own) != 1:
                own = [c for c in from_document if c in own] or from_document or own
            language = own[0] if own else analyzer.languages[0]
            counts: Counter[str] = Counter()
            for i in chosen:
                counts.update(self._terms_of(pool, i, language))
            for n in held:
                counts.update(analyzer.tokens(name_words[n], language))
            terms.append(PassageTerms(language, dict(counts)))
        return texts, terms

    def verify(self, numbers: Sequence[int]) -> tuple[int, int]:
        """(chunks whose fast analysis equals ``passage_terms``'s, chunks checked)."""
        from ingestion.language import passage_terms

        same = total = 0
        for number in numbers:
            texts, terms = self.document(number)
            assert terms is not None
            reference = passage_terms(self.analyzer, texts)
            for mine, theirs in zip(terms, reference, strict=True):
                same += mine == theirs
                total += 1
        return same, total


def question_texts(count: int, seed: int) -> list[str]:
    """``count`` distinct real questions: SciFact claims (English) and PIAF questions (French), 80/20."""
    pools = {"en": [], "fr": []}  # type: dict[str, list[str]]
    for lang, names in (("en", ("scifact-dev", "scifact-train")), ("fr", ("piaf-dev",))):
        seen: set[str] = set()
        for name in names:
            with (EVAL / name / "queries.jsonl").open(encoding="utf-8") as lines:
                for line in lines:
                    text = json.loads(line)["text"].strip()
                    if text and text not in seen:
                        seen.add(text)
                        pools[lang].append(text)
    rng = random.Random(seed)
    for pool in pools.values():
        rng.shuffle(pool)
    out: list[str] = []
    for _ in range(count):
        lang = "fr" if rng.random() < FRENCH_SHARE else "en"
        if not pools[lang]:
            lang = "en" if lang == "fr" else "fr"
        if not pools[lang]:
            raise SystemExit(f"--queries {count}: more than the distinct questions of {EVAL}")
        out.append(pools[lang].pop())
    return out


# ---------------------------------------------------------------------------------------------------------
# Corpus files shared by the processes of one size


def chunk_rows(document: int, size: int) -> range:
    """The rows (0-based chunk positions) of document number ``document`` (0-based) in the corpus."""
    return range(document * CHUNKS_PER_DOCUMENT, min(size, (document + 1) * CHUNKS_PER_DOCUMENT))


def new_document(number: int, vectors: np.ndarray, rng: np.random.Generator) -> tuple[int, np.ndarray]:
    """A document beyond the corpus: its id, and 20 vectors near the first chunk of a random corpus document."""
    documents = -(-len(vectors) // CHUNKS_PER_DOCUMENT)
    source = int(rng.integers(0, documents - 1))
    base = np.asarray(vectors[chunk_rows(source, len(vectors))][:1], dtype=np.float32)
    noisy = base + rng.standard_normal((CHUNKS_PER_DOCUMENT, DIMENSION), dtype=np.float32) * (0.3 / DIMENSION**0.5)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    return number + 1, noisy


def new_chunk_ids(document_id: int) -> list[int]:
    """Chunk ids of a document added after the load (corpus chunk ids are 1..size, below these)."""
    first = (document_id - 1) * CHUNKS_PER_DOCUMENT + 1
    return list(range(first, first + CHUNKS_PER_DOCUMENT))


def prepare(size: int, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Write the corpus of ``size`` chunks (vectors, collections, questions) and the exact answers."""
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    corpus = synthetic_corpus(size, args.queries, seed=args.seed)
    np.save(folder / "vectors.npy", corpus.vectors)
    np.save(folder / "collections.npy", corpus.collection_ids)
    np.save(folder / "queries.npy", corpus.queries)
    (folder / "questions.json").write_text(json.dumps(question_texts(args.queries, args.seed)), encoding="utf-8")
    chunk_collections = np.repeat(corpus.collection_ids, CHUNKS_PER_DOCUMENT)[:size]
    exact = {}
    for name, collections in FILTERS.items():
        rows = np.flatnonzero(np.isin(chunk_collections, collections))
        allowed = corpus.vectors[rows]
        top = np.empty((args.queries, RECALL_AT), dtype=np.int64)
        for start in range(0, args.queries, 64):
            scores = corpus.queries[start : start + 64] @ allowed.T
            best = np.argpartition(-scores, RECALL_AT, axis=1)[:, :RECALL_AT]
            top[start : start + 64] = rows[best] + 1  # chunk id = row + 1
        exact[name] = top
    np.savez(folder / "exact.npz", **{name.replace(" ", "_"): value for name, value in exact.items()})
    documents = len(corpus.document_ids)
    del corpus
    gc.collect()
    return {"documents": documents, "prepare_s": time.perf_counter() - started}


# ---------------------------------------------------------------------------------------------------------
# Inside the child processes


def _identity() -> Any:
    from ingestion.store import StoreIdentity

    return StoreIdentity(EMBEDDER, DIMENSION)


def open_store(kind: str, params: dict[str, Any]) -> Any:
    """The store, opened as a web process opens it (postgres: Django configured from the environment)."""
    if kind == "faiss":
        from ingestion.index import FaissStore, IndexConfig

        config = IndexConfig(directory=Path(params["faiss_dir"]), approx_threshold=params["approx_threshold"])
        return FaissStore(config, _identity(), load=True)
    import django

    django.setup()
    from knowledge.search.postgres import PostgresStore

    if params.get("pg_build_memory"):
        return PostgresStore(_identity(), build_memory=params["pg_build_memory"])
    return PostgresStore(_identity())


@contextmanager
def writing(kind: str, store: Any, *, reset: bool = False) -> Iterator[Any]:
    """A writer block; postgres writes in the caller's transaction, so the block is one transaction."""
    if kind == "postgres":
        from django.db import transaction

        with transaction.atomic(), store.writer(reset=reset) as writer:
            yield writer
    else:
        with store.writer(reset=reset) as writer:
            yield writer


class _QueryVectors:
    """Stands in for the embedder: each benchmark question's synthetic vector (no model is loaded)."""

    name = EMBEDDER
    dimension = DIMENSION
    max_tokens = 512

    def __init__(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        self._vectors = dict(zip(texts, vectors, strict=True))

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError("the benchmark embeds no passage")

    def embed_query(self, text: str) -> np.ndarray:
        return self._vectors[text]


def make_searcher(store: Any, texts: Sequence[str], vectors: np.ndarray) -> Any:
    """The product's hybrid searcher over ``store``, with the stand-in embedder."""
    from ingestion.search import HybridSearcher, SearchConfig

    return HybridSearcher(store, _QueryVectors(texts, vectors), SearchConfig())


def _rss_mb() -> dict[str, float]:
    """This process's memory now (RSS, and its anonymous and file-mapped parts) and at its peak (VmHWM)."""
    out = {}
    names = {"VmRSS": "rss_mb", "VmHWM": "peak_rss_mb", "RssAnon": "anon_rss_mb", "RssFile": "file_rss_mb"}
    # RssAnon: the process's own memory; RssFile: pages of memory-mapped files (the page cache's, shared)
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in names:
                out[names[name]] = int(value.split()[0]) / 1024
    return out


def _percentiles(seconds: Sequence[float]) -> dict[str, float]:
    if not seconds:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan"), "n": 0}
    p50, p95, p99 = np.percentile(np.asarray(seconds) * 1000, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99), "n": len(seconds)}


def role_load(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Write the whole corpus through the store's writer in one ``writer(reset=True)`` block, as a rebuild does.

    faiss: the writer flushes a segment every ``segment_chunks``; the block's end publishes them, then the
    writing process merges them in the background (over ``approx_threshold`` chunks: into one HNSW segment),
    which is waited for and timed. postgres: one transaction; the block's end builds the HNSW index.
    """
    folder = Path(params["folder"])
    vectors = np.load(folder / "vectors.npy", mmap_mode="r")
    collections = np.load(folder / "collections.npy")
    size = len(vectors)
    source = TextSource(EVAL, params["seed"])
    from ingestion.store import PassageEmbeddings

    store = open_store(kind, params)
    out: dict[str, Any] = {}
    generate_s = 0.0
    documents = len(collections)
    started = time.perf_counter()
    with writing(kind, store, reset=True) as writer:
        for number in range(documents):
            tick = time.perf_counter()
            texts, terms = source.document(number)
            rows = chunk_rows(number, size)
            texts, terms = texts[: len(rows)], (terms or [])[: len(rows)]
            embeddings = PassageEmbeddings(np.ascontiguousarray(vectors[rows.start : rows.stop]))
            generate_s += time.perf_counter() - tick
            writer.add(
                [row + 1 for row in rows],
                embeddings,
                document_id=number + 1,
                collection_id=int(collections[number]),
                texts=texts,
                terms=terms,
            )
            if (number + 1) % 5000 == 0:
                print(
                    f"    {kind}: {number + 1:,}/{documents:,} documents added, "
                    f"{time.perf_counter() - started - generate_s:.0f} s in the writer",
                    file=sys.stderr,
                    flush=True,
                )
        out["adds_s"] = time.perf_counter() - started - generate_s
        finishing = time.perf_counter()
    out["finish_s"] = time.perf_counter() - finishing  # faiss: last segment, publication; postgres: HNSW, commit
    out["generate_s"] = generate_s
    if kind == "faiss":
        tick = time.perf_counter()
        store.wait_for_background()
        out["merge_s"] = time.perf_counter() - tick
        view = store.view()
        out["segments"] = view.segments
        out["kind"] = view.kind
        out["disk_mb"] = sum(f.stat().st_size for f in Path(params["faiss_dir"]).rglob("*") if f.is_file()) / 2**20
    else:
        tick = time.perf_counter()
        _vacuum_analyze()
        out["vacuum_analyze_s"] = time.perf_counter() - tick
        out["disk_mb"] = _pg_database_mb()
    out["load_s"] = time.perf_counter() - started - generate_s
    out["chunks"] = len(store.view())
    out["state"] = {k: v for k, v in store.state().items() if isinstance(v, str | int | float | bool)}
    out.update(_rss_mb())
    return out


def _vacuum_analyze() -> None:
    """After the bulk load, what autovacuum would do within a minute: planner statistics, visibility map."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")


def _pg_database_mb() -> float:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_database_size(current_database())")
        return float(cursor.fetchone()[0]) / 2**20


def _questions(folder: Path) -> tuple[list[str], np.ndarray]:
    return json.loads((folder / "questions.json").read_text(encoding="utf-8")), np.load(folder / "queries.npy")


def role_search(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Dense and hybrid latency per filter, the dense side's top 10 (for the recall), the RSS after."""
    folder = Path(params["folder"])
    texts, vectors = _questions(folder)
    store = open_store(kind, params)
    searcher = make_searcher(store, texts, vectors)
    for text in texts[:20]:  # warm-up: page in what the first searches touch
        searcher.search(text, ANSWER_K, collections=FILTERS[MAIN_FILTER])
    config = searcher.config
    out: dict[str, Any] = {"dense": {}, "lexical": {}, "hybrid": {}, "ids": {}}
    for name, collections in FILTERS.items():
        allowed = frozenset(collections)
        out["dense"][name], ids = time_dense(store, vectors, allowed, params["runs"])
        lexical_runs: list[dict[str, float]] = []
        for _ in range(params["runs"]):
            seconds = []
            for text in texts:  # the lexical side alone, as the searcher asks it (terms analysed, then BM25)
                tick = time.perf_counter()
                view = store.view()
                terms = searcher.analyzer.query_tokens(text, view.languages())
                view.lexical(
                    terms, config.bm25_k, collections=allowed, documents=None, k1=config.bm25_k1, b=config.bm25_b
                )
                seconds.append(time.perf_counter() - tick)
            lexical_runs.append(_percentiles(seconds))
        out["lexical"][name] = _median_runs(lexical_runs)
        out["hybrid"][name] = time_hybrid(searcher, texts, allowed, params["runs"])
        out["ids"][name] = ids.tolist()
    out.update(_rss_mb())
    return out


def _median_runs(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    return {key: float(statistics.median(run[key] for run in runs)) for key in runs[0]}


def time_dense(
    store: Any, vectors: np.ndarray, allowed: frozenset[int], runs: int
) -> tuple[dict[str, float], np.ndarray]:
    """``view().dense`` (k = DENSE_K) for each vector, ``runs`` times: the median of the runs' percentiles, and
    the first run's top RECALL_AT chunk ids a row (-1 where fewer were found)."""
    timed: list[dict[str, float]] = []
    ids = np.full((len(vectors), RECALL_AT), -1, dtype=np.int64)
    for run in range(runs):
        seconds = []
        for row, vector in enumerate(vectors):
            tick = time.perf_counter()
            hits = store.view().dense(vector, DENSE_K, collections=allowed, documents=None)
            seconds.append(time.perf_counter() - tick)
            if run == 0:
                found = [chunk_id for chunk_id, _ in hits[:RECALL_AT]]
                ids[row, : len(found)] = found
        timed.append(_percentiles(seconds))
    return _median_runs(timed), ids


def time_hybrid(searcher: Any, texts: Sequence[str], allowed: frozenset[int], runs: int) -> dict[str, float]:
    """Whole questions (``searcher.search``, ANSWER_K results), ``runs`` times: the median of the percentiles."""
    timed = []
    for _ in range(runs):
        seconds = []
        for text in texts:
            tick = time.perf_counter()
            searcher.search(text, ANSWER_K, collections=allowed)
            seconds.append(time.perf_counter() - tick)
        timed.append(_percentiles(seconds))
    return _median_runs(timed)


def add_document(
    kind: str,
    store: Any,
    number: int,
    vectors: np.ndarray,
    source: TextSource,
    rng: np.random.Generator,
    *,
    written: Callable[[], None] | None = None,
) -> float:
    """Add the 20-chunk document ``number`` in a writer block of its own (its texts analysed by the writer, as
    in the product); the seconds it took. ``written`` is called at the end of the block, before it commits."""
    from ingestion.store import PassageEmbeddings

    document_id, document_vectors = new_document(number, vectors, rng)
    texts, _ = source.document(number, with_terms=False)
    tick = time.perf_counter()
    with writing(kind, store) as writer:
        writer.add(
            new_chunk_ids(document_id),
            PassageEmbeddings(document_vectors),
            document_id=document_id,
            collection_id=2,
            texts=texts,
        )
        if written is not None:
            written()
    return time.perf_counter() - tick


def role_add(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Add ``adds`` 20-chunk documents one at a time to the full store (texts analysed by the writer)."""
    folder = Path(params["folder"])
    vectors = np.load(folder / "vectors.npy", mmap_mode="r")
    source = TextSource(EVAL, params["seed"])
    store = open_store(kind, params)
    before = len(store.view())
    rng = np.random.default_rng(params["seed"] + 1)
    seconds = [
        add_document(kind, store, params["first_document"] + i, vectors, source, rng) for i in range(params["adds"])
    ]
    _settle(kind, store)
    after = len(store.view())
    return {"seconds": seconds, "chunks_before": before, "chunks_after": after, **_rss_mb()}


def role_questions(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Ask questions one after the other until the stop file appears; each with its wall-clock start."""
    folder = Path(params["folder"])
    texts, vectors = _questions(folder)
    store = open_store(kind, params)
    searcher = make_searcher(store, texts, vectors)
    allowed = frozenset(FILTERS[MAIN_FILTER])
    for text in texts:  # warm-up: every question once, as they are asked in turn below
        searcher.search(text, ANSWER_K, collections=allowed)
    stop = Path(params["stop_file"])
    starts, seconds, sizes = [], [], []
    first_size = len(store.view())
    print("READY", flush=True)
    i = 0
    last_size_check = 0.0
    while not stop.exists():
        text = texts[i % len(texts)]
        i += 1
        now = time.time()
        tick = time.perf_counter()
        searcher.search(text, ANSWER_K, collections=allowed)
        seconds.append(time.perf_counter() - tick)
        starts.append(now)
        if now - last_size_check >= 1.0:
            last_size_check = now
            sizes.append((now, len(store.view())))
    return {
        "starts": starts,
        "seconds": seconds,
        "sizes": sizes,
        "first_size": first_size,
        "last_size": len(store.view()),
        **_rss_mb(),
    }


def role_trickle(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Add a 20-chunk document every ``interval`` seconds for ``duration`` seconds."""
    folder = Path(params["folder"])
    vectors = np.load(folder / "vectors.npy", mmap_mode="r")
    source = TextSource(EVAL, params["seed"])
    store = open_store(kind, params)
    rng = np.random.default_rng(params["seed"] + 2)
    interval = params["interval"]
    started_wall = time.time()
    started = time.perf_counter()
    seconds = []
    number = params["first_document"]
    while time.perf_counter() - started < params["duration"]:
        due = started + len(seconds) * interval
        if (wait := due - time.perf_counter()) > 0:
            time.sleep(wait)
        seconds.append(add_document(kind, store, number, vectors, source, rng))
        number += 1
    ended = time.time()
    _settle(kind, store)
    return {"started": started_wall, "ended": ended, "seconds": seconds, "documents": len(seconds)}


def _settle(kind: str, store: Any) -> None:
    """Let the writer's background merge finish before the process ends (not timed)."""
    if kind == "faiss":
        store.wait_for_background()
    else:
        store.wait_for_merge()


def role_cold(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """A fresh process: open the store and answer one hybrid question (``launched``: the parent's clock)."""
    main_at = time.time()
    folder = Path(params["folder"])
    texts, vectors = _questions(folder)
    store = open_store(kind, params)
    opened_at = time.time()
    searcher = make_searcher(store, texts, vectors)
    allowed = frozenset(FILTERS[MAIN_FILTER])
    hits = searcher.search(texts[0], ANSWER_K, collections=allowed)
    first_at = time.time()
    tick = time.perf_counter()
    searcher.search(texts[1], ANSWER_K, collections=allowed)
    second_s = time.perf_counter() - tick
    launched = params["launched"]
    return {
        "first_answer_s": first_at - launched,
        "interpreter_imports_s": main_at - launched,
        "open_s": opened_at - main_at,
        "first_search_s": first_at - opened_at,
        "second_search_s": second_s,
        "hits": len(hits),
        **_rss_mb(),
    }


def role_migrate(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    import django
    from django.core.management import call_command

    django.setup()
    started = time.perf_counter()
    call_command("migrate", verbosity=0, interactive=False)
    return {"migrate_s": time.perf_counter() - started}


ROLES = {
    "load": role_load,
    "search": role_search,
    "add": role_add,
    "questions": role_questions,
    "trickle": role_trickle,
    "cold": role_cold,
    "migrate": role_migrate,
}


# ---------------------------------------------------------------------------------------------------------
# The parent: processes, PostgreSQL, the tables


class Children:
    """Starts the child processes of one store and size (their environment, their parameters)."""

    def __init__(self, kind: str, params: dict[str, Any], env: dict[str, str]) -> None:
        self.kind = kind
        self.params = params
        self.env = env

    def command(self, role: str, extra: dict[str, Any]) -> list[str]:
        params = json.dumps({**self.params, **extra})
        return [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            role,
            "--store",
            self.kind,
            "--params",
            params,
        ]

    def run(self, role: str, **extra: Any) -> dict[str, Any]:
        if role == "cold":
            extra["launched"] = time.time()
        process = subprocess.run(self.command(role, extra), env=self.env, stdout=subprocess.PIPE, text=True)
        return _result(process.stdout, process.returncode, f"{self.kind} {role}")

    def start(self, role: str, **extra: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(self.command(role, extra), env=self.env, stdout=subprocess.PIPE, text=True)


def _result(stdout: str, returncode: int, what: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        if line.startswith("RESULT "):
            if returncode:
                break
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    raise RuntimeError(f"{what} failed (exit status {returncode}); its output:\n{stdout[-4000:]}")


class Postgres:
    """A pgvector server started with the PyPI ``pgserver`` package in ``directory``, tuned by PG_SETTINGS."""

    def __init__(self, directory: Path) -> None:
        import pgserver
        from pgserver.utils import PostmasterInfo

        directory.mkdir(parents=True, exist_ok=True)
        self.pgdata = directory / "pgdata"
        server = pgserver.get_server(self.pgdata, cleanup_mode=None)
        settings = "".join(f"ALTER SYSTEM SET {name} = '{value}';\n" for name, value in PG_SETTINGS.items())
        server.psql(settings)
        self.user = server.system_user  # pgserver runs the server as its own user when we are root
        pgserver.pg_ctl(["-w", "-m", "fast", "restart"], pgdata=self.pgdata, user=self.user, timeout=120)
        info = PostmasterInfo.read_from_pgdata(self.pgdata)
        assert info is not None and info.socket_dir is not None
        self.socket_dir = str(info.socket_dir)
        self.version = self.psql("SELECT version()").strip().splitlines()[0]

    def psql(self, sql: str, database: str = "postgres") -> str:
        import pgserver

        return str(
            pgserver.psql(["-h", self.socket_dir, "-U", "postgres", "-d", database, "-X", "-A", "-t", "-c", sql])
        )

    def url(self, database: str) -> str:
        return f"postgres://postgres@/{database}?host={self.socket_dir}"

    def create(self, database: str) -> None:
        self.psql(f"DROP DATABASE IF EXISTS {database}")
        self.psql(f"CREATE DATABASE {database}")

    def drop(self, database: str) -> None:
        self.psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")

    def stop(self) -> None:
        import pgserver

        pgserver.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=self.user, timeout=120)


def _recall(exact: np.ndarray, found: np.ndarray) -> float:
    shares = [len(set(t.tolist()) & set(f.tolist())) / len(t) for t, f in zip(exact, found, strict=True)]
    return float(np.mean(shares))


def under_writes(children: Children, args: argparse.Namespace, workdir: Path, first_document: int) -> dict[str, Any]:
    """Questions in one process, idle and then while another process adds a document every interval."""
    stop = workdir / f"stop-{children.kind}"
    stop.unlink(missing_ok=True)
    reader = children.start("questions", stop_file=str(stop))
    assert reader.stdout is not None
    for line in reader.stdout:
        if line.strip() == "READY":
            break
    else:
        reader.wait()
        raise RuntimeError(f"{children.kind} questions: the reader stopped before it was ready")
    idle_from = time.time()
    time.sleep(args.load_seconds)
    idle_to = time.time()
    trickle = children.run(
        "trickle", interval=args.write_interval, duration=args.load_seconds, first_document=first_document
    )
    time.sleep(1.0)  # the reader's last questions see the last document
    stop.touch()
    stdout = reader.stdout.read()
    reader.wait()
    read = _result(stdout, reader.returncode, f"{children.kind} questions")
    starts = np.asarray(read["starts"])
    seconds = np.asarray(read["seconds"])
    idle = seconds[(starts >= idle_from) & (starts < idle_to)]
    busy = seconds[(starts >= trickle["started"]) & (starts < trickle["ended"])]
    idle_p, busy_p = _percentiles(idle.tolist()), _percentiles(busy.tolist())
    return {
        "idle": idle_p,
        "writing": busy_p,
        "p99_ratio": busy_p["p99_ms"] / idle_p["p99_ms"],
        "max_idle_ms": float(idle.max() * 1000) if len(idle) else float("nan"),
        "max_writing_ms": float(busy.max() * 1000) if len(busy) else float("nan"),
        "documents_added": trickle["documents"],
        "add_median_s": float(statistics.median(trickle["seconds"])),
        "add_max_s": float(max(trickle["seconds"])),
        "chunks_seen": read["last_size"] - read["first_size"],
        "reader_rss_mb": read["rss_mb"],
    }


def bench_store(
    kind: str, size: int, args: argparse.Namespace, folder: Path, postgres: Postgres | None, documents: int
) -> dict[str, Any]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    params: dict[str, Any] = {
        "folder": str(folder),
        "seed": args.seed,
        "runs": args.runs,
        "approx_threshold": args.faiss_approx_threshold,
        "faiss_dir": str(folder / "faiss"),
        "pg_build_memory": args.pg_build_memory,
    }
    database = PG_DATABASE.format(size=size)
    if kind == "postgres":
        assert postgres is not None
        postgres.create(database)
        env.update(
            DJANGO_SETTINGS_MODULE="portal.settings",
            DATABASE_URL=postgres.url(database),
            RAG_SEARCH_BACKEND="postgres",
            DJANGO_SECRET_KEY="bench-stores-not-secret",
            DJANGO_LOG_LEVEL="WARNING",
            VAR_DIR=str(folder / "var"),
        )
    children = Children(kind, params, env)
    out: dict[str, Any] = {}
    try:
        if kind == "postgres":
            out["migrate_s"] = children.run("migrate")["migrate_s"]
        print(f"  {kind}: loading {size:,} chunks...", flush=True)
        out["load"] = children.run("load")
        load = out["load"]
        print(
            f"  {kind}: loaded in {load['load_s']:.1f} s (adds {load['adds_s']:.1f} s, end of the block "
            f"{load['finish_s']:.1f} s" + (f", merge {load['merge_s']:.1f} s" if "merge_s" in load else "") + ")",
            flush=True,
        )
        colds = [children.run("cold") for _ in range(args.runs)]
        out["cold"] = {key: float(statistics.median(c[key] for c in colds)) for key in colds[0] if key != "code"}
        out["cold"]["runs_s"] = [c["first_answer_s"] for c in colds]
        out["cold"]["code"] = colds[-1]["code"]
        print(f"  {kind}: first answer after {out['cold']['first_answer_s']:.2f} s; searching...", flush=True)
        search = children.run("search")
        exact = np.load(folder / "exact.npz")
        search["recall@10"] = {
            name: _recall(exact[name.replace(" ", "_")], np.asarray(search["ids"][name])) for name in FILTERS
        }
        del search["ids"]
        out["search"] = search
        print(f"  {kind}: adding single documents...", flush=True)
        added = children.run("add", adds=args.adds, first_document=documents + 10)
        out["add"] = {
            "median_s": float(statistics.median(added["seconds"])),
            "max_s": float(max(added["seconds"])),
            "seconds": added["seconds"],
            "chunks_added": added["chunks_after"] - added["chunks_before"],
        }
        print(f"  {kind}: questions while documents are added...", flush=True)
        out["under_writes"] = under_writes(children, args, folder, documents + 10 + args.adds + 10)
    finally:
        if kind == "postgres" and postgres is not None and not args.keep:
            postgres.drop(database)
    return out


# ---------------------------------------------------------------------------------------------------------
# Report


def _fmt(value: Any, spec: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return format(value, spec)


def table(result: dict[str, Any], stores: Sequence[str]) -> str:
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, get: Any) -> None:
        cells = []
        for kind in stores:
            try:
                cells.append(get(result[kind]))
            except (KeyError, TypeError):
                cells.append("-")
        rows.append((label, cells))

    row("bulk load s (writer(reset=True))", lambda r: _fmt(r["load"]["load_s"]))
    row("  adds s", lambda r: _fmt(r["load"]["adds_s"]))
    row("  end of the block s (pg: HNSW build)", lambda r: _fmt(r["load"]["finish_s"]))
    row("  background merge s (faiss)", lambda r: _fmt(r["load"].get("merge_s")))
    row("  VACUUM ANALYZE s (pg)", lambda r: _fmt(r["load"].get("vacuum_analyze_s")))
    row("  on disk MB", lambda r: _fmt(r["load"]["disk_mb"], ".0f"))
    row("  loading process peak RSS MB", lambda r: _fmt(r["load"]["peak_rss_mb"], ".0f"))
    for name in FILTERS:
        row(f"dense p50/p95 ms, {name}", lambda r, n=name: _pair(r["search"]["dense"][n]))
    for name in FILTERS:
        row(f"lexical p50/p95 ms, {name}", lambda r, n=name: _pair(r["search"]["lexical"][n]))
    for name in FILTERS:
        row(f"hybrid p50/p95 ms, {name}", lambda r, n=name: _pair(r["search"]["hybrid"][n]))
    for name in FILTERS:
        row(f"recall@10 (dense), {name}", lambda r, n=name: _fmt(r["search"]["recall@10"][n], ".3f"))
    row("reader RSS MB after questions", lambda r: _fmt(r["search"]["rss_mb"], ".0f"))
    row(
        "  of which anonymous / mapped files",
        lambda r: f"{r['search']['anon_rss_mb']:.0f} / {r['search']['file_rss_mb']:.0f}",
    )
    row("add one 20-chunk doc s, median/max", lambda r: f"{r['add']['median_s']:.3f} / {r['add']['max_s']:.3f}")
    row(
        "question p99 ms idle / writing (x)",
        lambda r: (
            f"{r['under_writes']['idle']['p99_ms']:.1f} / {r['under_writes']['writing']['p99_ms']:.1f} "
            f"({r['under_writes']['p99_ratio']:.2f}x)"
        ),
    )
    row(
        "  docs added / chunks seen by reader",
        lambda r: f"{r['under_writes']['documents_added']} / {r['under_writes']['chunks_seen']}",
    )
    row(
        "  add during questions s, median/max",
        lambda r: f"{r['under_writes']['add_median_s']:.3f} / {r['under_writes']['add_max_s']:.3f}",
    )
    row("cold start: first answer s", lambda r: _fmt(r["cold"]["first_answer_s"], ".2f"))
    row(
        "  python+imports / open / 1st search s",
        lambda r: (
            f"{r['cold']['interpreter_imports_s']:.2f} / {r['cold']['open_s']:.2f} / {r['cold']['first_search_s']:.2f}"
        ),
    )
    width = max(len(label) for label, _ in rows) + 2
    cell = max([22, *(len(c) + 2 for _, cells in rows for c in cells)])
    lines = [f"{result['size']:,} chunks ({result['documents']:,} documents)"]
    lines.append(" " * width + "".join(f"{kind:>{cell}}" for kind in stores))
    lines.extend(f"{label:<{width}}" + "".join(f"{c:>{cell}}" for c in cells) for label, cells in rows)
    return "\n".join(lines)


def _pair(latency: dict[str, float]) -> str:
    return f"{latency['p50_ms']:.2f} / {latency['p95_ms']:.2f}"


def _code_versions() -> dict[str, str]:
    """A short hash of each store's source, to tell which version of the code gave the figures."""
    import hashlib

    def digest(path: Path) -> str:
        sources = sorted(path.rglob("*.py")) if path.is_dir() else [path]  # a package: its modules in order
        return hashlib.sha1(b"".join(source.read_bytes() for source in sources)).hexdigest()[:10]

    files = (
        "ingestion/index",
        "knowledge/search/postgres.py",
        "knowledge/search/pg_common.py",
        "knowledge/search/pg_view.py",
        "knowledge/search/pg_writer.py",
        "knowledge/search/schema.py",
        "ingestion/search.py",
    )
    return {name: digest(REPO / name) for name in files if (REPO / name).exists()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--stores", nargs="+", choices=STORES, default=list(STORES))
    parser.add_argument("--queries", type=int, default=100, help="questions per filter and run")
    parser.add_argument("--runs", type=int, default=3, help="latency runs and cold starts (median reported)")
    parser.add_argument("--adds", type=int, default=7, help="single documents added to time one addition")
    parser.add_argument("--load-seconds", type=float, default=10.0, help="each phase of the questions under writes")
    parser.add_argument("--write-interval", type=float, default=0.5, help="seconds between two added documents")
    parser.add_argument(
        "--pg-build-memory",
        default=None,
        help="maintenance_work_mem of the postgres store's HNSW build (default: the store's own, PostgresStore's)",
    )
    parser.add_argument("--faiss-approx-threshold", type=int, default=APPROX_THRESHOLD)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="where the stores and the server live")
    parser.add_argument("--keep", action="store_true", help="keep the stores and the server's data")
    parser.add_argument("--child", choices=sorted(ROLES), help=argparse.SUPPRESS)
    parser.add_argument("--store", choices=STORES, help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        code = _code_versions()  # the store's code this process runs (another session may be editing it)
        result = ROLES[args.child](args.store, json.loads(args.params))
        print("RESULT " + json.dumps({**result, "code": code}), flush=True)
        return

    check = TextSource(EVAL, args.seed)
    same, total = check.verify(range(20))
    if same != total:
        raise SystemExit(f"the fast lexical analysis differs from passage_terms on {total - same}/{total} chunks")
    del check
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="kp-bench-stores-", dir=args.workdir))
    postgres = Postgres(workdir / "pg") if "postgres" in args.stores else None
    print(
        f"Search stores {', '.join(args.stores)} at {', '.join(f'{s:,}' for s in args.sizes)} chunks: "
        f"{args.queries} questions x {args.runs} runs, filters {', '.join(FILTERS)}; "
        f"faiss approx threshold {args.faiss_approx_threshold:,}"
        + (f"; {postgres.version}, {PG_SETTINGS}" if postgres else "")
        + f"; workdir {workdir}",
        flush=True,
    )
    results = []
    try:
        for size in args.sizes:
            folder = workdir / str(size)
            print(f"\n{size:,} chunks: preparing the corpus...", flush=True)
            prepared = prepare(size, args, folder)
            result: dict[str, Any] = {"size": size, **prepared}
            for kind in args.stores:
                try:
                    result[kind] = bench_store(kind, size, args, folder, postgres, prepared["documents"])
                except Exception as exc:  # the other store's figures are still worth printing
                    print(f"  {kind}: FAILED: {exc}", flush=True)
                    result[kind] = {"error": str(exc)[-2000:]}
                # each store's figures as soon as they are known (a long run may be stopped later)
                print(f"  {kind}: " + json.dumps(rounded(result[kind])), flush=True)
            results.append(result)
            print(table(result, args.stores), flush=True)
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        if postgres is not None and not args.keep:
            postgres.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    for result in results:
        print(table(result, args.stores))
    summary = {
        "params": {
            "sizes": args.sizes,
            "stores": args.stores,
            "queries": args.queries,
            "runs": args.runs,
            "adds": args.adds,
            "load_seconds": args.load_seconds,
            "write_interval": args.write_interval,
            "pg_build_memory": args.pg_build_memory,
            "faiss_approx_threshold": args.faiss_approx_threshold,
            "pg_settings": PG_SETTINGS if postgres else None,
            "code": _code_versions(),
        },
        "results": results,
    }
    print(json.dumps(rounded(summary)))


if __name__ == "__main__":
    main()
