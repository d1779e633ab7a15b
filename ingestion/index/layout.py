"""The store's folder: file names and formats, its configuration, generation and segment names, the pointer
``CURRENT``, and the atomic file writes a publication is made of (see the package docstring for the layout)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import REBUILD_HINT, IndexCorruptError, IndexMismatchError

FORMAT = 2
CURRENT_FILE = "CURRENT"
LOCK_FILE = "writer.lock"
MERGE_LOCK_FILE = "merge.lock"
SEGMENT_FILE = "segment.json"
DATA_FILE = "data.bin"
DENSE_FILE = "dense.faiss"
_TEMP_PREFIX = ".tmp-"
_MERGE_TEMP_PREFIX = ".tmp-merge-"
FLAT, HNSW = "flat", "hnsw"

_GENERATION = re.compile(r"g[0-9]{12}")
_MANIFEST = re.compile(r"g[0-9]{12}\.json")
_SEGMENT = re.compile(r"s[0-9]{12}")
_DEAD = re.compile(r"dead-[0-9]{12}\.npy")
#: a version folder's name in the single-version format of earlier releases
_OLD_VERSION = re.compile(r"v[0-9]{12}")


@dataclass(frozen=True)
class IndexConfig:
    """Where the store lives, when a segment turns approximate, and how segments are written and merged."""

    directory: Path
    #: a segment of more than this many chunks is HNSW (approximate); at or below, exact (flat)
    approx_threshold: int = 200_000
    #: seconds a writer waits for the lock before giving up with IndexBusyError
    lock_timeout: float = 120.0
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128
    #: segments of up to this many live chunks are all of the smallest merge tier
    merge_floor: int = 1_000
    #: a tier holding this many segments is merged into one
    merge_factor: int = 8
    #: a writer session writes a segment each time it has buffered this many chunks (bounds its memory)
    segment_chunks: int = 100_000
    #: after publishing, run the merges the policy asks for in a background thread of the writing process
    background_merge: bool = True
    #: a newer generation whose new segments hold at most this many chunks (a few new documents, deletions) is
    #: loaded by :meth:`FaissStore.view` before it answers (milliseconds); a bigger one (a merged segment)
    #: in the background, questions being answered from the old snapshot meanwhile
    sync_refresh_chunks: int = 10_000


# ---- names ---------------------------------------------------------------------------------------


def _generation_name(generation: int) -> str:
    return f"g{generation:012d}"


def _segment_name(number: int) -> str:
    return f"s{number:012d}"


def _dead_name(generation: int) -> str:
    return f"dead-{generation:012d}.npy"


def is_version_name(name: str) -> bool:
    """Whether ``name`` names a generation as ``CURRENT`` does ("g000000000042"): a plain name, never a path."""
    return _GENERATION.fullmatch(name) is not None


def is_segment_name(name: str) -> bool:
    """Whether ``name`` is a segment folder's name ("s000000000007")."""
    return _SEGMENT.fullmatch(name) is not None


def _rebuild_message(directory: Path, problem: str) -> str:
    return f"The search index at {directory} {problem}: {REBUILD_HINT}"


def _read_pointer(directory: Path) -> str | None:
    """The raw name ``CURRENT`` holds (None without one); IndexCorruptError when it is not a plain name."""
    try:
        raw = (directory / CURRENT_FILE).read_bytes()
    except FileNotFoundError:
        return None
    try:
        name = raw.decode("ascii").strip()
    except UnicodeDecodeError as exc:
        raise IndexCorruptError(_rebuild_message(directory, "has a pointer file that is not a generation")) from exc
    return name or None


def _current_generation(directory: Path) -> str | None:
    """The generation ``CURRENT`` names, checked: IndexMismatchError for the format of earlier releases,
    IndexCorruptError for anything else than a generation's name (a path above all)."""
    name = _read_pointer(directory)
    if name is None or is_version_name(name):
        return name
    if _OLD_VERSION.fullmatch(name):
        raise IndexMismatchError(
            _rebuild_message(directory, "was saved in the single-version format of an earlier release")
        )
    raise IndexCorruptError(_rebuild_message(directory, f"has a pointer file naming {name[:80]!r}, not a generation"))


def _number(name: str | None) -> int:
    """The number of a generation, segment or old version name ("g000000000042" -> 42); 0 for None."""
    return 0 if name is None else int(name[1:])


# ---- files ---------------------------------------------------------------------------------------


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _temp_name(stem: str) -> str:
    return f"{_TEMP_PREFIX}{stem}-{secrets.token_hex(4)}"


def _replace_file(path: Path, data: bytes) -> None:
    """Write ``path`` atomically: a fsynced temporary file renamed over it, then its folder fsynced."""
    temporary = path.parent / _temp_name(path.name)
    try:
        _write_bytes(temporary, data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    _fsync_path(path.parent)


def _switch_current(directory: Path, name: str) -> None:
    """Make ``name`` the current generation: the one step that publishes."""
    _replace_file(directory / CURRENT_FILE, f"{name}\n".encode("ascii"))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _save_dead(path: Path, positions: np.ndarray) -> None:
    """A tombstone file: the sorted positions of removed chunks, written atomically."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(positions, dtype=np.int64))
    _replace_file(path, buffer.getvalue())
