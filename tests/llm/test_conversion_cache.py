"""The conversion cache of the local backend (``LLMConfig.cache_dir``): a GGUF model converted once, then read as
transformers' own files, answering exactly as the GGUF file does."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from llm.backends import local
from llm.config import LLMConfig
from llm.handler import LLMHandler

QUESTION = "What is the capital of France?"


def _converted(config: LLMConfig, part: str) -> Path:
    import transformers

    backend = local.LocalBackend(config)
    converted = backend._converted(backend.location, part, transformers.__version__)
    assert converted is not None
    return converted


@pytest.mark.slow
def test_a_converted_model_is_read_from_the_cache_and_answers_as_the_gguf_file_does(
    local_handler: LLMHandler, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # the session's model was converted from the GGUF file: kept as a first load with a cache keeps it
    expected = local_handler.generate(QUESTION, temperature=0, max_tokens=12)
    expected_count = local_handler.count_tokens(QUESTION)
    config = LLMConfig(threads=2, cache_dir=str(tmp_path / "cache"))
    session = next(iter(local._models.values()))
    quantizer = getattr(session.model, "hf_quantizer", None)  # None when a test with a cache loaded it first
    for part, loaded in (("tokenizer", session.tokenizer), ("model", session.model)):
        local._keep(loaded, _converted(config, part))
    assert getattr(session.model, "hf_quantizer", None) is quantizer  # the loaded model is left as it was
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [_converted(config, "model").parent.name]

    read: list[Path] = []
    original = local._from_pretrained

    def spy(part: str, folder: Path, kwargs: dict[str, Any]) -> Any:
        read.append(folder)
        return original(part, folder, kwargs)

    monkeypatch.setattr(local, "_models", {})  # a new process: nothing loaded yet
    monkeypatch.setattr(local, "_from_pretrained", spy)
    handler = LLMHandler(config)
    handler.load()
    answer = handler.generate(QUESTION, temperature=0, max_tokens=12)

    assert read == [_converted(config, "tokenizer"), _converted(config, "model")]
    assert (answer.text, answer.prompt_tokens, answer.completion_tokens) == (
        expected.text,
        expected.prompt_tokens,
        expected.completion_tokens,
    )
    assert handler.count_tokens(QUESTION) == expected_count

    # a damaged cache costs a conversion, not the model: the tokenizer is read from the GGUF file and kept again
    (_converted(config, "tokenizer") / "tokenizer.json").write_text("{", encoding="utf-8")
    monkeypatch.setattr(local, "_models", {})
    read.clear()
    with caplog.at_level(logging.WARNING, logger="llm.backends.local"):
        assert LLMHandler(config).count_tokens(QUESTION) == expected_count
    assert "could not be read" in caplog.text
    assert read == [_converted(config, "tokenizer"), session.location.folder]
    assert (_converted(config, "tokenizer") / "tokenizer.json").read_text(encoding="utf-8") != "{"


def test_a_cache_that_cannot_be_written_leaves_nothing_behind(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    class FullDisk:
        def save_pretrained(self, folder: str) -> None:
            (Path(folder) / "model.safetensors").write_bytes(b"half")
            raise OSError(28, "No space left on device")

    converted = tmp_path / "cache" / "model-0123" / "model"
    with caplog.at_level(logging.WARNING, logger="llm.backends.local"):
        local._keep(FullDisk(), converted)

    assert "No space left on device" in caplog.text
    assert list(converted.parent.iterdir()) == []  # neither the model nor its half-written folder


def test_without_a_cache_or_for_a_hugging_face_folder_nothing_is_kept(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    folder = local.LocalBackend(LLMConfig(model_dir=str(tmp_path), cache_dir=str(tmp_path / "cache")))
    gguf = local.LocalBackend(LLMConfig(cache_dir=""))

    assert folder._converted(local.ModelLocation(tmp_path, ""), "model", "5.0") is None
    assert gguf._converted(local.ModelLocation(tmp_path, "m.gguf"), "model", "5.0") is None
