"""What an answer's text says: its citation markers and its repetitions. Pure functions, no model."""

from __future__ import annotations

import re

#: one citation marker as models write them: ``[2]``, ``[1, 3]``, ``[1-3]``, ``[2; 4]``
_MARKER = r"\[\s*\d{1,3}(?:\s*[,;\-–]\s*\d{1,3})*\s*\]"
#: adjacent markers (``[1][2]``, ``[1] [1]``) and the blanks before them
_MARKER_RUN = re.compile(rf"(?P<before>[ \t]*)(?P<run>{_MARKER}(?:[ \t]*{_MARKER})*)(?P<after>[ \t]*)")
_MARKER_ONE = re.compile(_MARKER)
_NUMBER_OR_RANGE = re.compile(r"(\d{1,3})(?:\s*[\-–]\s*(\d{1,3}))?")
#: a range longer than this is not read as a list of sources ("[1-100]")
_MAX_RANGE = 20
_WORD = re.compile(r"\w+")


def citations_clean(text: str, sources: int) -> str:
    """``text`` with its citation markers limited to the sources the model was given.

    Markers of sources outside ``1..sources`` are removed (with the blanks before them), lists and
    ranges (``[1, 3]``, ``[1-2]``) are written as single markers (``[1][3]``, ``[1][2]``), and a source
    cited twice in one run of adjacent markers (``[1][1]``, ``[2] [2]``) is cited once.
    """

    def replace(match: re.Match[str]) -> str:
        numbers: list[int] = []
        for marker in _MARKER_ONE.findall(match.group("run")):
            for number in _marker_numbers(marker):
                if 1 <= number <= sources and number not in numbers:
                    numbers.append(number)
        if numbers:
            return match.group("before") + "".join(f"[{n}]" for n in numbers) + match.group("after")
        start, end = match.span()
        if start == 0 or text[start - 1] == "\n" or end == len(text) or text[end] in ".,;:!?)\n":
            return ""  # nothing to separate: at a line's start or end, or before punctuation
        return match.group("before") or match.group("after")

    return _MARKER_RUN.sub(replace, text)


def cited_sources(text: str) -> list[int]:
    """The source numbers ``text`` cites, in the order of their first citation (ranges and lists read too)."""
    numbers: list[int] = []
    for marker in _MARKER_ONE.findall(text):
        for number in _marker_numbers(marker):
            if number not in numbers:
                numbers.append(number)
    return numbers


def _marker_numbers(marker: str) -> list[int]:
    numbers: list[int] = []
    for first, last in _NUMBER_OR_RANGE.findall(marker):
        start = int(first)
        end = int(last) if last else start
        if start <= end <= start + _MAX_RANGE:
            numbers.extend(range(start, end + 1))
        else:  # "[3-1]" or "[1-100]": keep the two numbers as written
            numbers.extend([start, end])
    return numbers


def words(text: str) -> list[str]:
    """The words of ``text``, case-folded, without citation markers or punctuation."""
    return [word for _, _, word in word_positions(text)]


def word_positions(text: str) -> list[tuple[int, int, str]]:
    """Each word of ``text`` as :func:`words` reads it, after where it starts and ends in ``text``."""
    blanked = _MARKER_ONE.sub(lambda match: " " * len(match.group()), text)
    return [(match.start(), match.end(), match.group().casefold()) for match in _WORD.finditer(blanked)]


def repeated_ngram(text: str, n: int = 4) -> bool:
    """Whether some sequence of ``n`` words occurs twice in ``text`` (case, punctuation and citations ignored).

    A measure of looping answers: ``"the debt is due. The debt is due."`` repeats a 4-gram.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    tokens = words(text)
    seen: set[tuple[str, ...]] = set()
    for i in range(len(tokens) - n + 1):
        gram = tuple(tokens[i : i + n])
        if gram in seen:
            return True
        seen.add(gram)
    return False
