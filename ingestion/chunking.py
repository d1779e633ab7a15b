"""Cut parsed blocks into chunks that fit the embedder, measured with the embedder's own tokenizer.

Pure functions: the token counter comes in as an argument. A chunk gathers whole blocks of one
section (heading path) and page while they fit; a block too long for a chunk is cut by sentences,
then by words (then by characters, for a "word" such as a long URL or a base64 run). Consecutive
chunks of the same section share ``overlap_tokens`` of text.

Counting the same text again and again is what makes chunking slow, so each block (or sentence, or
word) is counted once; a chunk's size is estimated as the sum of its parts, and only the finished
chunk is counted again, to make sure it never exceeds the hard limit.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from .types import Block, ChunkDraft

__all__ = ["ChunkingConfig", "chunk_blocks", "embedding_text", "heading_line"]

#: a heading path longer than this is cut (its outermost part first) in the embedded text
MAX_HEADING_CHARS = 200

_LINE_KINDS = frozenset({"table_row", "list_item", "code"})
_SENTENCE_END = re.compile(r"(?<=[.!?…。！？])\s+|\s*\n\s*")
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class ChunkingConfig:
    """How big chunks are, in the embedder's tokens."""

    #: target chunk size (the embedded text: heading line, text, prefix and special tokens)
    max_tokens: int = 350
    #: tokens of text repeated from the end of a chunk at the start of the next one of the same section
    overlap_tokens: int = 40
    #: put the heading path on the first line of the embedded text (see :func:`embedding_text`)
    include_headings: bool = True
    #: a chunk with less content than this is not closed at a new section or page but continues
    min_tokens: int = 64


def heading_line(headings: Sequence[str]) -> str:
    """The heading path as one line ("Guide > Installation"), cut to its innermost part when long."""
    line = " > ".join(part for part in (_WHITESPACE.sub(" ", h).strip() for h in headings) if part)
    if len(line) > MAX_HEADING_CHARS:
        line = "…" + line[-(MAX_HEADING_CHARS - 1) :]
    return line


def embedding_text(
    chunk: ChunkDraft, config: ChunkingConfig | None = None, *, include_headings: bool | None = None
) -> str:
    """The text to embed for ``chunk``: its heading path on a first line (when any), then its text.

    When the chunk's text starts with the innermost heading (the chunk opens its section), that
    heading is not repeated: the first line holds the outer path only, or nothing for a top level.

    Pass the :class:`ChunkingConfig` the chunk was made with (or its ``include_headings``): the chunk's
    ``token_count`` was measured on this text. Headings are included by default.
    """
    if include_headings is None:
        include_headings = config.include_headings if config is not None else True
    if not include_headings:
        return chunk.text
    headings = chunk.headings
    # a chunk that opens with its own section's heading already says it on its first line: the
    # heading line then only carries the outer path (a document's title is not embedded twice)
    if headings and _opens_with(chunk.text, headings[-1]):
        headings = headings[:-1]
    line = heading_line(headings)
    return f"{line}\n{chunk.text}" if line else chunk.text


def _opens_with(text: str, heading: str) -> bool:
    heading = _WHITESPACE.sub(" ", heading).strip()
    return bool(heading) and (text == heading or text.startswith(heading + "\n"))


def _same_heading(text: str, heading: str) -> bool:
    return _WHITESPACE.sub(" ", text).strip() == _WHITESPACE.sub(" ", heading).strip() != ""


@dataclass(frozen=True)
class _Piece:
    """A block, or a part of a block too long for one chunk."""

    text: str
    cost: int  # content tokens: its count minus the model's fixed overhead
    block: int  # index of the block it comes from
    first: bool  # it starts its block
    joiner: str  # what joins it to the previous piece of the same block
    page: int | None
    headings: tuple[str, ...]
    kind: str


