"""OpenAI-compatible HTTP backend: ``POST {base_url}/chat/completions`` (vLLM, Ollama, llama.cpp server).

Token counts come from the server's ``usage`` when it sends one (``stream_options.include_usage``
asks for it when streaming). Otherwise, and for ``count_tokens``, they are counted with the tokenizer
in ``config.tokenizer_dir`` when one is configured, else estimated by ``llm.tokens.estimate_tokens``
(which errs high).

Errors: a server that cannot be reached, times out or answers 502/503/504 (down, loading or
overloaded) raises ``ModelUnavailableError``; any other error status raises ``GenerationError`` with
the server's own message.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import httpx

from llm.backends.base import AnswerScanner
from llm.config import LLMConfig
from llm.errors import GenerationError, ModelUnavailableError
from llm.tokens import estimate_tokens
from llm.types import FINISH_LENGTH, FINISH_STOP, Generation, GenerationParams, Message, StreamIterator

#: tokens an estimated chat template adds per message, and for opening the assistant's turn
_ESTIMATED_MESSAGE_OVERHEAD = 4
_ESTIMATED_REPLY_OVERHEAD = 3
_UNAVAILABLE_STATUSES = frozenset({502, 503, 504})
#: the model's name until the server has said it (never the URL: it may carry credentials)
REMOTE_MODEL = "remote model"


class OpenAICompatBackend:
    """Talks to an OpenAI-compatible server; thread-safe (one pooled ``httpx.Client``)."""

    def __init__(self, config: LLMConfig) -> None:
        self.config = config
        self._client: httpx.Client | None = None
        self._model = config.model
        self._reachable = False
        self._lock = threading.Lock()
        self._tokenizer: Any = None
        # fast tokenizers raise "Already borrowed" when two threads use one at once
        self._tokenizer_lock = threading.Lock()

    @property
    def context_window(self) -> int:
        """The configured window (the server's limit is not asked for)."""
        return self.config.context_window

    def model_name(self) -> str:
        """The configured model, else the one the server listed first (after ``load``), else a neutral name."""
        return self._model or REMOTE_MODEL

    def is_loaded(self) -> bool:
        """Whether the server has answered and the model name is known."""
        return self._reachable and bool(self._model)

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    headers = {"Accept": "application/json"}
                    if self.config.api_key:
                        headers["Authorization"] = f"Bearer {self.config.api_key}"
                    self._client = httpx.Client(
                        base_url=self.config.base_url.rstrip("/") + "/",
                        headers=headers,
                        timeout=httpx.Timeout(self.config.timeout, connect=min(10.0, self.config.timeout)),
                    )
        return self._client

    def close(self) -> None:
        """Close the HTTP connections (a later call opens new ones)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def load(self) -> None:
        """Check the server answers ``GET /models``; learn the model name there when none is configured."""
        try:
            response = self.client.get("models")
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        status = response.status_code
        # without a configured name the list is needed; with one, only a server that is down or
        # refuses our key is a problem (some servers have no /models at all)
        if status in _UNAVAILABLE_STATUSES | {401, 403} or (status >= 400 and not self._model):
            raise ModelUnavailableError(
                f"The model server at {self.config.server} answered {response.status_code}: {_error_message(response)}"
            )
        if not self._model:
            try:
                data = response.json()["data"]
                self._model = str(data[0]["id"])
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise ModelUnavailableError(
                    f"The model server at {self.config.server} lists no model; set the model name."
                ) from exc
        self._reachable = True

    # -- tokens --------------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        """Tokens by ``config.tokenizer_dir``'s tokenizer when configured, else an estimate."""
        tokenizer = self._load_tokenizer()
        if tokenizer is None:
            return estimate_tokens(text)
        with self._tokenizer_lock:
            return len(tokenizer.encode(text, add_special_tokens=False))

    def count_message_tokens(self, messages: Sequence[Message]) -> int:
        """Prompt tokens of ``messages``: by the configured tokenizer's chat template, else estimated."""
        tokenizer = self._load_tokenizer()
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            with self._tokenizer_lock:
                text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
                return len(tokenizer.encode(text, add_special_tokens=False))
        return (
            sum(self.count_tokens(m["content"]) + _ESTIMATED_MESSAGE_OVERHEAD for m in messages)
            + _ESTIMATED_REPLY_OVERHEAD
        )

    def _load_tokenizer(self) -> Any:
        if not self.config.tokenizer_dir:
            return None
        if self._tokenizer is None:
            with self._tokenizer_lock:
                if self._tokenizer is None:
                    try:
                        from transformers import AutoTokenizer

                        self._tokenizer = AutoTokenizer.from_pretrained(
                            self.config.tokenizer_dir, local_files_only=True
                        )
                    except Exception as exc:
                        raise ModelUnavailableError(
                            f"The tokenizer in {self.config.tokenizer_dir} could not be loaded: {exc}"
                        ) from exc
        return self._tokenizer

    # -- generation ----------------------------------------------------------------------------

    def _body(self, messages: list[Message], params: GenerationParams, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._model,
            "messages": messages,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            "stream": stream,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def generate(self, messages: list[Message], params: GenerationParams) -> Generation:
        """One ``chat/completions`` request without streaming."""
        try:
            response = self.client.post("chat/completions", json=self._body(messages, params, stream=False))
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        self._raise_for_status(response)
        try:
            data = response.json()
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise GenerationError(
                f"The model server sent an answer that is not a chat completion: {response.text[:200]}"
            ) from exc
        self._reachable = True
        scanner = AnswerScanner(params.stop, stop_on_repeat=self.config.stop_on_repeat)
        text = scanner.feed(text) + scanner.flush()
        finish = FINISH_STOP if scanner.stopped else _finish(choice.get("finish_reason"))
        return self._generation(messages, text, finish, data.get("usage"))

    def stream(self, messages: list[Message], params: GenerationParams) -> StreamIterator:
        """Server-sent events: ``data: {chunk}`` lines, then ``data: [DONE]``."""
        body = self._body(messages, params, stream=True)
        return self._stream(messages, params, body)

    def _stream(self, messages: list[Message], params: GenerationParams, body: dict[str, Any]) -> StreamIterator:
        scanner = AnswerScanner(params.stop, stop_on_repeat=self.config.stop_on_repeat)
        pieces: list[str] = []
        finish: str | None = None
        usage: Any = None
        try:
            with self.client.stream(
                "POST", "chat/completions", json=body, headers={"Accept": "text/event-stream"}
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    self._raise_for_status(response)
                self._reachable = True
                for chunk in _events(response.iter_lines()):
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    for choice in chunk.get("choices") or ():
                        content = (choice.get("delta") or {}).get("content")
                        out = scanner.feed(content) if content else ""
                        if out:
                            pieces.append(out)
                            yield out
                        if choice.get("finish_reason"):
                            finish = choice["finish_reason"]
                    if scanner.stopped:
                        break
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        tail = scanner.flush()
        if tail:
            pieces.append(tail)
            yield tail
        reason = FINISH_STOP if scanner.stopped else _finish(finish)
        yield self._generation(messages, "".join(pieces), reason, usage)

    # -- helpers -------------------------------------------------------------------------------

    def _generation(self, messages: Sequence[Message], text: str, finish: str, usage: Any) -> Generation:
        prompt_tokens = completion_tokens = None
        if isinstance(usage, dict):
            prompt_tokens = usage.get("prompt_tokens")
            completion_tokens = usage.get("completion_tokens")
        return Generation(
            text=text,
            prompt_tokens=prompt_tokens if isinstance(prompt_tokens, int) else self.count_message_tokens(messages),
            completion_tokens=completion_tokens if isinstance(completion_tokens, int) else self.count_tokens(text),
            model=self.model_name(),
            finish_reason=finish,
        )

    def _raise_for_status(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        message = f"The model server answered {response.status_code}: {_error_message(response)}"
        if response.status_code in _UNAVAILABLE_STATUSES:
            raise ModelUnavailableError(message)
        raise GenerationError(message, status=response.status_code)

    def _unreachable(self, exc: httpx.HTTPError) -> ModelUnavailableError:
        self._reachable = False
        if isinstance(exc, httpx.TimeoutException):
            reason = f"it did not answer within {self.config.timeout:g} s"
        else:
            reason = (str(exc) or type(exc).__name__).replace(self.config.base_url, self.config.server)
        return ModelUnavailableError(f"The model server at {self.config.server} cannot be used: {reason}.")


def _events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The JSON objects of an SSE stream's ``data:`` lines, up to ``[DONE]``."""
    for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators, ": keep-alive" comments, "event:" names
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            chunk = json.loads(data)
        except ValueError as exc:
            raise GenerationError(f"The model server sent a malformed event: {data[:200]}") from exc
        if not isinstance(chunk, dict):
            raise GenerationError(f"The model server sent a malformed event: {data[:200]}")
        if chunk.get("error"):
            raise GenerationError(f"The model server failed while answering: {_message_of(chunk)}")
        yield chunk


def _finish(reason: Any) -> str:
    return FINISH_LENGTH if reason == "length" else FINISH_STOP


def _error_message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    return _message_of(data) if isinstance(data, dict) else str(data)[:500]


def _message_of(data: dict[str, Any]) -> str:
    error = data.get("error", data)
    if isinstance(error, dict):
        return str(error.get("message") or error.get("detail") or error)[:500]
    return str(error)[:500]
