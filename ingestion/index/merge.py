"""The merge policy (see the package docstring) and a merged segment's data, read from the stored arrays."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..store import StoreIdentity
from .arrays import _gather, _gather_ranges, _postings
from .layout import FLAT, IndexConfig
from .segment import _Part, _SegmentData
from .view import FaissView

#: a segment is rewritten without its removed chunks once they are this share of it
_MAX_DEAD_SHARE = 0.2


def _tier(live: int, config: IndexConfig) -> int:
    if live <= config.merge_floor:
        return 0
    return 1 + int(math.log(live / config.merge_floor, config.merge_factor))


def merge_plan(view: FaissView, config: IndexConfig, *, force: bool = False) -> list[str] | None:
    """The segments the merge policy (package docstring) would merge next, by name; None when none."""
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
