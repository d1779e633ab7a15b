"""Plain values shared by the handler and the backends."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

#: one chat message: {"role": "system" | "user" | "assistant", "content": "..."}
Message = dict[str, str]

FINISH_STOP = "stop"
FINISH_LENGTH = "length"


@dataclass(frozen=True)
class Generation:
    """The result of one generation: the text and what it cost in tokens."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    model: str
    #: why generation ended, as the backend saw it: "stop" (end of answer or a stop string) or
    #: "length" (``max_tokens`` or the time limit reached)
    finish_reason: str

    @property
    def tokens_used(self) -> int:
        """Prompt and completion tokens together."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class GenerationParams:
    """Validated sampling parameters passed to a backend."""

    temperature: float
    top_p: float
    max_tokens: int
    stop: tuple[str, ...]

    @property
    def greedy(self) -> bool:
        """Temperature 0 means deterministic (greedy) decoding."""
        return self.temperature == 0


#: what ``stream`` yields: text pieces, then one final ``Generation``
StreamItem = str | Generation
#: a generator, so that a consumer that goes away can ``close()`` it and the model stops
StreamIterator = Generator[StreamItem, None, None]
