"""Answers under load: latency, throughput and generation speed of ``POST /api/v1/rag/`` on a real server.

    .venv/bin/python bench/load_answers.py [--users 4] [--time 60] [--gen-users 2] [--gen-time 120]
                                           [--max-tokens 32] [--speed-requests 5]

The script starts the portal itself in a temporary VAR_DIR (SQLite, local index): ``manage.py migrate``,
``manage.py ingest --sync`` of a few files of ../shared/corpus (read in place), ``manage.py apikey create``,
then gunicorn as ``scripts/run.sh`` starts it (1 worker, 8 threads; no Celery worker: every request here
is answered in the web process), with the rate limit and the token quota out of the way. Then:

1. start and cold start: seconds until /healthz and until /readyz (the warm-up, ``RAG_WARMUP``, loads the
   embedder, the index and the model first), then, as a load balancer would, the first extractive and the
   first generative answer against the next ones (goal: within 2x), and the RSS of the web worker and of the
   machine's model process (``RAG_LLM_PROCESS=shared``, stopped at the end) along the run: a process that
   loaded the models or the index per request would show slow answers and a growing RSS throughout;
2. generation speed: ``--speed-requests`` generative questions one at a time (streamed, temperature 0):
   completion tokens / ``meta.response_time`` and the decoding rate from the first token to the last, against the
   raw model loaded in this process (``llm.handler`` with the server's configuration and
   ``process="own"``, the same prompts rebuilt from the returned sources, the server idle meanwhile);
3. two locust scenarios (headless, ``bench/locustfile_answers.py``), each user asking again as soon as it
   is answered: retrieval-heavy extractive answers, then generative answers of ``--max-tokens`` tokens.
   For each: requests, errors, requests/s, p50/p95/p99 latency; for generation also the completion
   tokens/s of the whole server over the scenario against the raw model's.

Every process started is stopped at the end, on an error and on Ctrl-C. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
CORPUS = REPO.parent / "shared" / "corpus"
DEFAULT_FILES = [
    "txt_utf8_norwich_city.txt",
    "txt_utf8_french_moliere.txt",
    "md_unstructured_readme.md",
    "md_codeblock.md",
    "html_cp1252.html",
]
LOCUSTFILE = REPO / "bench" / "locustfile_answers.py"
#: questions about DEFAULT_FILES (the locust users ask them too)
QUESTIONS = [
    "Where was Iwan Roberts born?",
    "Which clubs did Iwan Roberts play for before Norwich City?",
    "How many goals did Iwan Roberts score for Norwich City?",
    "What position did Iwan Roberts play?",
    "Quand Molière est-il né et quand est-il mort ?",
    "Que répondit Boileau à Louis XIV sur le plus grand écrivain de son règne ?",
    "How do I install the unstructured library?",
    "Which document types can unstructured partition?",
    "Show an example of an XML note.",
    "What did the woman have with her coffee, and how much did she pay?",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_env(var_dir: Path, extra: list[str]) -> dict[str, str]:
    """The portal's environment: a private VAR_DIR, no limits in the way, models offline, then ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "RAG_", "CELERY_", "INDEX_", "OTEL_"))
        and key not in {"DATABASE_URL", "MEDIA_ROOT", "CACHE_URL", "PROMETHEUS_MULTIPROC_DIR", "API_RATE_LIMIT"}
    }
    env.update(
        VAR_DIR=str(var_dir),
        DJANGO_SETTINGS_MODULE="portal.settings",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(40),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        API_RATE_LIMIT="1000000/m",
        TOKEN_QUOTA_PER_DAY="0",
        RAG_OCR="false",
        LOG_FORMAT="json",
        # a model process of this run's own, never one another portal of the machine left running
        RAG_LLM_SERVER=f"http://127.0.0.1:{_free_port()}",
    )
    for item in extra:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--server-env takes NAME=VALUE, not {item!r}")
        env[name] = value
    return env


