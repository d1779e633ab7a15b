"""The `make run` stack with its embedded defaults: SQLite, the SQLite broker, a real worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import WorkerProcess

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
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
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
        assert result.returncode == 0, result.stderr + worker.log.read_text()[-3000:]
        record = json.loads(result.stdout.strip().splitlines()[-1])
        assert record["status"] == "ready", record
        assert record["chunks"] == 1
    finally:
        worker.stop()
