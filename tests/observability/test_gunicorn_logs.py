"""gunicorn writes its own lines (start-up, access) in the portal's log format: JSON lines by default."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.llm.test_openai_compat import free_port
from tests.settings_probe import CLEARED_PREFIXES

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CONFIG = "deploy/gunicorn.conf.py"


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def _run_gunicorn(tmp_path: Path, log_format: str) -> tuple[list[str], list[str]]:
    """Start gunicorn as scripts/run.sh does, make a few requests, stop it; its stdout and stderr lines."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(CLEARED_PREFIXES)}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "portal.settings",
            "LOG_FORMAT": log_format,
            "VAR_DIR": str(tmp_path / "var"),
            "INDEX_DIR": str(tmp_path / "index"),
            "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
            "RAG_WARMUP": "false",  # no models needed here (tests/observability/test_warmup.py warms one up)
        }
    )
    out, err = tmp_path / f"{log_format}.out", tmp_path / f"{log_format}.err"
    command = [sys.executable, "-m", "gunicorn", "-c", CONFIG, "portal.wsgi:application"]
    command += ["--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "2", "--timeout", "120"]
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=stdout, stderr=stderr)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if _get(f"{base}/healthz") == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()[-3000:]
            time.sleep(0.3)
        assert _get(f"{base}/readyz?question=secret-words") in (200, 503)
        assert _get(f"{base}/no-such-page/") == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    return out.read_text().splitlines(), err.read_text().splitlines()


def test_every_line_gunicorn_writes_is_json(tmp_path: Path) -> None:
    stdout, stderr = _run_gunicorn(tmp_path, "json")

    lines = [json.loads(line) for line in stdout + stderr if line.strip()]  # each line is one JSON object
    messages = [line["message"] for line in lines]
    assert any(message.startswith("Listening at") for message in messages), messages
    assert any(message.startswith("Booting worker") for message in messages), messages
    access: list[dict[str, Any]] = [line for line in lines if line.get("event") == "http_access"]
    readyz = next(line for line in access if line["path"] == "/readyz")
    assert readyz["method"] == "GET" and readyz["status"] in (200, 503)
    assert isinstance(readyz["duration_ms"], float) and readyz["request_id"]
    assert next(line for line in access if line["path"] == "/no-such-page/")["status"] == 404
    assert not any("secret-words" in line for line in stdout + stderr)  # no query string


def test_plain_logs_stay_plain_lines_in_one_format(tmp_path: Path) -> None:
    stdout, stderr = _run_gunicorn(tmp_path, "plain")

    assert not any(line.startswith("{") for line in stdout + stderr)
    assert any(" INFO gunicorn.error: Listening at" in line for line in stderr), stderr
    assert any('"GET /healthz HTTP/1.1" 200' in line and " INFO gunicorn.access: " in line for line in stdout), stdout


@pytest.mark.parametrize("path", ["scripts/run.sh", "Dockerfile", "docker-compose.yml"])
def test_every_way_of_starting_gunicorn_uses_its_config(path: str) -> None:
    text = (REPO / path).read_text()

    assert "gunicorn" in text
    assert f'"-c", "{CONFIG}"' in text or f"-c {CONFIG}" in text
