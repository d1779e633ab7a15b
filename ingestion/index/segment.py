"""A segment: its data to be written, its files, and the segment opened for reading with a generation's
tombstones over it."""

from __future__ import annotations

import json
import math
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss as _faiss
import numpy as np

from ..errors import IndexCorruptError
from ..store import StoreIdentity
from .layout import (
    DATA_FILE,
    DENSE_FILE,
    FLAT,
    FORMAT,
    HNSW,
    SEGMENT_FILE,
    IndexConfig,
    _fsync_path,
    _rebuild_message,
    _write_bytes,
)
from .manifest import _check_identity, _identity_dict

# the stubs generated with the SWIG bindings miss most of the API (keyword arguments, HNSW params)
faiss: Any = _faiss

#: with a filter letting through at most this share of an approximate segment, search it exactly
_EXACT_FILTER_SHARE = 0.05
_COPY_ROWS = 65_536
_ALIGN = 64
_SELECT_ALL = faiss.IDSelectorAll()


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
