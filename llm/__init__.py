"""Text generation engine. Plain Python with no Django import; models load lazily.

``LLMHandler(LLMConfig(...))`` generates with a configuration (the caller keeps one per process: the model loads
once per handler); importing this package imports neither torch, transformers nor httpx.
"""

from __future__ import annotations

from llm.config import LLMConfig
from llm.errors import (
    GenerationError,
    InvalidRequestError,
    LLMError,
    ModelUnavailableError,
    PromptTooLongError,
)
from llm.handler import LLMHandler, get_handler
from llm.prompts import PromptSource, build_generate_messages, build_rag_messages
from llm.text import citations_clean, cited_sources, repeated_ngram
from llm.types import Generation

__all__ = [
    "Generation",
    "GenerationError",
    "InvalidRequestError",
    "LLMConfig",
    "LLMError",
    "LLMHandler",
    "ModelUnavailableError",
    "PromptSource",
    "PromptTooLongError",
    "build_generate_messages",
    "build_rag_messages",
    "citations_clean",
    "cited_sources",
    "get_handler",
    "repeated_ngram",
]
