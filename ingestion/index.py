"""The FAISS index of chunk vectors: saved as numbered versions, one writer at a time, many readers.

Layout of ``IndexConfig.directory``::

    CURRENT               name of the current version ("v000000000042"), switched with os.replace
    writer.lock           the writers' file lock (readers never take it)
    v000000000042/        one complete version, never modified once CURRENT names it
        manifest.json     format, version, embedder name, dimension, kind ("flat" | "hnsw"), counts
        index.faiss       faiss.write_index of an IndexFlatIP or IndexHNSWFlat (vectors by position)
        meta.npz          per position: chunk id, alive flag, document id, collection id, text offsets,
                          latent term ids and weights (when the embedder gives them)
        texts.bin         the chunk texts (UTF-8, concatenated; offsets in meta.npz) for BM25
    v000000000041/        the previous version, kept so that a reader still loading it can finish

A version is written to a hidden temporary folder, fsynced, renamed, and only then named by
``CURRENT``: a process killed at any point leaves the previous version current and intact.

Vectors are stored by position and mapped to chunk ids by ``meta.npz`` (the equivalent of an
IndexIDMap2). Removing a chunk clears its alive flag; searches only see alive positions through an
``IDSelectorBitmap`` given to FAISS itself. An exact (flat) index is compacted at every save; an
approximate one (HNSW, which cannot remove vectors) keeps its dead positions until they are a
fifth of the index, then is rebuilt from its stored vectors.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import faiss as _faiss
import numpy as np
from filelock import FileLock
from filelock import Timeout as LockTimeout

from .embedding import split_rows
from .errors import IndexBusyError, IndexCorruptError, IndexMismatchError

# the stubs generated with the SWIG bindings miss most of the API (keyword arguments, HNSW params)
faiss: Any = _faiss

__all__ = [
    "IndexConfig",
    "IndexSnapshot",
    "IndexWriter",
    "VectorIndex",
    "is_version_name",
    "read_manifest",
    "read_saved_state",
]

FORMAT = 1
CURRENT_FILE = "CURRENT"
LOCK_FILE = "writer.lock"
MANIFEST_FILE = "manifest.json"
FAISS_FILE = "index.faiss"
META_FILE = "meta.npz"
TEXTS_FILE = "texts.bin"
_TEMP_PREFIX = ".tmp-"
FLAT, HNSW = "flat", "hnsw"
#: an approximate index is rebuilt once this share of its positions are removed chunks
_MAX_DEAD_SHARE = 0.2
#: with a filter letting through at most this share of an approximate index, search it exactly
_EXACT_FILTER_SHARE = 0.05
_COPY_ROWS = 65_536


@dataclass(frozen=True)
class IndexConfig:
    """Where the index lives and when it turns approximate."""

    directory: Path
    #: above this many vectors the index is rebuilt as HNSW (approximate); at or below, exact (flat)
    approx_threshold: int = 200_000
    #: seconds a writer waits for the lock before giving up with IndexBusyError
    lock_timeout: float = 120.0
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128


def _version_name(version: int) -> str:
    return f"v{version:012d}"


_VERSION_NAME = re.compile(r"v[0-9]{12}")


def is_version_name(name: str) -> bool:
    """Whether ``name`` is a version folder's name as saved here ("v000000000042"): a plain name, never a path."""
    return _VERSION_NAME.fullmatch(name) is not None


def _read_current(directory: Path) -> str | None:
    """The version ``CURRENT`` names; IndexCorruptError when it names anything else (a path above all)."""
    try:
        name = (directory / CURRENT_FILE).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as exc:
        raise IndexCorruptError(f"The index pointer file {directory / CURRENT_FILE} is not a version name") from exc
    if name and not is_version_name(name):
        raise IndexCorruptError(f"The index pointer file names {name!r}, not a version: run `manage.py rebuild_index`")
    return name or None