def _manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([PYTHON, "manage.py", *args], cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"manage.py {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


class Processes:
    """Children started in their own session, so that Ctrl-C reaches this script and it stops them."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, command: list[str], *, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            process = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.started):
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        deadline = time.monotonic() + 30
        for process in reversed(self.started):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.started.clear()


@contextmanager
def _interruptible() -> Iterator[None]:
    """SIGTERM ends the script like Ctrl-C does: through the ``finally`` blocks that stop the children."""

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def post(url: str, body: dict[str, Any], key: str, timeout: float = 300) -> tuple[int, dict[str, Any], float]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Token {key}"},
        method="POST",
    )
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read()), time.perf_counter() - started
    except urllib.error.HTTPError as exc:
        return exc.code, {"error": exc.read().decode(errors="replace")[:300]}, time.perf_counter() - started


def _wait_ready(base: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 300) -> dict[str, float]:
    """Wait as a load balancer does: until /readyz says ready (the warm-up is done). Seconds to /healthz and
    to /readyz from now."""
    started = time.monotonic()
    deadline = started + timeout
    seconds: dict[str, float] = {}
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"gunicorn exited ({process.returncode}):\n{log.read_text(errors='replace')[-3000:]}")
        for probe in ("healthz", "readyz"):
            if probe in seconds or (probe == "readyz" and "healthz" not in seconds):
                continue
            try:
                with urllib.request.urlopen(f"{base}/{probe}", timeout=5) as response:
                    if response.status == 200:
                        seconds[probe] = time.monotonic() - started
            except OSError:
                pass
        if "readyz" in seconds:
            return seconds
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:]
    raise SystemExit(f"the server was not ready (/readyz) in {timeout:.0f} s:\n{tail}")


def worker_rss_mb(master: subprocess.Popen[bytes]) -> float:
    """Resident memory of gunicorn's worker processes (the ones holding the engines), in MiB."""
    import psutil

    try:
        children = psutil.Process(master.pid).children()
        return float(sum(child.memory_info().rss for child in children)) / 2**20
    except psutil.Error:
        return float("nan")


def _model_pid(var_dir: Path) -> int:
    """The pid of the model process the portal started in ``var_dir`` (OSError or ValueError when there is none)."""
    return int((var_dir / "llm-server" / "llm-server.pid").read_text().strip())


def _model_processes(var_dir: Path) -> list[Any]:
    """The model process's gunicorn master and worker ([] when there is none)."""
    import psutil

    try:
        master = psutil.Process(_model_pid(var_dir))
        return [master, *master.children()]
    except (OSError, ValueError, psutil.Error):
        return []


def model_process_rss_mb(var_dir: Path) -> float:
    """Resident memory of the machine's model process (RAG_LLM_PROCESS=shared: its gunicorn master and worker),
    0 when there is none."""
    import psutil

    try:
        return float(sum(p.memory_info().rss for p in _model_processes(var_dir))) / 2**20
    except psutil.Error:
        return 0.0


def cpu_seconds(master: subprocess.Popen[bytes], var_dir: Path) -> dict[str, float]:
    """CPU seconds (user + system) used so far by gunicorn's workers and by the machine's model process."""
    import psutil

    def used(processes: list[psutil.Process]) -> float:
        total = 0.0
        for process in processes:
            with suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    out = {"web": float("nan"), "model": used(_model_processes(var_dir))}
    with suppress(psutil.Error):
        out["web"] = used(psutil.Process(master.pid).children())
    return out


def stop_model_process(var_dir: Path) -> None:
    """Stop the model process the portal started for this run (it outlives the web process by design)."""
    with suppress(OSError, ValueError):
        os.killpg(_model_pid(var_dir), signal.SIGTERM)


def _seconds(meta: dict[str, Any]) -> float:
    return float(str(meta["response_time"]).rstrip("s"))


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    ordered = sorted(values)

    def at(share: float) -> float:  # nearest rank
        return ordered[min(len(ordered), max(1, math.ceil(share * len(ordered)))) - 1]

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99)}


def cold_start(base: str, key: str, master: subprocess.Popen[bytes], warm: int) -> dict[str, Any]:
    """First answers after the server said ready against the next ones, and the worker's RSS meanwhile."""
    out: dict[str, Any] = {"rss_mb": {"ready": worker_rss_mb(master)}}
    for mode, extra in (("extractive", {}), ("generative", {"max_tokens": 16, "temperature": 0})):
        times = []
        for number in range(warm + 1):
            body = {"prompt": QUESTIONS[number % len(QUESTIONS)], "mode": mode, "top_k": 5, **extra}
            status, payload, seconds = post(f"{base}/api/v1/rag/", body, key)
            if status != 200:
                raise SystemExit(f"{mode} request failed: {status} {payload}")
            times.append(seconds)
            if number == 0:
                out["rss_mb"][f"after first {mode}"] = worker_rss_mb(master)
        out[mode] = {"first_s": times[0], "next_median_s": statistics.median(times[1:])}
        out[mode]["first_over_next"] = out[mode]["first_s"] / out[mode]["next_median_s"]
    out["rss_mb"]["after the first answers"] = worker_rss_mb(master)
    return out


