"""The array forms a segment stores: term keys, packed strings, postings (a CSC matrix), id arrays."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Collection, Iterable, Sequence

import numpy as np


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


def _id_array(ids: Collection[int]) -> np.ndarray:
    return np.fromiter((int(i) for i in ids), dtype=np.int64)
