"""Include and exclude patterns over relative POSIX paths, shared by the folder and bucket sources.

A pattern is a glob: ``*`` and ``?`` never cross a "/", ``**`` crosses any number of folders (``**/`` also
matches none), ``[abc]`` and ``[!abc]`` are character classes. A pattern without a "/" is matched against
the last part of the path at any depth (``*.pdf``, ``~$*``); one with a "/" is matched against the whole
path from the source's root (``reports/**/*.pdf``); one that ends with "/" matches folders only
(``archive/``). A path is wanted when no exclude pattern matches it or one of its folders, and, when include
patterns are given, one of them matches it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ingestion.sources.errors import SourceConfigError

#: hidden files and folders, office lock files and editors' temporary files
DEFAULT_EXCLUDE = (".*", "~$*", "*~", "*.tmp", "Thumbs.db", "desktop.ini")


class PathFilter:
    """Decides which relative paths a source lists (see the module's docstring for the patterns)."""

    def __init__(self, include: Iterable[str] = (), exclude: Iterable[str] = (), *, default_exclude: bool = True):
        self.include = [_compile(pattern) for pattern in _patterns(include, "include")]
        defaults = DEFAULT_EXCLUDE if default_exclude else ()
        self.exclude = [_compile(pattern) for pattern in (*defaults, *_patterns(exclude, "exclude"))]

    def prunes(self, folder: str) -> bool:
        """Whether the folder at relative path ``folder`` (no trailing "/") and all it holds are left out."""
        return any(rule.fullmatch(folder) or rule.fullmatch(folder + "/") for rule in self.exclude)

    def wants(self, path: str) -> bool:
        """Whether the file at relative path ``path`` is listed, its folders included in the decision."""
        parts = path.split("/")
        for depth in range(1, len(parts)):
            if self.prunes("/".join(parts[:depth])):
                return False
        if any(rule.fullmatch(path) for rule in self.exclude):
            return False
        return not self.include or any(rule.fullmatch(path) for rule in self.include)


def _patterns(value: Iterable[str], what: str) -> tuple[str, ...]:
    # one pattern given as a plain string would otherwise be read as one pattern per character
    patterns = (value,) if isinstance(value, str) else tuple(value)
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern.strip("/"):
            raise SourceConfigError(f"Each {what} pattern must be a non-empty text, not {pattern!r}")
    return patterns


def _class_end(body: str, start: int) -> int:
    """Where the character class opened at ``start`` closes, or -1 when the "[" is a plain character."""
    i = start + 1
    if body[i : i + 1] == "!":
        i += 1
    if body[i : i + 1] == "]":  # a "]" first in the class is one of its characters
        i += 1
    return body.find("]", i)


def _compile(pattern: str) -> re.Pattern[str]:
    anchored = "/" in pattern.rstrip("/")
    body = pattern.lstrip("/")
    out: list[str] = []
    i = 0
    while i < len(body):
        char = body[i]
        if body.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if body.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and (end := _class_end(body, i)) > 0:
            inside = body[i + 1 : end]
            negate = inside.startswith("!")
            inside = re.sub(r"([\\^\[\]])", r"\\\1", inside[1:] if negate else inside)
            out.append(f"[{'^/' if negate else ''}{inside}]")
            i = end + 1
            continue
        else:
            out.append(re.escape(char))
        i += 1
    regex = "".join(out)
    if not anchored:
        regex = "(?:.*/)?" + regex
    return re.compile(regex, re.DOTALL)
