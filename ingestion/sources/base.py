"""The common parts of the sources: what an enumeration yields and reports, the errors, the downloading base class."""

from __future__ import annotations

import abc
import contextlib
import mimetypes
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import BinaryIO, Self

from ingestion.sources.errors import ItemTooLarge, SourceConfigError

KINDS = ("folder", "website", "s3")
#: the largest item :meth:`Source.fetch` downloads unless a source is given another cap
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
_COPY_CHUNK = 1024 * 1024

# Types the standard table may lack on a slim system, so an item's name and type agree everywhere.
_EXTRA_TYPES = {
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ".odt": "application/vnd.oasis.opendocument.text",
    ".ods": "application/vnd.oasis.opendocument.spreadsheet",
    ".odp": "application/vnd.oasis.opendocument.presentation",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".eml": "message/rfc822",
    ".csv": "text/csv",
}


@dataclass(frozen=True)
class Item:
    """One thing a source holds now.

    ``key`` is its stable identity within the source: the relative POSIX path in a folder, the canonical URL
    on a website, the object key in a bucket. ``name`` is the file name to store it under, with an extension
    that matches its type. ``url`` is where a reader can find it (the page or document URL, ``s3://bucket/key``
    for a bucket, "" for a folder). ``version`` is a cheap change marker (mtime and size, ETag, Last-Modified,
    a page's body hash; "" when the source knows none): equal versions mean unchanged, a different one means
    "fetch and compare the content hash".
    """

    key: str
    name: str
    url: str
    size: int | None
    version: str
    mime_type: str | None


@dataclass(frozen=True)
class Failure:
    """Something a source could not list during one enumeration.

    ``subtree`` says the failure covers every key that starts with ``key`` (a folder, ending with "/").
    ``transient`` failures (unreadable, timed out, server error) mean the held documents they cover must be
    kept; permanent ones (a 404 link) are reported for people to read and hide nothing.
    """

    key: str
    reason: str
    subtree: bool = False
    transient: bool = True

    def covers(self, key: str) -> bool:
        """Whether this failure is about ``key``."""
        return key == self.key or (self.subtree and key.startswith(self.key))


@dataclass(frozen=True)
class Listing:
    """A whole enumeration: the items found and what could not be listed."""

    items: tuple[Item, ...]
    failures: tuple[Failure, ...]

    def keeps(self, key: str) -> bool:
        """Whether a held key missing from ``items`` must be kept because a transient failure hid it."""
        return any(failure.transient and failure.covers(key) for failure in self.failures)


class Source(abc.ABC):
    """A place documents are synced from. Use it as a context manager, or call :meth:`close`."""

    kind: str = ""

    def __init__(self, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes <= 0:
            raise SourceConfigError("max_bytes must be a positive number of bytes")
        self.max_bytes = max_bytes
        #: what the latest :meth:`items` enumeration could not list; reset when one starts
        self.failures: list[Failure] = []

    @abc.abstractmethod
    def items(self) -> Iterator[Item]:
        """Enumerate what the source holds now, one item per key.

        Raises :class:`SourceUnreachable` when the source as a whole cannot be enumerated; failures of
        single items or sub-parts are appended to :attr:`failures` and the enumeration goes on.
        """

    @abc.abstractmethod
    def _download(self, item: Item, out: BinaryIO) -> None:
        """Write ``item``'s content to ``out``, through :meth:`_copy` so that the size cap holds."""

    def link(self, item: Item) -> str:
        """Where a reader opens ``item`` itself, as a web address: its ``url`` when that is one, else ""
        (a folder's path on the server is no link)."""
        return item.url if item.url.startswith(("http://", "https://")) else ""

    def listing(self) -> Listing:
        """Enumerate the whole source (see :meth:`items`) and return what was found and what failed."""
        found = tuple(self.items())
        return Listing(items=found, failures=tuple(self.failures))

    def fetch(self, item: Item, directory: Path | None = None) -> Path:
        """Download ``item`` to a new temporary file (in ``directory`` if given) that the caller deletes.

        Raises :class:`ItemUnavailable` when it cannot be read and :class:`ItemTooLarge` over the size cap;
        no file is left behind then.
        """
        suffix = PurePosixPath(item.name).suffix[:16]
        handle, name = tempfile.mkstemp(prefix="source-", suffix=suffix, dir=directory)
        path = Path(name)
        try:
            with os.fdopen(handle, "wb") as out:
                self._download(item, out)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    @contextlib.contextmanager
    def fetched(self, item: Item, directory: Path | None = None) -> Iterator[Path]:
        """:meth:`fetch` as a context manager that deletes the file afterwards."""
        path = self.fetch(item, directory)
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)

    def close(self) -> None:  # noqa: B027 - a folder holds nothing to release
        """Release connections; the source may not be used afterwards."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _copy(self, chunks: Iterator[bytes], out: BinaryIO, item: Item) -> None:
        """Write ``chunks`` to ``out``, refusing the item once it passes the size cap."""
        written = 0
        for chunk in chunks:
            written += len(chunk)
            if written > self.max_bytes:
                raise ItemTooLarge(f"{item.name} is larger than the {_megabytes(self.max_bytes)} download limit")
            out.write(chunk)


def mime_for_name(name: str) -> str | None:
    """The type a file name's extension stands for, or None."""
    suffix = PurePosixPath(name).suffix.lower()
    if not suffix:
        return None
    return _EXTRA_TYPES.get(suffix) or mimetypes.guess_type("x" + suffix, strict=False)[0]


def extension_for(mime_type: str) -> str:
    """The usual extension of ``mime_type`` (with its dot), or ""."""
    for suffix, known in _EXTRA_TYPES.items():
        if known == mime_type:
            return suffix
    if mime_type == "text/html":
        return ".html"
    return mimetypes.guess_extension(mime_type, strict=False) or ""


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):g} MB"
