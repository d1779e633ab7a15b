"""Traces: the portal's spans, their parents, and the hop from an API request to a Celery worker."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from knowledge.models import Document
from knowledge.services import apikeys
from knowledge.services import documents as document_services
from tests.conftest import wait_for

TEXT = b"The lighthouse of Alexandria was one of the Seven Wonders of the Ancient World."


def _by_name(finished: Any) -> dict[str, Any]:
    named: dict[str, Any] = {}
    for span in finished:
        named.setdefault(span.name, span)
    return named


def _api(username: str, **user: Any) -> APIClient:
    _, raw = apikeys.apikey_create(user=User.objects.create_user(username=username, **user), all_collections=True)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    return client


def _ingested() -> Document:
    """The lighthouse document, ingested in this process."""
    document = document_services.document_create(file=io.BytesIO(TEXT), filename="wonders.txt", dispatch=False)
    document_services.document_process(document_id=document.pk)
    return document


@pytest.fixture
def reader_api(spans: Any) -> APIClient:
    """A reader's API client, the lighthouse document ingested and the spans of its ingestion cleared."""
    _ingested()
    api = _api("reader")
    spans.clear()
    return api


@pytest.mark.django_db
def test_ingestion_has_a_span_per_stage_under_the_ingest_span(spans: Any) -> None:
    document = _ingested()

    named = _by_name(spans.get_finished_spans())
    ingest = named["ingest"]
    assert ingest.attributes["portal.document_id"] == document.pk
    assert ingest.attributes["portal.status"] == "ready"
    previous_end = ingest.start_time
    for stage in ("parse", "chunk", "embed", "index"):
        span = named[stage]
        assert span.parent.span_id == ingest.context.span_id, stage
        assert span.context.trace_id == ingest.context.trace_id
        assert previous_end <= span.start_time <= span.end_time <= ingest.end_time, stage
        previous_end = span.end_time


@pytest.mark.django_db
def test_a_failed_ingestion_marks_its_stage_and_the_ingest_span(spans: Any) -> None:
    document = document_services.document_create(file=io.BytesIO(b""), filename="empty.txt", dispatch=False)

    document_services.document_process(document_id=document.pk)

    named = _by_name(spans.get_finished_spans())
    assert named["ingest"].status.status_code.name == "ERROR"
    assert named["ingest"].attributes["portal.failure_reason"] == "empty"
    assert named["parse"].status.status_code.name == "ERROR"
    assert "embed" not in named


@pytest.mark.django_db
def test_a_question_is_traced_from_the_request_to_retrieval_and_generation(
    spans: Any, fake_llm: Any, reader_api: APIClient
) -> None:
    response = reader_api.post("/api/v1/rag/", {"prompt": "Which lighthouse?", "mode": "generative"}, format="json")

    assert response.status_code == 200, response.content
    finished = spans.get_finished_spans()
    named = _by_name(finished)
    request = next(s for s in finished if s.kind.name == "SERVER")
    assert request.attributes.get("http.route", request.name).endswith("api/v1/rag/")
    answer = named["answer"]
    assert answer.parent.span_id == request.context.span_id
    assert named["retrieve"].parent.span_id == answer.context.span_id
    generate = named["generate"]
    assert generate.parent.span_id == answer.context.span_id
    assert generate.attributes["gen_ai.usage.output_tokens"] == 8
    assert generate.start_time >= named["retrieve"].end_time - 1_000_000  # after retrieval (1 ms of rounding)


@pytest.mark.django_db
def test_a_streamed_answer_keeps_its_spans_together(spans: Any, fake_llm: Any, reader_api: APIClient) -> None:
    response = reader_api.post(
        "/api/v1/rag/", {"prompt": "Which lighthouse?", "mode": "extractive", "stream": True}, format="json"
    )
    body = b"".join(response.streaming_content)

    assert b"event: done" in body
    named = _by_name(spans.get_finished_spans())
    assert named["retrieve"].parent.span_id == named["answer"].context.span_id
    assert named["answer"].attributes["portal.mode"] == "extractive"


@pytest.fixture
def traced_worker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """A real worker that writes its spans, one JSON object a line, to a file."""
    trace_file = tmp_path / "worker-spans.jsonl"
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("TRACES_CONSOLE_FILE", str(trace_file))
    monkeypatch.setenv("LOG_FORMAT", "json")
    worker = request.getfixturevalue("celery_worker_factory")()
    return worker, trace_file


def _worker_spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.worker
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_an_upload_is_traced_into_the_worker_that_ingests_it(spans: Any, traced_worker: Any, client: Any) -> None:
    from tests.observability.conftest import delta, scrape

    worker, trace_file = traced_worker
    api = _api("uploader", is_staff=True, is_superuser=True)
    before = scrape(client)

    response = api.post(
        "/api/v1/documents/",
        {"file": SimpleUploadedFile("wonders.txt", TEXT, content_type="text/plain"), "title": "Wonders"},
        format="multipart",
        HTTP_X_REQUEST_ID="upload-req-42",
    )

    assert response.status_code == 201, response.content
    document_id = response.json()["id"]
    wait_for(lambda: Document.objects.get(pk=document_id).status in {"ready", "failed"}, timeout=180)
    assert Document.objects.get(pk=document_id).status == "ready"

    def task_finished() -> list[dict[str, Any]] | None:
        found = _worker_spans(trace_file)
        return found if any(s["name"] == "run/knowledge.document_ingest" for s in found) else None

    worker_spans = wait_for(task_finished, timeout=60)

    # web side (this process): the request span, and the publish span under it
    finished = spans.get_finished_spans()
    request = next(s for s in finished if s.kind.name == "SERVER")
    publish = next(s for s in finished if s.name.startswith("apply_async/knowledge.document_ingest"))
    assert publish.parent.span_id == request.context.span_id
    trace_id = f"0x{request.context.trace_id:032x}"

    # worker side (its file): the task's span continues that trace, under the publish span
    run = next(s for s in worker_spans if s["name"] == "run/knowledge.document_ingest")
    assert run["context"]["trace_id"] == trace_id
    assert run["parent_id"] == f"0x{publish.context.span_id:016x}"
    ingest = next(s for s in worker_spans if s["name"] == "ingest")
    assert ingest["parent_id"] == run["context"]["span_id"]
    for stage in ("parse", "chunk", "embed", "index"):
        span = next(s for s in worker_spans if s["name"] == stage)
        assert span["parent_id"] == ingest["context"]["span_id"], stage
        assert span["context"]["trace_id"] == trace_id

    # the worker's counters reach this process's /metrics (one multiprocess folder per machine)
    after = scrape(client)
    assert delta(before, after, "portal_ingestion_documents_total", outcome="ready") == 1
    assert delta(before, after, "portal_ingestion_stage_seconds_count", stage="embed") == 1

    # the worker logs JSON, and the task's lines carry the id of the request that queued it
    log = worker.log.read_text(errors="replace").splitlines()
    after_banner = log[next(i for i, line in enumerate(log) if "ready." in line) + 1 :]
    records = [json.loads(line) for line in after_banner if line.strip()]
    assert any(r.get("request_id") == "upload-req-42" and "succeeded" in r["message"] for r in records), records


@pytest.mark.django_db
def test_probes_and_scrapes_are_not_traced(spans: Any, client: Any) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        client.get(path)

    assert [s.name for s in spans.get_finished_spans() if s.kind.name == "SERVER"] == []
