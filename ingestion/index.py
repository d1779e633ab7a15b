"""The ``faiss`` search store: chunk vectors, texts and lexical terms on one machine's disk, in segments.

Layout of ``IndexConfig.directory``::

    CURRENT                  name of the current generation ("g000000000042"), switched with os.replace
    g000000000042.json       the manifest of generation 42: identity, live segments, their deletion files
    g000000000041.json       the previous generation, kept one round for readers still loading it
    writer.lock              the writers' file lock (readers never take it)
    merge.lock               held by a process building a merged segment
    s000000000007/           a segment, never modified once written (but for new deletion files)
        segment.json         counts, kind ("flat" | "hnsw"), dimension, languages, layout of data.bin
        data.bin             arrays, each 64-byte aligned, memory-mapped by readers (see ``_SegmentData``):
                             chunk, document and collection ids, ids sorted (for lookups), texts (UTF-8),
                             companion vectors (float16), lexical terms: per passage its language and length,
                             a vocabulary (64-bit term keys, sorted, and the terms' text) and its postings
                             (for each term: passages and term frequencies, a CSC matrix)
        dense.faiss          an IndexFlatIP, or an IndexHNSWFlat for a segment over ``approx_threshold``
        dead-000000000042.npy  positions of removed chunks as of generation 42 (a tombstone file)

**Writing.** A writer session (one at a time across processes, under ``writer.lock``) buffers its chunks and
writes them as one new segment (several when it holds more than ``segment_chunks``), never the whole store.
Removed or replaced chunks become tombstones: a new ``dead-<generation>.npy`` for each touched segment, the old
segment left as it is. Publishing: every file is written under a temporary name, fsynced and renamed, then the
new generation's manifest, then ``CURRENT`` is switched (``os.replace`` of a fsynced temporary file, the folder
fsynced). A writer killed at any point leaves the previous generation current and intact; the next writer
removes what it left. Files referenced by neither the current nor the previous generation are removed.

**Reading.** :meth:`FaissStore.view` returns the snapshot in memory. When ``CURRENT`` has changed it opens
only the segments it does not hold yet (memory-mapped: their vectors, texts and postings are shared with the
page cache) and the new tombstone files, then swaps the snapshot. When the new segments are small (at most
``sync_refresh_chunks`` chunks: new documents, deletions) this happens before it returns, in milliseconds, so a
question asked after an upload in another process finds the document. A bigger load (a merged segment) runs
in a background thread while questions are answered from the old snapshot. A writer's own process sees its
write when the ``writer()`` block ends. :meth:`FaissStore.refresh` always loads synchronously (tests,
benchmarks, the first open).

**Dense search** runs each segment's FAISS index with the filter (an ``IDSelectorBitmap`` of the live, allowed
positions) and merges the top ``k``. On an HNSW segment a filter letting through at most 5% of it is scanned
exactly, and a walk that finds fewer than ``k`` allowed nodes is completed by an exact scan.

**Lexical search** is BM25 (Lucene's variant, ``ingestion.language``) over the analysed terms stored per
passage: for each query term the postings of every segment, less its tombstones, give the term's document
frequency over the whole store; N and the average length are summed over live passages. Filters choose which
passages are returned, not the statistics. Nothing is analysed at search or load time.

**Merges** (:meth:`FaissStore.merge`; started in a background thread of the writing process after a publication
when ``background_merge`` is on) build a merged segment from the stored vectors and postings (nothing is
re-analysed or re-embedded), without holding the writers' lock, then publish it under the lock, carrying over
the deletions made meanwhile. The policy, re-evaluated after each merge:

1. tiers: a segment's tier is how many times ``merge_factor`` its live size exceeds ``merge_floor`` (every
   segment up to ``merge_floor`` chunks is tier 0); the lowest tier holding ``merge_factor`` segments or more
   is merged into one. This keeps at most ``merge_factor - 1`` segments per tier (five tiers up to four
   million chunks with the defaults), each chunk rewritten about once per tier (log-structured);
2. exact-scan cap: when the flat segments over ``merge_floor`` chunks hold more than ``approx_threshold``
   chunks together, they are merged into one (HNSW, being over the threshold);
3. tombstones: a segment over 20% removed chunks is rewritten without them (an HNSW graph cannot forget nodes).

A merged segment over ``approx_threshold`` chunks is HNSW, otherwise flat. A process that writes in bulk and
exits (a rebuild) should call :meth:`FaissStore.merge` before it does: its background merge would die with it
(harmlessly: the next writer's process merges).

Stores saved in the single-version format of earlier releases are refused: run ``manage.py rebuild_index``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import faiss as _faiss
import numpy as np
from filelock import FileLock
from filelock import Timeout as LockTimeout

from .errors import IndexBusyError, IndexCorruptError, IndexMismatchError
from .language import PassageTerms, TextAnalyzer, bm25_idf, bm25_term_weight, passage_terms
from .store import ChunkFacts, ExportBatch, PassageEmbeddings, StoreIdentity

# the stubs generated with the SWIG bindings miss most of the API (keyword arguments, HNSW params)
faiss: Any = _faiss

__all__ = [
    "CURRENT_FILE",
    "FaissStore",
    "FaissView",
    "FaissWriter",
    "IndexConfig",
    "generation_files",
    "is_segment_name",
    "is_version_name",
    "merge_plan",
    "read_saved_state",
]

logger = logging.getLogger(__name__)

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
#: a segment is rewritten without its removed chunks once they are this share of it
_MAX_DEAD_SHARE = 0.2
#: with a filter letting through at most this share of an approximate segment, search it exactly
_EXACT_FILTER_SHARE = 0.05
_COPY_ROWS = 65_536
_ALIGN = 64
#: filters of at most this many ids have their per-segment masks cached by a view
_CACHED_FILTER_IDS = 256
_SELECT_ALL = faiss.IDSelectorAll()

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
    return f"The search index at {directory} {problem}: run `manage.py rebuild_index`"


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
    temporary = path.parent / _temp_name(path.name)
    try:
        with open(temporary, "wb") as file:
            np.save(file, np.asarray(positions, dtype=np.int64))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    _fsync_path(path.parent)


# ---- manifests -----------------------------------------------------------------------------------


def _identity_dict(identity: StoreIdentity) -> dict[str, Any]:
    return {
        "embedder": identity.embedder,
        "dimension": identity.dimension,
        "companion": identity.companion,
        "companion_dimension": identity.companion_dimension,
    }


def _describe(identity: dict[str, Any]) -> str:
    text = f"{identity.get('embedder')} (dim {identity.get('dimension')})"
    if identity.get("companion"):
        text += f" with the companion {identity.get('companion')} (dim {identity.get('companion_dimension')})"
    return text


def _check_identity(saved: dict[str, Any], identity: StoreIdentity) -> None:
    expected = _identity_dict(identity)
    if any(saved.get(key) != value for key, value in expected.items()):
        raise IndexMismatchError(
            f"The index was built with {_describe(saved)} but the configured embedder is {_describe(expected)}: "
            "run `manage.py rebuild_index`"
        )


def _read_manifest(directory: Path, name: str) -> dict[str, Any]:
    """The manifest of generation ``name``, checked (names are plain names: never followed out of the folder)."""
    try:
        with open(directory / f"{name}.json", encoding="utf-8") as file:
            manifest = json.load(file)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexCorruptError(_rebuild_message(directory, f"has an unreadable manifest {name}.json")) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise IndexCorruptError(
            _rebuild_message(directory, f"has format {found} in {name}.json where this release reads {FORMAT}")
        )
    try:
        ok = manifest["generation"] == _number(name) and isinstance(manifest["identity"], dict)
        for entry in manifest["segments"]:
            ok = ok and is_segment_name(entry["name"]) and int(entry["count"]) > int(entry["dead"]) >= 0
            ok = ok and isinstance(entry["uid"], str)
            deletes = entry["deletes"]
            ok = ok and (
                deletes is None if entry["dead"] == 0 else isinstance(deletes, str) and bool(_DEAD.fullmatch(deletes))
            )
        previous = manifest.get("previous")
        ok = ok and (previous is None or (isinstance(previous, str) and is_version_name(previous)))
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise IndexCorruptError(_rebuild_message(directory, f"has a malformed manifest {name}.json"))
    return manifest


def read_saved_state(directory: Path) -> dict[str, Any] | None:
    """What a status page shows of the saved store: version (the generation), chunks (also as ``vectors``),
    embedder, dimension, companion, kind, segments, deleted, chunks_without_companion, saved_at.

    None when nothing was saved yet. Cheap: reads the pointer and one manifest. A store in the format of an
    earlier release gives ``{"version": ..., "format": 1, "needs_rebuild": True}``.
    """
    directory = Path(directory)
    for _ in range(5):
        name = _read_pointer(directory)
        if name is None:
            return None
        if _OLD_VERSION.fullmatch(name):
            return {"version": _number(name), "format": 1, "needs_rebuild": True}
        name = _current_generation(directory)
        if name is None:
            return None
        try:
            manifest = _read_manifest(directory, name)
        except FileNotFoundError:
            continue  # a writer replaced that generation meanwhile
        identity = manifest["identity"]
        return {
            "version": manifest["generation"],
            "format": FORMAT,
            "chunks": manifest["chunks"],
            "vectors": manifest["chunks"],
            "embedder": identity["embedder"],
            "dimension": identity["dimension"],
            "companion": identity["companion"],
            "companion_dimension": identity["companion_dimension"],
            "kind": manifest["kind"],
            "segments": len(manifest["segments"]),
            "deleted": sum(int(entry["dead"]) for entry in manifest["segments"]),
            "chunks_without_companion": manifest["chunks_without_companion"],
            "saved_at": manifest["saved_at"],
        }
    return None


def generation_files(directory: Path) -> tuple[str, list[str]] | None:
    """The current generation's name and every file it needs, relative to ``directory`` (its manifest, its
    segments' files, their tombstone files): what a backup copies, under the writers' lock. None when empty."""
    directory = Path(directory)
    name = _current_generation(directory)
    if name is None:
        return None
    manifest = _read_manifest(directory, name)
    files = [f"{name}.json"]
    for entry in manifest["segments"]:
        files += [f"{entry['name']}/{SEGMENT_FILE}", f"{entry['name']}/{DATA_FILE}", f"{entry['name']}/{DENSE_FILE}"]
        if entry["deletes"]:
            files.append(f"{entry['name']}/{entry['deletes']}")
    return name, files


# ---- terms ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1 << 20)
def _term_key(term: str) -> int:
    """A term's 64-bit key (its vocabulary entry; the same in every process and segment)."""
    digest = hashlib.blake2b(term.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _term_keys(terms: Iterable[str]) -> np.ndarray:
    return np.fromiter((_term_key(t) for t in terms), dtype=np.uint64)


def _pack_strings(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 of ``strings`` concatenated (uint8) and their offsets (n + 1, int64)."""
    encoded = [s.encode("utf-8", "surrogatepass") for s in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    if encoded:
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def _gather_ranges(data: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The byte ranges ``rows`` of a packed array (``data``, ``offsets``), packed anew."""
    return _gather(data, offsets[rows], offsets[rows + 1])


def _gather(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ranges ``starts[i]:ends[i]`` of ``data`` concatenated, and their offsets."""
    lengths = ends - starts
    new_offsets = np.zeros(len(starts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    total = int(new_offsets[-1])
    if total == 0:
        return np.zeros(0, dtype=np.uint8), new_offsets
    index = np.repeat(starts - new_offsets[:-1], lengths) + np.arange(total, dtype=np.int64)
    return np.asarray(data[index], dtype=np.uint8), new_offsets


def _postings(rows: np.ndarray, keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, ...]:
    """A term-by-passage matrix in CSC form from (passage, term key, count) triples:
    the sorted term keys, each term's start in the postings, and the postings' passages and counts."""
    if len(keys) == 0:
        empty = np.zeros(0, dtype=np.int32)
        return np.zeros(0, dtype=np.uint64), np.zeros(1, dtype=np.int64), empty, empty
    term_keys, columns = np.unique(keys, return_inverse=True)
    order = np.lexsort((rows, columns))
    pointer = np.zeros(len(term_keys) + 1, dtype=np.int64)
    np.cumsum(np.bincount(columns, minlength=len(term_keys)), out=pointer[1:])
    return term_keys, pointer, rows[order].astype(np.int32), counts[order].astype(np.int32)


# ---- segments ------------------------------------------------------------------------------------


@dataclass
class _SegmentData:
    """A segment's contents in memory, to be written (by a writer session or a merge)."""

    chunk_ids: np.ndarray  # (n,) int64
    document_ids: np.ndarray  # (n,) int64
    collection_ids: np.ndarray  # (n,) int64
    #: the dense vectors, in pieces: (matrix, its rows to take in that order, None for all of them)
    dense: Sequence[tuple[np.ndarray, np.ndarray | None]]
    companion: np.ndarray | None  # (n, companion dimension) float16, zeros where not given
    has_companion: np.ndarray | None  # (n,) bool: embedded with the companion (None: the store has none)
    text_bytes: np.ndarray  # uint8, UTF-8 texts concatenated
    text_offsets: np.ndarray  # (n + 1,) int64
    language_names: list[str]
    languages: np.ndarray  # (n,) uint8 indices into language_names
    lengths: np.ndarray  # (n,) int32 passage lengths in terms
    term_keys: np.ndarray  # (V,) uint64 sorted
    term_bytes: np.ndarray  # uint8, the terms' text
    term_offsets: np.ndarray  # (V + 1,) int64
    post_ptr: np.ndarray  # (V + 1,) int64
    post_pos: np.ndarray  # (nnz,) int32 passage positions
    post_tf: np.ndarray  # (nnz,) int32 term frequencies

    def __len__(self) -> int:
        return len(self.chunk_ids)

    def arrays(self) -> dict[str, np.ndarray]:
        order = np.argsort(self.chunk_ids, kind="stable")
        arrays: dict[str, np.ndarray] = {
            "chunk_ids": self.chunk_ids.astype(np.int64, copy=False),
            "document_ids": self.document_ids.astype(np.int64, copy=False),
            "collection_ids": self.collection_ids.astype(np.int64, copy=False),
            "id_sorted": self.chunk_ids[order].astype(np.int64, copy=False),
            "id_order": order.astype(np.int64, copy=False),
            "lengths": self.lengths.astype(np.int32, copy=False),
            "languages": self.languages.astype(np.uint8, copy=False),
            "text_offsets": self.text_offsets.astype(np.int64, copy=False),
            "text_bytes": self.text_bytes.astype(np.uint8, copy=False),
            "term_keys": self.term_keys.astype(np.uint64, copy=False),
            "term_offsets": self.term_offsets.astype(np.int64, copy=False),
            "term_bytes": self.term_bytes.astype(np.uint8, copy=False),
            "post_ptr": self.post_ptr.astype(np.int64, copy=False),
            "post_pos": self.post_pos.astype(np.int32, copy=False),
            "post_tf": self.post_tf.astype(np.int32, copy=False),
        }
        if self.companion is not None and self.has_companion is not None:
            arrays["companion"] = self.companion.astype(np.float16, copy=False)
            arrays["has_companion"] = self.has_companion.astype(np.bool_, copy=False)
        return arrays


def _dense_index(
    kind: str, dimension: int, pieces: Sequence[tuple[np.ndarray, np.ndarray | None]], config: IndexConfig
) -> Any:
    if kind == HNSW:
        index = faiss.IndexHNSWFlat(dimension, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.hnsw_ef_construction
        index.hnsw.efSearch = config.hnsw_ef_search
    else:
        index = faiss.IndexFlatIP(dimension)
    # in slices: a copy of every vector at once would double the peak memory (a merge's above all)
    for matrix, rows in pieces:
        for start in range(0, len(matrix) if rows is None else len(rows), _COPY_ROWS):
            block = matrix[start : start + _COPY_ROWS] if rows is None else matrix[rows[start : start + _COPY_ROWS]]
            index.add(np.ascontiguousarray(block, dtype=np.float32))
    return index


def _write_segment(folder: Path, data: _SegmentData, identity: StoreIdentity, config: IndexConfig) -> str:
    """Write ``data`` as a segment into the (new, temporary) ``folder``, every file fsynced; returns its kind."""
    layout: dict[str, dict[str, Any]] = {}
    offset = 0
    with open(folder / DATA_FILE, "wb") as file:
        for name, array in data.arrays().items():
            array = np.ascontiguousarray(array)
            padding = -offset % _ALIGN
            file.write(b"\0" * padding)
            offset += padding
            layout[name] = {"dtype": array.dtype.str, "shape": list(array.shape), "offset": offset}
            if array.nbytes:
                file.write(array.reshape(-1).view(np.uint8).data)
            offset += array.nbytes
        file.flush()
        os.fsync(file.fileno())
    kind = HNSW if len(data) > config.approx_threshold else FLAT
    index = _dense_index(kind, identity.dimension, data.dense, config)
    faiss.write_index(index, str(folder / DENSE_FILE))
    del index
    _fsync_path(folder / DENSE_FILE)
    meta = {
        "format": FORMAT,
        "uid": secrets.token_hex(8),
        "count": len(data),
        "kind": kind,
        "identity": _identity_dict(identity),
        "languages": data.language_names,
        "vocabulary": len(data.term_keys),
        "postings": len(data.post_pos),
        "data_bytes": offset,
        "arrays": layout,
        "written_at": time.time(),
    }
    _write_bytes(folder / SEGMENT_FILE, json.dumps(meta, indent=1).encode("utf-8"))
    _fsync_path(folder)
    return kind


class _Segment:
    """One segment opened for reading: its arrays memory-mapped, its FAISS index mapped too (HNSW: the
    graph read). Immutable; shared by every view holding it."""

    def __init__(self, name: str, folder: Path, identity: StoreIdentity) -> None:
        self.name = name
        try:
            with open(folder / SEGMENT_FILE, encoding="utf-8") as file:
                meta = json.load(file)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IndexCorruptError(_rebuild_message(folder.parent, f"has an unreadable segment {name}")) from exc
        if meta.get("format") != FORMAT:
            raise IndexCorruptError(_rebuild_message(folder.parent, f"has a segment {name} of another format"))
        _check_identity(meta.get("identity", {}), identity)
        #: random, written once: a reader never mistakes another segment of the same name for this one
        self.uid: str = str(meta.get("uid", ""))
        self.count: int = int(meta["count"])
        self.kind: str = meta["kind"]
        self.language_names: tuple[str, ...] = tuple(meta["languages"])
        size = (folder / DATA_FILE).stat().st_size
        if size != meta["data_bytes"] or self.count <= 0:
            raise IndexCorruptError(_rebuild_message(folder.parent, f"has a truncated segment {name}"))
        raw = np.memmap(folder / DATA_FILE, dtype=np.uint8, mode="r")
        arrays: dict[str, np.ndarray] = {}
        for key, spec in meta["arrays"].items():
            dtype = np.dtype(spec["dtype"])
            shape = tuple(int(s) for s in spec["shape"])
            start = int(spec["offset"])
            stop = start + dtype.itemsize * math.prod(shape)
            if start % _ALIGN or stop > size:
                raise IndexCorruptError(_rebuild_message(folder.parent, f"has a segment {name} with a bad layout"))
            arrays[key] = raw[start:stop].view(dtype).reshape(shape)
        n = self.count
        try:
            self.chunk_ids = arrays["chunk_ids"]
            self.document_ids = arrays["document_ids"]
            self.collection_ids = arrays["collection_ids"]
            self.id_sorted = arrays["id_sorted"]
            self.id_order = arrays["id_order"]
            self.lengths = arrays["lengths"]
            self.languages = arrays["languages"]
            self.text_offsets = arrays["text_offsets"]
            self.text_bytes = arrays["text_bytes"]
            self.term_keys = arrays["term_keys"]
            self.term_offsets = arrays["term_offsets"]
            self.term_bytes = arrays["term_bytes"]
            self.post_ptr = arrays["post_ptr"]
            self.post_pos = arrays["post_pos"]
            self.post_tf = arrays["post_tf"]
        except KeyError as exc:
            raise IndexCorruptError(_rebuild_message(folder.parent, f"has a segment {name} without {exc}")) from exc
        self.companion: np.ndarray | None = arrays.get("companion")
        self.has_companion: np.ndarray | None = arrays.get("has_companion")
        vocabulary = len(self.term_keys)
        consistent = (
            all(len(a) == n for a in (self.chunk_ids, self.document_ids, self.collection_ids, self.id_sorted))
            and len(self.id_order) == len(self.lengths) == len(self.languages) == n
            and len(self.text_offsets) == n + 1
            and len(self.term_offsets) == len(self.post_ptr) == vocabulary + 1
            and len(self.post_pos) == len(self.post_tf) == int(meta["postings"])
            and (self.companion is None) == (self.has_companion is None)
            and (self.companion is None or self.companion.shape == (n, identity.companion_dimension))
            and (self.has_companion is None or len(self.has_companion) == n)
        )
        if not consistent:
            raise IndexCorruptError(_rebuild_message(folder.parent, f"has a segment {name} whose arrays disagree"))
        # the flat codes are mapped, not copied: processes share them through the page cache
        self.index: Any = faiss.read_index(str(folder / DENSE_FILE), faiss.IO_FLAG_MMAP_IFC)
        if self.index.ntotal != n or self.index.d != identity.dimension:
            raise IndexCorruptError(_rebuild_message(folder.parent, f"has a segment {name} of another size"))
        self.dimension = identity.dimension
        self._term_strings: list[str] | None = None

    def vectors(self) -> np.ndarray:
        """Every stored dense vector, by position: a read-only view of FAISS's own (mapped) storage."""
        flat = faiss.downcast_index(self.index.storage) if self.kind == HNSW else self.index
        view: np.ndarray = faiss.rev_swig_ptr(flat.get_xb(), self.count * self.dimension)
        view = view.reshape(self.count, self.dimension)
        view.flags.writeable = False
        return view

    def text(self, position: int) -> str:
        start, stop = int(self.text_offsets[position]), int(self.text_offsets[position + 1])
        return bytes(self.text_bytes[start:stop]).decode("utf-8", "surrogatepass")

    def term_strings(self) -> list[str]:
        """The vocabulary's terms by column (decoded once, for exports)."""
        if self._term_strings is None:
            offsets = self.term_offsets.tolist()
            blob = bytes(self.term_bytes)
            self._term_strings = [
                blob[offsets[i] : offsets[i + 1]].decode("utf-8", "surrogatepass") for i in range(len(offsets) - 1)
            ]
        return self._term_strings

    def term_columns(self) -> np.ndarray:
        """The vocabulary column of each posting."""
        return np.repeat(np.arange(len(self.term_keys), dtype=np.int64), np.diff(self.post_ptr))

    def search(self, vector: np.ndarray, k: int, bits: np.ndarray | None, available: int, ef: int) -> Any:
        """FAISS's (distances, positions) of the ``k`` best positions the bitmap ``bits`` allows (None: all)."""
        selector = None if bits is None else faiss.IDSelectorBitmap(self.count, faiss.swig_ptr(bits))
        # an exact scan of one query through a selector (all positions, without a filter) is several times
        # faster than FAISS's plain path, which spreads that one query over OpenMP threads
        exact = faiss.SearchParameters(sel=_SELECT_ALL if selector is None else selector)
        if self.kind == FLAT:
            return self.index.search(vector, k, params=exact)
        storage = faiss.downcast_index(self.index.storage)
        if selector is not None and available <= _EXACT_FILTER_SHARE * self.count:
            # a graph walk finds few allowed nodes when they are rare: scan them exactly instead
            return storage.search(vector, k, params=exact)
        params = faiss.SearchParametersHNSW(efSearch=max(ef, 2 * k))
        if selector is not None:
            params.sel = selector
        distances, positions = self.index.search(vector, k, params=params)
        if np.count_nonzero(positions[0] >= 0) < k:
            return storage.search(vector, k, params=exact)
        return distances, positions


class _Part:
    """A segment as one generation sees it: the segment and its tombstones, with their totals."""

    def __init__(self, segment: _Segment, dead: np.ndarray | None, deletes: str | None, *, companion: bool) -> None:
        self.segment = segment
        #: (n,) bool: removed positions; None when none are
        self.dead = dead if dead is not None and dead.any() else None
        self.deletes = deletes if self.dead is not None else None
        self.alive: np.ndarray | None = None if self.dead is None else ~self.dead
        self.dead_count = 0 if self.dead is None else int(np.count_nonzero(self.dead))
        self.live = segment.count - self.dead_count
        self.alive_bits = None if self.alive is None else np.packbits(self.alive, bitorder="little")
        lengths = segment.lengths if self.alive is None else segment.lengths[self.alive]
        self.length_sum = int(lengths.sum(dtype=np.int64))
        codes = segment.languages if self.alive is None else segment.languages[self.alive]
        self.languages = frozenset(segment.language_names[c] for c in np.unique(codes).tolist())
        self.without_companion = 0
        if companion:
            if segment.has_companion is None:
                self.without_companion = self.live
            else:
                has = segment.has_companion if self.alive is None else segment.has_companion[self.alive]
                self.without_companion = self.live - int(np.count_nonzero(has))

    @property
    def name(self) -> str:
        return self.segment.name

    def live_positions(self) -> np.ndarray:
        if self.alive is None:
            return np.arange(self.segment.count, dtype=np.int64)
        return np.flatnonzero(self.alive)

    def with_dead(self, dead: np.ndarray | None, deletes: str | None, *, companion: bool) -> _Part:
        return _Part(self.segment, dead, deletes, companion=companion)


def _load_dead(folder: Path, deletes: str, count: int) -> np.ndarray:
    try:
        positions = np.load(folder / deletes, allow_pickle=False)
    except (ValueError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise IndexCorruptError(_rebuild_message(folder.parent, f"has an unreadable tombstone file {deletes}")) from exc
    dead = np.zeros(count, dtype=bool)
    if positions.ndim != 1 or (len(positions) and (positions.min() < 0 or positions.max() >= count)):
        raise IndexCorruptError(_rebuild_message(folder.parent, f"has a tombstone file {deletes} out of range"))
    dead[positions] = True
    return dead


# ---- views ---------------------------------------------------------------------------------------


def _id_array(ids: Collection[int]) -> np.ndarray:
    return np.fromiter((int(i) for i in ids), dtype=np.int64)


class FaissView:
    """One generation of the store in memory: every read of one search sees the same chunks.
    Never modified once built (safe to share between threads)."""

    def __init__(
        self,
        *,
        identity: StoreIdentity,
        config: IndexConfig,
        generation: int,
        parts: Sequence[_Part],
        next_segment: int = 1,
        saved_at: float | None = None,
        previous: str | None = None,
    ) -> None:
        self.identity = identity
        self.config = config
        #: the generation number (the store's version; 0 before anything was saved)
        self.generation = generation
        self.next_segment = next_segment
        self.saved_at = saved_at
        #: the generation this one replaced (its files are kept one round)
        self.previous = previous
        self._parts = tuple(parts)
        self._live = sum(p.live for p in self._parts)
        self._average_length = sum(p.length_sum for p in self._parts) / self._live if self._live else 0.0
        self._languages = frozenset().union(*(p.languages for p in self._parts))
        self._masks: dict[tuple[Any, Any], list[np.ndarray | None]] = {}
        self._masks_lock = threading.Lock()

    @classmethod
    def empty(
        cls, identity: StoreIdentity, config: IndexConfig, generation: int = 0, next_segment: int = 1
    ) -> FaissView:
        return cls(identity=identity, config=config, generation=generation, parts=(), next_segment=next_segment)

    @property
    def name(self) -> str | None:
        return _generation_name(self.generation) if self.generation else None

    @property
    def parts(self) -> tuple[_Part, ...]:
        return self._parts

    @property
    def kind(self) -> str:
        """ "hnsw" when any segment is approximate, else "flat"."""
        return HNSW if any(p.segment.kind == HNSW for p in self._parts) else FLAT

    @property
    def segments(self) -> int:
        return len(self._parts)

    @property
    def deleted(self) -> int:
        """Removed chunks still held as tombstones."""
        return sum(p.dead_count for p in self._parts)

    def __len__(self) -> int:
        return self._live

    def ids(self) -> np.ndarray:
        """Every live chunk id (int64)."""
        if not self._parts:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate(
            [p.segment.chunk_ids if p.alive is None else p.segment.chunk_ids[p.alive] for p in self._parts]
        ).astype(np.int64)

    def languages(self) -> frozenset[str]:
        return self._languages

    def chunks_without_companion(self) -> int:
        return sum(p.without_companion for p in self._parts)

    # ---- lookups ------------------------------------------------------------------------------------
    def locate(self, chunk_ids: Sequence[int] | np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Where the live ``chunk_ids`` are: for each part holding some, (part index, rows of ``chunk_ids``,
        positions in the segment)."""
        ids = np.asarray(chunk_ids, dtype=np.int64).reshape(-1)
        out: list[tuple[int, np.ndarray, np.ndarray]] = []
        if not len(ids):
            return out
        for index, part in enumerate(self._parts):
            segment = part.segment
            slots = np.searchsorted(segment.id_sorted, ids)
            slots = np.minimum(slots, segment.count - 1)
            found = segment.id_sorted[slots] == ids
            rows = np.flatnonzero(found)
            if not len(rows):
                continue
            positions = segment.id_order[slots[rows]].astype(np.int64)
            if part.alive is not None:
                keep = part.alive[positions]
                rows, positions = rows[keep], positions[keep]
            if len(rows):
                out.append((index, rows, positions))
        return out

    def facts(self, chunk_ids: Sequence[int]) -> dict[int, ChunkFacts]:
        ids = np.asarray(chunk_ids, dtype=np.int64).reshape(-1)
        out: dict[int, ChunkFacts] = {}
        for index, rows, positions in self.locate(ids):
            segment = self._parts[index].segment
            vectors = segment.vectors()
            for row, position in zip(rows.tolist(), positions.tolist(), strict=True):
                out[int(ids[row])] = ChunkFacts(
                    document_id=int(segment.document_ids[position]),
                    text=segment.text(position),
                    dense=np.array(vectors[position], dtype=np.float32),
                )
        return out

    def companion_scores(self, chunk_ids: Sequence[int], vector: np.ndarray) -> dict[int, float]:
        if not self.identity.companion:
            return {}
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if len(query) != self.identity.companion_dimension:
            raise ValueError(
                f"companion query has dimension {len(query)}, the store {self.identity.companion_dimension}"
            )
        norm = float(np.linalg.norm(query))
        ids = np.asarray(chunk_ids, dtype=np.int64).reshape(-1)
        out: dict[int, float] = {}
        for index, rows, positions in self.locate(ids):
            segment = self._parts[index].segment
            if segment.companion is None:
                scores = np.zeros(len(rows), dtype=np.float32)
            else:
                stored = np.asarray(segment.companion[positions], dtype=np.float32)
                norms = np.linalg.norm(stored, axis=1) * norm
                scores = np.divide(stored @ query, norms, out=np.zeros(len(rows), dtype=np.float32), where=norms > 0)
            for row, score in zip(rows.tolist(), scores.tolist(), strict=True):
                out[int(ids[row])] = float(score)
        return out

    # ---- filters ------------------------------------------------------------------------------------
    def _filter_masks(
        self, collections: Collection[int] | None, documents: Collection[int] | None
    ) -> list[np.ndarray | None]:
        """Per part, the mask of live positions the filters allow (None: every position of the segment)."""
        cacheable = sum(len(f) for f in (collections, documents) if f is not None) <= _CACHED_FILTER_IDS
        key = (
            None if collections is None else frozenset(int(c) for c in collections),
            None if documents is None else frozenset(int(d) for d in documents),
        )
        if cacheable:
            with self._masks_lock:
                cached = self._masks.get(key)
            if cached is not None:
                return cached
        allowed_collections = None if collections is None else _id_array(collections)
        allowed_documents = None if documents is None else _id_array(documents)
        masks: list[np.ndarray | None] = []
        for part in self._parts:
            segment = part.segment
            if allowed_collections is None and allowed_documents is None:
                masks.append(part.alive)
                continue
            mask = np.ones(segment.count, dtype=bool) if part.alive is None else part.alive.copy()
            if allowed_collections is not None:
                mask &= np.isin(segment.collection_ids, allowed_collections)
            if allowed_documents is not None:
                mask &= np.isin(segment.document_ids, allowed_documents)
            masks.append(mask)
        if cacheable:
            with self._masks_lock:
                if len(self._masks) >= 32:
                    self._masks.pop(next(iter(self._masks)))
                self._masks[key] = masks
        return masks

    # ---- dense --------------------------------------------------------------------------------------
    def dense(
        self,
        vector: np.ndarray,
        k: int,
        *,
        collections: Collection[int] | None = None,
        documents: Collection[int] | None = None,
    ) -> list[tuple[int, float]]:
        query = np.ascontiguousarray(np.asarray(vector, dtype=np.float32).reshape(1, -1))
        if query.shape[1] != self.identity.dimension:
            raise ValueError(f"query has dimension {query.shape[1]}, the store {self.identity.dimension}")
        if k <= 0 or not self._live:
            return []
        found_ids: list[np.ndarray] = []
        found_scores: list[np.ndarray] = []
        for part, mask in zip(self._parts, self._filter_masks(collections, documents), strict=True):
            if mask is None:
                available, bits = part.segment.count, None
            else:
                available = part.live if mask is part.alive else int(np.count_nonzero(mask))
                bits = part.alive_bits if mask is part.alive else np.packbits(mask, bitorder="little")
            wanted = min(k, available)
            if wanted <= 0:
                continue
            distances, positions = part.segment.search(query, wanted, bits, available, self.config.hnsw_ef_search)
            keep = positions[0] >= 0
            found_ids.append(part.segment.chunk_ids[positions[0][keep]])
            found_scores.append(distances[0][keep])
        return _best(found_ids, found_scores, k)

    # ---- lexical ------------------------------------------------------------------------------------
    def lexical(
        self,
        terms: Sequence[str],
        k: int,
        *,
        collections: Collection[int] | None = None,
        documents: Collection[int] | None = None,
        k1: float,
        b: float,
    ) -> list[tuple[int, float]]:
        """BM25 of the live chunks holding any of ``terms`` (each term counted once)."""
        unique = list(dict.fromkeys(terms))
        if k <= 0 or not self._live or not unique:
            return []
        if (collections is not None and not collections) or (documents is not None and not documents):
            return []
        keys = _term_keys(unique)
        frequencies = np.zeros(len(keys), dtype=np.int64)
        # per part: (term index, positions, term frequencies) of its live postings of the query's terms
        postings: list[list[tuple[int, np.ndarray, np.ndarray]]] = []
        for part in self._parts:
            segment = part.segment
            found: list[tuple[int, np.ndarray, np.ndarray]] = []
            if len(segment.term_keys):
                columns = np.minimum(np.searchsorted(segment.term_keys, keys), len(segment.term_keys) - 1)
                for term, column in enumerate(columns.tolist()):
                    if segment.term_keys[column] != keys[term]:
                        continue
                    start, stop = int(segment.post_ptr[column]), int(segment.post_ptr[column + 1])
                    positions, tfs = segment.post_pos[start:stop], segment.post_tf[start:stop]
                    if part.alive is not None:
                        keep = part.alive[positions]
                        positions, tfs = positions[keep], tfs[keep]
                    if len(positions):
                        frequencies[term] += len(positions)
                        found.append((term, positions, tfs))
            postings.append(found)
        idf = [bm25_idf(int(df), self._live) for df in frequencies.tolist()]
        allowed_collections = None if collections is None else _id_array(collections)
        allowed_documents = None if documents is None else _id_array(documents)
        found_ids: list[np.ndarray] = []
        found_scores: list[np.ndarray] = []
        for part, found in zip(self._parts, postings, strict=True):
            if not found:
                continue
            segment = part.segment
            positions = np.concatenate([p for _, p, _ in found]).astype(np.int64)
            tfs = np.concatenate([t for _, _, t in found]).astype(np.float64)
            idfs = np.concatenate([np.full(len(p), idf[term]) for term, p, _ in found])
            weights = idfs * bm25_term_weight(tfs, segment.lengths[positions], self._average_length, k1, b)
            if len(positions) > segment.count // 8:  # common terms: sum over the whole segment, no sort
                totals = np.bincount(positions, weights=weights, minlength=segment.count)
                candidates = np.flatnonzero(totals)  # every weight is positive
                scores = totals[candidates]
            else:
                candidates, inverse = np.unique(positions, return_inverse=True)
                scores = np.bincount(inverse, weights=weights, minlength=len(candidates))
            keep = np.ones(len(candidates), dtype=bool)
            if allowed_collections is not None:
                keep &= np.isin(segment.collection_ids[candidates], allowed_collections)
            if allowed_documents is not None:
                keep &= np.isin(segment.document_ids[candidates], allowed_documents)
            found_ids.append(segment.chunk_ids[candidates[keep]])
            found_scores.append(scores[keep])
        return _best(found_ids, found_scores, k)


def _best(ids: list[np.ndarray], scores: list[np.ndarray], k: int) -> list[tuple[int, float]]:
    """The ``k`` best (chunk id, score) of several segments' results, best first (ties: smaller id first)."""
    if not ids:
        return []
    all_ids = np.concatenate(ids).astype(np.int64)
    all_scores = np.concatenate(scores).astype(np.float64)
    if len(all_ids) > k:
        top = np.argpartition(-all_scores, k - 1)[:k]
        # ties at the cut: keep every id scoring like the k-th, then order
        threshold = all_scores[top].min()
        top = np.flatnonzero(all_scores >= threshold)
        all_ids, all_scores = all_ids[top], all_scores[top]
    order = np.lexsort((all_ids, -all_scores))[:k]
    return [(int(i), float(s)) for i, s in zip(all_ids[order].tolist(), all_scores[order].tolist(), strict=True)]


def _open_view(
    directory: Path,
    name: str,
    identity: StoreIdentity,
    config: IndexConfig,
    reuse: FaissView | None,
) -> tuple[FaissView, int]:
    """The view of generation ``name``: segments of ``reuse`` kept as they are, only new ones opened.
    Returns it with the number of segments opened. FileNotFoundError when a file went meanwhile."""
    manifest = _read_manifest(directory, name)
    _check_identity(manifest["identity"], identity)
    held = {p.name: p for p in reuse.parts} if reuse is not None else {}
    parts = []
    opened = 0
    companion = bool(identity.companion)
    for entry in manifest["segments"]:
        segment_name, deletes = entry["name"], entry["deletes"]
        old = held.get(segment_name)
        if old is not None and old.segment.uid != entry["uid"]:
            old = None
        if old is not None and old.deletes == deletes:
            parts.append(old)
            continue
        if old is not None:
            segment = old.segment
        else:
            try:
                segment = _Segment(segment_name, directory / segment_name, identity)
            except (FileNotFoundError, IndexCorruptError, IndexMismatchError):
                raise
            except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
                raise IndexCorruptError(
                    _rebuild_message(directory, f"has a segment {segment_name} that cannot be read ({exc})")
                ) from exc
            opened += 1
            if segment.count != entry["count"] or segment.uid != entry["uid"]:
                raise IndexCorruptError(_rebuild_message(directory, f"has a segment {segment_name} of another size"))
        dead = None if deletes is None else _load_dead(directory / segment_name, deletes, segment.count)
        part = _Part(segment, dead, deletes, companion=companion)
        if part.dead_count != entry["dead"]:
            raise IndexCorruptError(_rebuild_message(directory, f"has a tombstone file {deletes} of another size"))
        parts.append(part)
    view = FaissView(
        identity=identity,
        config=config,
        generation=manifest["generation"],
        parts=parts,
        next_segment=int(manifest["next_segment"]),
        saved_at=manifest["saved_at"],
        previous=manifest.get("previous"),
    )
    return view, opened


# ---- writing -------------------------------------------------------------------------------------


@dataclass
class _Batch:
    """One ``add`` call, kept compact until its segment is written."""

    chunk_ids: np.ndarray
    document_id: int
    collection_id: int
    dense: np.ndarray
    companion: np.ndarray | None
    texts: list[str]
    languages: list[str]
    lengths: np.ndarray
    term_ptr: np.ndarray  # (n + 1,) into term_keys / term_counts
    term_keys: np.ndarray
    term_counts: np.ndarray
    strings: dict[int, str]


@dataclass
class _Written:
    """A segment a session wrote and has not published yet (in a temporary folder)."""

    folder: Path
    chunk_ids: np.ndarray
    document_ids: np.ndarray
    removed: np.ndarray  # (n,) bool

    def live(self) -> int:
        return len(self.chunk_ids) - int(np.count_nonzero(self.removed))


def _segment_from_batches(entries: Sequence[tuple[_Batch, int]], identity: StoreIdentity) -> _SegmentData:
    """The segment of buffered chunks, each (batch, row), in that order."""
    n = len(entries)
    chunk_ids = np.fromiter((b.chunk_ids[r] for b, r in entries), dtype=np.int64, count=n)
    document_ids = np.fromiter((b.document_id for b, _ in entries), dtype=np.int64, count=n)
    collection_ids = np.fromiter((b.collection_id for b, _ in entries), dtype=np.int64, count=n)
    dense = np.empty((n, identity.dimension), dtype=np.float32)
    companion = has_companion = None
    if identity.companion:
        companion = np.zeros((n, identity.companion_dimension), dtype=np.float16)
        has_companion = np.zeros(n, dtype=bool)
    language_names: dict[str, int] = {}
    languages = np.empty(n, dtype=np.uint8)
    lengths = np.empty(n, dtype=np.int32)
    texts: list[str] = []
    rows: list[np.ndarray] = []
    keys: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    strings: dict[int, str] = {}
    seen: set[int] = set()
    for i, (batch, row) in enumerate(entries):
        dense[i] = batch.dense[row]
        if companion is not None and has_companion is not None and batch.companion is not None:
            companion[i] = batch.companion[row]
            has_companion[i] = True
        languages[i] = language_names.setdefault(batch.languages[row], len(language_names))
        lengths[i] = batch.lengths[row]
        texts.append(batch.texts[row])
        start, stop = int(batch.term_ptr[row]), int(batch.term_ptr[row + 1])
        rows.append(np.full(stop - start, i, dtype=np.int64))
        keys.append(batch.term_keys[start:stop])
        counts.append(batch.term_counts[start:stop])
        if id(batch) not in seen:
            seen.add(id(batch))
            strings.update(batch.strings)
    term_keys, post_ptr, post_pos, post_tf = _postings(
        np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64),
        np.concatenate(keys) if keys else np.zeros(0, dtype=np.uint64),
        np.concatenate(counts) if counts else np.zeros(0, dtype=np.int32),
    )
    term_bytes, term_offsets = _pack_strings([strings[int(k)] for k in term_keys.tolist()])
    text_bytes, text_offsets = _pack_strings(texts)
    return _SegmentData(
        chunk_ids=chunk_ids,
        document_ids=document_ids,
        collection_ids=collection_ids,
        dense=[(dense, None)],
        companion=companion,
        has_companion=has_companion,
        text_bytes=text_bytes,
        text_offsets=text_offsets,
        language_names=list(language_names),
        languages=languages,
        lengths=lengths,
        term_keys=term_keys,
        term_bytes=term_bytes,
        term_offsets=term_offsets,
        post_ptr=post_ptr,
        post_pos=post_pos,
        post_tf=post_tf,
    )


@functools.lru_cache(maxsize=1)
def _default_analyzer() -> TextAnalyzer:
    return TextAnalyzer()


class FaissWriter:
    """Changes to the store, published as one new generation when the ``writer()`` block ends."""

    def __init__(self, store: FaissStore, base: FaissView, *, reset: bool) -> None:
        self._store = store
        self._base = base
        self._identity = store.identity
        self._config = store.config
        #: part index -> removed positions of that base part (on top of its tombstones)
        self._removed: dict[int, np.ndarray] = {}
        self._written: list[_Written] = []
        # the buffer: chunk id -> (batch, row) of its newest version, in order of addition
        self._pending: dict[int, tuple[_Batch, int]] = {}
        self._pending_by_document: dict[int, set[int]] = {}
        self._cleared = reset
        self.changed = reset

    @property
    def count(self) -> int:
        """How many chunks the store will hold once published."""
        base = 0 if self._cleared else len(self._base) - sum(int(np.count_nonzero(r)) for r in self._removed.values())
        return base + sum(w.live() for w in self._written) + len(self._pending)

    # ---- removals -----------------------------------------------------------------------------------
    def _removed_of(self, index: int) -> np.ndarray:
        removed = self._removed.get(index)
        if removed is None:
            removed = self._removed[index] = np.zeros(self._base.parts[index].segment.count, dtype=bool)
        return removed

    def _remove_saved(self, ids: np.ndarray) -> int:
        """Remove the live ``ids`` from the base and from the written segments; how many were there."""
        removed = 0
        if not self._cleared:
            for index, _, positions in self._base.locate(ids):
                mask = self._removed_of(index)
                fresh = positions[~mask[positions]]
                mask[fresh] = True
                removed += len(fresh)
        for written in self._written:
            hit = np.flatnonzero(np.isin(written.chunk_ids, ids) & ~written.removed)
            written.removed[hit] = True
            removed += len(hit)
        return removed

    def _remove_pending(self, chunk_id: int) -> bool:
        entry = self._pending.pop(chunk_id, None)
        if entry is None:
            return False
        self._pending_by_document[entry[0].document_id].discard(chunk_id)
        return True

    def remove_ids(self, chunk_ids: Collection[int]) -> int:
        """Remove these chunks; returns how many the store held."""
        ids = np.unique(_id_array(chunk_ids))
        removed = self._remove_saved(ids) + sum(self._remove_pending(i) for i in ids.tolist())
        self.changed = self.changed or bool(removed)
        return removed

    def remove_document(self, document_id: int) -> int:
        """Remove every chunk of a document; returns how many there were."""
        document_id = int(document_id)
        removed = 0
        if not self._cleared:
            for index, part in enumerate(self._base.parts):
                mask = part.segment.document_ids == document_id
                if part.alive is not None:
                    mask &= part.alive
                if not mask.any():
                    continue
                current = self._removed_of(index)
                removed += int(np.count_nonzero(mask & ~current))
                current |= mask
        for written in self._written:
            hit = (written.document_ids == document_id) & ~written.removed
            removed += int(np.count_nonzero(hit))
            written.removed |= hit
        for chunk_id in list(self._pending_by_document.get(document_id, ())):
            removed += self._remove_pending(chunk_id)
        self.changed = self.changed or bool(removed)
        return removed

    def clear(self) -> None:
        """Remove everything."""
        self._cleared = True
        self._removed.clear()
        for written in self._written:
            _remove(written.folder)
        self._written.clear()
        self._pending.clear()
        self._pending_by_document.clear()
        self.changed = True

    # ---- additions ----------------------------------------------------------------------------------
    def add(
        self,
        chunk_ids: Sequence[int],
        embeddings: PassageEmbeddings,
        *,
        document_id: int,
        collection_id: int,
        texts: Sequence[str],
        terms: Sequence[PassageTerms] | None = None,
    ) -> None:
        """Add (or replace) chunks of one document; ``terms`` are analysed from ``texts`` when not given."""
        if not isinstance(embeddings, PassageEmbeddings):
            raise TypeError(f"embeddings must be PassageEmbeddings, not {type(embeddings).__name__}")
        ids = np.asarray(chunk_ids, dtype=np.int64).reshape(-1)
        n = len(ids)
        identity = self._identity
        dense = np.asarray(embeddings.dense, dtype=np.float32)
        if dense.shape != (n, identity.dimension):
            raise ValueError(f"expected dense vectors of shape ({n}, {identity.dimension}), got {dense.shape}")
        if len(texts) != n:
            raise ValueError(f"{n} chunk ids but {len(texts)} texts")
        if terms is not None and len(terms) != n:
            raise ValueError(f"{n} chunk ids but {len(terms)} analysed passages (terms)")
        if n and ids.min() < 0:
            raise ValueError("chunk ids must not be negative")
        if len(np.unique(ids)) != n:
            raise ValueError("chunk ids repeat within one add")
        if not np.isfinite(dense).all():
            raise ValueError("vectors must be finite")
        companion = None
        if embeddings.companion is not None:
            if not identity.companion:
                raise ValueError("companion vectors given, but this store was opened without a companion model")
            companion = np.asarray(embeddings.companion, dtype=np.float32)
            if companion.shape != (n, identity.companion_dimension):
                raise ValueError(
                    f"expected companion vectors of shape ({n}, {identity.companion_dimension}), got {companion.shape}"
                )
            if not np.isfinite(companion).all():
                raise ValueError("companion vectors must be finite")
        if n == 0:
            return
        analysed = list(terms) if terms is not None else passage_terms(_default_analyzer(), list(texts))
        strings: dict[int, str] = {}
        term_ptr = np.zeros(n + 1, dtype=np.int64)
        key_parts: list[int] = []
        count_parts: list[int] = []
        for i, passage in enumerate(analysed):
            for term, count in passage.counts.items():
                key = _term_key(term)
                known = strings.setdefault(key, term)
                if known != term:  # two terms of one key: a 64-bit hash collision (never seen)
                    raise ValueError(f"the terms {known!r} and {term!r} share a key")
                key_parts.append(key)
                count_parts.append(int(count))
            term_ptr[i + 1] = len(key_parts)
        if count_parts and min(count_parts) <= 0:
            raise ValueError("term counts must be positive")
        batch = _Batch(
            chunk_ids=ids,
            document_id=int(document_id),
            collection_id=int(collection_id),
            dense=np.ascontiguousarray(dense),
            companion=None if companion is None else companion.astype(np.float16),
            texts=[str(t) for t in texts],
            languages=[p.language for p in analysed],
            lengths=np.fromiter((p.length for p in analysed), dtype=np.int32, count=n),
            term_ptr=term_ptr,
            term_keys=np.asarray(key_parts, dtype=np.uint64),
            term_counts=np.asarray(count_parts, dtype=np.int32),
            strings=strings,
        )
        self._remove_saved(ids)
        documents = self._pending_by_document.setdefault(batch.document_id, set())
        for row, chunk_id in enumerate(ids.tolist()):
            self._remove_pending(chunk_id)
            self._pending[chunk_id] = (batch, row)
            documents.add(chunk_id)
        self.changed = True
        if len(self._pending) >= self._config.segment_chunks:
            self._flush()

    def _flush(self) -> None:
        """Write the buffered chunks as a segment in a temporary folder (published with the rest)."""
        if not self._pending:
            return
        entries = list(self._pending.values())
        data = _segment_from_batches(entries, self._identity)
        folder = self._store.directory / _temp_name("segment")
        folder.mkdir()
        try:
            _write_segment(folder, data, self._identity, self._config)
        except BaseException:
            _remove(folder)
            raise
        self._written.append(
            _Written(folder, data.chunk_ids, data.document_ids, np.zeros(len(data.chunk_ids), dtype=bool))
        )
        self._pending.clear()
        self._pending_by_document.clear()

    def discard(self) -> None:
        """Forget the session's changes (the block raised)."""
        for written in self._written:
            _remove(written.folder)
        self._written.clear()
        self._pending.clear()

    def publish(self) -> FaissView:
        """Write what is buffered, then publish the new generation; returns its view."""
        try:
            self._flush()
            parts: list[_Planned] = []
            if not self._cleared:
                for index, part in enumerate(self._base.parts):
                    removed = self._removed.get(index)
                    if removed is None or not removed.any():
                        parts.append(_Planned(part=part))
                        continue
                    dead = removed if part.dead is None else removed | part.dead
                    if dead.all():
                        continue
                    parts.append(_Planned(part=part, dead=dead))
            for written in self._written:
                if written.removed.all():
                    _remove(written.folder)
                    continue
                parts.append(_Planned(folder=written.folder, dead=written.removed if written.removed.any() else None))
            return self._store._publish(self._base, parts)
        finally:
            self.discard()


@dataclass
class _Planned:
    """A segment of the generation being published: one already published (``part``, with new tombstones
    ``dead`` when it has some), or a new one written in ``folder``."""

    part: _Part | None = None
    folder: Path | None = None
    dead: np.ndarray | None = None


# ---- merging -------------------------------------------------------------------------------------


def _tier(live: int, config: IndexConfig) -> int:
    if live <= config.merge_floor:
        return 0
    return 1 + int(math.log(live / config.merge_floor, config.merge_factor))


def merge_plan(view: FaissView, config: IndexConfig, *, force: bool = False) -> list[str] | None:
    """The segments the merge policy (module docstring) would merge next, by name; None when none."""
    parts = view.parts
    if force:
        return [p.name for p in parts] if len(parts) > 1 or any(p.dead is not None for p in parts) else None
    tiers: dict[int, list[_Part]] = {}
    for part in parts:
        tiers.setdefault(_tier(part.live, config), []).append(part)
    for tier in sorted(tiers):
        if len(tiers[tier]) >= max(2, config.merge_factor):
            return [p.name for p in tiers[tier]]
    flat = [p for p in parts if p.segment.kind == FLAT and p.live > config.merge_floor]
    if len(flat) >= 2 and sum(p.live for p in flat) > config.approx_threshold:
        return [p.name for p in flat]
    for part in parts:
        if part.dead_count > _MAX_DEAD_SHARE * part.segment.count:
            return [part.name]
    return None


def _merged_data(parts: Sequence[_Part], identity: StoreIdentity) -> _SegmentData:
    """The live chunks of ``parts``, in order, as one segment's data (read from the stored arrays only)."""
    lives = [p.live_positions() for p in parts]
    offsets = np.cumsum([0] + [len(live) for live in lives])
    starts_of = offsets[:-1].tolist()
    chunk_ids = np.concatenate([p.segment.chunk_ids[live] for p, live in zip(parts, lives, strict=True)])
    document_ids = np.concatenate([p.segment.document_ids[live] for p, live in zip(parts, lives, strict=True)])
    collection_ids = np.concatenate([p.segment.collection_ids[live] for p, live in zip(parts, lives, strict=True)])
    lengths = np.concatenate([p.segment.lengths[live] for p, live in zip(parts, lives, strict=True)])
    dense = [(p.segment.vectors(), live) for p, live in zip(parts, lives, strict=True)]  # read while indexed
    companion = has_companion = None
    if identity.companion:
        companion = np.zeros((int(offsets[-1]), identity.companion_dimension), dtype=np.float16)
        has_companion = np.zeros(int(offsets[-1]), dtype=bool)
        for part, live, start in zip(parts, lives, starts_of, strict=True):
            if part.segment.companion is not None and part.segment.has_companion is not None:
                companion[start : start + len(live)] = part.segment.companion[live]
                has_companion[start : start + len(live)] = part.segment.has_companion[live]
    language_names: dict[str, int] = {}
    languages = []
    for part, live in zip(parts, lives, strict=True):
        mapping = np.array(
            [language_names.setdefault(name, len(language_names)) for name in part.segment.language_names] or [0],
            dtype=np.uint8,
        )
        languages.append(mapping[part.segment.languages[live]])
    texts = [
        _gather_ranges(p.segment.text_bytes, p.segment.text_offsets, live) for p, live in zip(parts, lives, strict=True)
    ]
    text_bytes = np.concatenate([t for t, _ in texts])
    text_lengths = np.concatenate([np.diff(o) for _, o in texts])
    text_offsets = np.zeros(len(text_lengths) + 1, dtype=np.int64)
    np.cumsum(text_lengths, out=text_offsets[1:])
    # postings: every live posting with its term key and its passage's new position
    rows, keys, counts = [], [], []
    for part, live, start in zip(parts, lives, starts_of, strict=True):
        segment = part.segment
        renumber = np.full(segment.count, -1, dtype=np.int64)
        renumber[live] = np.arange(start, start + len(live), dtype=np.int64)
        new_rows = renumber[segment.post_pos]
        keep = new_rows >= 0
        rows.append(new_rows[keep])
        keys.append(segment.term_keys[segment.term_columns()[keep]])
        counts.append(np.asarray(segment.post_tf[keep]))
    term_keys, post_ptr, post_pos, post_tf = _postings(
        np.concatenate(rows), np.concatenate(keys), np.concatenate(counts)
    )
    # each term's text from the first segment holding it
    source = np.full(len(term_keys), -1, dtype=np.int64)
    column = np.zeros(len(term_keys), dtype=np.int64)
    for number, part in enumerate(parts):
        segment = part.segment
        if not len(segment.term_keys):
            continue
        slots = np.minimum(np.searchsorted(segment.term_keys, term_keys), len(segment.term_keys) - 1)
        hit = (segment.term_keys[slots] == term_keys) & (source < 0)
        source[hit], column[hit] = number, slots[hit]
    # one gather over the sources' vocabularies side by side (small next to the postings)
    bases = np.cumsum([0] + [len(p.segment.term_bytes) for p in parts])
    combined = np.concatenate([np.asarray(p.segment.term_bytes) for p in parts])
    starts = np.empty(len(term_keys), dtype=np.int64)
    ends = np.empty(len(term_keys), dtype=np.int64)
    for number, part in enumerate(parts):
        members = np.flatnonzero(source == number)
        starts[members] = bases[number] + part.segment.term_offsets[column[members]]
        ends[members] = bases[number] + part.segment.term_offsets[column[members] + 1]
    term_bytes, term_offsets = _gather(combined, starts, ends)
    return _SegmentData(
        chunk_ids=chunk_ids,
        document_ids=document_ids,
        collection_ids=collection_ids,
        dense=dense,
        companion=companion,
        has_companion=has_companion,
        text_bytes=text_bytes,
        text_offsets=text_offsets,
        language_names=list(language_names),
        languages=np.concatenate(languages) if languages else np.zeros(0, dtype=np.uint8),
        lengths=lengths,
        term_keys=term_keys,
        term_bytes=term_bytes,
        term_offsets=term_offsets,
        post_ptr=post_ptr,
        post_pos=post_pos,
        post_tf=post_tf,
    )


# ---- the store -----------------------------------------------------------------------------------


class FaissStore:
    """The ``faiss`` search store of one directory, as seen by this process (see the module docstring).

    Opening a store saved with another identity raises IndexMismatchError; pass ``load=False`` to open it
    empty anyway and rebuild it with ``writer(reset=True)``.
    """

    backend = "faiss"

    def __init__(self, config: IndexConfig, identity: StoreIdentity, *, load: bool = True) -> None:
        self.config = replace(config, directory=Path(config.directory))
        self.directory = self.config.directory
        self.identity = identity
        self._snapshot = FaissView.empty(identity, self.config)
        self._install_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._merge_lock = threading.Lock()
        self._threads_lock = threading.Lock()
        self._refresher: threading.Thread | None = None
        self._merger: threading.Thread | None = None
        #: the stat of CURRENT the snapshot reflects; a changed one starts a background refresh
        self._seen: tuple[int, int, int] | None = None
        self._failed: tuple[tuple[int, int, int] | None, float] | None = None
        self._auto_refresh = load
        #: the error of the last background refresh or merge (None after a successful one)
        self.background_error: BaseException | None = None
        #: segments opened from disk by this instance (tests and benchmarks check it stays incremental)
        self.segments_opened = 0
        if load:
            self.refresh()

    # ---- reading ------------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        """The generation in memory (0 before the first publication)."""
        return self._snapshot.generation

    @property
    def kind(self) -> str:
        return self._snapshot.kind

    def __len__(self) -> int:
        return len(self._snapshot)

    def view(self) -> FaissView:
        """The snapshot in memory, after loading a newer saved generation when it is small (else that load runs
        in the background and the snapshot in memory answers meanwhile)."""
        if self._auto_refresh:
            self._maybe_refresh()
        return self._snapshot

    def ids(self) -> np.ndarray:
        return self.view().ids()

    def _pointer_stat(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(self.directory / CURRENT_FILE)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def _maybe_refresh(self) -> None:
        """Load a changed ``CURRENT``: at once when its new segments are small, else in the background."""
        token = self._pointer_stat()
        if token == self._seen:
            return
        failed = self._failed
        if failed is not None and failed[0] == token and time.monotonic() - failed[1] < 10.0:
            return
        with self._threads_lock:
            if self._refresher is not None and self._refresher.is_alive():
                return  # a big load is in progress: the snapshot in memory answers until it ends
            if self._new_chunks() > self.config.sync_refresh_chunks:
                self._refresher = threading.Thread(target=self._refresh_quietly, name="faiss-refresh", daemon=True)
                self._refresher.start()
                return
        self._refresh_quietly()  # a small change: loaded in this thread, before the question is answered

    def _new_chunks(self) -> int:
        """How many chunks the saved generation's segments hold beyond the snapshot's (its manifest only)."""
        try:
            name = _current_generation(self.directory)
            if name is None:
                return 0
            manifest = _read_manifest(self.directory, name)
        except (OSError, IndexCorruptError, ValueError, KeyError, TypeError):
            return 0  # loading it will say what is wrong (or find the generation replaced meanwhile)
        held = {part.name for part in self._snapshot.parts}
        return sum(int(entry["count"]) for entry in manifest["segments"] if entry["name"] not in held)

    def _refresh_quietly(self) -> None:
        """Load what is saved; a failure is logged and kept in ``background_error``, the snapshot stays."""
        token = self._pointer_stat()
        try:
            self.refresh()
        except Exception as exc:
            self.background_error = exc
            self._failed = (token, time.monotonic())
            logger.exception("The search index could not be reloaded; questions are answered from the loaded one")

    def refresh(self, *, wait: bool = True) -> bool:
        """Load the saved generation if it differs from the one in memory; True when the snapshot changed.

        ``wait=False`` does what :meth:`view` does (a big load goes to the background) and returns. With
        ``wait=True`` it waits for a background load in progress, and raises what loading raises.
        """
        if not wait:
            self._maybe_refresh()
            return False
        with self._refresh_lock:
            for attempt in range(8):
                token = self._pointer_stat()
                current = self._snapshot
                name = _current_generation(self.directory)
                if _number(name) == current.generation:
                    self._seen = token
                    self._failed = None
                    return False
                try:
                    if name is None:
                        view = FaissView.empty(self.identity, self.config)
                    else:
                        view, opened = _open_view(self.directory, name, self.identity, self.config, current)
                        self.segments_opened += opened
                except FileNotFoundError as exc:
                    if attempt == 7:  # not generations replaced faster than they can be read: files are missing
                        raise IndexCorruptError(
                            _rebuild_message(self.directory, f"misses {exc.filename} of generation {name}")
                        ) from exc
                    time.sleep(0.01 * (attempt + 1))
                    continue
                self._failed = None
                self.background_error = None
                return self._install(view, token, expected=current)
        return False  # pragma: no cover

    def _install(self, view: FaissView, token: tuple[int, int, int] | None, *, expected: FaissView | None) -> bool:
        """Make ``view`` the snapshot; a reader's load (``expected``: the snapshot it started from) is
        dropped when a writer of this process installed a newer one meanwhile."""
        with self._install_lock:
            current = self._snapshot
            if expected is not None and current is not expected and current.generation >= view.generation:
                return False
            self._snapshot = view
            self._seen = token
            return current is not view

    def wait_for_background(self, timeout: float | None = None) -> None:
        """Wait for this instance's background refresh and merge, if any (tests, benchmarks, shutdown)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in (self._refresher, self._merger):
            if thread is not None:
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    # ---- writing ------------------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The writers' lock, across threads and processes; IndexBusyError after ``lock_timeout``."""
        with self._write_lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(self.directory / LOCK_FILE), timeout=self.config.lock_timeout, thread_local=False)
            try:
                lock.acquire()
            except LockTimeout as exc:
                raise IndexBusyError(
                    f"The index is busy: another process has been writing it for over {self.config.lock_timeout:g} s"
                ) from exc
            try:
                yield
            finally:
                lock.release()

    def _catch_up(self) -> FaissView:
        """Under the lock: the current generation in memory (loaded synchronously when it moved on)."""
        token = self._pointer_stat()
        name = _current_generation(self.directory)
        current = self._snapshot
        if name is None:
            if current.parts or current.generation:
                self._install(FaissView.empty(self.identity, self.config), token, expected=None)
            return self._snapshot
        if _number(name) != current.generation:
            view, opened = _open_view(self.directory, name, self.identity, self.config, current)
            self.segments_opened += opened
            self._install(view, token, expected=None)
        return self._snapshot

    def _reset_base(self) -> FaissView:
        """Under the lock: an empty base numbered after whatever is on disk (any format, any identity)."""
        generation, previous, next_segment = 0, None, 1
        with contextlib.suppress(IndexCorruptError, OSError, ValueError):
            name = _read_pointer(self.directory)
            if name and (is_version_name(name) or _OLD_VERSION.fullmatch(name)):
                generation = _number(name)
            if name and is_version_name(name):
                manifest = _read_manifest(self.directory, name)
                previous = manifest.get("previous")
                next_segment = int(manifest["next_segment"])
        numbers = [_number(p.name) for p in self.directory.iterdir() if is_segment_name(p.name)]
        view = FaissView.empty(
            self.identity, self.config, generation, next_segment=max(next_segment, max(numbers, default=0) + 1)
        )
        # the cleanup before the rebuild keeps the current generation (readers use it until the switch)
        view.previous = previous
        return view

    @contextmanager
    def writer(self, *, reset: bool = False) -> Iterator[FaissWriter]:
        """Change the store: takes the writers' lock, starts from the newest saved generation, yields.

        When the block ends normally the changes are published atomically as the next generation and
        are this instance's snapshot; when it raises, they are discarded. ``reset=True`` starts from an
        empty store and ignores the saved one (even one of another identity or format). Raises
        IndexBusyError when the lock is not free within ``lock_timeout`` seconds.
        """
        published = False
        with self._locked():
            base = self._reset_base() if reset else self._catch_up()
            self._clean_up(base)
            session = FaissWriter(self, base, reset=reset)
            try:
                yield session
            except BaseException:
                session.discard()
                raise
            if session.changed:
                session.publish()
                published = True
        if published:
            self._auto_refresh = True
            self._maybe_merge()

    def _publish(self, base: FaissView, planned: Sequence[_Planned], *, replaced: Collection[str] = ()) -> FaissView:
        """Under the lock: write the tombstones and the manifest of the next generation, switch CURRENT,
        install its view and remove what is no longer referenced."""
        generation = base.generation + 1
        on_disk = [_number(p.name) for p in self.directory.iterdir() if is_segment_name(p.name)]
        next_segment = max([base.next_segment, *(n + 1 for n in on_disk)])
        companion = bool(self.identity.companion)
        parts: list[_Part] = []
        entries: list[dict[str, Any]] = []
        try:
            for plan in planned:
                if plan.part is not None:
                    part = plan.part
                    if plan.dead is not None:
                        deletes = _dead_name(generation)
                        _save_dead(self.directory / part.name / deletes, np.flatnonzero(plan.dead))
                        part = part.with_dead(plan.dead, deletes, companion=companion)
                else:
                    assert plan.folder is not None
                    name = _segment_name(next_segment)
                    next_segment += 1
                    final = self.directory / name
                    os.rename(plan.folder, final)
                    _fsync_path(self.directory)
                    plan.folder = final
                    segment = _Segment(name, final, self.identity)
                    self.segments_opened += 1
                    deletes = None
                    if plan.dead is not None:
                        deletes = _dead_name(generation)
                        _save_dead(final / deletes, np.flatnonzero(plan.dead))
                    part = _Part(segment, plan.dead, deletes, companion=companion)
                parts.append(part)
                entries.append(
                    {
                        "name": part.name,
                        "uid": part.segment.uid,
                        "count": part.segment.count,
                        "dead": part.dead_count,
                        "deletes": part.deletes,
                        "kind": part.segment.kind,
                    }
                )
            view = FaissView(
                identity=self.identity,
                config=self.config,
                generation=generation,
                parts=parts,
                next_segment=next_segment,
                saved_at=time.time(),
                previous=base.name,
            )
            manifest = {
                "format": FORMAT,
                "generation": generation,
                "previous": base.name,
                "identity": _identity_dict(self.identity),
                "next_segment": next_segment,
                "chunks": len(view),
                "chunks_without_companion": view.chunks_without_companion(),
                "kind": view.kind,
                "saved_at": view.saved_at,
                "replaced": sorted(replaced),
                "segments": entries,
            }
            _replace_file(self.directory / f"{view.name}.json", json.dumps(manifest, indent=1).encode("utf-8"))
            _switch_current(self.directory, _generation_name(generation))
        except BaseException:
            # never published: the next writer removes what was renamed into place
            for plan in planned:
                if plan.folder is not None and plan.folder.name.startswith(_TEMP_PREFIX):
                    _remove(plan.folder)
            raise
        self._install(view, self._pointer_stat(), expected=None)
        self._clean_up(view)
        return view

    def _clean_up(self, view: FaissView) -> None:
        """Under the lock: remove what neither ``view``'s generation nor the previous one references, and
        what killed writers left (a merge's work only when no merge is running)."""
        keep_manifests: set[str] = set()
        keep_files: dict[str, set[str]] = {}
        for name in (view.name, view.previous):
            if name is None:
                continue
            try:
                manifest = _read_manifest(self.directory, name)
            except (FileNotFoundError, IndexCorruptError):
                continue
            keep_manifests.add(f"{name}.json")
            for entry in manifest["segments"]:
                keep_files.setdefault(entry["name"], set()).add(entry["deletes"])
        merge_lock = FileLock(str(self.directory / MERGE_LOCK_FILE), timeout=0, thread_local=False)
        try:
            merge_lock.acquire()
            merging = False
        except LockTimeout:
            merging = True
        try:
            for entry in self.directory.iterdir():
                name = entry.name
                if name.startswith(_MERGE_TEMP_PREFIX):
                    if not merging:
                        _remove(entry)
                elif name.startswith(_TEMP_PREFIX):
                    _remove(entry)
                elif _MANIFEST.fullmatch(name):
                    if name not in keep_manifests:
                        _remove(entry)
                elif is_segment_name(name):
                    kept = keep_files.get(name)
                    if kept is None:
                        _remove(entry)
                        continue
                    for inner in entry.iterdir():
                        stale_dead = _DEAD.fullmatch(inner.name) and inner.name not in kept
                        if stale_dead or inner.name.startswith(_TEMP_PREFIX):
                            _remove(inner)
                elif _OLD_VERSION.fullmatch(name):
                    _remove(entry)  # the single-version format of earlier releases
        finally:
            if not merging:
                merge_lock.release()

    # ---- merging ------------------------------------------------------------------------------------
    def _maybe_merge(self) -> None:
        if not self.config.background_merge or merge_plan(self._snapshot, self.config) is None:
            return
        with self._threads_lock:
            if self._merger is not None and self._merger.is_alive():
                return
            self._merger = threading.Thread(target=self._background_merge, name="faiss-merge", daemon=True)
            self._merger.start()

    def _background_merge(self) -> None:
        try:
            self.merge()
        except IndexBusyError as exc:
            logger.warning("A segment merge was put off: %s", exc)
        except Exception as exc:
            self.background_error = exc
            logger.exception("A segment merge failed; the segments stay as they are")

    def merge(self, *, force: bool = False) -> int:
        """Run the merges the policy asks for (``force``: merge every segment into one); returns how many
        were published. Returns 0 at once when another thread or process is merging."""
        if not self._merge_lock.acquire(blocking=False):
            return 0
        try:
            if not self.directory.is_dir():
                return 0
            lock = FileLock(str(self.directory / MERGE_LOCK_FILE), timeout=0, thread_local=False)
            try:
                lock.acquire()
            except LockTimeout:
                return 0
            try:
                merged = 0
                while True:
                    self.refresh()
                    view = self._snapshot
                    plan = merge_plan(view, self.config, force=force)
                    if plan is None or not self._merge_once(view, plan):
                        return merged
                    merged += 1
                    force = False
            finally:
                lock.release()
        finally:
            self._merge_lock.release()

    def _merge_once(self, view: FaissView, names: Sequence[str]) -> bool:
        """Build the merge of ``names`` (as ``view`` sees them) outside the lock, publish it under it."""
        sources = [p for p in view.parts if p.name in set(names)]
        folder = self.directory / f"{_MERGE_TEMP_PREFIX}{secrets.token_hex(4)}"
        folder.mkdir()
        try:
            data = _merged_data(sources, self.identity)
            renumber = {}
            start = 0
            for part in sources:
                live = part.live_positions()
                mapping = np.full(part.segment.count, -1, dtype=np.int64)
                mapping[live] = np.arange(start, start + len(live))
                renumber[part.name] = mapping
                start += len(live)
            _write_segment(folder, data, self.identity, self.config)
            del data
            with self._locked():
                base = self._catch_up()
                held = {p.name: p for p in base.parts}
                if any(p.name not in held or held[p.name].segment.uid != p.segment.uid for p in sources):
                    return False  # a writer replaced them meanwhile (a rebuild): start again
                dead = np.zeros(start, dtype=bool)
                for part in sources:
                    now = held[part.name].dead
                    if now is not None:
                        dead[renumber[part.name][now & (renumber[part.name] >= 0)]] = True
                planned: list[_Planned] = []
                placed = False
                for part in base.parts:
                    if part.name in renumber:
                        if not placed and not dead.all():
                            planned.append(_Planned(folder=folder, dead=dead if dead.any() else None))
                        placed = True
                        continue
                    planned.append(_Planned(part=part))
                self._publish(base, planned, replaced=list(renumber))
                return True
        finally:
            if folder.exists():
                _remove(folder)

    # ---- bulk ---------------------------------------------------------------------------------------
    def export(self, batch_size: int = 1024) -> Iterator[ExportBatch]:
        """Every live chunk with its embeddings and terms, in batches of about ``batch_size`` chunks (a
        document's chunks always in one batch, a larger document alone), by document id."""
        view = self.view()
        if not len(view):
            return
        part_of = np.concatenate([np.full(p.live, i, dtype=np.int64) for i, p in enumerate(view.parts)])
        positions = np.concatenate([p.live_positions() for p in view.parts])
        documents = np.concatenate([p.segment.document_ids[p.live_positions()] for p in view.parts])
        order = np.lexsort((positions, part_of, documents))
        part_of, positions, documents = part_of[order], positions[order], documents[order]
        boundaries = np.flatnonzero(np.diff(documents)) + 1
        starts = [0, *boundaries.tolist()]
        ends = [*boundaries.tolist(), len(documents)]
        batch: list[tuple[int, int]] = []
        size = 0
        transposed: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for start, end in zip(starts, ends, strict=True):
            if size and size + (end - start) > batch_size:
                yield self._export_batch(view, part_of, positions, batch, transposed)
                batch, size = [], 0
            batch.append((start, end))
            size += end - start
        if batch:
            yield self._export_batch(view, part_of, positions, batch, transposed)

    def _export_batch(
        self,
        view: FaissView,
        part_of: np.ndarray,
        positions: np.ndarray,
        spans: list[tuple[int, int]],
        transposed: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]],
    ) -> ExportBatch:
        rows = np.concatenate([np.arange(s, e) for s, e in spans])
        n = len(rows)
        chunk_ids = np.empty(n, dtype=np.int64)
        document_ids = np.empty(n, dtype=np.int64)
        collection_ids = np.empty(n, dtype=np.int64)
        dense = np.empty((n, self.identity.dimension), dtype=np.float32)
        companion = (
            np.zeros((n, self.identity.companion_dimension), dtype=np.float32) if self.identity.companion else None
        )
        texts: list[str] = []
        terms: list[PassageTerms] = []
        for i, row in enumerate(rows.tolist()):
            index, position = int(part_of[row]), int(positions[row])
            segment = view.parts[index].segment
            chunk_ids[i] = segment.chunk_ids[position]
            document_ids[i] = segment.document_ids[position]
            collection_ids[i] = segment.collection_ids[position]
            dense[i] = segment.vectors()[position]
            if companion is not None and segment.companion is not None:
                companion[i] = segment.companion[position]
            texts.append(segment.text(position))
            if index not in transposed:
                # the postings by passage (CSR): built once per segment and export
                order = np.argsort(segment.post_pos, kind="stable")
                pointer = np.zeros(segment.count + 1, dtype=np.int64)
                np.cumsum(np.bincount(segment.post_pos, minlength=segment.count), out=pointer[1:])
                transposed[index] = (pointer, segment.term_columns()[order], np.asarray(segment.post_tf)[order])
            pointer, columns, tfs = transposed[index]
            strings = segment.term_strings()
            span = slice(int(pointer[position]), int(pointer[position + 1]))
            counts = {strings[c]: int(t) for c, t in zip(columns[span].tolist(), tfs[span].tolist(), strict=True)}
            terms.append(PassageTerms(segment.language_names[int(segment.languages[position])], counts))
        return ExportBatch(
            chunk_ids=chunk_ids,
            document_ids=document_ids,
            collection_ids=collection_ids,
            texts=texts,
            embeddings=PassageEmbeddings(dense, companion),
            terms=terms,
        )

    def state(self) -> dict[str, Any]:
        """What a status page shows of the store in memory."""
        view = self.view()
        return {
            "backend": self.backend,
            "chunks": len(view),
            "embedder": self.identity.embedder,
            "dimension": self.identity.dimension,
            "companion": self.identity.companion,
            "companion_dimension": self.identity.companion_dimension,
            "version": view.generation,
            "kind": view.kind,
            "segments": view.segments,
            "deleted": view.deleted,
            "chunks_without_companion": view.chunks_without_companion(),
            "saved_at": view.saved_at,
            "directory": str(self.directory),
        }

    def verify(self) -> dict[str, Any]:
        """Open the current generation afresh from disk and check that its files agree with each other
        (shapes, postings, tombstones, one live place per chunk id); IndexCorruptError when not.
        Returns the counts it found. Reads every segment: for ``check_index``, not for every question."""
        for attempt in range(5):
            name = _current_generation(self.directory)
            if name is None:
                return {"version": 0, "segments": 0, "chunks": 0}
            try:
                view, _ = _open_view(self.directory, name, self.identity, self.config, None)
                break
            except FileNotFoundError as exc:
                if attempt == 4:
                    raise IndexCorruptError(
                        _rebuild_message(self.directory, f"misses {exc.filename} of generation {name}")
                    ) from exc
        for part in view.parts:
            segment = part.segment
            problem = None
            pointer = np.asarray(segment.post_ptr)
            if pointer[0] != 0 or pointer[-1] != len(segment.post_pos) or np.any(np.diff(pointer) < 0):
                problem = "postings pointers"
            elif len(segment.post_pos) and (segment.post_pos.min() < 0 or segment.post_pos.max() >= segment.count):
                problem = "posting positions"
            elif np.any(np.diff(segment.term_keys.astype(np.uint64)) == 0) or np.any(
                segment.term_keys[1:] < segment.term_keys[:-1]
            ):
                problem = "vocabulary order"
            elif not np.array_equal(segment.chunk_ids[segment.id_order], segment.id_sorted):
                problem = "id lookup"
            elif not np.array_equal(
                np.bincount(segment.post_pos, weights=segment.post_tf, minlength=segment.count).astype(np.int64),
                segment.lengths.astype(np.int64),
            ):
                problem = "passage lengths"
            elif segment.text_offsets[-1] != len(segment.text_bytes) or np.any(np.diff(segment.text_offsets) < 0):
                problem = "texts"
            if problem:
                raise IndexCorruptError(
                    _rebuild_message(self.directory, f"has a segment {part.name} with bad {problem}")
                )
        ids = view.ids()
        if len(np.unique(ids)) != len(ids):
            raise IndexCorruptError(_rebuild_message(self.directory, "holds a chunk in two places"))
        return {"version": view.generation, "segments": view.segments, "chunks": len(view)}
