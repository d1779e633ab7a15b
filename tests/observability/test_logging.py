"""Logs: JSON lines with the request id and the trace id; one access line per API call; no content."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from knowledge.observability.logging import ContextFilter, JsonFormatter
from knowledge.services import apikeys
from knowledge.services import documents as document_services

pytestmark = pytest.mark.django_db

TEXT = b"The lighthouse of Alexandria was one of the Seven Wonders of the Ancient World."
PROMPT = "Which lighthouse was a wonder? my-secret-question"


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """What the configured console handler writes during the test, line by line."""
    handler = next(h for h in logging.getLogger().handlers if isinstance(h.formatter, JsonFormatter))
    stream = io.StringIO()
    previous = handler.setStream(stream)
    lines: list[str] = []
    yield lines
    handler.setStream(previous)


def _written(lines: list[str]) -> list[dict[str, Any]]:
    handler = next(h for h in logging.getLogger().handlers if isinstance(h.formatter, JsonFormatter))
    lines.extend(line for line in handler.stream.getvalue().splitlines() if line)
    return [json.loads(line) for line in lines]  # every line is one JSON object


@pytest.fixture
def api() -> tuple[APIClient, Any]:
    document = document_services.document_create(file=io.BytesIO(TEXT), filename="wonders.txt", dispatch=False)
    document_services.document_process(document_id=document.pk)
    key, raw = apikeys.apikey_create(user=User.objects.create_user(username="logger"), all_collections=True)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    return client, key


def test_logs_are_json_lines_by_default(settings: Any) -> None:
    assert settings.LOG_FORMAT == "json"
    assert settings.LOGGING["handlers"]["console"]["formatter"] == "json"


def test_an_api_call_writes_one_json_access_line_with_its_request_id(
    api: tuple[APIClient, Any], log_lines: list[str]
) -> None:
    client, key = api

    response = client.post(
        "/api/v1/rag/",
        {"prompt": PROMPT, "mode": "extractive", "user_id": "end-user-7"},
        format="json",
        HTTP_X_REQUEST_ID="req-abc-123",
    )
    logging.getLogger("elsewhere").warning("outside any request")

    assert response.status_code == 200
    assert response["X-Request-ID"] == "req-abc-123"
    records = _written(log_lines)
    access = [r for r in records if r.get("event") == "api_request"]
    assert len(access) == 1
    line = access[0]
    assert line["request_id"] == "req-abc-123"
    assert line["endpoint"] == "api/v1/rag/"
    assert line["status"] == 200 and line["method"] == "POST"
    assert line["latency_ms"] > 0
    assert line["tokens"] == 0  # extractive: no model call
    assert line["key_prefix"] == key.prefix and line["user_id"] == key.user_id
    assert line["end_user_id"] == "end-user-7"
    assert line["level"] == "INFO" and line["logger"] == "knowledge.access"
    assert {"time", "message", "process"} <= set(line)
    assert "request_id" not in records[-1]  # the line written after the request has none
    # what people typed stays out of the logs
    assert all("my-secret-question" not in json.dumps(r) for r in records)


def test_a_request_without_an_id_gets_a_new_one_and_a_bad_one_is_replaced(client: Any) -> None:
    generated = client.get("/healthz")["X-Request-ID"]
    assert len(generated) == 32 and generated != client.get("/healthz")["X-Request-ID"]
    replaced = client.get("/healthz", HTTP_X_REQUEST_ID="bad id\nwith newline")["X-Request-ID"]
    assert replaced != "bad id\nwith newline" and len(replaced) == 32


def test_errors_and_their_warnings_carry_the_request_id(client: Any, log_lines: list[str]) -> None:
    response = client.post(
        "/api/v1/rag/", {"prompt": "x"}, content_type="application/json", HTTP_X_REQUEST_ID="req-unauthorized"
    )

    assert response.status_code == 401
    records = _written(log_lines)
    assert records and all(r["request_id"] == "req-unauthorized" for r in records)
    assert any(r["logger"] == "django.request" for r in records)


def test_streamed_answers_log_their_tokens_when_the_stream_ends(
    api: tuple[APIClient, Any], log_lines: list[str], fake_llm: Any
) -> None:
    client, _ = api

    response = client.post(
        "/api/v1/rag/",
        {"prompt": PROMPT, "mode": "generative", "stream": True},
        format="json",
        HTTP_X_REQUEST_ID="req-stream",
    )
    assert not [r for r in _written(log_lines) if r.get("event") == "api_request"]  # not finished yet
    b"".join(response.streaming_content)
    response.close()

    log_lines.clear()
    access = [r for r in _written(log_lines) if r.get("event") == "api_request"]
    assert len(access) == 1
    assert access[0]["request_id"] == "req-stream" and access[0]["streamed"] is True
    assert access[0]["tokens"] == 48


def test_prompts_are_logged_only_when_log_content_is_on(
    api: tuple[APIClient, Any], log_lines: list[str], settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = api
    settings.LOG_CONTENT = True  # read at start: the access line, and the handler's filter
    handler = next(h for h in logging.getLogger().handlers if isinstance(h.formatter, JsonFormatter))
    monkeypatch.setattr(next(f for f in handler.filters if isinstance(f, ContextFilter)), "log_content", True)

    client.post("/api/v1/rag/", {"prompt": PROMPT, "mode": "extractive"}, format="json")

    access = [r for r in _written(log_lines) if r.get("event") == "api_request"]
    assert access[0]["prompt"] == PROMPT


def test_content_passed_as_extra_fields_is_redacted(log_lines: list[str]) -> None:
    logging.getLogger("knowledge.test").info("asked", extra={"prompt": "private words", "document_id": 3})

    record = _written(log_lines)[-1]
    assert record["prompt"].startswith("[redacted") and record["document_id"] == 3


def test_a_failed_tasks_arguments_are_redacted_from_celerys_error_line(log_lines: list[str]) -> None:
    from celery.app.trace import LOG_FAILURE

    context = {
        "id": "t1",
        "name": "knowledge.question_answer",
        "exc": "ValueError('boom')",
        "description": "raised unexpected",
        "args": "['t1', {'prompt': 'private words'}]",
        "kwargs": "{}",
    }
    # as celery.app.trace logs it: the context is the message's argument and the "data" extra
    logging.getLogger("celery.app.trace").error(LOG_FAILURE, context, extra={"data": context})

    record = _written(log_lines)[-1]
    assert record["message"] == "Task knowledge.question_answer[t1] raised unexpected: ValueError('boom')"
    assert "private words" not in json.dumps(record)
    assert context["args"].endswith("'private words'}]")  # Celery's own dict is left as it was


def test_the_worker_pools_own_logger_writes_json_too(settings: Any) -> None:
    # billiard's "multiprocessing" logger ("Process 'ForkPoolWorker-1' pid:… exited with …") gets a handler of
    # its own from Celery, apart from the root logger that after_setup_logger hands over.
    from celery.utils.log import get_multiprocessing_logger

    from knowledge.observability import startup

    settings.LOG_FORMAT = "json"
    pool_logger = get_multiprocessing_logger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"))
    pool_logger.addHandler(handler)
    try:
        startup.celery_logger_ready(logging.getLogger("celery-root-for-this-test"))
        pool_logger.error("Process %r pid:%r exited with %r", "ForkPoolWorker-1", 4242, "signal 15 (SIGTERM)")
    finally:
        pool_logger.removeHandler(handler)
    line = json.loads(stream.getvalue().strip())
    assert line["level"] == "ERROR" and "exited with" in line["message"]
