"""/metrics: the product's metrics move as documents are ingested and questions answered."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from knowledge.models import Document
from knowledge.observability import metrics
from knowledge.observability.networks import address_allowed
from knowledge.services import apikeys, usage
from knowledge.services import documents as document_services
from tests.observability.conftest import delta, scrape, value

pytestmark = pytest.mark.django_db

TEXT = (
    "The lighthouse of Alexandria was one of the Seven Wonders of the Ancient World. "
    "It guided sailors into the harbour for centuries before earthquakes destroyed it."
)


def _ingest(content: bytes, name: str) -> Document:
    document = document_services.document_create(file=io.BytesIO(content), filename=name, dispatch=False)
    document_services.document_process(document_id=document.pk)
    document.refresh_from_db()
    return document


def _api(user: User) -> tuple[APIClient, str]:
    key, raw = apikeys.apikey_create(user=user, all_collections=True)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    return client, key.prefix


def test_an_ingestion_counts_the_document_its_chunks_and_each_stage(client: Any) -> None:
    before = scrape(client)

    document = _ingest(TEXT.encode(), "wonders.txt")

    after = scrape(client)
    assert document.status == Document.Status.READY
    assert delta(before, after, "portal_ingestion_documents_total", outcome="ready") == 1
    assert delta(before, after, "portal_ingestion_chunks_total") == document.chunk_count > 0
    assert delta(before, after, "portal_ingestion_pages_total") == (document.page_count or 0)
    for stage in ("parse", "chunk", "embed", "index"):
        assert delta(before, after, "portal_ingestion_stage_seconds_count", stage=stage) == 1, stage
        assert delta(before, after, "portal_ingestion_stage_seconds_sum", stage=stage) > 0, stage
    # read at scrape time from the database and the saved index
    assert value(after, "portal_documents", status="ready") == 1
    assert value(after, "portal_index_vectors") == document.chunk_count
    assert value(after, "portal_index_version") >= 1
    assert value(after, "portal_dependency_up", dependency="database") == 1
    assert ("portal_queue_messages", frozenset({("queue", "celery")})) in after


def test_a_failed_ingestion_counts_its_reason(client: Any) -> None:
    before = scrape(client)

    document = _ingest(b"", "empty.txt")

    after = scrape(client)
    assert document.status == Document.Status.FAILED
    assert delta(before, after, "portal_ingestion_documents_total", outcome="failed") == 1
    assert delta(before, after, "portal_ingestion_documents_total", outcome="ready") == 0
    assert delta(before, after, "portal_ingestion_failures_total", reason="empty") == 1
    assert value(after, "portal_documents", status="failed") == 1


def test_failure_reasons_are_a_bounded_set() -> None:
    reasons = metrics.failure_reasons()
    assert {"empty", "encrypted", "damaged", "unsupported_format", "unexpected", "timeout", "other"} <= reasons
    assert metrics.failure_reason("empty") == "empty"
    assert metrics.failure_reason("something a new engine invented") == "other"


def test_a_question_records_retrieval_and_answer_latency(client: Any) -> None:
    _ingest(TEXT.encode(), "wonders.txt")
    api, _prefix = _api(User.objects.create_user(username="asker"))
    before = scrape(client)

    question = {"prompt": "Which lighthouse was a wonder?", "mode": "extractive"}
    response = api.post("/api/v1/rag/", question, format="json")

    after = scrape(client)
    assert response.status_code == 200, response.content
    assert delta(before, after, "portal_retrieval_seconds_count") == 1
    assert delta(before, after, "portal_answer_seconds_count", operation="rag", mode="extractive") == 1
    # no model call in extractive mode
    assert delta(before, after, "portal_generation_seconds_count", operation="rag") == 0
    assert (
        delta(
            before,
            after,
            "django_http_requests_total_by_view_transport_method_total",
            view="api-v1-rag-create",
            transport="http",
            method="POST",
        )
        == 1
    )


def test_a_generated_answer_records_generation_speed_and_the_keys_tokens(client: Any, fake_llm: Any) -> None:
    _ingest(TEXT.encode(), "wonders.txt")
    api, prefix = _api(User.objects.create_user(username="generator"))
    before = scrape(client)

    response = api.post(
        "/api/v1/rag/", {"prompt": "Which lighthouse was a wonder?", "mode": "generative"}, format="json"
    )

    after = scrape(client)
    assert response.status_code == 200, response.content
    assert response.json()["meta"]["tokens_used"] == 48
    assert delta(before, after, "portal_generation_seconds_count", operation="rag") == 1
    assert delta(before, after, "portal_generation_tokens_per_second_count", operation="rag") == 1
    assert delta(before, after, "portal_answer_seconds_count", operation="rag", mode="generative") == 1
    caller = {"endpoint": "rag", "caller_type": "key", "caller": f"key:{prefix}"}
    assert delta(before, after, "portal_tokens_total", type="prompt", **caller) == 40
    assert delta(before, after, "portal_tokens_total", type="completion", **caller) == 8


def test_token_labels_are_capped_per_process(client: Any, settings: Any) -> None:
    settings.METRICS_MAX_CALLERS = 1
    first, second = User.objects.create_user(username="first"), User.objects.create_user(username="second")
    first_key, _ = apikeys.apikey_create(user=first, all_collections=True)
    before = scrape(client)

    usage.usage_record(user=first, api_key=first_key, endpoint="rag", prompt_tokens=5, completion_tokens=0)
    usage.usage_record(user=second, api_key=None, endpoint="rag", prompt_tokens=7, completion_tokens=0)

    after = scrape(client)
    own = {"endpoint": "rag", "caller_type": "key", "caller": f"key:{first_key.prefix}", "type": "prompt"}
    assert delta(before, after, "portal_tokens_total", **own) == 5
    capped = {"endpoint": "rag", "caller_type": "session", "caller": "other", "type": "prompt"}
    assert delta(before, after, "portal_tokens_total", **capped) == 7
    assert not any(
        name == "portal_tokens_total" and ("caller", f"user:{second.pk}") in labels for name, labels in after
    )


def test_rate_limit_and_quota_rejections_are_counted(client: Any, settings: Any) -> None:
    user = User.objects.create_user(username="limited")
    api, _ = _api(user)
    before = scrape(client)

    settings.API_RATE_LIMIT = "1/m"
    assert api.get("/api/v1/status/").status_code == 200
    assert api.get("/api/v1/status/").status_code == 429
    settings.API_RATE_LIMIT = "10000/m"
    settings.TOKEN_QUOTA_PER_DAY = 10
    usage.usage_record(user=user, api_key=None, endpoint="rag", prompt_tokens=10, completion_tokens=0)
    refused = api.post("/api/v1/rag/", {"prompt": "anything?", "mode": "extractive"}, format="json")
    assert refused.status_code == 429 and refused.json()["code"] == "quota_exceeded"

    after = scrape(client)
    rejections = "portal_api_rejections_total"
    assert delta(before, after, rejections, reason="rate_limited", endpoint="api-v1-status-detail") == 1
    assert delta(before, after, rejections, reason="quota_exceeded", endpoint="api-v1-rag-create") == 1


def test_metrics_are_served_only_to_allowed_addresses(client: Any, settings: Any) -> None:
    settings.METRICS_ALLOWED_IPS = ["10.0.0.0/8", "192.168.1.7/32"]

    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="10.20.30.40").status_code == 200
    # Prometheus scrapes by service name: /metrics does not depend on ALLOWED_HOSTS
    allowed = client.get("/metrics", REMOTE_ADDR="192.168.1.7", HTTP_HOST="web:8000")
    assert allowed.status_code == 200
    assert allowed["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"portal_ingestion_documents_total" in allowed.content

    settings.METRICS_ALLOWED_IPS = ["0.0.0.0/0", "::/0"]  # how to open it to everyone
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9").status_code == 200


def test_metrics_are_refused_to_public_addresses_by_default(client: Any, settings: Any) -> None:
    from portal import settings as defaults

    settings.METRICS_ALLOWED_IPS = defaults.METRICS_ALLOWED_IPS  # not the tests' own value

    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="2001:db8::1").status_code == 403
    assert b"portal_documents" not in client.get("/metrics", REMOTE_ADDR="8.8.8.8").content
    for inside in ("127.0.0.1", "172.18.0.5", "10.1.2.3", "192.168.1.9", "::1", "fd00::5"):
        assert client.get("/metrics", REMOTE_ADDR=inside).status_code == 200, inside


def test_a_workers_metrics_port_serves_only_allowed_addresses() -> None:
    import urllib.error
    import urllib.request

    from tests.llm.test_openai_compat import free_port

    open_port, closed_port = free_port(), free_port()
    servers = [
        metrics.start_worker_server(open_port, addr="127.0.0.1", allowed=["127.0.0.0/8"]),
        metrics.start_worker_server(closed_port, addr="127.0.0.1", allowed=["10.0.0.0/8"]),
    ]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{open_port}/metrics", timeout=10) as response:
            assert response.status == 200 and b"portal_ingestion_documents_total" in response.read()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{closed_port}/metrics", timeout=10)
        assert refused.value.code == 403
    finally:
        for server in servers:
            server.shutdown()


def test_address_allow_list_understands_networks_and_ipv6() -> None:
    allowed = ["10.0.0.0/8", "fd00::/8"]
    assert address_allowed("10.1.2.3", allowed)
    assert address_allowed("::ffff:10.1.2.3", allowed)  # IPv4 seen through an IPv6 socket
    assert address_allowed("fd12::1", allowed)
    assert not address_allowed("11.0.0.1", allowed)
    assert not address_allowed("not an address", allowed)
    assert not address_allowed("11.0.0.1", [])  # an empty list lets nobody in


def test_restarts_clear_only_the_files_of_dead_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    dead = 2**22 + 12345  # above the default pid_max: no such process
    (tmp_path / f"counter_{dead}.db").write_bytes(b"")
    (tmp_path / f"histogram_{dead}.db").write_bytes(b"")
    (tmp_path / f"counter_{os.getpid()}.db").write_bytes(b"")

    assert metrics.clean_at_start(role="web", master_pid=os.getpid()) is True
    assert sorted(p.name for p in tmp_path.glob("*.db")) == [f"counter_{os.getpid()}.db"]

    # a new child of the same master (gunicorn replaced a worker) leaves the files alone
    (tmp_path / f"counter_{dead}.db").write_bytes(b"")
    assert metrics.clean_at_start(role="web", master_pid=os.getpid()) is False
    assert (tmp_path / f"counter_{dead}.db").exists()
