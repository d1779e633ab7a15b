"""What every backend provides, and stop-string handling shared by them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from llm.types import Generation, GenerationParams, Message


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

    def stream(self, messages: list[Message], params: GenerationParams) -> Iterator[str | Generation]: ...


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

    Text that could be the start of a stop string is held back until the next piece decides it,
    so the pieces emitted always join to the final text.
    """

    def __init__(self, stop: Sequence[str]) -> None:
        self._stop = tuple(s for s in stop if s)
        self._hold = max((len(s) for s in self._stop), default=1) - 1
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
        safe = len(self._pending) - self._hold
        if safe <= 0:
            return ""
        out, self._pending = self._pending[:safe], self._pending[safe:]
        return out

    def flush(self) -> str:
        """Return the text still held back once the stream has ended."""
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out
