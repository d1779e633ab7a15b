"""A generation in memory (:class:`FaissView`): lookups, filters, dense and lexical search over its segments,
and opening one from disk, reusing the segments of the view before."""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import IndexCorruptError, IndexMismatchError
from ..language import bm25_idf, bm25_term_weight
from ..store import ChunkFacts, StoreIdentity
from .arrays import _id_array, _term_keys
from .layout import FLAT, HNSW, IndexConfig, _generation_name, _rebuild_message
from .manifest import _check_identity, _read_manifest
from .segment import _load_dead, _Part, _Segment

#: filters of at most this many ids have their per-segment masks cached by a view
_CACHED_FILTER_IDS = 256


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
    def _postings(self, terms: Sequence[str]) -> tuple[np.ndarray, list[list[tuple[int, np.ndarray, np.ndarray]]]]:
        """How many live chunks hold each of ``terms``, and per part (term index, positions, term frequencies) of
        its live postings of them."""
        keys = _term_keys(terms)
        frequencies = np.zeros(len(keys), dtype=np.int64)
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
        return frequencies, postings

    def idfs(self, terms: Sequence[str]) -> dict[str, float]:
        unique = list(dict.fromkeys(terms))
        if not unique:
            return {}
        frequencies, _ = self._postings(unique)
        return {term: bm25_idf(int(df), self._live) for term, df in zip(unique, frequencies.tolist(), strict=True)}

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
        frequencies, postings = self._postings(unique)
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
