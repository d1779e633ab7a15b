"""Retrieval evaluation on a BEIR-style folder, through the product's own ingestion and retrieval.

The corpus is ingested into a throw-away collection by the real pipeline (Markdown documents, chunked
with the embedder's tokenizer, embedded, written to the Chunk table and the FAISS index), the queries
are run through the real hybrid searcher restricted to that collection, a document ranks by its best
chunk, and the ranking is scored against the qrels. When the folder has answers, each question is
also answered by the product in the extractive mode and checked for the gold answer. The collection,
its documents, chunks, vectors and files are removed at the end, whatever happens.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings

from knowledge.models import Collection, Document
from knowledge.services.evaluation_answers import (
    AnswerCounts,
    abstention_measure,
    answer_contains,
    left_out_ids,
    question_kinds,
)

__all__ = [
    "BeirData",
    "EvaluationError",
    "answer_contains",
    "beir_load",
    "evaluation_run",
    "mrr_at_k",
    "ndcg_at_k",
    "recall_at_k",
]

#: chunks retrieved per query for each document wanted (a document ranks by its best chunk)
_CHUNKS_PER_DOCUMENT_MARGIN = 1.5
#: documents ranked per query: recall@100 needs 100
_RANKED_DOCUMENTS = 100


class EvaluationError(Exception):
    """The evaluation folder cannot be used; the message says why."""


@dataclass(frozen=True)
class BeirData:
    """A BEIR folder: corpus lines, queries, qrels and (optionally) answers."""

    #: (corpus id, title, text), in file order
    corpus: list[tuple[str, str, str]]
    #: query id -> text, in file order
    queries: dict[str, str]
    #: query id -> {corpus id: relevance > 0}
    qrels: dict[str, dict[str, int]]
    #: query id -> gold answers (None when the folder has no answers.jsonl)
    answers: dict[str, list[str]] | None = field(default=None)


def _jsonl(path: Path) -> Iterable[dict[str, Any]]:
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvaluationError(f"{path}, line {number}: not JSON ({exc.msg})") from exc
            if not isinstance(record, dict) or "_id" not in record:
                raise EvaluationError(f"{path}, line {number}: an object with an _id is expected")
            yield record


def beir_load(directory: Path) -> BeirData:
    """Read ``corpus.jsonl``, ``queries.jsonl``, ``qrels.tsv`` (one header line) and ``answers.jsonl`` if any."""
    directory = Path(directory)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels.tsv"):
        if not (directory / name).is_file():
            raise EvaluationError(f"{directory / name} is missing (BEIR layout expected)")
    corpus = [
        (str(r["_id"]), str(r.get("title") or ""), str(r.get("text") or "")) for r in _jsonl(directory / "corpus.jsonl")
    ]
    queries = {str(r["_id"]): str(r.get("text") or "") for r in _jsonl(directory / "queries.jsonl")}
    qrels: dict[str, dict[str, int]] = {}
    with (directory / "qrels.tsv").open(encoding="utf-8") as file:
        next(file, None)  # the header line
        for number, line in enumerate(file, start=2):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3:
                raise EvaluationError(f"{directory / 'qrels.tsv'}, line {number}: query-id, corpus-id, score expected")
            try:
                score = int(float(parts[2]))
            except ValueError as exc:
                raise EvaluationError(f"{directory / 'qrels.tsv'}, line {number}: the score is not a number") from exc
            if score > 0:
                qrels.setdefault(parts[0], {})[parts[1]] = score
    answers = None
    if (directory / "answers.jsonl").is_file():
        answers = {
            str(r["_id"]): [str(a) for a in r.get("answers") or [] if str(a).strip()]
            for r in _jsonl(directory / "answers.jsonl")
        }
    return BeirData(corpus=corpus, queries=queries, qrels=qrels, answers=answers)


# ---- metrics (binary or graded relevance, as trec_eval computes them) ---------------------------


def ndcg_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    """nDCG@k with linear gains: sum(rel / log2(rank + 1)) over the ideal ordering's."""
    dcg = sum(relevant.get(doc, 0) / math.log2(rank + 1) for rank, doc in enumerate(ranked[:k], start=1))
    ideal = sorted(relevant.values(), reverse=True)[:k]
    idcg = sum(rel / math.log2(rank + 1) for rank, rel in enumerate(ideal, start=1))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    """Share of the relevant documents found in the first ``k``."""
    if not relevant:
        return 0.0
    return len(set(ranked[:k]) & set(relevant)) / len(relevant)


