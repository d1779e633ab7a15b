"""Warm-up: a fresh process loads its models and runs each answer path before /readyz says ready."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from knowledge.models import Conversation, Document, UsageRecord
from knowledge.services import apikeys, engines, warmup
from knowledge.services import documents as document_services
from llm.errors import ModelUnavailableError
from tests.llm.test_openai_compat import free_port
from tests.settings_probe import CLEARED_PREFIXES

REPO = Path(__file__).resolve().parents[2]

TEXT = (
    "The lighthouse of Alexandria was one of the Seven Wonders of the Ancient World. "
    "It guided sailors into the harbour for centuries before earthquakes destroyed it."
)


@pytest.fixture(autouse=True)
def _fresh_warmup(settings: Any) -> Iterator[None]:
    settings.RAG_WARMUP = True
    settings.READYZ_DETAIL_IPS = ["127.0.0.0/8"]
    warmup.reset()
    yield
    warmup.reset()


class RecordingLLM:
    """The language model as the warm-up uses it: loaded, then asked for one token."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def load(self) -> None:
        self.calls.append("load")

    def is_loaded(self) -> bool:
        return "load" in self.calls

    def generate(self, prompt: Any, **kwargs: Any) -> None:
        self.calls.append((prompt, kwargs))


@pytest.fixture
def recording_llm(monkeypatch: pytest.MonkeyPatch) -> RecordingLLM:
    llm = RecordingLLM()
    monkeypatch.setattr(engines, "get_llm", lambda: llm)
    return llm


