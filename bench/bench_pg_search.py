"""The postgres search store's searches at scale, on a database filled once with COPY and searched many times.

    .venv/bin/python bench/bench_pg_search.py fill --size 100000 [--workdir /tmp/kp-pgsearch] [--build-memory 3GB]
    .venv/bin/python bench/bench_pg_search.py search --size 100000 [--queries 100] [--runs 1] \\
        [--ef-search 1000 400] [--depth 1000 300] [--adds 5] [--reference]

``fill`` writes ``bench_stores``'s corpus of ``--size`` chunks (the same vectors, texts, lexical analysis,
collections and questions, for the same ``--seed``) into a database of its own on a pgvector server started
with ``pgserver`` in ``--workdir`` (``bench_stores``'s server settings), and keeps both. It does not go through
the store's writer, which takes 46 minutes for a million chunks: it COPYs ``search_chunk`` (the triggers off,
each chunk's ``impact_average`` the running average the writer would have used), the vocabulary and the
language totals, fills ``search_posting`` with one ``INSERT ... SELECT`` (the impacts by the schema's own
``search_impact``) before creating its index, COPYs the vectors (binary), builds the HNSW index with the store's
``hnsw_m`` and ``hnsw_ef_construction``, then ``VACUUM ANALYZE``. What it leaves is what the writer would have
left (the same rows, statistics and indexes).

``search`` (a fresh process, Django set up from ``DATABASE_URL`` as a web process does) times the store's own
view code with ``bench_stores``'s three collection filters: ``view.dense`` (k 100) and its recall@10 against
exact search, for each ``--ef-search`` (0: the store's own rule); the lexical side alone (``query_tokens``
then ``view.lexical``, k 100) for each ``--depth`` (``PostgresStore.lexical_depth``) and ``--rescore``
(``candidate_rescore``), with the overlap of its top 10 with exact BM25 (``--reference``: the same code
reading every posting); a whole hybrid question with the store's defaults; and ``--adds`` 20-chunk documents
added through the writer (texts analysed by the writer), median. The last line is
one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import struct
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _path in (str(REPO), str(BENCH)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from bench_index import CHUNKS_PER_DOCUMENT  # noqa: E402
from bench_stores import (  # noqa: E402
    ANSWER_K,
    EVAL,
    FILTERS,
    RECALL_AT,
    Children,
    Postgres,
    TextSource,
    _identity,
    _median_runs,
    _percentiles,
    _recall,
    add_document,
    chunk_rows,
    make_searcher,
    prepare,
    time_dense,
    time_hybrid,
    under_writes,
)

DATABASE = "kp_pgsearch_{size}"


def _setup_django(postgres: Postgres, size: int) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="portal.settings",
        DATABASE_URL=postgres.url(DATABASE.format(size=size)),
        RAG_SEARCH_BACKEND="postgres",
        DJANGO_SECRET_KEY="bench-pg-search-not-secret",
        DJANGO_LOG_LEVEL="WARNING",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    import django

    django.setup()


def _copy_binary(cursor: Any, table: str, columns: str, rows: Any) -> None:
    """COPY ``rows`` (each a tuple of already encoded binary fields) into ``table``."""
    with cursor.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.write(b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0))
        buffer = bytearray()
        for fields in rows:
            buffer += struct.pack(">h", len(fields))
            for field in fields:
                buffer += struct.pack(">i", len(field)) + field
            if len(buffer) > 1 << 22:
                copy.write(bytes(buffer))
                buffer.clear()
        buffer += struct.pack(">h", -1)
        copy.write(bytes(buffer))


def _int8(value: int) -> bytes:
    return struct.pack(">q", value)


def fill(args: argparse.Namespace) -> dict[str, Any]:
    folder = args.workdir / str(args.size)
    postgres = Postgres(args.workdir / "pg")
    database = DATABASE.format(size=args.size)
    postgres.create(database)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    prepared = prepare(args.size, args, folder)
    timings["prepare_s"] = time.perf_counter() - started
    _setup_django(postgres, args.size)
    from django.core.management import call_command
    from django.db import connection, transaction

    from knowledge.search import schema
    from knowledge.search.postgres import PostgresStore

    call_command("migrate", verbosity=0, interactive=False)
    store = PostgresStore(_identity())
    vectors = np.load(folder / "vectors.npy", mmap_mode="r")
    collections = np.load(folder / "collections.npy")
    source = TextSource(EVAL, args.seed)
    posting_index = re.search(r"CREATE UNIQUE INDEX IF NOT EXISTS search_posting_impact[^;]*;", schema.TABLES_SQL)
    assert posting_index is not None
    with transaction.atomic(), store._cursor() as cursor:
        space = store._create_space(cursor, "current", hnsw=False)
        cursor.execute("ALTER TABLE search_chunk DISABLE TRIGGER USER")
        cursor.execute("DROP INDEX search_posting_impact")
        tick = time.perf_counter()
        vocabulary: dict[str, int] = {}
        df: Counter[int] = Counter()
        languages: dict[str, list[int]] = {}
        chunks = total = 0

        def chunk_rows_of_corpus() -> Any:
            nonlocal chunks, total
            for number in range(prepared["documents"]):
                texts, terms = source.document(number)
                rows = chunk_rows(number, args.size)
                assert terms is not None
                lengths = [t.length for t in terms[: len(rows)]]
                # the writer's running average (PostgresWriter._impact_average)
                average = max((total / chunks) if chunks else sum(lengths) / len(lengths), 1.0)
                average = float(np.float32(average))
                chunks, total = chunks + len(lengths), total + sum(lengths)
                for row, text, analysis in zip(rows, texts, terms, strict=False):
                    ids = [vocabulary.setdefault(term, len(vocabulary) + 1) for term in analysis.counts]
                    df.update(ids)
                    counts = languages.setdefault(analysis.language, [0, 0])
                    counts[0] += 1
                    counts[1] += analysis.length
                    yield (
                        _int8(row + 1),
                        _int8(number + 1),
                        _int8(int(collections[number])),
                        text.encode(),
                        analysis.language.encode(),
                        struct.pack(">i", analysis.length),
                        struct.pack(">f", average),
                        _int_array(ids),
                        _int_array(list(analysis.counts.values())),
                    )

        _copy_binary(
            cursor,
            "search_chunk",
            "chunk_id, document_id, collection_id, text, language, length, impact_average, term_ids, tfs",
            chunk_rows_of_corpus(),
        )
        timings["copy_chunks_s"] = time.perf_counter() - tick
        tick = time.perf_counter()
        cursor.execute("ALTER TABLE search_term ALTER COLUMN id SET GENERATED BY DEFAULT")
        with cursor.copy("COPY search_term (id, term, df) FROM STDIN") as copy:
            for term, term_id in vocabulary.items():
                copy.write_row((term_id, term, df[term_id]))
        cursor.execute("ALTER TABLE search_term ALTER COLUMN id SET GENERATED ALWAYS")
        cursor.execute("SELECT setval(pg_get_serial_sequence('search_term', 'id'), %s)", (len(vocabulary),))
        for language, (count, length) in languages.items():
            cursor.execute("INSERT INTO search_language VALUES (%s, %s, %s)", (language, count, length))
        cursor.execute(
            "INSERT INTO search_posting (chunk_id, collection_id, term_id, impact, tf, length) "
            "SELECT c.chunk_id, c.collection_id, u.id, search_impact(u.tf, c.length, c.impact_average), u.tf, "
            "c.length FROM search_chunk c, unnest(c.term_ids, c.tfs) AS u(id, tf)"
        )
        timings["postings_s"] = time.perf_counter() - tick
        tick = time.perf_counter()
        cursor.execute("SELECT set_config('maintenance_work_mem', %s, true)", (args.build_memory,))
        cursor.execute(posting_index.group(0))
        timings["posting_index_s"] = time.perf_counter() - tick
        cursor.execute("ALTER TABLE search_chunk ENABLE TRIGGER USER")
        tick = time.perf_counter()

        def vector_rows() -> Any:
            header = struct.pack(">HH", vectors.shape[1], 0)
            for number in range(prepared["documents"]):
                rows = chunk_rows(number, args.size)
                block = np.asarray(vectors[rows.start : rows.stop], dtype=">f4")
                for row, vector in zip(rows, block, strict=True):
                    yield _int8(row + 1), _int8(number + 1), _int8(int(collections[number])), header + vector.tobytes()

        _copy_binary(cursor, space.table, "chunk_id, document_id, collection_id, embedding", vector_rows())
        timings["copy_vectors_s"] = time.perf_counter() - tick
        tick = time.perf_counter()
        cursor.execute(schema.hnsw_index_sql(space.id, m=store.hnsw_m, ef_construction=store.hnsw_ef_construction))
        timings["hnsw_s"] = time.perf_counter() - tick
    tick = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
        cursor.execute("SELECT pg_database_size(current_database())")
        disk_mb = cursor.fetchone()[0] / 2**20
    timings["vacuum_analyze_s"] = time.perf_counter() - tick
    timings["total_s"] = time.perf_counter() - started
    return {"size": args.size, "documents": prepared["documents"], "disk_mb": disk_mb, **timings}


def _int_array(values: list[int]) -> bytes:
    # int4[] binary: ndim 1, no nulls, element oid 23, then (length, lower bound 1), then (4, value) each
    return struct.pack(f">iiiii{2 * len(values)}i", 1, 0, 23, len(values), 1, *(x for v in values for x in (4, v)))


def search(args: argparse.Namespace) -> dict[str, Any]:
    folder = args.workdir / str(args.size)
    postgres = Postgres(args.workdir / "pg")
    _setup_django(postgres, args.size)
    from ingestion.search import SearchConfig
    from knowledge.search.postgres import PostgresStore

    texts: list[str] = json.loads((folder / "questions.json").read_text(encoding="utf-8"))[: args.queries]
    vectors = np.load(folder / "queries.npy")[: args.queries]
    exact = np.load(folder / "exact.npz")
    config = SearchConfig()
    store = PostgresStore(_identity())
    searcher = make_searcher(store, texts, vectors)
    for text in texts[:20]:  # warm-up: page in what the first searches touch
        searcher.search(text, ANSWER_K, collections=FILTERS["collection 25%"])
    out: dict[str, Any] = {"size": args.size, "chunks": len(store.view()), "dense": {}, "lexical": {}, "hybrid": {}}
    analyzer = searcher.analyzer
    languages = store.view().languages()
    questions = [analyzer.query_tokens(text, languages) for text in texts]
    for name, allowed in FILTERS.items():
        collections = frozenset(allowed)
        for ef_search in args.ef_search:
            probe = PostgresStore(_identity(), ef_search=ef_search or None)
            timed, ids = time_dense(probe, vectors, collections, args.runs)
            recall = _recall(exact[name.replace(" ", "_")][: len(vectors)], ids)
            out["dense"][f"{name}, ef_search {ef_search}"] = {**timed, "recall@10": recall}
            print(
                f"dense {name} ef_search {ef_search}: {_pair(out['dense'][f'{name}, ef_search {ef_search}'])}, "
                f"recall@10 {recall:.3f}",
                flush=True,
            )
        reference = None
        if args.reference:
            exact_store = PostgresStore(_identity(), lexical_depth=2**31 - 1)
            reference = [
                [
                    c
                    for c, _ in exact_store.view().lexical(
                        terms, RECALL_AT, collections=collections, documents=None, k1=config.bm25_k1, b=config.bm25_b
                    )
                ]
                for terms in questions
            ]
        for depth, rescore in [(d, r) for d in args.depth for r in args.rescore]:
            probe = PostgresStore(_identity(), lexical_depth=depth, candidate_rescore=rescore)
            runs = []
            overlaps = []
            for run in range(args.runs):
                seconds = []
                for row, text in enumerate(texts):
                    tick = time.perf_counter()
                    view = probe.view()
                    terms = analyzer.query_tokens(text, view.languages())
                    hits = view.lexical(
                        terms,
                        config.bm25_k,
                        collections=collections,
                        documents=None,
                        k1=config.bm25_k1,
                        b=config.bm25_b,
                    )
                    seconds.append(time.perf_counter() - tick)
                    if run == 0 and reference is not None and reference[row]:
                        top = {c for c, _ in hits[:RECALL_AT]}
                        overlaps.append(len(top & set(reference[row])) / len(reference[row]))
                runs.append(_percentiles(seconds))
            key = f"{name}, depth {depth}, rescore {rescore}"
            out["lexical"][key] = {**_median_runs(runs), "overlap@10": float(np.mean(overlaps)) if overlaps else None}
            print(
                f"lexical {key}: {_pair(out['lexical'][key])}, overlap@10 with exact BM25 "
                f"{out['lexical'][key]['overlap@10']}",
                flush=True,
            )
        out["hybrid"][name] = time_hybrid(searcher, texts, collections, args.runs)
        print(f"hybrid {name} (store defaults): {_pair(out['hybrid'][name])}", flush=True)
    if args.adds:
        source = TextSource(EVAL, args.seed)
        corpus_vectors = np.load(folder / "vectors.npy", mmap_mode="r")
        rng = np.random.default_rng(int(time.time()))

        seconds = []
        parts: list[Counter[str]] = []
        first = out["chunks"] // CHUNKS_PER_DOCUMENT + 1000 + int(rng.integers(0, 10**6))
        ends: list[float] = []  # when each add's block ended (before its commit)
        for i in range(args.adds):
            spent: Counter[str] = Counter()
            store.cursor_class = _timed_cursor(spent)
            seconds.append(
                add_document(
                    "postgres",
                    store,
                    first + i,
                    corpus_vectors,
                    source,
                    rng,
                    written=lambda: ends.append(time.perf_counter()),
                )
            )
            spent["commit (statistics, WAL flush)"] += time.perf_counter() - ends[-1]
            parts.append(spent)
        breakdown = {key: float(statistics.median(p[key] for p in parts)) for key in parts[0]}
        out["add"] = {"median_s": float(statistics.median(seconds)), "seconds": seconds, "median_parts_s": breakdown}
        print(f"add one 20-chunk document: median {out['add']['median_s']:.3f} s ({seconds})", flush=True)
        for key, value in sorted(breakdown.items(), key=lambda item: -item[1]):
            print(f"    {value * 1000:8.1f} ms  {key}", flush=True)
        tick = time.perf_counter()
        moved = store.merge()
        out["merge"] = {"postings": moved, "seconds": time.perf_counter() - tick}
        print(f"merge of the recent postings: {moved} in {out['merge']['seconds']:.2f} s", flush=True)
    if args.cold or args.load_seconds:
        children = Children("postgres", {"folder": str(folder), "seed": args.seed, "runs": 1}, dict(os.environ))
        if args.cold:
            colds = [children.run("cold") for _ in range(args.cold)]
            out["cold"] = {key: float(statistics.median(c[key] for c in colds)) for key in colds[0] if key != "code"}
            out["cold"]["runs_s"] = [c["first_answer_s"] for c in colds]
            print(
                f"cold start: first answer after {out['cold']['first_answer_s']:.2f} s (median; runs "
                f"{', '.join(f'{s:.2f}' for s in out['cold']['runs_s'])}), reader RSS {out['cold']['rss_mb']:.0f} MB",
                flush=True,
            )
        if args.load_seconds:
            first = out["chunks"] // CHUNKS_PER_DOCUMENT + 2_000_000 + int(time.time()) % 1_000_000
            out["under_writes"] = under_writes(children, args, args.workdir, first)
            written = out["under_writes"]
            print(
                f"question p99 idle {written['idle']['p99_ms']:.1f} ms, while adding a document every "
                f"{args.write_interval} s {written['writing']['p99_ms']:.1f} ms ({written['p99_ratio']:.2f}x); "
                f"{written['documents_added']} documents added (median {written['add_median_s']:.2f} s), "
                f"{written['chunks_seen']} new chunks seen; reader RSS {written['reader_rss_mb']:.0f} MB",
                flush=True,
            )
    return out


def _timed_cursor(spent: Counter[str]) -> Any:
    """A psycopg cursor class adding each statement's time under its first words (which table it writes)."""
    import psycopg

    class TimedCursor(psycopg.Cursor):
        def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
            words = re.sub(r"\s+", " ", str(query).strip()).split(" ")
            key = " ".join(words[:3] if words[0] in ("INSERT", "DELETE") else words[:2])
            tick = time.perf_counter()
            try:
                return super().execute(query, params, **kwargs)
            finally:
                spent[key] += time.perf_counter() - tick

    return TimedCursor


def _pair(latency: dict[str, float]) -> str:
    return f"p50 {latency['p50_ms']:.1f} / p95 {latency['p95_ms']:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("fill", "search"))
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/kp-pgsearch"))
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--build-memory", default="3GB", help="maintenance_work_mem of the index builds (fill)")
    parser.add_argument(
        "--ef-search", type=int, nargs="+", default=[0], help="PostgresStore.ef_search (0: None, the store's rule)"
    )
    parser.add_argument("--depth", type=int, nargs="+", default=[2000])
    parser.add_argument("--rescore", type=int, nargs="+", default=[500], help="PostgresStore.candidate_rescore")
    parser.add_argument("--adds", type=int, default=0)
    parser.add_argument("--cold", type=int, default=0, help="cold starts of a fresh process (first answer), median")
    parser.add_argument("--load-seconds", type=float, default=0, help="questions idle, then as long under writes")
    parser.add_argument("--write-interval", type=float, default=0.5, help="seconds between two added documents")
    parser.add_argument("--reference", action="store_true", help="the overlap of lexical top 10s with exact BM25")
    args = parser.parse_args()
    result = fill(args) if args.action == "fill" else search(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
