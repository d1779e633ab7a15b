"""The `make run` stack with its embedded defaults: SQLite, the SQLite broker, a real worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.worker, pytest.mark.slow]


def test_a_worker_on_the_embedded_broker_ingests_a_file(tmp_path: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DATABASE_", "CELERY_", "INDEX_", "MEDIA_", "STATIC_ROOT"))
    }
    env.update({"VAR_DIR": str(tmp_path / "var"), "RAG_EMBED_THREADS": "1", "RAG_WARMUP": "false"})
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "--noinput", "-v0"], cwd=REPO, env=env, check=True, timeout=300)
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "portal",
            "worker",
            "--queues",
            "celery,ocr",
            "--concurrency",
            "1",
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "INFO",
        ],
        cwd=REPO,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while "ready." not in log.read_text(errors="replace") and worker.poll() is None:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        assert worker.poll() is None, log.read_text()[-3000:]
        note = tmp_path / "note.txt"
        note.write_text("The embedded broker carried this note about tide tables in Saint-Malo.")
        result = subprocess.run(
            [*manage, "ingest", str(note), "--wait", "--json", "--timeout", "240"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr + log.read_text()[-3000:]
        record = json.loads(result.stdout.strip().splitlines()[-1])
        assert record["status"] == "ready", record
        assert record["chunks"] == 1
    finally:
        worker.terminate()
        worker.wait(timeout=30)
