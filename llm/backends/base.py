"""What every backend provides, and the stop-string and repeat handling shared by them."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Protocol

from llm.text import words
from llm.types import Generation, GenerationParams, Message, StreamIterator

#: a sentence or line shorter than this (in words) may come back without ending the answer
REPEAT_MIN_WORDS = 4
_SENTENCE_END = frozenset(".!?…")
_CLOSERS = frozenset("\"'»)]”’")
#: the start of a citation marker not closed yet ("[2", "[1, "): not words of the sentence
_OPEN_MARKER = re.compile(r"\[[\d\s,;\-–]*$")


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


class RepeatGuard:
    """Ends a stream of text pieces when a sentence or line repeats an earlier one of the same text.

    Small models loop ("X is Y. X is Y. X is Y."): the first repeat of a sentence (of at least
    ``min_words`` words, compared without case, punctuation or citation markers) ends the text and is
    not emitted. Only a sentence that so far matches the start of an earlier one is held back, so the
    pieces emitted always join to the final text and the rest is shown at once.
    """

    def __init__(self, min_words: int = REPEAT_MIN_WORDS) -> None:
        self._min_words = min_words
        self._seen: set[tuple[str, ...]] = set()
        self._sentence = ""  # the sentence being written, emitted or not
        self._held = ""  # its part not emitted yet: all of it while it may be a repeat
        self._candidate = True
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Add ``piece``; return the text that is now safe to emit ("" when nothing is)."""
        out: list[str] = []
        for char in piece:
            if self.stopped:
                break
            self._sentence += char
            if self._candidate:
                self._held += char
            else:
                out.append(char)
            if self._ends_sentence(char):
                out.append(self._end_sentence())
        if not self.stopped and self._candidate and not self._may_repeat():
            self._candidate = False
            out.append(self._held)
            self._held = ""
        return "".join(out)

    def flush(self) -> str:
        """Return the text still held back once the stream has ended."""
        return "" if self.stopped else self._end_sentence()

    def _ends_sentence(self, char: str) -> bool:
        if char == "\n":
            return True
        if not char.isspace():
            return False
        body = self._sentence.rstrip()
        while body and body[-1] in _CLOSERS:
            body = body[:-1]
        return bool(body) and body[-1] in _SENTENCE_END

    def _end_sentence(self) -> str:
        sentence = tuple(words(self._sentence))
        held = self._held
        if self._candidate and len(sentence) >= self._min_words and sentence in self._seen:
            self.stopped = True
            held = ""
        elif len(sentence) >= self._min_words:
            self._seen.add(sentence)
        self._sentence = self._held = ""
        self._candidate = True
        return held

    def _may_repeat(self) -> bool:
        """Whether the sentence written so far is the start of an earlier one."""
        sentence = _OPEN_MARKER.sub("", self._sentence)
        so_far = words(sentence)
        if not so_far:
            return True
        # the last word may still grow, unless something other than a letter follows it
        partial = sentence[-1:].isalnum() or sentence[-1:] == "_"
        whole, last = (so_far[:-1], so_far[-1]) if partial else (so_far, "")
        n = len(whole)
        if not partial:  # a whole earlier sentence is still a match: the end of this one decides
            return any(list(seen[:n]) == whole for seen in self._seen if len(seen) >= n)
        return any(list(seen[:n]) == whole and seen[n].startswith(last) for seen in self._seen if len(seen) > n)


class AnswerScanner:
    """What a backend emits of a model's text: cut at the first stop string, then at the first repeated sentence."""

    def __init__(self, stop: Sequence[str], *, stop_on_repeat: bool = True) -> None:
        self._stop = StopScanner(stop)
        self._repeat = RepeatGuard() if stop_on_repeat else None

    @property
    def stopped(self) -> bool:
        """Whether a stop string or a repeated sentence has ended the text."""
        return self._stop.stopped or (self._repeat is not None and self._repeat.stopped)

    def feed(self, piece: str) -> str:
        """Add ``piece``; return the text that is now safe to emit ("" when nothing is)."""
        out = self._stop.feed(piece)
        if self._repeat is None:
            return out
        out = self._repeat.feed(out)
        if self._stop.stopped:  # the text has ended: nothing more will decide what is held back
            out += self._repeat.flush()
        return out

    def flush(self) -> str:
        """Return the text still held back once the stream has ended."""
        tail = self._stop.flush()
        if self._repeat is None:
            return tail
        return self._repeat.feed(tail) + self._repeat.flush()
