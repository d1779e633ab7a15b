"""The portal's Prometheus metrics, and what ``/metrics`` (or a worker's metrics port) serves.

Counters and histograms are observed where the work happens (web processes and Celery workers)
in prometheus_client's multiprocess mode: every process writes its values to files under
``PROMETHEUS_MULTIPROC_DIR`` (set by settings) and a scrape adds them up. Gauges of the portal's
state (documents by status, queue depth, index size and version, dependencies up) are read at
scrape time by :class:`PortalCollector`, so they are never stale and never per process.

Label values are bounded: stages, outcomes and modes are fixed sets, failure reasons are the codes
of ``IngestionError`` subclasses (else "other"), and callers are capped (see :func:`caller_label`).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

logger = logging.getLogger(__name__)

STAGES = ("parse", "chunk", "embed", "index")
OUTCOMES = ("ready", "failed")
#: failure reasons of documents that failed on something else than an IngestionError
UNEXPECTED = "unexpected"
TIMEOUT = "timeout"  # Celery's per-document time limit
OTHER = "other"

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

INGESTION_STAGE_SECONDS = Histogram(
    "portal_ingestion_stage_seconds",
    "Seconds one document spent in an ingestion stage (parse, chunk, embed, index).",
    ["stage"],
    buckets=_SECONDS,
)
INGESTION_DOCUMENTS = Counter(
    "portal_ingestion_documents", "Documents whose ingestion finished, by outcome (ready, failed).", ["outcome"]
)
INGESTION_FAILURES = Counter(
    "portal_ingestion_failures", "Documents that failed, by reason (the IngestionError code).", ["reason"]
)
INGESTION_PAGES = Counter("portal_ingestion_pages", "Pages of the documents ingested.")
INGESTION_CHUNKS = Counter("portal_ingestion_chunks", "Chunks written by ingestion.")

RETRIEVAL_SECONDS = Histogram(
    "portal_retrieval_seconds", "Seconds to retrieve the passages of a question.", buckets=_SECONDS
)
GENERATION_SECONDS = Histogram(
    "portal_generation_seconds",
    "Seconds the language model took to answer (generative mode).",
    ["operation"],
    buckets=_SECONDS,
)
GENERATION_TOKENS_PER_SECOND = Histogram(
    "portal_generation_tokens_per_second",
    "Completion tokens per second of one generation.",
    ["operation"],
    buckets=(1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 250, 500, 1000),
)
ANSWER_SECONDS = Histogram(
    "portal_answer_seconds",
    "Seconds from question to finished answer, by operation (rag, generate) and mode (extractive, generative).",
    ["operation", "mode"],
    buckets=_SECONDS,
)
TOKENS = Counter(
    "portal_tokens",
    "Tokens spent, by endpoint, caller kind (key, session), caller (capped, then 'other') and type "
    "(prompt, completion).",
    ["endpoint", "caller_type", "caller", "type"],
)
API_REJECTIONS = Counter(
    "portal_api_rejections", "API requests refused by the rate limit or the token quota.", ["reason", "endpoint"]
)

for _outcome in OUTCOMES:
    INGESTION_DOCUMENTS.labels(_outcome)
for _stage in STAGES:
    INGESTION_STAGE_SECONDS.labels(_stage)


# --- label values -------------------------------------------------------------------------------


def failure_reasons() -> frozenset[str]:
    """Every reason a failure may be labelled with: the codes of the IngestionError classes, and three more."""
    from ingestion.errors import IngestionError

    codes: set[str] = set()
    pending: list[type[IngestionError]] = [IngestionError]
    while pending:
        cls = pending.pop()
        codes.add(cls.code)
        pending.extend(cls.__subclasses__())
    return frozenset(codes | {UNEXPECTED, TIMEOUT, OTHER})


def failure_reason(code: str) -> str:
    return code if code in failure_reasons() else OTHER


_callers: set[str] = set()
_callers_lock = threading.Lock()


def caller_label(caller: str, *, limit: int) -> str:
    """``caller`` while fewer than ``limit`` callers have a label in this process, else "other".

    The first callers seen keep their label for the life of the process; with N processes the
    series are at most N x limit per endpoint and type. ``limit`` 0 puts everyone in "other".
    """
    with _callers_lock:
        if caller in _callers:
            return caller
        if len(_callers) < limit:
            _callers.add(caller)
            return caller
    return OTHER


def _reset_callers() -> None:
    """Tests: forget the callers seen."""
    with _callers_lock:
        _callers.clear()


_ENDPOINT = re.compile(r"[^a-z0-9_.:-]")


def endpoint_label(value: str) -> str:
    return _ENDPOINT.sub("_", (value or "unknown").lower())[:60]


# --- scrape-time state ----------------------------------------------------------------------------


class PortalCollector:
    """Gauges read when Prometheus scrapes: documents by status, queue depth, index, dependencies up."""

    def describe(self) -> Iterable[Metric]:
        return []  # no collection at registration time

    def collect(self) -> Iterator[Metric]:
        from knowledge import selectors

        up = GaugeMetricFamily(
            "portal_dependency_up", "Whether a dependency answers (1) or not (0).", labels=["dependency"]
        )

        documents = GaugeMetricFamily("portal_documents", "Documents by status.", labels=["status"])
        try:
            for status, count in selectors.document_counts().items():
                documents.add_metric([status], count)
            up.add_metric(["database"], 1)
            yield documents
        except Exception as exc:  # the database is down: say so, do not fail the whole scrape
            logger.warning("metrics: documents by status unavailable: %s", exc)
            up.add_metric(["database"], 0)

        queue = selectors.queue_depth()
        up.add_metric(["broker"], 1 if queue.get("ok") else 0)
        if queue.get("ok"):
            waiting = GaugeMetricFamily(
                "portal_queue_messages", "Messages waiting in a Celery queue.", labels=["queue"]
            )
            for name, depth in queue["waiting"].items():
                waiting.add_metric([name], depth or 0)
            yield waiting

        index = selectors._check_index()
        up.add_metric(["index"], 1 if index.get("ok") else 0)
        if index.get("ok"):
            yield GaugeMetricFamily(
                "portal_index_vectors", "Vectors in the saved index.", value=index.get("vectors", 0)
            )
            yield GaugeMetricFamily(
                "portal_index_version", "Version of the saved index.", value=index.get("version", 0)
            )
            info = GaugeMetricFamily(
                "portal_index_info",
                "The saved index: embedder, dimension and kind (value 1).",
                labels=["embedder", "dimension", "kind"],
            )
            info.add_metric(
                [str(index.get("embedder", "")), str(index.get("dimension", "")), str(index.get("kind", ""))], 1
            )
            yield info
        yield up


# --- exposition ---------------------------------------------------------------------------------


def multiprocess_dir() -> Path | None:
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(value) if value and Path(value).is_dir() else None


def process_registry() -> CollectorRegistry:
    """The counters and histograms of every process of this machine (or of this process alone)."""
    directory = multiprocess_dir()
    if directory is None:
        return REGISTRY
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    return registry


def render(*, with_state: bool = True) -> tuple[bytes, str]:
    """The text exposition: process metrics, then (``with_state``) the scrape-time gauges."""
    body = generate_latest(process_registry())
    if with_state:
        state = CollectorRegistry(auto_describe=False)
        state.register(PortalCollector())
        body += generate_latest(state)
    # the classic text format (names are plain ASCII): every Prometheus version reads it
    return body, CONTENT_TYPE_PLAIN_0_0_4


def check_multiprocess_mode() -> None:
    """Warn when prometheus_client was imported before settings chose the multiprocess folder."""
    from prometheus_client import values

    if multiprocess_dir() is not None and values.ValueClass.__name__ == "MutexValue":
        logger.warning(
            "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set: "
            "this process's metrics are not shared with /metrics"
        )


# --- multiprocess files ------------------------------------------------------------------------------

_FILE_PID = re.compile(r"_(\d+)\.db$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _process_start(pid: int) -> str:
    """When ``pid`` started (clock ticks since boot), to tell a restarted master from the same one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def remove_dead_process_files(directory: Path | None = None) -> int:
    """Delete the metric files of processes that are gone; those of live processes stay. Returns how many."""
    directory = directory or multiprocess_dir()
    if directory is None:
        return 0
    removed = 0
    for path in directory.glob("*.db"):
        match = _FILE_PID.search(path.name)
        if match is None or _alive(int(match.group(1))):
            continue
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:  # another process cleaned it first
            pass
    return removed