def post_stream(url: str, body: dict[str, Any], key: str, timeout: float = 600) -> dict[str, Any]:
    """POST with ``"stream": true``: seconds to the first and the last token event and to the end, and the final
    body."""
    request = urllib.request.Request(
        url,
        data=json.dumps({**body, "stream": True}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Token {key}"},
        method="POST",
    )
    started = time.perf_counter()
    first: float | None = None
    last: float | None = None
    event, done = "", None
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            for raw in response:
                line = raw.decode("utf-8").rstrip("\n")
                if line.startswith("event: "):
                    event = line[len("event: ") :]
                    if event == "token":
                        last = time.perf_counter() - started
                        first = last if first is None else first
                elif line.startswith("data: ") and event == "done":
                    done = json.loads(line[len("data: ") :])
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"streamed request failed: {exc.code} {exc.read()[:300]!r}") from exc
    total = time.perf_counter() - started
    if done is None:
        raise SystemExit("the stream ended without its done event")
    first = total if first is None else first
    return {"first_token_s": first, "last_token_s": total if last is None else last, "total_s": total, "body": done}


def _decode_rate(completion_tokens: int, first_token_s: float, last_token_s: float) -> float:
    """Tokens/s from the first token to the last: the decoding speed, without the prompt's processing nor what
    follows the last token."""
    if completion_tokens <= 1 or last_token_s <= first_token_s:
        return float("nan")
    return (completion_tokens - 1) / (last_token_s - first_token_s)


def generation_speed(
    base: str, key: str, env: dict[str, str], requests: int, max_tokens: int, cpu: Callable[[], dict[str, float]]
) -> dict[str, Any]:
    """Generation speed through the API (one streamed request at a time) and of the raw model, same prompts.

    Two measures of each: completion tokens / whole time (the API's ``meta.response_time``: retrieval,
    prompt processing and decoding), and the decoding rate from the first token to the last. Each API answer is
    followed by the raw model's on the same prompt, so that both see the same machine load.
    """
    raw_generate = raw_model(env, max_tokens)
    api: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    for number in range(requests):
        question = QUESTIONS[number % len(QUESTIONS)]
        body = {"prompt": question, "mode": "generative", "top_k": 5, "max_tokens": max_tokens, "temperature": 0}
        before = cpu()
        streamed = post_stream(f"{base}/api/v1/rag/", body, key)
        after = cpu()
        meta = streamed["body"]["meta"]
        api.append(
            {
                "prompt_tokens": meta["prompt_tokens"],
                "completion_tokens": meta["completion_tokens"],
                "seconds": _seconds(meta),
                "first_token_s": streamed["first_token_s"],
                "decode_tokens_per_s": _decode_rate(
                    meta["completion_tokens"], streamed["first_token_s"], streamed["last_token_s"]
                ),
                "after_last_token_s": streamed["total_s"] - streamed["last_token_s"],
                # the cores each process kept busy during the answer
                "web_cores": (after["web"] - before["web"]) / streamed["total_s"],
                "model_cores": (after["model"] - before["model"]) / streamed["total_s"],
            }
        )
        raw.append(raw_generate(question, streamed["body"]["sources"]))
    out: dict[str, Any] = {"requests": requests}
    for name, records in (("api", api), ("raw", raw)):
        out[name] = {
            "tokens_per_s": statistics.median(r["completion_tokens"] / r["seconds"] for r in records),
            "decode_tokens_per_s": statistics.median(r["decode_tokens_per_s"] for r in records),
            "seconds": statistics.median(r["seconds"] for r in records),
            "first_token_s": statistics.median(r["first_token_s"] for r in records),
            "prompt_tokens": statistics.median(r["prompt_tokens"] for r in records),
            "completion_tokens": statistics.median(r["completion_tokens"] for r in records),
            "after_last_token_s": statistics.median(r["after_last_token_s"] for r in records),
        }
    for name in ("web_cores", "model_cores"):
        out["api"][name] = statistics.median(r[name] for r in api)
    out["ratio"] = out["api"]["tokens_per_s"] / out["raw"]["tokens_per_s"]
    out["decode_ratio"] = out["api"]["decode_tokens_per_s"] / out["raw"]["decode_tokens_per_s"]
    return out