def _wait_for(state: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while (check := warmup.readiness_check())["state"] != state:
        assert time.monotonic() < deadline, check
        time.sleep(0.01)
    return check


def _searcher_built() -> bool:
    return any(isinstance(key, tuple) and key[0] == "searcher" for key in engines.registry._entries)


@pytest.mark.django_db
def test_readyz_answers_503_while_the_warm_up_runs_then_200(client: Any) -> None:
    running, release = threading.Event(), threading.Event()

    def blocked() -> None:
        running.set()
        release.wait(30)

    assert warmup.start_in_background(steps=[("blocked", blocked)])
    assert not warmup.start_in_background(steps=[("blocked", blocked)])  # once per process
    assert running.wait(10)
    during = client.get("/readyz")
    release.set()
    _wait_for("ready")
    after = client.get("/readyz")

    assert during.status_code == 503 and during.json()["status"] == "not ready"
    check = during.json()["checks"]["warmup"]
    assert check["ok"] is False and check["state"] == "warming" and check["seconds"] >= 0
    assert after.status_code == 200, after.json()
    check = after.json()["checks"]["warmup"]
    assert check["ok"] is True and check["state"] == "ready" and check["seconds"] >= 0


@pytest.mark.django_db
def test_a_process_that_never_warmed_up_is_ready(client: Any) -> None:
    response = client.get("/readyz")

    assert response.json()["checks"]["warmup"] == {"ok": True, "state": "off"}
    assert response.status_code == 200, response.json()


def test_with_the_warm_up_off_nothing_starts(settings: Any) -> None:
    settings.RAG_WARMUP = False

    assert not warmup.start_in_background(steps=[])
    assert warmup.readiness_check() == {"ok": True, "state": "off"}


def test_a_failing_step_leaves_the_process_ready_with_the_reason(caplog: pytest.LogCaptureFixture) -> None:
    later: list[str] = []

    def unavailable() -> None:
        raise ModelUnavailableError("The model file model.gguf cannot be read.")

    assert not warmup.run(steps=[("llm", unavailable), ("generate", lambda: later.append("ran"))])

    check = warmup.readiness_check()
    assert check["ok"] is True and check["state"] == "failed"
    assert check["error"] == "llm: The model file model.gguf cannot be read."
    assert later == []  # the rest loads on first use
    assert any(r.levelname == "WARNING" and "warm-up failed" in r.getMessage() for r in caplog.records)


def test_an_unexpected_error_is_shown_by_its_type_alone() -> None:
    def broken() -> None:
        raise RuntimeError("cannot reach http://portal-user:s3cret-pw@127.0.0.1:9/v1")

    assert not warmup.run(steps=[("llm", broken)])

    assert warmup.readiness_check()["error"] == "llm: RuntimeError"


def test_a_forked_child_has_not_warmed_up() -> None:
    assert warmup.run(steps=[])
    assert warmup.readiness_check()["state"] == "ready"

    pid = os.fork()
    if pid == 0:  # the child: off, and free to warm up its own engines
        fresh = warmup.readiness_check() == {"ok": True, "state": "off"}
        os._exit(0 if fresh and warmup.start_in_background(steps=[]) else 1)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert warmup.readiness_check()["state"] == "ready"


@pytest.mark.django_db
def test_an_empty_index_warms_up_too(recording_llm: RecordingLLM) -> None:
    assert warmup.run()

    assert warmup.readiness_check()["state"] == "ready"
    assert _searcher_built()
    assert recording_llm.calls == ["load", ("Hello", {"max_tokens": 1, "temperature": 0})]
    # every companion model is loaded, the French one too, though the warm-up's question is English
    embedder = engines.get_searcher().embedder
    assert [model.languages for model in embedder.models] == [("en",), ("fr",)]  # the default pair
    assert all(loaded is not None for loaded in embedder._loaded)


@pytest.mark.django_db
def test_the_warm_up_builds_the_searcher_and_writes_nothing(recording_llm: RecordingLLM) -> None:
    document = document_services.document_create(file=io.BytesIO(TEXT.encode()), filename="wonders.txt", dispatch=False)
    document_services.document_process(document_id=document.pk)
    assert Document.objects.get(pk=document.pk).status == Document.Status.READY
    engines.reset()  # what ingesting built is forgotten: the warm-up builds the searcher
    assert not _searcher_built()

    assert warmup.run()

    assert _searcher_built()
    assert UsageRecord.objects.count() == 0 and Conversation.objects.count() == 0
    assert warmup.readiness_check()["state"] == "ready"
    _, raw = apikeys.apikey_create(user=User.objects.create_user(username="asker"), all_collections=True)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    response = api.post(
        "/api/v1/rag/", {"prompt": "Which lighthouse was a wonder?", "mode": "extractive"}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["answered"] is True
    assert response.json()["sources"][0]["document_id"] == document.pk


# --- a real gunicorn -------------------------------------------------------------------------------------


def _readyz(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), json.loads(error.read())


@pytest.mark.slow
def test_gunicorn_is_not_ready_until_it_has_warmed_up(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith(CLEARED_PREFIXES)}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "portal.settings",
            "DJANGO_SECRET_KEY": "warm-up-test-secret-key-not-for-production-0123456789",
            "VAR_DIR": str(tmp_path / "var"),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "RAG_OCR": "false",
            "LOG_FORMAT": "json",
            # the model in gunicorn itself: a shared model process would outlive the test
            "RAG_LLM_PROCESS": "own",
        }
    )
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=REPO, env=env, check=True, timeout=300
    )
    port = free_port()
    log = tmp_path / "gunicorn.log"
    command = [sys.executable, "-m", "gunicorn", "portal.wsgi:application", "--bind", f"127.0.0.1:{port}"]
    command += ["--workers", "1", "--threads", "2", "--timeout", "300"]
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    seen: list[tuple[int, str]] = []
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                status, body = _readyz(f"http://127.0.0.1:{port}/readyz")
            except OSError:  # not listening yet
                time.sleep(0.2)
                continue
            seen.append((status, body["checks"]["warmup"]["state"]))
            if status == 200:
                break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)

    assert seen[-1] == (200, "ready"), (seen, log.read_text()[-3000:])
    assert all(state in ("warming", "ready") for _, state in seen), seen
    assert all(status == 503 for status, state in seen if state == "warming"), seen
    assert "warm-up done in" in log.read_text()
