"""Measure retrieval on a BEIR folder: ``manage.py evaluate --data DIR [--k 10]``.

The last line of the output is one JSON object: ``ndcg@10``, ``recall@10``, ``recall@100``,
``mrr@10``, ``queries``; when ``DIR/answers.jsonl`` exists, ``answer_contains`` and the answers' median
length in words (``answer_words_median``), with ``answer_contains_first`` (the first quoted sentence
alone holds a gold answer) for extractive answers and ``answer_repeated_4gram`` (the share of answers
repeating four words) for generated ones, with their median prompt tokens (``prompt_tokens_median``),
seconds to the first streamed piece (``first_token_seconds_median``) and in all (``answer_seconds_median``);
``highlight_contains`` and ``highlight_words_median`` for the quote each answer's first source carries;
with ``--leave-out``, ``abstain_unanswerable`` and ``abstain_answerable``.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from knowledge.services.evaluation import EvaluationError, evaluation_run


def _search_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["fusion=convex", "rrf_k=20"]`` as typed SearchConfig fields."""
    from ingestion.search import SearchConfig

    fields = {f.name: f for f in dataclasses.fields(SearchConfig) if f.name != "languages"}
    overrides: dict[str, Any] = {}
    for pair in pairs:
        name, _, raw = pair.partition("=")
        name = name.strip().replace("-", "_")
        if name not in fields or not raw.strip():
            raise CommandError(f"--search {pair!r}: expected FIELD=VALUE with FIELD among {', '.join(fields)}")
        kind = type(fields[name].default)
        try:
            overrides[name] = kind(raw.strip())
        except ValueError as exc:
            raise CommandError(f"--search {pair!r}: {raw!r} is not a valid {kind.__name__}") from exc
    return overrides


@contextmanager
def _terminate_cleanly() -> Iterator[None]:
    """Turn SIGTERM into SystemExit while running, so the throw-away collection is still removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        sys.stderr.write("evaluate: terminated, cleaning up\n")
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Command(BaseCommand):
    help = (
        "Ingest DIR/corpus.jsonl into a throw-away collection through the real pipeline, run DIR/queries.jsonl "
        "through the real retriever and score them against DIR/qrels.tsv (BEIR layout). The last line printed is "
        "one JSON object with the metrics."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--data", required=True, metavar="DIR", help="folder with corpus.jsonl, queries.jsonl, qrels.tsv"
        )
        parser.add_argument("--k", type=int, default=10, help="cut-off of nDCG, recall and MRR (default 10)")
        parser.add_argument("--limit-queries", type=int, default=None, metavar="N", help="only the first N queries")
        parser.add_argument(
            "--collection-slug",
            default="",
            metavar="SLUG",
            help="slug of the throw-away collection (default: eval-<random>)",
        )
        parser.add_argument("--keep", action="store_true", help="keep the collection afterwards, for inspection")
        parser.add_argument(
            "--reuse",
            action="store_true",
            help="measure the collection --collection-slug kept by an earlier --keep run of the same folder, "
            "without ingesting (to compare --search settings quickly)",
        )
        parser.add_argument(
            "--embed-cache",
            default=None,
            metavar="DIR",
            help='embedding cache folder (default: RAG_EMBED_CACHE_DIR, else VAR_DIR/embed-cache; "" = none)',
        )
        parser.add_argument(
            "--search",
            action="append",
            default=[],
            metavar="FIELD=VALUE",
            help="override a field of the searcher's SearchConfig for this run, e.g. fusion=convex (repeatable)",
        )
        parser.add_argument(
            "--answer-mode",
            choices=("extractive", "generative"),
            default="extractive",
            help="how the questions of DIR/answers.jsonl are answered for answer_contains (default extractive)",
        )
        parser.add_argument(
            "--limit-answers",
            type=int,
            default=None,
            metavar="N",
            help="answer only the first N questions of answers.jsonl (generation takes seconds per question)",
        )
        parser.add_argument(
            "--leave-out",
            type=float,
            default=0.0,
            metavar="SHARE",
            help="leave this share of the corpus's articles out of the collection (e.g. 0.2) and report how often "
            'the questions about them get "not found" (abstain_unanswerable) and the others do (abstain_answerable)',
        )
        parser.add_argument("--seed", type=int, default=0, help="seed of the --leave-out choice (default 0)")
        parser.add_argument("--quiet", action="store_true", help="no progress bars and no messages, only the JSON line")

    def handle(self, *args: Any, **options: Any) -> None:
        data = Path(options["data"])
        if not data.is_dir():
            raise CommandError(f"No such folder: {data}")
        quiet: bool = options["quiet"]
        if options["reuse"] and not options["collection_slug"]:
            raise CommandError("--reuse needs --collection-slug (the collection kept by an earlier --keep run)")
        search = _search_overrides(options["search"])
        started = time.perf_counter()
        try:
            with _terminate_cleanly():
                result = evaluation_run(
                    data_dir=data,
                    k=options["k"],
                    limit_queries=options["limit_queries"],
                    collection_slug=options["collection_slug"],
                    keep=options["keep"],
                    reuse=options["reuse"],
                    embed_cache_dir=options["embed_cache"],
                    progress=not quiet,
                    log=None if quiet else self.stdout.write,
                    search=search,
                    answer_mode=options["answer_mode"],
                    answer_limit=options["limit_answers"],
                    leave_out=options["leave_out"],
                    seed=options["seed"],
                )
        except EvaluationError as exc:
            raise CommandError(str(exc)) from exc
        if not quiet:
            self.stdout.write(f"{data}: {time.perf_counter() - started:.1f} s")
        self.stdout.write(json.dumps(result))