class _Chunker:
    def __init__(self, count_tokens: Callable[[str], int], config: ChunkingConfig, hard_limit: int) -> None:
        if hard_limit < 1:
            raise ValueError("hard_limit must be positive")
        self.count = count_tokens
        self.config = config
        self.hard_limit = hard_limit
        self.target = max(1, min(config.max_tokens, hard_limit))
        # the fixed cost of any text (special tokens, passage prefix): count("a") = o + c and
        # count("a a") = o + 2c; count("") is no good, a lone prefix may tokenize differently
        self.overhead = max(0, 2 * count_tokens("a") - count_tokens("a a"))
        self._heading_costs: dict[tuple[str, ...], int] = {}

    # ---- measures -------------------------------------------------------------------------
    def cost(self, text: str) -> int:
        return max(0, self.count(text) - self.overhead)

    def heading_cost(self, headings: tuple[str, ...]) -> int:
        if not self.config.include_headings:
            return 0
        cost = self._heading_costs.get(headings)
        if cost is None:
            line = heading_line(headings)
            cost = self.cost(line) if line else 0
            self._heading_costs[headings] = cost
        return cost

    def budget(self, headings: tuple[str, ...], limit: int) -> int:
        """Content tokens left under ``limit`` once the overhead and heading line are paid."""
        room = limit - self.overhead - self.heading_cost(headings)
        hard_room = self.hard_limit - self.overhead - self.heading_cost(headings)
        if hard_room < 1:
            raise ValueError(f"hard_limit {self.hard_limit} leaves no room for text after the heading path")
        # a long heading path must not squeeze the text to nothing: allow up to the hard limit
        return max(room, min(hard_room, max(16, self.target // 4)))

    def chunk_budget(self, pieces: Sequence[_Piece]) -> int:
        """Content tokens a chunk made of ``pieces`` may hold: like :meth:`budget`, for its heading line.

        A chunk that opens with its section's heading block does not repeat that heading in its heading
        line (see :func:`embedding_text`), so only the outer path is paid for.
        """
        headings = self.chunk_headings(pieces)
        first = pieces[0]
        if headings and first.kind == "heading" and _same_heading(first.text, headings[-1]):
            headings = headings[:-1]
        return self.budget(headings, self.target)

    # ---- splitting ------------------------------------------------------------------------
    def pieces_of(self, index: int, block: Block, text: str) -> list[_Piece]:
        whole = _Piece(text, self.cost(text), index, True, "", block.page, block.headings, block.kind)
        budget = self.budget(block.headings, self.target)
        if whole.cost <= budget:
            return [whole]
        return self.split(whole, budget)

    def split(self, piece: _Piece, budget: int) -> list[_Piece]:
        """Cut ``piece`` into parts of at most ``budget`` content tokens: sentences, words, characters."""
        parts: list[_Piece] = []
        sentences = [s for s in _SENTENCE_END.split(piece.text) if s.strip()]
        if len(sentences) > 1:
            joiner = "\n" if piece.kind in _LINE_KINDS else " "
            for sentence in sentences:
                part = replace(piece, text=sentence.strip(), cost=self.cost(sentence), joiner=joiner)
                parts.extend([part] if part.cost <= budget else self.split(part, budget))
        else:
            words = piece.text.split()
            if len(words) > 1:
                for word in words:
                    part = replace(piece, text=word, cost=self.cost(word), joiner=" ")
                    parts.extend([part] if part.cost <= budget else self.split(part, budget))
            else:
                parts.extend(self.split_characters(piece, budget))
        # only the first part starts the block; the others continue it
        return [
            replace(part, first=piece.first and i == 0, joiner=piece.joiner if i == 0 else part.joiner)
            for i, part in enumerate(parts)
        ]

    def split_characters(self, piece: _Piece, budget: int) -> list[_Piece]:
        parts: list[_Piece] = []
        rest = piece.text
        joiner = ""  # the characters of one word are glued back together
        # search near the length the piece's own chars-per-token ratio predicts: counting the
        # whole rest again and again would be quadratic in a long "word"
        chars_per_token = len(piece.text) / max(1, piece.cost)
        while rest:
            low, high = 1, min(len(rest), int(budget * chars_per_token * 1.5) + 8)
            while low < high:  # the longest prefix that fits (binary search)
                middle = (low + high + 1) // 2
                if self.cost(rest[:middle]) <= budget:
                    low = middle
                else:
                    high = middle - 1
            head, rest = rest[:low], rest[low:]
            parts.append(replace(piece, text=head, cost=self.cost(head), joiner=joiner))
        return parts

    # ---- assembling -----------------------------------------------------------------------
    @staticmethod
    def join(pieces: Sequence[_Piece]) -> str:
        out: list[str] = []
        previous: _Piece | None = None
        for piece in pieces:
            if previous is not None:
                if piece.block == previous.block and not piece.first:
                    out.append(piece.joiner)
                elif previous.kind == "heading" or (previous.kind == piece.kind and piece.kind in _LINE_KINDS):
                    out.append("\n")
                else:
                    out.append("\n\n")
            out.append(piece.text)
            previous = piece
        return "".join(out)

    @staticmethod
    def chunk_headings(pieces: Sequence[_Piece]) -> tuple[str, ...]:
        # a chunk that opens with a heading block is about the section that heading opens
        for piece in pieces:
            if piece.kind != "heading":
                return piece.headings
        return pieces[0].headings

    def measure(self, pieces: Sequence[_Piece]) -> tuple[str, int]:
        text = self.join(pieces)
        draft = ChunkDraft(0, text, None, self.chunk_headings(pieces), 0)
        return text, self.count(embedding_text(draft, self.config))

    def overlap(self, pieces: Sequence[_Piece], headings: tuple[str, ...]) -> list[_Piece]:
        """The end of a finished chunk, about ``overlap_tokens`` long, to repeat in the next one."""
        room = min(self.config.overlap_tokens, self.budget(headings, self.target) // 2)
        taken: list[_Piece] = []
        for piece in reversed(pieces):
            if room <= 0 or piece.kind == "heading":
                break
            if piece.cost <= room:
                taken.append(piece)
                room -= piece.cost
                continue
            # the piece is longer than what is left: take its last sentences, else its last words
            sentences = [s.strip() for s in _SENTENCE_END.split(piece.text) if s.strip()]
            units = sentences if len(sentences) > 1 else piece.text.split()
            joiner = " " if len(sentences) <= 1 or piece.kind not in _LINE_KINDS else "\n"
            tail: list[_Piece] = []
            for unit in reversed(units):
                cost = self.cost(unit)
                if cost > room:
                    break
                tail.append(replace(piece, text=unit, cost=cost, first=False, joiner=joiner))
                room -= cost
            taken.extend(tail)
            break
        taken.reverse()
        if taken:
            taken[0] = replace(taken[0], first=True)
        return taken

    def run(self, blocks: Sequence[Block]) -> list[ChunkDraft]:
        queue: deque[_Piece] = deque()
        for index, block in enumerate(blocks):
            text = block.text.strip()
            if text:
                queue.extend(self.pieces_of(index, block, text))

        chunks: list[ChunkDraft] = []
        current: list[_Piece] = []  # the chunk being filled
        carried = 0  # how many pieces at the start of `current` are overlap from the previous chunk
        carried_cost = 0
        used = 0  # estimated content tokens of `current`, overlap included

        def emit() -> list[_Piece]:
            nonlocal current
            while True:
                text, tokens = self.measure(current)
                if tokens <= self.hard_limit:
                    break
                # the estimate was short (tokenization is not exactly additive): give back the end
                if carried < len(current) - 1:
                    queue.appendleft(current.pop())
                elif carried:
                    current = current[carried:]
                    reset_overlap()
                else:
                    only = current[0]
                    if len(only.text) <= 1:
                        raise ValueError(f"hard_limit {self.hard_limit} is too small for a single character")
                    parts = self.split(only, max(1, only.cost - (tokens - self.hard_limit) - 1))
                    current = parts[:1]
                    queue.extendleft(reversed(parts[1:]))
            chunks.append(
                ChunkDraft(
                    ordinal=len(chunks),
                    text=text,
                    page=current[0].page,
                    headings=self.chunk_headings(current),
                    token_count=tokens,
                )
            )
            emitted = current
            current = []
            reset_overlap()
            return emitted

        def reset_overlap(pieces: Sequence[_Piece] = ()) -> None:
            nonlocal current, carried, carried_cost, used
            current = [*pieces, *current]
            carried = len(pieces)
            carried_cost = sum(p.cost for p in pieces)
            used = sum(p.cost for p in current)

        while queue:
            piece = queue[0]
            if len(current) > carried:
                last = current[-1]
                new_section = piece.first and (
                    piece.kind == "heading" or piece.headings != last.headings or piece.page != last.page
                )
                trivial = used - carried_cost < self.config.min_tokens or all(
                    p.kind == "heading" for p in current[carried:]
                )
                if new_section and not trivial:
                    emit()
                    continue
                headings = self.chunk_headings([*current, piece])
                if used + piece.cost > self.chunk_budget([*current, piece]):
                    finished = emit()
                    following, end = queue[0], finished[-1]
                    # no overlap across pages: a chunk's page must be where its text is
                    if self.config.overlap_tokens > 0 and (following.headings, following.page) == (
                        end.headings,
                        end.page,
                    ):
                        reset_overlap(self.overlap(finished, headings))
                    continue
            elif carried and used + piece.cost > self.chunk_budget([*current, piece]):
                current = []  # no room for the overlap before this piece
                reset_overlap()
            current.append(queue.popleft())
            used += piece.cost
        if len(current) > carried:
            emit()
        return chunks


def chunk_blocks(
    blocks: Sequence[Block],
    *,
    count_tokens: Callable[[str], int],
    config: ChunkingConfig,
    hard_limit: int,
) -> list[ChunkDraft]:
    """Group ``blocks`` into chunks of about ``config.max_tokens`` tokens, never above ``hard_limit``.

    ``count_tokens`` is the embedder's counter (:meth:`Embedder.count_tokens`) and ``hard_limit`` its
    ``max_tokens``; both apply to the embedded text (:func:`embedding_text`). A chunk's ``page`` is the
    page of its first block, its ``headings`` the heading path of its section; ``token_count`` is the
    exact count of its embedded text. Ordinals start at 0.
    """
    return _Chunker(count_tokens, config, hard_limit).run(blocks)
