"""Excerpts: what a generative prompt shows of a passage, within a token budget.

A small model reads a whole prompt before it writes a word, so the passages it is given cost time in
proportion to their length. An excerpt keeps the sentences that best answer the question (the
:func:`~ingestion.highlight.highlight`) and their neighbours, in the passage's order, as long as they fit.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

from ingestion.highlight import highlight, split_sentences

#: written where sentences of the passage were left out
GAP = " … "


def excerpt(question: str, text: str, *, budget_tokens: int, count_tokens: Callable[[str], int]) -> str:
    """The part of ``text`` that answers ``question`` best, in at most ``budget_tokens`` tokens.

    A text that fits is returned whole (stripped). Otherwise the excerpt holds the sentence sharing the most
    terms with the question, the highlight's other sentence, then their neighbours, the next and the previous
    in turn, while the excerpt fits; when no sentence shares a term with the question it is the text's start.
    Sentences keep their order, and " … " marks what was left out before, between or after them. A sentence
    longer than the budget is cut at a word.
    """
    text = text.strip()
    if budget_tokens <= 0 or count_tokens(text) <= budget_tokens:
        return text
    spans = split_sentences(text)
    if not spans:
        return _cut(text, budget_tokens, count_tokens)
    found = highlight(question, text)
    quoted = {i for i, (start, end) in enumerate(spans) if found.start <= start and end <= found.end}
    chosen = {_best_sentence(text, spans, found.sentences[0][0]) if found.sentences else min(quoted, default=0)}
    if found.coverage <= 0:
        chosen, quoted = {0}, set()
    # a model's tokenizer may sit behind a network call: each sentence is counted once, the excerpt's length is the
    # sum of its parts, and only the excerpt found is counted whole
    sizes: dict[int, int] = {}
    mark = count_tokens(GAP.strip())

    def cost(indices: set[int]) -> int:
        for i in indices - sizes.keys():
            sizes[i] = count_tokens(text[spans[i][0] : spans[i][1]].strip())
        return sum(sizes[i] for i in indices) + mark * _gaps(indices, len(spans))

    if cost(chosen) > budget_tokens:
        return _cut(_render(text, spans, chosen), budget_tokens, count_tokens)
    added: list[set[int]] = []
    # the highlight may hold a second sentence that adds terms of the question
    if quoted - chosen and cost(chosen | quoted) <= budget_tokens:
        added.append(quoted - chosen)
        chosen |= quoted
    # grow on both sides, the next sentence first; a side stops at the first neighbour that does not fit
    sides = {1: True, -1: True}
    while any(sides.values()):
        for step in (1, -1):
            at = max(chosen) + 1 if step == 1 else min(chosen) - 1
            if sides[step] and (not 0 <= at < len(spans) or cost(chosen | {at}) > budget_tokens):
                sides[step] = False
            if sides[step]:
                added.append({at})
                chosen.add(at)
    shown = _render(text, spans, chosen)
    # the parts counted apart may take a token or two more together
    while added and count_tokens(shown) > budget_tokens:
        chosen -= added.pop()
        shown = _render(text, spans, chosen)
    return shown


def _gaps(indices: set[int], count: int) -> int:
    """How many " … " marks the sentences at ``indices`` of ``count`` need: before, between and after them."""
    ordered = sorted(indices)
    inner = sum(b - a > 1 for a, b in pairwise(ordered))
    return inner + (ordered[0] > 0) + (ordered[-1] < count - 1)


def _best_sentence(text: str, spans: list[tuple[int, int]], quoted: str) -> int:
    """The position of the sentence a highlight quotes as ``quoted`` (perhaps cut, with a final "…")."""
    head = quoted.removesuffix("…")
    return next((i for i, (start, end) in enumerate(spans) if text[start:end].strip().startswith(head)), 0)


def _render(text: str, spans: list[tuple[int, int]], chosen: set[int]) -> str:
    """The chosen sentences of ``text`` in order, runs of neighbours as written, gaps as :data:`GAP`."""
    ordered = sorted(chosen)
    runs: list[list[int]] = []
    for i in ordered:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    parts = [text[spans[run[0]][0] : spans[run[-1]][1]].strip() for run in runs]
    shown = GAP.join(parts)
    if ordered[0] > 0:
        shown = GAP.lstrip() + shown
    if ordered[-1] < len(spans) - 1:
        shown += GAP.rstrip()
    return shown


def _cut(text: str, budget_tokens: int, count_tokens: Callable[[str], int]) -> str:
    """``text`` cut after the most words that fit in ``budget_tokens`` with a closing " …"."""
    words = text.split(" ")
    low, high = 0, len(words)
    while low < high:
        middle = (low + high + 1) // 2
        if count_tokens(" ".join(words[:middle]) + GAP.rstrip()) <= budget_tokens:
            low = middle
        else:
            high = middle - 1
    return " ".join(words[:low]) + GAP.rstrip() if low else ""
