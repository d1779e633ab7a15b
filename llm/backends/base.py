"""What every backend provides, and stop-string handling shared by them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from llm.types import Generation, GenerationParams, Message, StreamIterator


class Backend(Protocol):
    """A loaded or loadable model that turns chat messages into text."""

    @property
    def context_window(self) -> int: ...

    def model_name(self) -> str: ...

    def is_loaded(self) -> bool: ...

    def load(self) -> None: ...

    def count_tokens(self, text: str) -> int: ...

    def count_message_tokens(self, messages: Sequence[Message]) -> int: ...

    def generate(self, messages: list[Message], params: GenerationParams) -> Generation: ...

    def stream(self, messages: list[Message], params: GenerationParams) -> StreamIterator: ...


def drain(items: Iterator[str | Generation]) -> Generation:
    """Run a stream to its end and return its final ``Generation``."""
    result: Generation | None = None
    for item in items:
        if isinstance(item, Generation):
            result = item
    if result is None:
        raise RuntimeError("the stream ended without a Generation")
    return result


class StopScanner:
    """Cuts a stream of text pieces at the first stop string, never emitting the stop string.

    Only text that could be the start of a stop string is held back until the next piece decides
    it, so the pieces emitted always join to the final text and the rest is shown at once. The one
    scanner of the project: the backends cut generated text with it, the domain cuts answers that
    no model wrote (extractive ones).
    """

    def __init__(self, stop: Sequence[str]) -> None:
        self._stop = tuple(s for s in stop if s)
        self._pending = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Add ``piece``; return the text that is now safe to emit ("" when nothing is)."""
        if self.stopped:
            return ""
        self._pending += piece
        if not self._stop:
            out, self._pending = self._pending, ""
            return out
        cut = min((i for i in (self._pending.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self._pending = self._pending[:cut], ""
            return out
        # hold back only a tail that could begin a stop string: the rest can never be part of one
        keep = max((n for s in self._stop for n in range(1, len(s)) if self._pending.endswith(s[:n])), default=0)
        safe = len(self._pending) - keep
        out, self._pending = self._pending[:safe], self._pending[safe:]
        return out

    def flush(self) -> str:
        """Return the text still held back once the stream has ended."""
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out
