"""Shared fixtures: corpus files, isolated storage and index, users, a real Celery worker."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import process_stop

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CORPUS = SHARED / "corpus"
EVAL = SHARED / "eval"


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    if not CORPUS.is_dir():
        pytest.skip("../shared/corpus is not present")
    return CORPUS


@pytest.fixture
def portal_dirs(settings: Any, tmp_path: Path) -> Iterator[dict[str, Path]]:
    """A fresh media folder and index folder for one test; the process's engines start over (a change of
    ``INDEX_DIR`` resets them, and so does putting it back)."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.INDEX_DIR = tmp_path / "index"
    yield {"media": settings.MEDIA_ROOT, "index": settings.INDEX_DIR}


@pytest.fixture
def api_isolated(portal_dirs: dict[str, Path], settings: Any) -> None:
    """This test's own media and index folders, and a request rate no test reaches."""
    settings.API_RATE_LIMIT = "10000/m"


@pytest.fixture
def eager_celery() -> Iterator[None]:
    """Run tasks in this process (unit tests); integration tests use ``celery_worker`` instead."""
    from portal.celery import app

    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


@pytest.fixture
def staff_user(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user(username="staff", password="pw-staff-123", is_staff=True)


@pytest.fixture
def admin_user_logged_in(client: Any, django_user_model: Any) -> Any:
    user = django_user_model.objects.create_superuser(username="boss", password="pw-boss-123", email="")
    client.force_login(user)
    return client


def _database_url() -> str:
    from django.db import connection

    conf = connection.settings_dict
    if conf["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{conf['NAME']}"
    user = conf.get("USER") or "postgres"
    host = conf.get("HOST") or "127.0.0.1"
    if host.startswith("/"):  # a Unix socket folder (the pgserver of KP_TEST_SEARCH_BACKEND=postgres)
        from urllib.parse import quote

        return f"postgres://{user}@/{quote(host, safe='')}/{conf['NAME']}"
    port = conf.get("PORT") or 5432
    return f"postgres://{user}@{host}:{port}/{conf['NAME']}"


def _purge_broker() -> None:
    from portal.celery import app

    with app.connection_for_write() as conn:
        for queue in ("celery", "ocr"):
            with contextlib.suppress(Exception):  # the queue does not exist yet
                conn.default_channel.queue_purge(queue)


class WorkerProcess:
    """A real ``celery worker`` in its own process, on the test database, broker and folders."""

    def __init__(
        self, env: dict[str, str], log: Path, concurrency: int = 1, name: str = "w1", beat: bool = False
    ) -> None:
        self.log = log
        # with beat, the worker also runs the periodic tasks (documents_recover), as `celery beat` does
        beat_args = ["--beat", "--schedule", str(log.with_suffix(".beat"))] if beat else []
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "portal",
                "worker",
                "--queues",
                "celery,ocr",
                "--pool",
                "prefork",
                "--concurrency",
                str(concurrency),
                "--without-gossip",
                "--without-mingle",
                "--loglevel",
                "INFO",
                "--hostname",
                f"{name}@%h",
                *beat_args,
            ],
            cwd=REPO,
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if "ready." in log.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the Celery worker did not start:\n{log.read_text(errors='replace')[-3000:]}")

    def child_pids(self) -> list[int]:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def kill(self) -> None:
        """Die as a crashed container does: SIGKILL to the worker, its pool processes and their children."""
        os.killpg(self.proc.pid, 9)
        self.proc.wait()

    def stop(self) -> None:
        process_stop(self.proc, timeout=20, kill=lambda: os.killpg(self.proc.pid, 9))


@pytest.fixture
def celery_worker_factory(transactional_db: Any, portal_dirs: dict[str, Path], tmp_path: Path) -> Iterator[Any]:
    """Start real Celery worker processes that share this test's database, broker and folders."""
    from django.conf import settings

    _purge_broker()
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "CELERY_RESULT_BACKEND": settings.CELERY_RESULT_BACKEND,
        "MEDIA_ROOT": str(portal_dirs["media"]),
        "INDEX_DIR": str(portal_dirs["index"]),
        "RAG_EMBED_THREADS": "1",
        # no warm-up of the models in the pool processes: on a small machine it would slow the test that waits
        "RAG_WARMUP": "false",
    }
    workers: list[WorkerProcess] = []

    def start(name: str = "w1", concurrency: int = 1, beat: bool = False, **extra_env: str) -> WorkerProcess:
        worker = WorkerProcess(
            {**env, **extra_env}, tmp_path / f"worker-{name}.log", concurrency=concurrency, name=name, beat=beat
        )
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()
    _purge_broker()


@pytest.fixture
def celery_worker(celery_worker_factory: Any) -> WorkerProcess:
    return celery_worker_factory()


def wait_for(predicate: Any, timeout: float = 120.0, interval: float = 0.3) -> Any:
    """Poll until ``predicate()`` is truthy; return its value or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout:.0f}s")
