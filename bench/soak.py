"""Soak test: a real server under a bounded mixed load; failures, latencies and memory growth.

    .venv/bin/python bench/soak.py [--users 20] [--duration 180] [--upload-share 0.05] [--rss-bound-mb 150]

Starts its own portal in a temporary VAR_DIR, the way ``make run`` does (SQLite, the embedded broker):
migrates, creates a superuser and an API key, starts gunicorn and a Celery worker, uploads a few seed
documents and waits until they are ready. Then locust (as a library) runs ``--users`` users for
``--duration`` seconds, each asking questions (``POST /api/v1/rag/``, extractive) and now and then
uploading a small generated text or Markdown file (``POST /api/v1/documents/``). The RSS of every server
process is sampled after the warm-up, in the middle and at the end of the load. Afterwards it waits for
the worker to ingest what was uploaded, stops every process it started (Ctrl-C included) and prints:
requests, failures, p50/p95/p99 per endpoint, requests/s, documents ingested vs uploaded, errors in the
server logs, and the RSS of each process with its growth.

Exit status 0 when nothing failed: no failed request, no failed document, no error in the server logs,
no server process died, and no process grew by more than ``--rss-bound-mb`` after the warm-up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import psutil

# locust patches the standard library for gevent as it is imported: before requests (and ssl) load
from locust import HttpUser, between
from locust.env import Environment

import requests  # isort: skip
from requests.adapters import HTTPAdapter  # isort: skip
from urllib3.util.retry import Retry  # isort: skip

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "bin" / "python"
GUNICORN = REPO / ".venv" / "bin" / "gunicorn"
RAG = "POST /api/v1/rag/"
UPLOAD = "POST /api/v1/documents/"
USER = "soak"
SEED_DOCUMENTS = 6

# The generated corpus: short reports about places and topics; questions ask about the same words.
PLACES = ["Bergen", "Lyon", "Porto", "Gdansk", "Tromsø", "Valence", "Aarhus", "Genoa", "Cork", "Brno", "Split", "Turku"]
TOPICS = [
    ("harbour", "ships entered the harbour and paid their dues at the customs office"),
    ("tides", "the spring tides flooded the lower quays twice during the year"),
    ("budget", "the council approved a budget for repairs of the old bridge"),
    ("library", "the public library lent more books to children than to adults"),
    ("railway", "the railway line to the coast was closed for a month for maintenance"),
    ("weather", "a late frost damaged the orchards on the northern hills"),
    ("school", "the new school opened with three classes and a small laboratory"),
    ("market", "the Saturday market moved to the square in front of the town hall"),
    ("hospital", "the hospital added a ward for the care of elderly patients"),
    ("festival", "the summer festival drew visitors from the neighbouring valleys"),
]
_RNG = random.Random()
WORDS = ["annual", "minutes", "council", "noted", "recorded", "approved", "agreed", "season", "the", "of", "and"]


# --- the generated documents and questions -------------------------------------------------------------


def _document(serial: int, rng: random.Random) -> tuple[str, bytes, str]:
    """A small unique text or Markdown report: (file name, content, content type)."""
    place = rng.choice(PLACES)
    topic, fact = rng.choice(TOPICS)
    filler = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60)))
    title = f"The {topic} report of {place}, number {serial}"
    body = (
        f"In {place}, {fact}. The {topic} committee of {place} met {rng.randint(2, 12)} times. "
        f"{filler.capitalize()}.\n\nReference {serial}-{rng.getrandbits(48):012x}."
    )
    if serial % 2:
        return f"report-{serial}.md", f"# {title}\n\n## Summary\n\n{body}\n".encode(), "text/markdown"
    return f"report-{serial}.txt", f"{title}\n\n{body}\n".encode(), "text/plain"


def _question(rng: random.Random) -> str:
    place = rng.choice(PLACES)
    topic, fact = rng.choice(TOPICS)
    words = fact.split()
    return rng.choice(
        [
            f"What does the {topic} report of {place} say?",
            f"When {' '.join(words[:4])} in {place}?",
            f"Which committee of {place} met about the {topic}?",
        ]
    )


# --- the server -------------------------------------------------------------------------------------------


@dataclass
class Server:
    """The portal's processes (gunicorn and a Celery worker) on a private VAR_DIR."""

    var_dir: Path
    web_workers: int
    web_threads: int
    database_url: str
    broker_url: str
    result_backend: str
    port: int = 0
    key: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "RAG_", "CELERY_"))}
        env.update(
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            DJANGO_SETTINGS_MODULE="portal.settings",
            DJANGO_SUPERUSER_PASSWORD="soak-password-123",
            VAR_DIR=str(self.var_dir),
            DATABASE_URL=self.database_url,
            CELERY_BROKER_URL=self.broker_url,
            CELERY_RESULT_BACKEND=self.result_backend,
            MEDIA_ROOT=str(self.var_dir / "media"),
            INDEX_DIR=str(self.var_dir / "index"),
            PROMETHEUS_MULTIPROC_DIR=str(self.var_dir / "metrics"),
            # the soak's traffic is the point: neither the rate limit nor the daily quota may refuse it
            API_RATE_LIMIT="1000000/s",
            TOKEN_QUOTA_PER_DAY="0",
            CACHE_URL="locmem://",
            LOG_FORMAT="json",
            OTEL_TRACES_EXPORTER="none",
            METRICS_WORKER_PORT="0",
        )
        return env

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [str(PYTHON), "manage.py", *args], cwd=REPO, env=self.env(), capture_output=True, text=True, check=False
        )
        if done.returncode:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def start(self) -> None:
        self.manage("migrate", "--noinput")
        self.manage("createsuperuser", "--noinput", "--username", USER, "--email", "soak@example.invalid")
        self.key = self.manage("apikey", "create", "--user", USER, "--name", "soak").strip().splitlines()[-1]
        self.port = _free_port()
        # as scripts/run.sh starts them (no beat: nothing stays queued long enough to be sent again)
        worker = "-m celery -A portal worker --queues celery,ocr --loglevel INFO --without-gossip --without-mingle"
        self._spawn("celery", [str(PYTHON), *worker.split(), "--concurrency", "1", "--hostname", "soak@%h"])
        # no control socket: its default path is shared with any other gunicorn of this user (make run)
        web = f"portal.wsgi:application --bind 127.0.0.1:{self.port} --timeout 300 --no-control-socket"
        threads = ["--workers", str(self.web_workers), "--threads", str(self.web_threads)]
        self._spawn("gunicorn", [str(GUNICORN), *web.split(), *threads])
        self._wait_until(lambda: "ready." in self.logs["celery"].read_text(errors="replace"), "the Celery worker")
        self._wait_until(self._web_answers, "gunicorn")

    def _spawn(self, name: str, command: list[str]) -> None:
        self.logs[name] = self.var_dir / f"{name}.log"
        with self.logs[name].open("wb") as log:
            # a session of its own: Ctrl-C reaches the soak, which stops the servers in order
            self.procs[name] = subprocess.Popen(
                command, cwd=REPO, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def _web_answers(self) -> bool:
        with contextlib.suppress(requests.RequestException):
            return requests.get(f"{self.url}/healthz", timeout=2).status_code == 200
        return False

    def _wait_until(self, ready: Any, what: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}):\n{self.tail(name)}")
            time.sleep(0.5)
        raise RuntimeError(f"{what} did not start within {timeout:.0f} s")

    def tail(self, name: str, lines: int = 40) -> str:
        return "\n".join(self.logs[name].read_text(errors="replace").splitlines()[-lines:])

    def processes(self) -> dict[int, str]:
        """The long-lived server processes: the two parents and their direct children (pid → role)."""
        found: dict[int, str] = {}
        roles = {"gunicorn": ("gunicorn master", "gunicorn worker"), "celery": ("celery main", "celery pool")}
        for name, proc in self.procs.items():
            parent_role, child_role = roles[name]
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(proc.pid)
                found[proc.pid] = parent_role
                for child in parent.children(recursive=False):
                    found[child.pid] = child_role
        return found

    def stop(self) -> None:
        # the parents only, all at once (the worker's warm shutdown takes a while): they stop their children
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # and whatever the group still holds (forked children)
            proc.wait()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the load ----------------------------------------------------------------------------------------------


