"""The handler's lifecycle and configuration (no model loaded)."""

from __future__ import annotations

import pytest

from llm import errors
from llm.config import LLMConfig
from llm.handler import LLMHandler
from llm.types import Generation


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