def mrr_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    """1 / rank of the first relevant document within the first ``k`` (0 when none)."""
    for rank, doc in enumerate(ranked[:k], start=1):
        if doc in relevant:
            return 1.0 / rank
    return 0.0


# ---- the run -----------------------------------------------------------------------------------


@dataclass
class _Progress:
    """tqdm bars on stderr, or nothing."""

    enabled: bool

    def bar(self, total: int, description: str, unit: str) -> Any:
        if not self.enabled:
            return None
        import sys

        from tqdm import tqdm

        return tqdm(total=total, desc=description, unit=unit, file=sys.stderr, dynamic_ncols=True)


class _FirstPiece:
    """Seconds from the start of an answer's events to its first text piece (None when it had none)."""

    def __init__(self) -> None:
        self.seconds: float | None = None

    def watch(self, events: Iterator[Any]) -> Iterator[Any]:
        from knowledge.services.answering import Answer

        started = time.perf_counter()
        for event in events:
            if self.seconds is None and not isinstance(event, Answer):
                self.seconds = time.perf_counter() - started
            yield event


def _ranked_documents(
    question: str, collection_id: int, chunks_wanted: int, corpus_ids: Mapping[int, list[str]]
) -> list[str]:
    """Corpus ids ranked by their best chunk among the ``chunks_wanted`` best chunks of the collection."""
    from knowledge.services import engines

    hits = engines.get_searcher().search(question, k=chunks_wanted, collections={collection_id})
    ranked: list[str] = []
    seen: set[int] = set()
    for hit in hits:
        if hit.document_id in seen:
            continue
        seen.add(hit.document_id)
        ranked.extend(corpus_ids.get(hit.document_id, ()))
    return ranked


def _ingest(
    corpus: Sequence[tuple[str, str, str]],
    collection: Collection,
    embed_cache_dir: str,
    bars: _Progress,
    say: Callable[[str], None],
) -> dict[int, list[str]]:
    """Ingest ``corpus`` into ``collection``; the corpus ids of each document (a duplicate text shares one)."""
    from knowledge.services.bulk import TextDocument, documents_ingest_texts

    cache = embed_cache_dir or "off"
    say(f"Ingesting {len(corpus)} documents into the collection {collection.slug} (embedding cache: {cache})")
    bar = bars.bar(len(corpus), "embedding", "doc")
    outcomes = documents_ingest_texts(
        items=[TextDocument(title=title, text=text, name=f"{cid}.md") for cid, title, text in corpus],
        collection=collection,
        embed_cache_dir=embed_cache_dir,
        progress=bar.update if bar is not None else None,
    )
    if bar is not None:
        bar.close()
    corpus_ids: dict[int, list[str]] = {}
    for (cid, _, _), outcome in zip(corpus, outcomes, strict=True):
        if outcome.document_id is not None:
            corpus_ids.setdefault(outcome.document_id, []).append(cid)
    return corpus_ids


def _kept_corpus_ids(collection: Collection) -> dict[int, list[str]]:
    """The corpus id of each document of a kept evaluation collection (its file is named ``<id>.md``)."""
    rows = Document.objects.filter(collection=collection).values_list("pk", "original_name")
    return {pk: [name.removesuffix(".md")] for pk, name in rows}


