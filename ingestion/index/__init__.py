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

from .layout import CURRENT_FILE, IndexConfig, is_segment_name, is_version_name
from .layout import FLAT as FLAT
from .manifest import generation_files, read_saved_state
from .merge import merge_plan
from .segment import faiss as faiss  # the SWIG module, typed Any
from .store import FaissStore
from .view import FaissView
from .writer import FaissWriter

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