def raw_model(env: dict[str, str], max_tokens: int) -> Callable[[str, list[dict[str, Any]]], dict[str, Any]]:
    """The model alone, in this process: ``llm.handler`` built from the server's settings.

    Returns a function generating the answer to a question from the sources the API returned (the
    prompt is rebuilt as the server builds it) and timing it like ``generation_speed`` times the API.
    """
    os.environ.update(env)
    import django

    django.setup()
    from django.conf import settings

    from ingestion.excerpt import excerpt
    from ingestion.highlight import without_citation_markers
    from knowledge.services import engines
    from llm.handler import get_handler
    from llm.prompts import PromptSource, build_rag_messages
    from llm.tokens import prompt_budget
    from llm.types import Generation

    # the model loaded here, in this process, whether the server uses its own copy or the shared model process
    handler = get_handler(dataclasses.replace(engines.llm_config(), process="own"))
    handler.load()
    handler.generate("Hello", max_tokens=4, temperature=0)  # warm-up, as the server's was

    count = handler.count_tokens

    # a source as answering._rag_messages shows it to the model
    def shown(question: str, text: str) -> str:
        part = excerpt(question, text, budget_tokens=settings.RAG_PROMPT_SOURCE_TOKENS, count_tokens=count)
        return without_citation_markers(part)

    def generate(question: str, sources: list[dict[str, Any]]) -> dict[str, Any]:
        messages, _ = build_rag_messages(
            question,
            [
                PromptSource(number=i + 1, title=s["title"], page=s["page"], text=shown(question, s["text"]))
                for i, s in enumerate(sources)
            ],
            count_tokens=handler.count_tokens,
            budget_tokens=prompt_budget(handler.context_window, max_tokens),
        )
        started = time.perf_counter()
        first: float | None = None
        last: float | None = None
        generation: Generation | None = None
        for item in handler.stream(messages, temperature=0, max_tokens=max_tokens):
            if isinstance(item, Generation):
                generation = item
            elif item:
                last = time.perf_counter() - started
                first = last if first is None else first
        total = time.perf_counter() - started
        assert generation is not None
        first = total if first is None else first
        last = total if last is None else last
        return {
            "seconds": total,
            "first_token_s": first,
            "decode_tokens_per_s": _decode_rate(generation.completion_tokens, first, last),
            "after_last_token_s": total - last,
            "prompt_tokens": generation.prompt_tokens,
            "completion_tokens": generation.completion_tokens,
        }

    return generate


