"""``LLMHandler``: the one entry point for text generation, whatever the backend.

Importing this module loads no model and imports neither torch nor transformers; the backend is
created on first use.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from llm.config import LLMConfig
from llm.errors import InvalidRequestError, LLMError
from llm.prompts import build_generate_messages
from llm.types import Generation, GenerationParams, Message, StreamIterator

if TYPE_CHECKING:
    from llm.backends.base import Backend

__all__ = ["Generation", "LLMHandler", "Prompt", "get_handler"]

Prompt = str | Sequence[Mapping[str, str]]


class LLMHandler:
    """Generates text with the configured backend; safe to share between threads.

    Creating a handler is cheap: the model (or HTTP client) is set up on first use or by
    ``load()``. Keep one per process and configuration (the caller's registry does): each loads its own model.
    """

    def __init__(self, config: LLMConfig) -> None:
        self.config = config
        self._backend: Backend | None = None
        self._lock = threading.Lock()

    @property
    def backend(self) -> Backend:
        """The backend object (created on first access; nothing is loaded by this)."""
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    self._backend = _create_backend(self.config)
        return self._backend

    @property
    def context_window(self) -> int:
        """Tokens the model accepts, prompt and answer together (loads no model)."""
        return self.backend.context_window

    def model_name(self) -> str:
        """A name for the model, for display and for the API's ``meta.model``."""
        return self.backend.model_name()

    def is_loaded(self) -> bool:
        """Whether the model is loaded (local) or the server has answered (openai)."""
        return self._backend is not None and self._backend.is_loaded()

    def load(self) -> None:
        """Load the model now instead of on the first request; raises ``ModelUnavailableError``."""
        self.backend.load()

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` by the model's own tokenizer (openai backend: see its docstring)."""
        return self.backend.count_tokens(text)

    def count_message_tokens(self, messages: Sequence[Message]) -> int:
        """Prompt tokens of ``messages`` once the chat template is applied."""
        return self.backend.count_message_tokens(messages)

    def generate(
        self,
        prompt: Prompt,
        *,
        temperature: float = 0.7,
        top_p: float = 0.9,
        max_tokens: int = 256,
        stop: Sequence[str] | None = None,
        system: str | None = None,
    ) -> Generation:
        """Generate an answer to ``prompt`` (a user message, or a list of chat messages).

        ``temperature`` 0 decodes greedily (the same prompt gives the same text); ``stop`` strings
        end the answer and are not part of it. Raises ``InvalidRequestError`` for parameters out of
        range, ``ModelUnavailableError`` when the model cannot be used and ``GenerationError``
        when generation fails.
        """
        messages, params = self._prepare(prompt, temperature, top_p, max_tokens, stop, system)
        return self.backend.generate(messages, params)

    def stream(
        self,
        prompt: Prompt,
        *,
        temperature: float = 0.7,
        top_p: float = 0.9,
        max_tokens: int = 256,
        stop: Sequence[str] | None = None,
        system: str | None = None,
    ) -> StreamIterator:
        """Like ``generate``, but yield text pieces as they come, then one final ``Generation``.

        The pieces join to the final ``Generation.text``. Parameters are checked and the model is
        loaded before this returns; generation starts on the first ``next()``. Close the iterator
        (or run it to the end) when done: the local backend serves one generation at a time.
        """
        messages, params = self._prepare(prompt, temperature, top_p, max_tokens, stop, system)
        return self.backend.stream(messages, params)

    def _prepare(
        self,
        prompt: Prompt,
        temperature: float,
        top_p: float,
        max_tokens: int,
        stop: Sequence[str] | None,
        system: str | None,
    ) -> tuple[list[Message], GenerationParams]:
        if not 0 <= temperature <= 2:
            raise InvalidRequestError("temperature must be between 0 and 2.")
        if not 0 < top_p <= 1:
            raise InvalidRequestError("top_p must be greater than 0 and at most 1.")
        if not 1 <= max_tokens <= self.config.max_tokens:
            raise InvalidRequestError(f"max_tokens must be between 1 and {self.config.max_tokens}.")
        if isinstance(stop, str):
            stop = [stop]
        params = GenerationParams(
            temperature=float(temperature),
            top_p=float(top_p),
            max_tokens=int(max_tokens),
            stop=tuple(s for s in (stop or ()) if s),
        )
        messages = build_generate_messages(prompt, system)
        backend = self.backend
        if not backend.is_loaded():
            backend.load()
        return messages, params


def _create_backend(config: LLMConfig) -> Backend:
    # imported here so that importing llm.handler pulls in neither torch nor httpx
    if config.backend == "local" and config.process == "shared":
        from llm.backends.shared import SharedBackend

        return SharedBackend(config)
    if config.backend == "local":
        from llm.backends.local import LocalBackend

        return LocalBackend(config)
    if config.backend == "openai":
        from llm.backends.openai_compat import OpenAICompatBackend

        return OpenAICompatBackend(config)
    raise LLMError(f"Unknown LLM backend {config.backend!r}.")


def get_handler(config: LLMConfig) -> LLMHandler:
    """A new handler for ``config`` (the name it had when this module kept one per process; bench scripts use
    it). The caller keeps it: the Django project's engine registry holds one per process and configuration."""
    return LLMHandler(config)
