"""What every backend provides, and the stop-string and repeat handling shared by them."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Protocol

from llm.text import word_positions
from llm.types import Generation, GenerationParams, Message, StreamIterator

#: a run of this many words may not come back in an answer
REPEAT_MIN_WORDS = 4
#: the word a stream's text ends with (it may still grow), looked for in its last _LOOKBACK characters
_TRAILING_WORD = re.compile(r"\w+\Z")
_LOOKBACK = 200
#: where a sentence or a line ends, up to the next one's start
_SENTENCE_END = re.compile(r"[.!?…][\"'»)\]”’]*[ \t]+|\n+")
#: the start of a citation marker not closed yet ("[2", "[1, "): not words of the sentence
_OPEN_MARKER = re.compile(r"\[[\d\s,;\-–]*\Z")


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
    """Ends a stream of text pieces when a run of ``size`` words repeats an earlier run of the same text.

    Small models loop ("X is Y. X is Y. X is Y.", "the amount of a debt on the amount of a debt"): the
    first run of ``size`` words (compared without case, punctuation or citation markers) seen earlier in
    the answer ends it, just before that run, which is not emitted. Only the last words that begin an earlier
    run (at most ``size - 1`` and the word being written) are held back, so the pieces emitted always join to
    the final text and the rest is shown at once.
    """

    def __init__(self, size: int = REPEAT_MIN_WORDS) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self._size = size
        self._text = ""  # everything fed so far
        self._emitted = 0  # how much of it has been emitted
        self._scanned = 0  # how much of it has been read into words: up to a point no word or marker crosses
        self._words: list[tuple[int, int, str]] = []  # (start, end, word) of the words read
        self._seen: set[tuple[str, ...]] = set()  # the runs of ``size`` words read
        self._next: dict[tuple[str, ...], set[str]] = {}  # the words that follow each start of a run read
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Add ``piece``; return the text that is now safe to emit ("" when nothing is)."""
        if self.stopped:
            return ""
        self._text += piece
        return self._release(final=False)

    def flush(self) -> str:
        """Return the text still held back once the stream has ended."""
        return "" if self.stopped else self._release(final=True)

    def _release(self, *, final: bool) -> str:
        text = self._text
        settled = len(text)
        partial = ""
        if not final:
            # a word at the very end may still grow, and an open citation marker ("[2") may still close
            word = _TRAILING_WORD.search(text, max(self._scanned, settled - _LOOKBACK))
            if word is not None:
                settled, partial = word.start(), word.group().casefold()
            opened = _OPEN_MARKER.search(text, max(self._scanned, settled - _LOOKBACK), settled)
            if opened is not None:
                settled, partial = opened.start(), ""
        words, size = self._words, self._size
        checked = len(words)
        if settled > self._scanned:
            base = self._scanned
            words.extend((base + a, base + b, w) for a, b, w in word_positions(text[base:settled]))
            self._scanned = settled
        for last in range(max(checked, size - 1), len(words)):
            first = last - size + 1
            gram = tuple(word for _, _, word in words[first : last + 1])
            if gram in self._seen:
                self.stopped = True
                return self._emit(self._cut(words[first][0], words[last][0]))
            self._seen.add(gram)
            for k in range(size):
                self._next.setdefault(gram[:k], set()).add(gram[k])
        if final:
            return self._emit(len(text))
        # without a word being written, the blanks and punctuation after the last word wait for the next one
        # (a cut before a repeated line drops the "- " that opens it)
        shown = len(text) if partial else (words[-1][1] if words else 0)
        return self._emit(self._held_from(partial, whole=shown))

    def _held_from(self, partial: str, *, whole: int) -> int:
        """Where the text that may begin a repeated run starts: the longest run of the last words (and the word
        being written, ``partial``) that begins a run read before, held with what precedes it up to the word
        before; ``whole`` (the end of what may be shown) when none does."""
        words = self._words
        for k in range(min(self._size - 1, len(words)), -1, -1):
            following = self._next.get(tuple(word for _, _, word in words[len(words) - k :]))
            if not following or (k == 0 and not partial):
                continue
            if not partial or any(word.startswith(partial) for word in following):
                return words[len(words) - k - 1][1] if len(words) > k else 0
        return whole

    def _cut(self, first: int, last: int) -> int:
        """Where to end a text whose repeated run starts at ``first`` and is completed by the word at ``last``:
        at the last sentence end before ``last`` (the run may span two sentences: "... a debt. It is also"),
        else before the run, with what opens its line ("- ") when nothing else stands between them."""
        ends = [match.end() for match in _SENTENCE_END.finditer(self._text, self._emitted, last)]
        if ends and (ends[-1] >= first or not any(c.isalnum() for c in self._text[ends[-1] : first])):
            return ends[-1]
        return first

    def _emit(self, upto: int) -> str:
        if upto <= self._emitted:
            return ""
        out, self._emitted = self._text[self._emitted : upto], upto
        return out


class AnswerScanner:
    """What a backend emits of a model's text: cut at the first stop string, then at the first repeated run of words."""

    def __init__(self, stop: Sequence[str], *, stop_on_repeat: bool = True) -> None:
        self._stop = StopScanner(stop)
        self._repeat = RepeatGuard() if stop_on_repeat else None

    @property
    def stopped(self) -> bool:
        """Whether a stop string or a repeated run of words has ended the text."""
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
