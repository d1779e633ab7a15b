"""A writer session (:class:`FaissWriter`): chunks buffered and written as new segments, removals as tombstones,
all published as one generation by the store."""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..language import PassageTerms, TextAnalyzer, passage_terms
from ..store import PassageEmbeddings, StoreIdentity
from .arrays import _id_array, _pack_strings, _postings, _term_key
from .layout import _remove, _temp_name
from .segment import _Part, _SegmentData, _write_segment
from .view import FaissView

if TYPE_CHECKING:
    from .store import FaissStore


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
