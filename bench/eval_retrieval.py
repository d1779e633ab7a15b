"""Retrieval quality on the dev sets: runs ``manage.py evaluate`` on each and prints one Markdown table.

    .venv/bin/python bench/eval_retrieval.py                       # scifact-dev and piaf-dev, current defaults
    .venv/bin/python bench/eval_retrieval.py --sets piaf-dev -- --search fusion=rrf --limit-queries 500

Arguments after ``--`` go to every ``manage.py evaluate`` call. Each run ingests the corpus into a
throw-away collection through the real pipeline (vectors come from the embedding cache after the first
run), so the numbers are the product's. Retrieval is deterministic: one run per set is enough.
The results are also written as JSON to ``bench/results/retrieval-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "eval"
COLUMNS = ["ndcg@10", "recall@10", "recall@100", "mrr@10", "answer_contains", "queries"]


def run_evaluate(data: Path, extra: list[str], quiet: bool) -> tuple[dict[str, float], float]:
    """Run ``manage.py evaluate --data DATA`` and return its JSON line and its wall time in seconds."""
    command = [sys.executable, str(REPO / "manage.py"), "evaluate", "--data", str(data), *extra]
    if quiet:
        command.append("--quiet")
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with status {done.returncode}")
    lines = done.stdout.strip().splitlines()
    if not quiet:
        print("\n".join(lines[:-1]), file=sys.stderr)
    return json.loads(lines[-1]), seconds


def markdown_table(rows: list[tuple[str, dict[str, float], float]]) -> str:
    """The results as a Markdown table, one line per data set."""
    header = "| set | " + " | ".join(COLUMNS) + " | seconds |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 2)]
    for name, metrics, seconds in rows:
        cells = [
            f"{metrics[c]:.3f}" if isinstance(metrics.get(c), float) else str(metrics.get(c, "—")) for c in COLUMNS
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="folder holding the BEIR sets")
    parser.add_argument("--sets", nargs="+", default=["scifact-dev", "piaf-dev"], help="sets to evaluate")
    parser.add_argument("--verbose", action="store_true", help="show the progress bars and messages of each run")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then arguments for manage.py evaluate")
    args = parser.parse_args()
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra

    rows = []
    for name in args.sets:
        metrics, seconds = run_evaluate(args.root / name, extra, quiet=not args.verbose)
        rows.append((name, metrics, seconds))
        print(f"{name}: {json.dumps(metrics)} in {seconds:.0f} s", file=sys.stderr)
    print(markdown_table(rows))

    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "evaluate_args": extra,
        "environment": {k: v for k, v in os.environ.items() if k.startswith("RAG_")},
        "results": {name: {**metrics, "seconds": round(seconds, 1)} for name, metrics, seconds in rows},
    }
    (results / f"retrieval-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
