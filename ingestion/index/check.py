"""The check of a saved generation: its files opened afresh and compared with each other (``check_index``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import IndexCorruptError
from ..store import StoreIdentity
from .layout import IndexConfig, _current_generation, _rebuild_message
from .view import _open_view


def verify_generation(directory: Path, identity: StoreIdentity, config: IndexConfig) -> dict[str, Any]:
    """The current generation of ``directory`` checked (see :meth:`FaissStore.verify`): its counts."""
    for attempt in range(5):
        name = _current_generation(directory)
        if name is None:
            return {"version": 0, "segments": 0, "chunks": 0}
        try:
            view, _ = _open_view(directory, name, identity, config, None)
            break
        except FileNotFoundError as exc:
            if attempt == 4:
                raise IndexCorruptError(
                    _rebuild_message(directory, f"misses {exc.filename} of generation {name}")
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
            raise IndexCorruptError(_rebuild_message(directory, f"has a segment {part.name} with bad {problem}"))
    ids = view.ids()
    if len(np.unique(ids)) != len(ids):
        raise IndexCorruptError(_rebuild_message(directory, "holds a chunk in two places"))
    return {"version": view.generation, "segments": view.segments, "chunks": len(view)}
