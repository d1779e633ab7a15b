"""Every live chunk of a generation with its embeddings and terms, in batches by document (``FaissStore.export``)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..language import PassageTerms
from ..store import ExportBatch, PassageEmbeddings, StoreIdentity
from .view import FaissView


def export_batches(view: FaissView, identity: StoreIdentity, batch_size: int) -> Iterator[ExportBatch]:
    """The live chunks of ``view`` in batches of about ``batch_size`` (see :meth:`FaissStore.export`)."""
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
            yield _export_batch(view, identity, part_of, positions, batch, transposed)
            batch, size = [], 0
        batch.append((start, end))
        size += end - start
    if batch:
        yield _export_batch(view, identity, part_of, positions, batch, transposed)


def _export_batch(
    view: FaissView,
    identity: StoreIdentity,
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
    dense = np.empty((n, identity.dimension), dtype=np.float32)
    companion = np.zeros((n, identity.companion_dimension), dtype=np.float32) if identity.companion else None
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
