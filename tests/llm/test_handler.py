"""The handler's lifecycle and configuration (no model loaded)."""

from __future__ import annotations

import threading

import pytest

from llm import errors
from llm.config import LLMConfig
from llm.handler import LLMHandler, get_handler
from llm.types import Generation


def test_get_handler_gives_one_handler_per_config_across_threads() -> None:
    config = LLMConfig(model="one-per-process-test")
    barrier = threading.Barrier(8)
    seen: list[LLMHandler] = []

    def grab() -> None:
        barrier.wait()
        seen.append(get_handler(config))

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len({id(h) for h in seen}) == 1
    assert get_handler(LLMConfig(model="one-per-process-test")) is seen[0]
    assert get_handler(LLMConfig(model="another")) is not seen[0]


def test_creating_a_handler_loads_nothing() -> None:
    handler = LLMHandler(LLMConfig(model_dir="/nonexistent"))

    assert not handler.is_loaded()
    assert handler.model_name() == "local model"


def test_configured_name_is_shown() -> None:
    assert LLMHandler(LLMConfig(model="my-model")).model_name() == "my-model"


@pytest.mark.parametrize(
    "options",
    [
        {"backend": "llama"},
        {"backend": "openai"},
        {"context_window": 0},
        {"max_tokens": 0},
        {"threads": 0},
        {"timeout": 0},
    ],
)
def test_invalid_configuration_is_refused(options: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        LLMConfig(**options)  # type: ignore[arg-type]


def test_generation_adds_up_tokens_used() -> None:
    result = Generation(text="x", prompt_tokens=10, completion_tokens=4, model="m", finish_reason="stop")

    assert result.tokens_used == 14


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.LLMError, "llm_error"),
        (errors.ModelUnavailableError, "model_unavailable"),
        (errors.GenerationError, "generation_error"),
        (errors.InvalidRequestError, "invalid_request"),
        (errors.PromptTooLongError, "prompt_too_long"),
    ],
)
def test_errors_carry_a_stable_code_and_a_readable_message(error: type[errors.LLMError], code: str) -> None:
    raised = error("The model is not there.")

    assert raised.code == code
    assert raised.message == str(raised) == "The model is not there."
    assert isinstance(raised, errors.LLMError)