def _parse_version(name: str | None) -> int:
    if name is None:
        return 0
    try:
        return int(name.lstrip("v"))
    except ValueError as exc:
        raise IndexCorruptError(f"The index pointer file names {name!r}, not a version") from exc


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of the current saved version (format, version, embedder, dimension, kind, count...).

    None when nothing was saved yet. Reads two small files; loads nothing.
    """
    for _ in range(5):
        name = _read_current(Path(directory))
        if name is None:
            return None
        try:
            with open(Path(directory) / name / MANIFEST_FILE, encoding="utf-8") as file:
                manifest: dict[str, Any] = json.load(file)
            return manifest
        except FileNotFoundError:
            continue  # a writer replaced that version meanwhile
    return None


def read_saved_state(directory: Path) -> dict[str, Any] | None:
    """What a status page shows of the saved index: version, vectors, embedder, dimension, kind, saved_at,
    chunks_without_terms (None when the manifest predates it).

    None when nothing was saved yet. Cheap: reads the manifest only.
    """
    manifest = read_manifest(directory)
    if manifest is None:
        return None
    return {
        "version": manifest["version"],
        "vectors": manifest["count"],
        "embedder": manifest["embedder"],
        "dimension": manifest["dimension"],
        "kind": manifest["kind"],
        "saved_at": manifest["saved_at"],
        # absent from manifests saved before it was recorded
        "chunks_without_terms": manifest.get("chunks_without_terms"),
    }


#: the type of stored term ids: feature numbers under 65,536 (latent terms 0-16,383, a companion's vector's
#: components from 16,384 on), two bytes each, which matters when a companion keeps 384 of them a chunk
TERM_ID = np.uint16


def _bitmap(mask: np.ndarray) -> np.ndarray:
    return np.packbits(mask, bitorder="little")


class IndexSnapshot:
    """One version of the index, loaded in memory. Never modified once built (safe to share)."""

    def __init__(
        self,
        *,
        version: int,
        embedder_name: str,
        dimension: int,
        kind: str,
        index: Any,
        labels: np.ndarray,
        alive: np.ndarray,
        document_ids: np.ndarray,
        collection_ids: np.ndarray,
        texts: list[str],
        config: IndexConfig,
        term_ids: np.ndarray | None = None,
        term_weights: np.ndarray | None = None,
    ) -> None:
        self.version = version
        self.embedder_name = embedder_name
        self.dimension = dimension
        self.kind = kind
        self.index = index
        self.labels = labels
        self.alive = alive
        self.document_ids = document_ids
        self.collection_ids = collection_ids
        self.texts = texts
        #: per position, the chunk's third-side terms, latent terms or a companion's vector ((positions, t)
        #: uint16 ids and float16 weights, weight 0 where a chunk has fewer than t; t = 0 when there are none)
        self.term_ids = term_ids if term_ids is not None else np.zeros((len(labels), 0), dtype=TERM_ID)
        self.term_weights = term_weights if term_weights is not None else np.zeros((len(labels), 0), dtype=np.float16)
        self._config = config
        self.live_positions = np.flatnonzero(alive)
        self._positions = dict(zip(labels[self.live_positions].tolist(), self.live_positions.tolist(), strict=True))
        # removed chunks still hold positions (approximate index only): every search must skip them
        self._alive_bits = None if len(self.live_positions) == len(labels) else _bitmap(alive)

    @classmethod
    def empty(cls, *, embedder_name: str, dimension: int, config: IndexConfig, version: int = 0) -> IndexSnapshot:
        none = np.zeros(0, dtype=np.int64)
        return cls(
            version=version,
            embedder_name=embedder_name,
            dimension=dimension,
            kind=FLAT,
            index=faiss.IndexFlatIP(dimension),
            labels=none,
            alive=np.zeros(0, dtype=bool),
            document_ids=none,
            collection_ids=none,
            texts=[],
            config=config,
        )

    def __len__(self) -> int:
        return len(self.live_positions)

    def ids(self) -> np.ndarray:
        """The chunk ids in the index (int64)."""
        return self.labels[self.live_positions]

    def position(self, chunk_id: int) -> int | None:
        return self._positions.get(int(chunk_id))

    def stored_vectors(self) -> np.ndarray:
        """All stored vectors by position, as a read-only view of FAISS's own storage (no copy)."""
        flat = faiss.downcast_index(self.index.storage) if self.kind == HNSW else self.index
        n = flat.ntotal
        if n == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        view: np.ndarray = faiss.rev_swig_ptr(flat.get_xb(), n * self.dimension).reshape(n, self.dimension)
        view.flags.writeable = False
        return view

    @functools.cached_property
    def chunks_without_terms(self) -> int:
        """Live chunks whose row holds no terms at all: embedded before the embedder gave any (or without
        terms when it gives none). A chunk the companion was not given (another language) has its ids."""
        if self.term_ids.shape[1] == 0:
            return len(self)
        return len(self) - int(np.count_nonzero(self.term_ids[self.live_positions].any(axis=1)))

    def term_scores(self, chunk_ids: Sequence[int], query: np.ndarray) -> np.ndarray:
        """The latent-term score of each of ``chunk_ids``: the dot product of its terms with ``query``
        (a dense (features,) array of the query's term weights); 0 for a chunk without terms."""
        found = [(i, p) for i, p in enumerate(map(self.position, chunk_ids)) if p is not None]
        scores = np.zeros(len(chunk_ids), dtype=np.float32)
        if not found or self.term_ids.shape[1] == 0:
            return scores
        rows, positions = (list(column) for column in zip(*found, strict=True))
        ids = self.term_ids[positions]
        # a term the query does not have (its id past the query's last feature included) counts 0
        weights_of_query = np.where(ids < len(query), query[np.minimum(ids, len(query) - 1)], 0.0)
        scores[rows] = (weights_of_query * self.term_weights[positions].astype(np.float32)).sum(axis=1)
        return scores

    def vectors(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """The stored vector of each of ``ids`` that is in the index."""
        stored = self.stored_vectors()
        out: dict[int, np.ndarray] = {}
        for chunk_id in ids:
            position = self.position(chunk_id)
            if position is not None:
                out[int(chunk_id)] = np.array(stored[position])
        return out

    def allowed(
        self, collections: Collection[int] | None = None, documents: Collection[int] | None = None
    ) -> np.ndarray | None:
        """Mask of the positions a search may return, or None when every position may be returned."""
        if collections is None and documents is None:
            return None if self._alive_bits is None else self.alive
        mask = self.alive.copy()
        if collections is not None:
            mask &= np.isin(self.collection_ids, np.fromiter(collections, dtype=np.int64))
        if documents is not None:
            mask &= np.isin(self.document_ids, np.fromiter(documents, dtype=np.int64))
        return mask

    def search(
        self,
        query: np.ndarray,
        k: int,
        *,
        collections: Collection[int] | None = None,
        documents: Collection[int] | None = None,
    ) -> list[tuple[int, float]]:
        """The ``k`` nearest chunks to ``query`` among those the filters allow: (chunk id, cosine), best first."""
        vector = np.ascontiguousarray(np.asarray(query, dtype=np.float32).reshape(1, -1))
        if vector.shape[1] != self.dimension:
            raise ValueError(f"query has dimension {vector.shape[1]}, the index {self.dimension}")
        mask = self.allowed(collections, documents)
        available = len(self) if mask is None else int(np.count_nonzero(mask))
        k = min(k, available)
        if k <= 0:
            return []
        if mask is None:
            distances, positions = self.index.search(vector, k)
        else:
            # the bitmap must stay referenced while FAISS reads it
            bits = self._alive_bits if mask is self.alive and self._alive_bits is not None else _bitmap(mask)
            selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
            distances, positions = self._search_selected(vector, k, selector, available)
        found = positions[0] >= 0
        return [(int(self.labels[p]), float(d)) for p, d in zip(positions[0][found], distances[0][found], strict=True)]

    def _search_selected(self, vector: np.ndarray, k: int, selector: Any, available: int) -> Any:
        if self.kind == FLAT:
            return self.index.search(vector, k, params=faiss.SearchParameters(sel=selector))
        storage = faiss.downcast_index(self.index.storage)
        if available <= _EXACT_FILTER_SHARE * self.index.ntotal:
            # a graph walk finds few allowed nodes when they are rare: scan them exactly instead
            return storage.search(vector, k, params=faiss.SearchParameters(sel=selector))
        params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(self._config.hnsw_ef_search, 2 * k))
        distances, positions = self.index.search(vector, k, params=params)
        if np.count_nonzero(positions[0] >= 0) < k:
            return storage.search(vector, k, params=faiss.SearchParameters(sel=selector))
        return distances, positions


