"""Loaded with ``-p`` before pytest-django configures Django: choose the test services.

PostgreSQL (127.0.0.1:5432, user postgres) and Redis (127.0.0.1:6379) are used when they answer;
otherwise the suite falls back to SQLite and the embedded SQLite broker. Variables already set in
the environment win. The choice is printed in the pytest header.

``KP_TEST_SEARCH_BACKEND=postgres`` runs the suite on the ``postgres`` search store: a real PostgreSQL 16 with
pgvector, started from the ``pgserver`` package (data under ``KP_TEST_PGSERVER_DIR``, by default a folder of the
temporary directory kept from one run to the next; the server stops when the run ends), unless DATABASE_URL
already names a server with pgvector; RAG_SEARCH_BACKEND is set to ``postgres``.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlparse

import pytest


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _redis_ok() -> bool:
    if not _answers("127.0.0.1", 6379):
        return False
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DJANGO_SECRET_KEY", "test-secret-key-not-for-production")
#: pytest-xdist's worker in a parallel run ("gw0", "gw1", ...; ``make test`` runs two); empty in a plain run
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
_inherited = os.environ.get("VAR_DIR", "")
if XDIST_WORKER and _inherited and os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").startswith(_inherited):
    # a worker of a parallel run has its own VAR_DIR; the metrics folder that the run's settings derived from the
    # run's VAR_DIR (and put in the environment for prometheus_client) must not be read as one set on purpose
    del os.environ["PROMETHEUS_MULTIPROC_DIR"]
if os.environ.get("TEST_VAR_DIR"):
    os.environ["VAR_DIR"] = str(Path(os.environ["TEST_VAR_DIR"]) / XDIST_WORKER)
else:
    os.environ["VAR_DIR"] = tempfile.mkdtemp(prefix="kp-test-")
# the model in the test process itself (tests/llm/test_shared_server.py tests the shared model process)
os.environ.setdefault("RAG_LLM_PROCESS", "own")
# the packaged model converted once for every run of the suite on this machine (and its portals, workers and model
# processes), not once per process: about 45 s each
os.environ.setdefault("RAG_LLM_CACHE_DIR", str(Path(tempfile.gettempdir()) / "kp-test-llm-cache"))


def _start_pgserver() -> tuple[Any, str]:
    """A PostgreSQL 16 with pgvector from the pgserver package, listening on a Unix socket only."""
    with warnings.catch_warnings():  # platformdirs: "XDG_RUNTIME_DIR is not set, falling back to /tmp/runtime-0"
        warnings.simplefilter("ignore")
        import pgserver

    logging.getLogger("pgserver").setLevel(logging.WARNING)  # it logs every command at INFO
    folder = Path(
        os.environ.get("KP_TEST_PGSERVER_DIR")
        or Path(tempfile.gettempdir()) / f"knowledge-portal-pgserver-{os.getuid()}"
    )
    folder.mkdir(parents=True, exist_ok=True)
    # "stop": the server stops when the last process that asked for it ends (this run, or a parallel one)
    server = pgserver.get_server(folder, cleanup_mode="stop")  # type: ignore[attr-defined]
    socket_dir = parse_qs(urlparse(server.get_uri()).query)["host"][0]
    # django-environ reads a socket folder from the URL's path: postgres://user@/%2Fthe%2Ffolder/name
    return server, f"postgres://postgres@/{quote(socket_dir, safe='')}/knowledge_portal_{os.getpid()}"


_embedded = os.environ.get("KP_TEST_EMBEDDED") == "1"
SEARCH_BACKEND = os.environ.get("KP_TEST_SEARCH_BACKEND", "") or os.environ.get("RAG_SEARCH_BACKEND", "faiss")
_pgserver: Any = None  # its handle lives as long as the run: the server stops with the last one
if os.environ.get("KP_TEST_SEARCH_BACKEND") == "postgres":
    os.environ["RAG_SEARCH_BACKEND"] = "postgres"
    if "DATABASE_URL" not in os.environ:
        _pgserver, os.environ["DATABASE_URL"] = _start_pgserver()
if "DATABASE_URL" not in os.environ and not _embedded and _answers("127.0.0.1", 5432):
    # pytest-django creates and drops test_<name> next to it; one name per run, so that two runs
    # on one machine (developers, CI) never fight over the same test database.
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/knowledge_portal_{os.getpid()}"
if "CELERY_BROKER_URL" not in os.environ and not _embedded and _redis_ok():
    # A database number per run, for the same reason (concurrent runs would steal each other's tasks).
    _db = 1 + os.getpid() % 15
    os.environ["CELERY_BROKER_URL"] = f"redis://127.0.0.1:6379/{_db}"
    os.environ.setdefault("CELERY_RESULT_BACKEND", f"redis://127.0.0.1:6379/{_db}")
    os.environ["KP_TEST_REDIS_DB"] = str(_db)
elif XDIST_WORKER and os.environ.get("KP_TEST_REDIS_DB"):
    # A worker of a parallel run inherits the run's choice: each worker takes the next numbers, since each one
    # purges and consumes its own queues.
    _db = 1 + (int(os.environ["KP_TEST_REDIS_DB"]) + int(XDIST_WORKER.removeprefix("gw"))) % 15
    os.environ["CELERY_BROKER_URL"] = os.environ["CELERY_RESULT_BACKEND"] = f"redis://127.0.0.1:6379/{_db}"

DATABASE = os.environ.get("DATABASE_URL", "sqlite (embedded, under VAR_DIR)")
BROKER = os.environ.get("CELERY_BROKER_URL", "sqla+sqlite (embedded, under VAR_DIR)")
USING_POSTGRES = DATABASE.startswith("postgres")
USING_REDIS = BROKER.startswith("redis")


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = [
        f"knowledge-portal: database = {DATABASE}",
        f"knowledge-portal: broker = {BROKER}",
        f"knowledge-portal: search store = {SEARCH_BACKEND}",
    ]
    if not (USING_POSTGRES and USING_REDIS):
        lines.append(
            "knowledge-portal: PostgreSQL/Redis not reachable on 127.0.0.1 — falling back to SQLite and the "
            "embedded broker"
        )
    lines.append(f"knowledge-portal: VAR_DIR = {Path(os.environ['VAR_DIR'])}")
    return lines


def pytest_unconfigure(config: pytest.Config) -> None:
    if _pgserver is not None:
        _pgserver.cleanup()  # stops the server unless another run still uses it