def scenario(
    name: str,
    *,
    base: str,
    key: str,
    mode: str,
    users: int,
    seconds: int,
    max_tokens: int,
    workdir: Path,
    processes: Processes,
) -> dict[str, Any]:
    """One headless locust run; its figures come from every request's own record."""
    records_file = workdir / f"{name}.json"
    env = {
        **os.environ,
        "KP_API_KEY": key,
        "KP_BENCH_MODE": mode,
        "KP_BENCH_MAX_TOKENS": str(max_tokens),
        "KP_BENCH_OUT": str(records_file),
    }
    command = [
        str(Path(PYTHON).with_name("locust")),
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        base,
        "--users",
        str(users),
        "--spawn-rate",
        str(users),
        "--run-time",
        f"{seconds}s",
        "--stop-timeout",
        "300",  # let the answers in flight finish: they would otherwise keep the server busy afterwards
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    log = workdir / f"locust-{name}.log"
    process = processes.start(command, env=env, log=log)
    process.wait()
    if not records_file.exists():
        raise SystemExit(f"locust wrote no results ({process.returncode}):\n{log.read_text(errors='replace')[-3000:]}")
    records = json.loads(records_file.read_text(encoding="utf-8"))
    ok = [r for r in records if r["status"] == 200]
    errors = [r for r in records if r["status"] != 200]
    span = max(r["start"] + r["seconds"] for r in records) - min(r["start"] for r in records) if records else 0.0
    latency = {f"{k}_ms": v * 1000 for k, v in percentiles([r["seconds"] for r in ok]).items()}
    out: dict[str, Any] = {
        "mode": mode,
        "users": users,
        "seconds": span,
        "requests": len(records),
        "errors": len(errors),
        "error_samples": sorted({r["error"] for r in errors})[:3],
        "requests_per_s": len(records) / span if span else 0.0,
        **latency,
        "server_response_time_p50_ms": percentiles([_seconds(r["meta"]) for r in ok])["p50"] * 1000,
    }
    if mode == "generative" and ok:
        tokens = sum(r["meta"]["completion_tokens"] for r in ok)
        out["completion_tokens"] = tokens
        out["completion_tokens_per_s"] = tokens / span
        out["per_request_tokens_per_s_p50"] = statistics.median(
            r["meta"]["completion_tokens"] / _seconds(r["meta"]) for r in ok
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=4, help="users of the extractive (retrieval) scenario")
    parser.add_argument("--time", type=int, default=60, help="seconds of the extractive scenario")
    parser.add_argument("--gen-users", type=int, default=2, help="users of the generative scenario")
    parser.add_argument("--gen-time", type=int, default=120, help="seconds of the generative scenario")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of generative answers")
    parser.add_argument("--speed-requests", type=int, default=5, help="sequential requests of the speed check")
    parser.add_argument("--warm", type=int, default=3, help="answers after the first one in the cold-start check")
    parser.add_argument(
        "--scenarios", nargs="+", choices=["retrieval", "generation"], default=["retrieval", "generation"]
    )
    parser.add_argument("--files", nargs="+", default=DEFAULT_FILES, help=f"files of {CORPUS} to ingest")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers (scripts/run.sh: 1)")
    parser.add_argument("--threads", type=int, default=8, help="gunicorn threads per worker (scripts/run.sh: 8)")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the server (and the raw model here), e.g. RAG_EMBED_THREADS=1; repeatable",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary VAR_DIR and the logs")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))

    processes = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="kp-bench-load-"))
    results: dict[str, Any] = {
        "params": {k: v for k, v in vars(args).items() if k != "keep"},
        "cores": os.cpu_count(),
        "load_average_start": os.getloadavg(),
    }
    try:
        with _interruptible():
            env = server_env(workdir / "var", args.server_env)
            print(f"Portal in {workdir}: migrate, ingest {len(args.files)} files, API key...", flush=True)
            _manage(env, "migrate", "--noinput")
            lines = _manage(env, "ingest", "--sync", "--json", *[str(CORPUS / name) for name in args.files])
            ingested = [json.loads(line) for line in lines.splitlines() if line.startswith("{")]
            chunks = sum(item.get("chunks") or 0 for item in ingested if item["status"] == "ready")
            if not chunks:
                raise SystemExit(f"nothing was ingested: {ingested}")
            results["corpus"] = {"files": len(ingested), "chunks": chunks}
            key = _manage(env, "apikey", "create", "--user", "load-test", "--name", "bench").strip().splitlines()[-1]

            port = _free_port()
            base = f"http://127.0.0.1:{port}"
            gunicorn = [
                str(Path(PYTHON).with_name("gunicorn")),
                "portal.wsgi:application",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                str(args.workers),
                "--threads",
                str(args.threads),
                "--timeout",
                "300",
            ]
            server_log = workdir / "gunicorn.log"
            master = processes.start(gunicorn, env=env, log=server_log)
            results["ready_s"] = _wait_ready(base, master, server_log)
            print(
                f"gunicorn on {base} ({args.workers} worker x {args.threads} threads), {chunks} chunks from "
                f"{len(ingested)} files; cold start...",
                flush=True,
            )
            results["cold_start"] = cold_start(base, key, master, args.warm)
            print("generation speed: API, then the raw model in this process...", flush=True)
            results["generation_speed"] = generation_speed(
                base, key, env, args.speed_requests, args.max_tokens, lambda: cpu_seconds(master, workdir / "var")
            )
            results["rss_mb"] = dict(results["cold_start"].pop("rss_mb"))
            results["rss_mb"]["after speed check"] = worker_rss_mb(master)
            results["model_process_rss_mb"] = {"after speed check": model_process_rss_mb(workdir / "var")}
            for name in args.scenarios:
                mode, users, seconds = (
                    ("extractive", args.users, args.time)
                    if name == "retrieval"
                    else ("generative", args.gen_users, args.gen_time)
                )
                print(f"scenario {name}: {users} users, {seconds} s...", flush=True)
                results[name] = scenario(
                    name,
                    base=base,
                    key=key,
                    mode=mode,
                    users=users,
                    seconds=seconds,
                    max_tokens=args.max_tokens,
                    workdir=workdir,
                    processes=processes,
                )
                results["rss_mb"][f"after {name}"] = worker_rss_mb(master)
                results["model_process_rss_mb"][f"after {name}"] = model_process_rss_mb(workdir / "var")
            if master.poll() is not None:
                raise SystemExit(f"gunicorn died during the run:\n{server_log.read_text(errors='replace')[-3000:]}")
            results["load_average_end"] = os.getloadavg()
    except KeyboardInterrupt:
        print("\nInterrupted: stopping the server and locust...", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        processes.stop_all()
        stop_model_process(workdir / "var")
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    report(results, args)


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    cold = results["cold_start"]
    print()
    print(
        f"Answers under load: {results['corpus']['chunks']} chunks from {results['corpus']['files']} files, "
        f"gunicorn {args.workers} worker x {args.threads} threads, {results['cores']} cores "
        f"(load average {results['load_average_start'][0]:.1f} at the start)"
        + (f"; server settings {' '.join(args.server_env)}" if args.server_env else "")
    )
    ready = results["ready_s"]
    print(
        f"  start: /healthz after {ready['healthz']:.1f} s, /readyz (warm-up done) after {ready['readyz']:.1f} s; "
        "the answers below come after /readyz, as a load balancer sends them"
    )
    for mode in ("extractive", "generative"):
        print(
            f"  first answer after a restart, {mode}: {cold[mode]['first_s']:.2f} s, "
            f"the next {args.warm} median {cold[mode]['next_median_s']:.2f} s   "
            f"ratio {cold[mode]['first_over_next']:.2f}"
        )
    print("  web worker RSS (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in results["rss_mb"].items()))
    model_rss = results.get("model_process_rss_mb") or {}
    if any(model_rss.values()):
        print("  model process RSS (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in model_rss.items()))
    else:
        print("  model process: none found (RAG_LLM_PROCESS=own: the model is in the web worker)")
    speed = results["generation_speed"]
    api, raw = speed["api"], speed["raw"]
    print(
        f"  generation speed ({speed['requests']} streamed requests one at a time, max_tokens {args.max_tokens}, "
        f"temperature 0; prompt {api['prompt_tokens']:.0f} tokens via the API, {raw['prompt_tokens']:.0f} raw; "
        f"{api['completion_tokens']:.0f} completion tokens):"
    )
    print(
        f"    completion tokens / whole time: API {api['tokens_per_s']:.2f}/s (meta.response_time "
        f"{api['seconds']:.2f} s)   raw llm.handler {raw['tokens_per_s']:.2f}/s ({raw['seconds']:.2f} s)   "
        f"ratio {speed['ratio']:.2f}"
    )
    print(
        f"    decoding, first token to last: API {api['decode_tokens_per_s']:.1f}/s (first token at "
        f"{api['first_token_s']:.2f} s)   raw {raw['decode_tokens_per_s']:.1f}/s (first token at "
        f"{raw['first_token_s']:.2f} s)   ratio {speed['decode_ratio']:.2f}"
    )
    print(
        f"    after the last token (citations, usage, the done event): API {api['after_last_token_s']:.2f} s   "
        f"raw {raw['after_last_token_s']:.2f} s"
    )
    print(
        f"    cores kept busy during an API answer: web worker {api['web_cores']:.2f}, model process "
        f"{api['model_cores']:.2f}"
    )
    header = (
        f"  {'scenario':<11} {'users':>5} {'seconds':>7} {'requests':>8} {'errors':>6} {'req/s':>6} "
        f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"
    )
    print(header)
    for name in args.scenarios:
        row = results[name]
        print(
            f"  {name:<11} {row['users']:>5} {row['seconds']:>7.0f} {row['requests']:>8} {row['errors']:>6} "
            f"{row['requests_per_s']:>6.2f} {row['p50_ms']:>8.0f} {row['p95_ms']:>8.0f} {row['p99_ms']:>8.0f}"
        )
        for sample in row["error_samples"]:
            print(f"    error: {sample}")
    if "generation" in results and "completion_tokens_per_s" in results["generation"]:
        row = results["generation"]
        print(
            f"  generation under load: {row['completion_tokens_per_s']:.1f} completion tokens/s for the server "
            f"({row['completion_tokens_per_s'] / raw['tokens_per_s']:.2f} of the raw model), "
            f"{row['per_request_tokens_per_s_p50']:.1f} per request (p50, waiting for the model included)"
        )
    print(json.dumps(results, default=str))


if __name__ == "__main__":
    main()