class IndexWriter:
    """Changes to the index, applied and saved as one new version when the ``writer()`` block ends."""

    def __init__(self, base: IndexSnapshot, *, reset: bool = False) -> None:
        self._base = base
        self._removed = base.alive.copy() if reset else np.zeros(len(base.labels), dtype=bool)
        # chunk id -> (batch, row) of its newest vector added in this session
        self._pending: dict[int, tuple[int, int]] = {}
        self._batches: list[tuple[np.ndarray, int, int, list[str], tuple[np.ndarray, np.ndarray]]] = []
        self.changed = reset

    @property
    def count(self) -> int:
        """How many chunks the index will hold once saved."""
        return int(np.count_nonzero(self._base.alive & ~self._removed)) + len(self._pending)

    def _remove_saved(self, chunk_id: int) -> bool:
        position = self._base.position(chunk_id)
        if position is None or self._removed[position]:
            return False
        self._removed[position] = True
        return True

    def add(
        self,
        ids: Sequence[int],
        vectors: np.ndarray,
        *,
        document_id: int,
        collection_id: int,
        texts: Sequence[str],
    ) -> None:
        """Add (or replace) the vectors of chunks ``ids`` of one document.

        ``vectors``: the embedder's passage rows, the vector alone or followed by latent term ids and
        weights (``ingestion.embedding.split_rows``).
        """
        labels = np.asarray(ids, dtype=np.int64).reshape(-1)
        rows = np.asarray(vectors, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[0] != len(labels):
            raise ValueError(f"expected vectors of shape ({len(labels)}, {self._base.dimension}), got {rows.shape}")
        matrix, term_ids, term_weights = split_rows(rows, self._base.dimension)  # checks the width
        matrix = np.ascontiguousarray(matrix)
        if len(texts) != len(labels):
            raise ValueError(f"{len(labels)} ids but {len(texts)} texts")
        if len(labels) and labels.min() < 0:
            raise ValueError("chunk ids must not be negative")
        if not np.isfinite(rows).all():
            raise ValueError("vectors must be finite")
        if term_ids.size and (term_ids.min() < 0 or term_ids.max() > np.iinfo(TERM_ID).max):
            raise ValueError(f"term ids must lie in 0..{np.iinfo(TERM_ID).max}")
        batch = len(self._batches)
        terms = (term_ids.astype(TERM_ID), term_weights.astype(np.float16))
        self._batches.append((matrix, int(document_id), int(collection_id), list(texts), terms))
        for row, chunk_id in enumerate(labels.tolist()):
            self._remove_saved(chunk_id)
            self._pending[chunk_id] = (batch, row)
        self.changed = self.changed or bool(len(labels))

    def remove_ids(self, ids: Collection[int]) -> int:
        """Remove these chunks; returns how many were in the index."""
        removed = 0
        for chunk_id in {int(i) for i in ids}:
            saved = self._remove_saved(chunk_id)
            pending = self._pending.pop(chunk_id, None) is not None
            removed += saved or pending
        self.changed = self.changed or bool(removed)
        return removed

    def remove_document(self, document_id: int) -> int:
        """Remove every chunk of a document; returns how many there were."""
        base = self._base
        mask = base.alive & ~self._removed & (base.document_ids == int(document_id))
        removed = int(np.count_nonzero(mask))
        self._removed |= mask
        for chunk_id in [c for c, (b, _) in self._pending.items() if self._batches[b][1] == int(document_id)]:
            del self._pending[chunk_id]
            removed += 1
        self.changed = self.changed or bool(removed)
        return removed

    def clear(self) -> None:
        """Remove everything."""
        self._removed = self._base.alive.copy()
        self._pending.clear()
        self._batches.clear()
        self.changed = True

    def _new_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str], np.ndarray, np.ndarray]:
        dimension = self._base.dimension
        n = len(self._pending)
        width = max((batch[4][0].shape[1] for batch in self._batches), default=0)
        labels = np.fromiter(self._pending.keys(), dtype=np.int64, count=n)
        vectors = np.empty((n, dimension), dtype=np.float32)
        documents = np.empty(n, dtype=np.int64)
        collections = np.empty(n, dtype=np.int64)
        term_ids = np.zeros((n, width), dtype=TERM_ID)
        term_weights = np.zeros((n, width), dtype=np.float16)
        texts: list[str] = []
        for i, (batch, row) in enumerate(self._pending.values()):
            matrix, document_id, collection_id, batch_texts, (ids, weights) = self._batches[batch]
            vectors[i] = matrix[row]
            documents[i], collections[i] = document_id, collection_id
            term_ids[i, : ids.shape[1]] = ids[row]
            term_weights[i, : ids.shape[1]] = weights[row]
            texts.append(batch_texts[row])
        return labels, vectors, documents, collections, texts, term_ids, term_weights

    def build(self, version: int, config: IndexConfig) -> IndexSnapshot:
        """The snapshot holding the base plus this session's changes."""
        base = self._base
        keep = base.alive & ~self._removed
        labels, vectors, documents, collections, texts, term_ids, term_weights = self._new_rows()
        total = int(np.count_nonzero(keep)) + len(labels)
        if total > config.approx_threshold or (base.kind == HNSW and total > config.approx_threshold // 2):
            kind = HNSW  # half the threshold as hysteresis: no flip-flop around it
        else:
            kind = FLAT
        positions = len(base.labels) + len(labels)
        incremental = kind == HNSW and base.kind == HNSW and (positions - total) <= _MAX_DEAD_SHARE * positions
        common: dict[str, Any] = {
            "version": version,
            "embedder_name": base.embedder_name,
            "dimension": base.dimension,
            "kind": kind,
            "config": config,
        }
        if incremental:
            # the graph cannot forget nodes: keep them as dead positions, add the new ones
            index = base.index
            if len(labels):
                index = faiss.clone_index(base.index)
                index.add(vectors)
            return IndexSnapshot(
                index=index,
                labels=np.concatenate([base.labels, labels]),
                alive=np.concatenate([keep, np.ones(len(labels), dtype=bool)]),
                document_ids=np.concatenate([base.document_ids, documents]),
                collection_ids=np.concatenate([base.collection_ids, collections]),
                texts=[t if k else "" for t, k in zip(base.texts, keep.tolist(), strict=True)] + texts,
                term_ids=_joined(base.term_ids, term_ids),
                term_weights=_joined(base.term_weights, term_weights),
                **common,
            )
        kept = np.flatnonzero(keep)
        return IndexSnapshot(
            index=_new_faiss_index(kind, base.dimension, base.stored_vectors(), kept, vectors, config),
            labels=np.concatenate([base.labels[kept], labels]),
            alive=np.ones(total, dtype=bool),
            document_ids=np.concatenate([base.document_ids[kept], documents]),
            collection_ids=np.concatenate([base.collection_ids[kept], collections]),
            texts=[base.texts[p] for p in kept.tolist()] + texts,
            term_ids=_joined(base.term_ids[kept], term_ids),
            term_weights=_joined(base.term_weights[kept], term_weights),
            **common,
        )


def _joined(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Rows of ``old`` then of ``new`` (latent terms), the narrower padded with zeros (weight 0: no term)."""
    width = max(old.shape[1], new.shape[1])
    out = np.zeros((len(old) + len(new), width), dtype=old.dtype)
    out[: len(old), : old.shape[1]] = old
    out[len(old) :, : new.shape[1]] = new
    return out


def _new_faiss_index(
    kind: str, dimension: int, stored: np.ndarray, kept: np.ndarray, added: np.ndarray, config: IndexConfig
) -> Any:
    """A new FAISS index holding ``stored[kept]`` then ``added``."""
    if kind == HNSW:
        index = faiss.IndexHNSWFlat(dimension, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.hnsw_ef_construction
        index.hnsw.efSearch = config.hnsw_ef_search
    else:
        index = faiss.IndexFlatIP(dimension)
    # in slices: a copy of all kept vectors at once would double the peak memory of a save
    for start in range(0, len(kept), _COPY_ROWS):
        index.add(np.ascontiguousarray(stored[kept[start : start + _COPY_ROWS]]))
    if len(added):
        index.add(np.ascontiguousarray(added, dtype=np.float32))
    return index


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


def _write_version(folder: Path, snapshot: IndexSnapshot) -> None:
    encoded = [t.encode("utf-8") for t in snapshot.texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    _write_bytes(folder / TEXTS_FILE, b"".join(encoded))
    with open(folder / META_FILE, "wb") as file:
        np.savez(
            file,
            labels=snapshot.labels,
            alive=snapshot.alive,
            document_ids=snapshot.document_ids,
            collection_ids=snapshot.collection_ids,
            text_offsets=offsets,
            term_ids=snapshot.term_ids,
            term_weights=snapshot.term_weights,
        )
        file.flush()
        os.fsync(file.fileno())
    faiss.write_index(snapshot.index, str(folder / FAISS_FILE))
    _fsync_path(folder / FAISS_FILE)
    manifest = {
        "format": FORMAT,
        "version": snapshot.version,
        "embedder": snapshot.embedder_name,
        "dimension": snapshot.dimension,
        "kind": snapshot.kind,
        "count": len(snapshot),
        "positions": len(snapshot.labels),
        "saved_at": time.time(),
        # the third search side is off while some chunks have no terms: status pages tell it from here
        "chunks_without_terms": snapshot.chunks_without_terms,
    }
    _write_bytes(folder / MANIFEST_FILE, json.dumps(manifest, indent=1).encode("utf-8"))
    _fsync_path(folder)


def _switch_current(directory: Path, name: str) -> None:
    """Make ``name`` the current version: the one step that publishes a save."""
    temporary = directory / f"{_TEMP_PREFIX}{CURRENT_FILE}-{secrets.token_hex(4)}"
    _write_bytes(temporary, f"{name}\n".encode("ascii"))
    os.replace(temporary, directory / CURRENT_FILE)
    _fsync_path(directory)


def _save(directory: Path, snapshot: IndexSnapshot) -> None:
    name = _version_name(snapshot.version)
    temporary = directory / f"{_TEMP_PREFIX}{name}-{secrets.token_hex(4)}"
    temporary.mkdir()
    try:
        _write_version(temporary, snapshot)
        final = directory / name
        if final.exists():  # left by a writer killed before it switched CURRENT: never published
            shutil.rmtree(final)
        os.rename(temporary, final)
        _fsync_path(directory)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    _switch_current(directory, name)


def _clean_up(directory: Path, keep: Collection[str]) -> None:
    """Remove old versions and what killed writers left; the caller holds the writer lock."""
    for entry in directory.iterdir():
        stale_version = entry.is_dir() and entry.name.startswith("v") and entry.name not in keep
        if stale_version or entry.name.startswith(_TEMP_PREFIX):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()


def _load(directory: Path, name: str, config: IndexConfig, *, embedder_name: str, dimension: int) -> IndexSnapshot:
    folder = directory / name
    with open(folder / MANIFEST_FILE, encoding="utf-8") as file:
        manifest = json.load(file)
    if manifest.get("embedder") != embedder_name or manifest.get("dimension") != dimension:
        raise IndexMismatchError(
            f"The index was built with {manifest.get('embedder')} (dim {manifest.get('dimension')}) but the "
            f"configured embedder is {embedder_name} (dim {dimension}): run `manage.py rebuild_index`"
        )
    if manifest.get("format") != FORMAT:
        raise IndexCorruptError(
            f"The index at {directory} has format {manifest.get('format')}, this version reads {FORMAT}: "
            "run `manage.py rebuild_index`"
        )
    index = faiss.read_index(str(folder / FAISS_FILE))
    with np.load(folder / META_FILE) as meta:
        labels = meta["labels"].astype(np.int64)
        alive = meta["alive"].astype(bool)
        document_ids = meta["document_ids"].astype(np.int64)
        collection_ids = meta["collection_ids"].astype(np.int64)
        offsets = meta["text_offsets"].astype(np.int64)
        # an index saved before latent terms existed has none: its chunks get them from rebuild_index
        term_ids = meta["term_ids"].astype(TERM_ID) if "term_ids" in meta else np.zeros((len(labels), 0), TERM_ID)
        term_weights = (
            meta["term_weights"].astype(np.float16)
            if "term_weights" in meta
            else np.zeros((len(labels), 0), np.float16)
        )
    blob = (folder / TEXTS_FILE).read_bytes()
    n = len(labels)
    if not (
        index.ntotal == n == len(alive) == len(document_ids) == len(collection_ids) == len(offsets) - 1
        and term_ids.shape == term_weights.shape
        and len(term_ids) == n
        and index.d == dimension
        and (n == 0 or offsets[-1] == len(blob))
    ):
        raise IndexCorruptError(f"The index files in {folder} do not agree: run `manage.py rebuild_index`")
    bounds = offsets.tolist()
    texts = [blob[bounds[i] : bounds[i + 1]].decode("utf-8") for i in range(n)]
    return IndexSnapshot(
        version=int(manifest["version"]),
        embedder_name=embedder_name,
        dimension=dimension,
        kind=manifest.get("kind", FLAT),
        index=index,
        labels=labels,
        alive=alive,
        document_ids=document_ids,
        collection_ids=collection_ids,
        texts=texts,
        config=config,
        term_ids=term_ids,
        term_weights=term_weights,
    )


class VectorIndex:
    """The chunk vector index of one directory, as seen by this process.

    Searches read the version loaded in memory (:meth:`reload_if_stale` picks up a newer saved one);
    :meth:`writer` changes it and saves a new version, one writer at a time across processes.
    Opening an index saved by another embedder raises IndexMismatchError; pass ``load=False`` to open
    it empty anyway, to rebuild it with ``writer(reset=True)``.
    """

    def __init__(self, config: IndexConfig, *, embedder_name: str, dimension: int, load: bool = True) -> None:
        self.config = replace(config, directory=Path(config.directory))
        self.directory = self.config.directory
        self.embedder_name = embedder_name
        self.dimension = dimension
        self._reload_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._snapshot = IndexSnapshot.empty(embedder_name=embedder_name, dimension=dimension, config=self.config)
        if load:
            self.reload_if_stale()

    # ---- readers ------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        """The version loaded in memory (0 before the first save)."""
        return self._snapshot.version

    @property
    def count(self) -> int:
        """How many chunks the loaded version holds."""
        return len(self._snapshot)

    def __len__(self) -> int:
        return len(self._snapshot)

    @property
    def kind(self) -> str:
        """The kind of FAISS index: "flat" (exact) or "hnsw" (approximate)."""
        return self._snapshot.kind

    def ids(self) -> np.ndarray:
        """The chunk ids of the loaded version (int64)."""
        return self._snapshot.ids()

    def snapshot(self) -> IndexSnapshot:
        """The loaded version, to run several reads against the same one."""
        return self._snapshot

    def search(
        self,
        query: np.ndarray,
        k: int,
        *,
        collections: Collection[int] | None = None,
        documents: Collection[int] | None = None,
    ) -> list[tuple[int, float]]:
        """The ``k`` chunks nearest to ``query`` that the filters allow, as (chunk id, cosine), best first.

        ``collections`` / ``documents``: the allowed ids (None: no restriction). The filter is applied by
        FAISS during the search, so ``k`` results come back whenever ``k`` chunks are allowed.
        """
        return self._snapshot.search(query, k, collections=collections, documents=documents)

    def reload_if_stale(self) -> bool:
        """Load the saved version if it differs from the one in memory; True when it did.

        Costs one read of a small file when nothing changed.
        """
        if _parse_version(_read_current(self.directory)) == self._snapshot.version:
            return False
        with self._reload_lock:
            for attempt in range(5):
                name = _read_current(self.directory)
                if _parse_version(name) == self._snapshot.version:
                    return False
                try:
                    self._snapshot = self._load(name)
                    return True
                except FileNotFoundError:
                    if attempt == 4:  # versions replaced faster than we can read them
                        raise
                    time.sleep(0.05)
        return False  # pragma: no cover

    def _load(self, name: str | None) -> IndexSnapshot:
        if name is None:
            return IndexSnapshot.empty(embedder_name=self.embedder_name, dimension=self.dimension, config=self.config)
        try:
            return _load(self.directory, name, self.config, embedder_name=self.embedder_name, dimension=self.dimension)
        except (FileNotFoundError, IndexMismatchError, IndexCorruptError):
            raise
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise IndexCorruptError(f"The index in {self.directory / name} cannot be read ({exc})") from exc

    # ---- writer -------------------------------------------------------------------------------
    @contextmanager
    def writer(self, *, reset: bool = False) -> Iterator[IndexWriter]:
        """Change the index: takes the writers' lock, starts from the newest saved version, yields.

        When the block ends normally the changes are saved atomically as the next version and become
        this instance's loaded version; when it raises, they are discarded. ``reset=True`` starts
        from an empty index and ignores the saved one (even one built by another embedder).
        Raises IndexBusyError when the lock is not free within ``lock_timeout`` seconds.
        """
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
                current = _read_current(self.directory)
                saved_version = _parse_version(current)
                if reset:
                    base = IndexSnapshot.empty(
                        embedder_name=self.embedder_name,
                        dimension=self.dimension,
                        config=self.config,
                        version=saved_version,
                    )
                else:
                    if saved_version != self._snapshot.version:
                        self._snapshot = self._load(current)
                    base = self._snapshot
                session = IndexWriter(base, reset=reset)
                yield session
                if session.changed:
                    snapshot = session.build(saved_version + 1, self.config)
                    _save(self.directory, snapshot)
                    self._snapshot = snapshot
                    keep = {_version_name(snapshot.version)} | ({current} if current else set())
                    _clean_up(self.directory, keep)
            finally:
                lock.release()