@dataclass
class Shared:
    """What the users record while they run (greenlets: no lock needed)."""

    key: str
    uploaded: list[int] = field(default_factory=list)
    serial: int = 0


def _user_class(shared: Shared, *, upload_share: float, think: tuple[float, float]) -> type[HttpUser]:
    def ask(user: HttpUser) -> None:
        body = {"prompt": _question(_RNG), "mode": "extractive", "top_k": 5}
        with user.client.post("/api/v1/rag/", json=body, name=RAG, catch_response=True) as response:
            if response.status_code == 200:
                data = response.json()
                if not isinstance(data.get("output"), str) or "sources" not in data:
                    response.failure(f"unexpected body: {response.text[:200]}")

    def upload(user: HttpUser) -> None:
        shared.serial += 1
        name, content, kind = _document(shared.serial, random.Random(shared.serial))
        with user.client.post(
            "/api/v1/documents/", files={"file": (name, content, kind)}, name=UPLOAD, catch_response=True
        ) as response:
            if response.status_code == 201:
                shared.uploaded.append(int(response.json()["id"]))
            else:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")

    weights = {ask: max(1, round(1000 * (1 - upload_share))), upload: round(1000 * upload_share)}

    class PortalUser(HttpUser):
        wait_time = between(*think)
        tasks = {task: weight for task, weight in weights.items() if weight > 0}

        def on_start(self) -> None:
            self.client.headers["Authorization"] = f"Token {shared.key}"

    return PortalUser