def evaluation_run(
    *,
    data_dir: Path,
    k: int = 10,
    limit_queries: int | None = None,
    collection_slug: str = "",
    keep: bool = False,
    reuse: bool = False,
    embed_cache_dir: str | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    search: Mapping[str, Any] | None = None,
    answer_mode: str = "extractive",
    answer_limit: int | None = None,
    leave_out: float = 0.0,
    seed: int = 0,
) -> dict[str, float | int | str]:
    """Ingest ``data_dir``'s corpus into a throw-away collection, run its queries, return the metrics.

    Returns ``ndcg@k``, ``recall@k``, ``recall@100``, ``mrr@k`` (means over the queries that have
    qrels), ``queries`` (how many), and ``answer_contains`` when the folder has ``answers.jsonl``.
    ``embed_cache_dir``: the embedding cache (None: ``RAG_EMBED_CACHE_DIR``, else ``VAR_DIR/embed-cache``;
    "": none). ``search`` overrides fields of the searcher's ``SearchConfig`` for this run (tuning),
    for the ranking and the answers alike. ``answer_mode`` is how the questions of ``answers.jsonl``
    are answered (``extractive`` or ``generative``, the configured model, greedy), ``answer_limit`` how
    many of them (None: all; generation takes seconds per question). The collection is deleted at
    the end, even on an error or an interrupt, unless ``keep``. ``reuse`` measures a collection kept
    by an earlier run (``collection_slug``) without ingesting anything, and keeps it.

    ``leave_out`` (0 < share < 1) holds a ``seed``-ed share of the corpus's articles out of the collection
    (see :func:`~knowledge.services.evaluation_answers.left_out_ids`; a reused collection holds out what
    it lacks): retrieval and answers are measured on the questions whose documents are all in, and every
    question with qrels is asked once more to count "not found": ``abstain_unanswerable`` (the share of
    questions whose documents are all out that got it) and ``abstain_answerable`` (the share of the
    others that wrongly did).
    """
    from ingestion.search import fuse
    from knowledge.services import answering, engines
    from knowledge.services.bulk import documents_delete_many

    say = log or (lambda message: None)
    if answer_mode not in (answering.EXTRACTIVE, answering.GENERATIVE):
        raise EvaluationError(f"Unknown answer mode {answer_mode!r}: extractive or generative")
    if k < 1:
        raise EvaluationError("k must be at least 1")
    if not 0.0 <= leave_out < 1.0:
        raise EvaluationError("The share of articles left out must be at least 0 and under 1")
    data = beir_load(Path(data_dir))
    asked = [(qid, text) for qid, text in data.queries.items() if qid in data.qrels and text.strip()]
    if limit_queries is not None:
        asked = asked[: max(0, limit_queries)]
    if not asked:
        raise EvaluationError(f"No query of {data_dir} has qrels")
    if not data.corpus:
        raise EvaluationError(f"The corpus of {data_dir} is empty")
    if embed_cache_dir is None:
        embed_cache_dir = settings.RAG_EMBED_CACHE_DIR or str(Path(settings.VAR_DIR) / "embed-cache")

    searcher = engines.get_searcher()
    default_config = searcher.config
    if search:
        try:
            config = replace(default_config, **search)
            fuse([], [], config)  # an unknown fusion is refused here, before any ingestion
        except (TypeError, ValueError) as exc:
            raise EvaluationError(f"Invalid search override: {exc}") from exc
        say(f"Search configuration: {config}")

    slug = collection_slug or f"eval-{secrets.token_hex(4)}"
    existing = Collection.objects.filter(slug=slug).first()
    if reuse and existing is None:
        raise EvaluationError(f"There is no collection {slug} to reuse: run once with --keep first")
    if existing is not None and not reuse:
        raise EvaluationError(f"The collection {slug} already exists: choose another slug, or --reuse it")
    keep = keep or reuse
    collection = existing or Collection.objects.create(
        slug=slug, name=f"Evaluation {Path(data_dir).name} ({slug})", is_public=False
    )
    bars = _Progress(progress)
    try:
        if search:
            searcher.config = config
        if reuse:
            say(f"Reusing the documents of the collection {slug} (kept by an earlier run of the same folder)")
            corpus_ids = _kept_corpus_ids(collection)
            kept = {cid for cids in corpus_ids.values() for cid in cids}
            left_out = {cid for cid, _, _ in data.corpus if cid not in kept} if leave_out else set()
        else:
            left_out = left_out_ids(data.corpus, leave_out, seed)
            corpus = [line for line in data.corpus if line[0] not in left_out]
            if left_out:
                say(f"Leaving {len(left_out)} of {len(data.corpus)} documents out ({leave_out:.0%} of the articles)")
            corpus_ids = _ingest(corpus, collection, embed_cache_dir, bars, say)
        answerable, unanswerable = question_kinds(data.qrels, left_out)
        queries = [(qid, text) for qid, text in asked if qid in answerable]
        if not queries:
            raise EvaluationError("Every question's documents were left out: leave fewer out")
        ready = Document.objects.filter(collection=collection, status=Document.Status.READY)
        documents = ready.count()
        chunks = sum(ready.values_list("chunk_count", flat=True))
        failed = Document.objects.filter(collection=collection, status=Document.Status.FAILED).count()
        say(f"{documents} documents ready ({chunks} chunks, {failed} failed)")

        per_document = max(1.0, chunks / max(1, documents))
        chunks_wanted = math.ceil(max(_RANKED_DOCUMENTS, k) * per_document * _CHUNKS_PER_DOCUMENT_MARGIN)
        totals = {"ndcg": 0.0, "recall": 0.0, "recall100": 0.0, "mrr": 0.0}
        # the first search builds the BM25 side of the new index version: not a query's latency
        _ranked_documents(queries[0][1], collection.pk, k, corpus_ids)
        latencies: list[float] = []
        bar = bars.bar(len(queries), "queries", "query")
        for qid, text in queries:
            searched = time.perf_counter()
            ranked = _ranked_documents(text, collection.pk, chunks_wanted, corpus_ids)
            latencies.append(time.perf_counter() - searched)
            relevant = data.qrels[qid]
            totals["ndcg"] += ndcg_at_k(ranked, relevant, k)
            totals["recall"] += recall_at_k(ranked, relevant, k)
            totals["recall100"] += recall_at_k(ranked, relevant, _RANKED_DOCUMENTS)
            totals["mrr"] += mrr_at_k(ranked, relevant, k)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        n = len(queries)
        result: dict[str, float | int | str] = {
            f"ndcg@{k}": round(totals["ndcg"] / n, 4),
            f"recall@{k}": round(totals["recall"] / n, 4),
            f"recall@{_RANKED_DOCUMENTS}": round(totals["recall100"] / n, 4),
            f"mrr@{k}": round(totals["mrr"] / n, 4),
            "queries": n,
            # one search (query embedding, both retrievers, fusion, reranking when configured), in ms
            "search_ms_p50": round(1000 * float(np.percentile(latencies, 50)), 1),
            "search_ms_p95": round(1000 * float(np.percentile(latencies, 95)), 1),
        }

        if data.answers is not None:
            chosen = {qid for qid, _ in queries} if limit_queries is not None else answerable
            questions = [
                (data.queries[qid], golds)
                for qid, golds in data.answers.items()
                if qid in chosen and golds and data.queries.get(qid, "").strip()
            ]
            if answer_limit is not None:
                questions = questions[: max(0, answer_limit)]
            bar = bars.bar(len(questions), f"answers ({answer_mode})", "question")
            counts = AnswerCounts(mode=answer_mode)
            for question, golds in questions:
                # streamed, to time the first piece: what a reader waits for, mostly the prompt's reading
                timer = _FirstPiece()
                answer = answering.answer_of(
                    timer.watch(
                        answering.answer_question_stream(
                            question=question,
                            collection_ids=[collection.pk],
                            top_k=settings.RAG_TOP_K,
                            mode=answer_mode,
                            temperature=0.0,
                        )
                    )
                )
                counts.add(answer.output, golds, highlight=answer.sources[0].highlight if answer.sources else None)
                counts.add_cost(prompt_tokens=answer.prompt_tokens, first_piece_s=timer.seconds, seconds=answer.seconds)
                if bar is not None:
                    bar.update(1)
            if bar is not None:
                bar.close()
            result.update(counts.metrics())

        if left_out:
            pairs = [(text, qid in answerable) for qid, text in asked if qid in answerable | unanswerable]
            bar = bars.bar(len(pairs), "abstention", "question")

            def answered(question: str) -> bool:
                return answering.answer_question(
                    question=question, collection_ids=[collection.pk], top_k=settings.RAG_TOP_K, mode="extractive"
                ).answered

            abstained = abstention_measure(pairs, answered, bar.update if bar is not None else None)
            if bar is not None:
                bar.close()
            result.update(abstained.metrics())
        return result
    finally:
        searcher.config = default_config
        if keep:
            say(f"Kept the collection {slug}")
        else:
            documents_delete_many(documents=Document.objects.filter(collection=collection))
            collection.delete()
