"""A folder on the server or a mounted share, walked recursively."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from ingestion.sources.base import DEFAULT_MAX_BYTES, Failure, Item, Source, mime_for_name
from ingestion.sources.errors import ItemUnavailable, SourceConfigError, SourceUnreachable
from ingestion.sources.patterns import PathFilter

_CHUNK = 1024 * 1024


class FolderSource(Source):
    """Every file under ``root`` that the patterns want (see :mod:`ingestion.sources.patterns`).

    Keys are paths relative to the root with "/" separators; ``url`` is ""; ``version`` is the modification
    time in nanoseconds and the size. Symbolic links are followed only when they lead inside the root (one
    that leads outside is a permanent failure), and each folder is walked once. A sub-folder or file that
    cannot be read is a transient failure and the walk goes on. A root that is missing, not a folder or
    unreadable raises :class:`SourceUnreachable`; so does a root with nothing in it at all, which is what an
    unmounted share looks like, unless ``allow_empty`` is set.
    """

    kind = "folder"

    def __init__(
        self,
        root: Path | str,
        *,
        include: Iterable[str] = (),
        exclude: Iterable[str] = (),
        default_exclude: bool = True,
        allow_empty: bool = False,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        super().__init__(max_bytes=max_bytes)
        if not str(root):
            raise SourceConfigError("A folder source needs the path of its folder")
        self.root = Path(root).expanduser()
        if not self.root.is_absolute():
            raise SourceConfigError(f"The folder {root} must be given as an absolute path")
        self.filter = PathFilter(include, exclude, default_exclude=default_exclude)
        self.allow_empty = allow_empty

    def __repr__(self) -> str:
        return f"FolderSource({str(self.root)!r})"

    def items(self) -> Iterator[Item]:
        """Walk the folder (see the class's docstring)."""
        self.failures = []
        root = self._real_root()
        try:
            with os.scandir(root) as probe:
                empty = next(probe, None) is None
        except OSError as error:
            raise SourceUnreachable(f"The folder {self.root} cannot be read: {_why(error)}") from error
        if empty and not self.allow_empty:
            raise SourceUnreachable(f"The folder {self.root} is empty; if it is a share, it may not be mounted")
        seen = {_identity(root)}
        pending = [("", root)]
        while pending:
            rel, folder = pending.pop()
            try:
                with os.scandir(folder) as listing:
                    entries = sorted(listing, key=lambda entry: entry.name)
            except OSError as error:
                if not rel:
                    raise SourceUnreachable(f"The folder {self.root} cannot be read: {_why(error)}") from error
                self.failures.append(Failure(rel + "/", f"The folder {rel} cannot be read: {_why(error)}", True))
                continue
            folders: list[tuple[str, Path]] = []
            for entry in entries:
                child = f"{rel}/{entry.name}" if rel else entry.name
                if not _valid_name(child):
                    self.failures.append(Failure(child, f"{child!r} is not a valid UTF-8 name", transient=False))
                    continue
                try:
                    if entry.is_symlink() and not Path(entry.path).resolve().is_relative_to(root):
                        self.failures.append(Failure(child, f"{child} links outside the folder", transient=False))
                        continue
                    if entry.is_dir():
                        if not self.filter.prunes(child) and (identity := _identity(Path(entry.path))) not in seen:
                            seen.add(identity)
                            folders.append((child, Path(entry.path)))
                        continue
                    if not entry.is_file() or not self.filter.wants(child):
                        continue
                    if not os.access(entry.path, os.R_OK):
                        raise PermissionError("permission denied")
                    stat = entry.stat()
                except OSError as error:
                    self.failures.append(Failure(child, f"{child} cannot be read: {_why(error)}"))
                    continue
                yield Item(
                    key=child,
                    name=entry.name,
                    url="",
                    size=stat.st_size,
                    version=f"{stat.st_mtime_ns}-{stat.st_size}",
                    mime_type=mime_for_name(entry.name),
                )
            pending.extend(reversed(folders))

    def _download(self, item: Item, out: BinaryIO) -> None:
        root = self._real_root()
        path = (root / item.key).resolve()
        if not path.is_relative_to(root):
            raise ItemUnavailable(f"{item.key} is not inside the folder", transient=False)
        try:
            with path.open("rb") as source:
                self._copy(iter(lambda: source.read(_CHUNK), b""), out, item)
        except FileNotFoundError as error:
            raise ItemUnavailable(f"{item.key} was removed from the folder", transient=False) from error
        except IsADirectoryError as error:
            raise ItemUnavailable(f"{item.key} is now a folder", transient=False) from error
        except OSError as error:
            raise ItemUnavailable(f"{item.key} cannot be read: {_why(error)}") from error

    def _real_root(self) -> Path:
        try:
            root = self.root.resolve(strict=True)
        except OSError as error:
            raise SourceUnreachable(f"The folder {self.root} does not exist or is not mounted") from error
        if not root.is_dir():
            raise SourceUnreachable(f"{self.root} is not a folder")
        return root


def _identity(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_dev, stat.st_ino


def _valid_name(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes arrive as lone surrogates
        return False
    return True


def _why(error: OSError) -> str:
    return (error.strerror or str(error)).lower()