def _rss(server: Server) -> dict[int, tuple[str, int]]:
    sample: dict[int, tuple[str, int]] = {}
    for pid, role in server.processes().items():
        with contextlib.suppress(psutil.Error):
            sample[pid] = (role, psutil.Process(pid).memory_info().rss)
    return sample


def _seed(server: Server, session: requests.Session) -> list[int]:
    ids = []
    rng = random.Random(0)
    for serial in range(-SEED_DOCUMENTS, 0):
        name, content, kind = _document(serial, rng)
        response = session.post(f"{server.url}/api/v1/documents/", files={"file": (name, content, kind)}, timeout=60)
        response.raise_for_status()
        ids.append(int(response.json()["id"]))
    return ids


def _statuses(server: Server, session: requests.Session, ids: list[int]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for document_id in ids:
        response = session.get(f"{server.url}/api/v1/documents/{document_id}/", timeout=30)
        status = response.json().get("status", f"HTTP {response.status_code}") if response.ok else "missing"
        counts[status] = counts.get(status, 0) + 1
    return counts


def _wait_for_documents(server: Server, session: requests.Session, ids: list[int], timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        response = session.get(f"{server.url}/api/v1/status/", timeout=30)
        documents = response.json().get("documents", {}) if response.ok else {}
        busy = documents.get("queued", 0) + documents.get("processing", 0)
        if (response.ok and not busy) or time.monotonic() > deadline:
            return _statuses(server, session, ids)
        time.sleep(1)


def _session(key: str) -> requests.Session:
    """The soak's own requests (seeding, draining), outside the figures: idempotent ones are retried.

    gunicorn closes a keep-alive connection idle for 2 s; a request sent on it at that very moment
    fails with "Remote end closed connection" (a client race, not a server error).
    """
    session = requests.Session()
    session.headers["Authorization"] = f"Token {key}"
    retries = Retry(total=3, connect=3, read=3, status=0, backoff_factor=0.2, allowed_methods={"GET"})
    session.mount("http://", HTTPAdapter(max_retries=retries))
    return session


_LOG_ERROR = re.compile(r'"level": "(ERROR|CRITICAL)"|Traceback|database is locked|\[CRITICAL\]|\[ERROR\]')


def _log_errors(server: Server) -> list[str]:
    found = []
    for name, path in server.logs.items():
        for line in path.read_text(errors="replace").splitlines():
            if _LOG_ERROR.search(line):
                found.append(f"{name}: {line[:300]}")
    return found


# --- the report ---------------------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value:.0f}"


def _report(
    env: Environment,
    elapsed: float,
    samples: dict[str, dict[int, tuple[str, int]]],
    documents: dict[str, int],
    uploaded: int,
    log_errors: list[str],
    bound_mb: int,
) -> tuple[list[str], dict[str, Any]]:
    problems: list[str] = []
    total = env.stats.total
    print(
        f"\nLoad: {elapsed:.0f} s, {total.num_requests} requests, {total.num_failures} failures, "
        f"{total.num_requests / elapsed:.1f} requests/s"
    )
    print(f"{'endpoint':28} {'requests':>9} {'failures':>9} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    endpoints = {}
    for entry in sorted(env.stats.entries.values(), key=lambda e: e.name):
        row = {
            "requests": entry.num_requests,
            "failures": entry.num_failures,
            "rps": entry.num_requests / elapsed,
            "p50_ms": entry.get_response_time_percentile(0.5),
            "p95_ms": entry.get_response_time_percentile(0.95),
            "p99_ms": entry.get_response_time_percentile(0.99),
        }
        endpoints[entry.name] = row
        print(
            f"{entry.name:28} {row['requests']:>9} {row['failures']:>9} {row['rps']:>7.1f} {_ms(row['p50_ms']):>8} "
            f"{_ms(row['p95_ms']):>8} {_ms(row['p99_ms']):>8}"
        )
    if total.num_failures:
        problems.append(f"{total.num_failures} requests failed")
        for error in list(env.stats.errors.values())[:10]:
            print(f"  failure x{error.occurrences}: {error.method} {error.name}: {error.error}")

    ready = documents.get("ready", 0)
    others = ", ".join(f"{n} {s}" for s, n in sorted(documents.items()) if s != "ready") or "no other"
    print(f"\nDocuments: {uploaded} uploaded during the load, {ready} ingested (ready), {others}")
    if lost := {s: n for s, n in documents.items() if s not in {"ready", "queued", "processing"}}:
        problems.append("documents not ingested: " + ", ".join(f"{n} {s}" for s, n in sorted(lost.items())))
    pending = documents.get("queued", 0) + documents.get("processing", 0)
    if pending:
        print(f"  warning: {pending} documents were still waiting when the drain time ran out (capacity, not errors)")

    print(f"\nRSS (MB) after the warm-up, in the middle and at the end of the load; bound on growth {bound_mb} MB")
    print(f"{'process':18} {'pid':>8} {'start':>8} {'middle':>8} {'end':>8} {'growth':>8}")
    rss = []
    start, middle, end = samples["start"], samples["middle"], samples["end"]
    for pid in sorted(set(start) | set(middle) | set(end), key=lambda p: (start.get(p, end.get(p, ("", 0)))[0], p)):
        role = (start.get(pid) or middle.get(pid) or end[pid])[0]
        values = [s[pid][1] / 2**20 if pid in s else None for s in (start, middle, end)]
        growth = values[2] - values[0] if values[0] is not None and values[2] is not None else None
        cells = [f"{v:8.0f}" if v is not None else f"{'-':>8}" for v in values]
        cells.append(f"{growth:+8.0f}" if growth is not None else f"{'-':>8}")
        print(f"{role:18} {pid:>8} {' '.join(cells)}")
        rss.append({"role": role, "pid": pid, "start": values[0], "middle": values[1], "end": values[2]})
        if growth is not None and growth > bound_mb:
            problems.append(f"{role} {pid} grew by {growth:.0f} MB (bound {bound_mb} MB)")
        if values[0] is not None and values[2] is None:
            problems.append(f"{role} {pid} died during the load")

    if log_errors:
        problems.append(f"{len(log_errors)} error lines in the server logs")
        print(f"\nServer log errors ({len(log_errors)}):")
        for line in log_errors[:15]:
            print(f"  {line}")
    summary = {
        "seconds": round(elapsed, 1),
        "requests": total.num_requests,
        "failures": total.num_failures,
        "rps": round(total.num_requests / elapsed, 2),
        "endpoints": endpoints,
        "documents_uploaded": uploaded,
        "documents": documents,
        "rss_mb": rss,
        "log_errors": len(log_errors),
        "problems": problems,
    }
    return problems, summary


# --- main ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20, help="concurrent users (default 20)")
    parser.add_argument("--duration", type=float, default=180, help="seconds of load (default 180)")
    parser.add_argument("--spawn-rate", type=float, default=5, help="users started per second (default 5)")
    parser.add_argument("--upload-share", type=float, default=0.05, help="share of uploads among tasks (0.05)")
    parser.add_argument(
        "--think",
        type=float,
        nargs=2,
        default=(0.5, 1.5),
        metavar=("MIN", "MAX"),
        help="seconds each user waits between two requests (0.5 1.5)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds before the first RSS sample (default: a sixth of the duration, at most 30)",
    )
    parser.add_argument("--rss-bound-mb", type=int, default=150, help="largest RSS growth after the warm-up (150)")
    parser.add_argument("--drain", type=float, default=300, help="seconds to wait for uploads to be ingested (300)")
    parser.add_argument("--web-workers", type=int, default=1, help="gunicorn worker processes (1, as make run)")
    parser.add_argument("--web-threads", type=int, default=8, help="threads per gunicorn worker (8, as make run)")
    parser.add_argument("--database-url", default="", help="default: SQLite in the temporary VAR_DIR")
    parser.add_argument("--broker-url", default="", help="default: the embedded SQLite broker")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary VAR_DIR (logs, database)")
    args = parser.parse_args(argv)
    if not 0 <= args.upload_share <= 1 or args.users < 1 or args.duration <= 0:
        parser.error("--users ≥ 1, --duration > 0 and 0 ≤ --upload-share ≤ 1")
    warmup = args.warmup if args.warmup is not None else min(30.0, args.duration / 6)

    var_dir = Path(tempfile.mkdtemp(prefix="portal-soak-"))
    server = Server(
        var_dir=var_dir,
        web_workers=args.web_workers,
        web_threads=args.web_threads,
        database_url=args.database_url or f"sqlite:///{var_dir / 'db.sqlite3'}",
        broker_url=args.broker_url or f"sqla+sqlite:///{var_dir / 'celery-broker.sqlite3'}",
        result_backend=f"db+sqlite:///{var_dir / 'celery-results.sqlite3'}",
    )
    # SIGTERM stops the soak like Ctrl-C: the servers are stopped on the way out
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    runner = None
    try:
        print(f"Starting the portal in {var_dir} ...", flush=True)
        server.start()
        session = _session(server.key)
        seeds = _seed(server, session)
        seeded = _wait_for_documents(server, session, seeds, timeout=args.drain)
        if seeded.get("ready", 0) != len(seeds):
            raise RuntimeError(f"the seed documents did not all become ready: {seeded}\n{server.tail('celery')}")
        session.post(f"{server.url}/api/v1/rag/", json={"prompt": "warm-up", "mode": "extractive"}, timeout=120)
        print(
            f"Server ready on {server.url}: {len(seeds)} seed documents ingested. "
            f"Load: {args.users} users for {args.duration:.0f} s (RSS after {warmup:.0f} s of warm-up).",
            flush=True,
        )

        shared = Shared(key=server.key)
        user_class = _user_class(shared, upload_share=args.upload_share, think=tuple(args.think))
        env = Environment(user_classes=[user_class], host=server.url)
        runner = env.create_local_runner()
        samples: dict[str, dict[int, tuple[str, int]]] = {}
        started = time.monotonic()
        runner.start(args.users, spawn_rate=args.spawn_rate)
        for name, at in (("start", warmup), ("middle", (warmup + args.duration) / 2)):
            gevent.sleep(max(0.0, started + at - time.monotonic()))
            samples[name] = _rss(server)
            print(
                f"  {name:6} sample at {time.monotonic() - started:5.0f} s: {env.stats.total.num_requests} "
                f"requests, {env.stats.total.num_failures} failures",
                flush=True,
            )
        gevent.sleep(max(0.0, started + args.duration - time.monotonic()))
        samples["end"] = _rss(server)
        runner.quit()
        elapsed = time.monotonic() - started
        runner = None

        print(
            f"Load done; waiting up to {args.drain:.0f} s for {len(shared.uploaded)} uploads to be ingested ...",
            flush=True,
        )
        drain_started = time.monotonic()
        try:
            documents = _wait_for_documents(server, session, shared.uploaded, timeout=args.drain)
        except requests.RequestException as exc:  # the load's figures are still worth printing
            print(f"Could not read the documents' statuses: {exc}", file=sys.stderr)
            documents = {"unknown": len(shared.uploaded)}
        drained = time.monotonic() - drain_started
        print(f"The worker was done {drained:.0f} s after the load.", flush=True)
        problems, summary = _report(
            env, elapsed, samples, documents, len(shared.uploaded), _log_errors(server), args.rss_bound_mb
        )
        summary.update(users=args.users, duration=args.duration, drain_seconds=round(drained, 1), cpus=os.cpu_count())
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2) + "\n")
        print(
            "\n"
            + (
                "FAILED: " + "; ".join(problems)
                if problems
                else f"OK: no failure, no error, no growth past {args.rss_bound_mb} MB"
            )
        )
        return 1 if problems else 0
    except KeyboardInterrupt:
        print("\nInterrupted: stopping the servers ...", file=sys.stderr)
        return 130
    except (RuntimeError, requests.RequestException) as exc:
        print(f"\nThe soak could not run: {exc}", file=sys.stderr)
        return 2
    finally:
        if runner is not None:
            with contextlib.suppress(Exception):
                runner.quit()
        server.stop()
        if args.keep:
            print(f"Logs and data kept in {var_dir}", file=sys.stderr)
        else:
            shutil.rmtree(var_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