def clean_at_start(*, role: str, master_pid: int) -> bool:
    """Clear the files left by the previous run of ``role``, once per start of its master process.

    A web or worker start removes the files of dead processes only, so the live processes of another
    role on the same machine (make run: web and worker) keep their counts. The files of children that
    die while the master runs are kept until its next start, so counters never go down in between.
    """
    directory = multiprocess_dir()
    if directory is None:
        return False
    marker = directory / f".{role}-master"
    stamp = f"{master_pid}:{_process_start(master_pid)}"
    try:
        if marker.read_text() == stamp:
            return False  # a new child of the same master (gunicorn replaced a worker)
    except OSError:
        pass
    remove_dead_process_files(directory)
    tmp = directory / f".{role}-master.{os.getpid()}"
    tmp.write_text(stamp)
    tmp.replace(marker)
    return True


def start_worker_server(port: int, *, allowed: Sequence[str], addr: str = "0.0.0.0") -> Any:
    """Serve this machine's process metrics on ``port`` (a Celery worker's own /metrics) to the
    ``allowed`` addresses, 403 to others, in a daemon thread. Returns the server; None if the port is busy.
    """
    import socket
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client import make_wsgi_app
    from prometheus_client.exposition import ThreadingWSGIServer

    from knowledge.observability.networks import address_allowed

    metrics_app = make_wsgi_app(process_registry())

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if not address_allowed(environ.get("REMOTE_ADDR", ""), allowed):
            start_response("403 Forbidden", [("Content-Type", "text/plain")])
            return [b"Metrics are not available from this address.\n"]
        return metrics_app(environ, start_response)  # type: ignore[no-any-return]

    class Server(ThreadingWSGIServer):
        address_family = socket.getaddrinfo(addr, port)[0][0]

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # Prometheus scrapes every few seconds
            pass

    try:
        server = make_server(addr, port, app, Server, handler_class=QuietHandler)
    except OSError as exc:
        logger.warning("metrics: port %s is not available (%s); this worker serves no metrics", port, exc)
        return None
    threading.Thread(target=server.serve_forever, name="worker-metrics", daemon=True).start()
    return server
