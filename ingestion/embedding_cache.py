"""An optional on-disk cache of passage vectors, keyed by (model name, SHA-256 of the embedded text).

Embedding is the slow stage of ingestion (multilingual-e5-small embeds a few passages a second on two
cores), and the same model given the same text gives the same vector: re-ingesting an unchanged
document, rebuilding the index or re-running an evaluation need not compute it again.

A passage's embeddings (:class:`~ingestion.store.PassageEmbeddings`) are cached per model: the dense vector
under the primary model's name, each companion model's under its own name. Each entry is that one model's
vector of that exact text, so vectors of different models are never mixed, and turning a companion on (or
changing its languages or adding a model) reuses every vector already computed. Which passages are given to a
companion model is decided before the cache (by their language), so a passage it is not given is not looked up.

The cache is one SQLite file (``vectors.sqlite3`` in the configured folder) in WAL mode, so the
worker processes of one machine can share it; each process opens its own connection (never across a
fork). It is an optimisation only: when it cannot be read or written, the vectors are computed and a
warning is logged, ingestion never fails because of it. Nothing is ever evicted; delete the folder to
empty it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .companion import companion_vectors
from .embedding import CompanionEmbedder, Embedder, passage_embeddings
from .store import PassageEmbeddings

__all__ = ["EmbeddingCache", "embed_passages_cached", "open_cache", "text_digest"]

logger = logging.getLogger(__name__)

FILE_NAME = "vectors.sqlite3"
#: SQLite allows 32766 bound parameters per statement (999 before 3.32): stay well under both
_LOOKUP_BATCH = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    embedder TEXT NOT NULL,
    digest BLOB NOT NULL,
    dimension INTEGER NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (embedder, digest)
) WITHOUT ROWID
"""


def text_digest(text: str) -> bytes:
    """The cache key of ``text``: SHA-256 of its UTF-8 bytes (32 bytes)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class EmbeddingCache:
    """Passage vectors stored by (embedder name, :func:`text_digest` of the exact embedded text).

    Thread-safe; a process started by ``fork`` opens its own connection on first use.
    """

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.path = self.directory / FILE_NAME
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._pid = 0

    def _connect(self) -> sqlite3.Connection:
        # the caller holds self._lock
        if self._connection is not None and self._pid == os.getpid():
            return self._connection
        self.directory.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")  # a lost last write only costs a recomputation
        connection.execute(_SCHEMA)
        self._connection, self._pid = connection, os.getpid()
        return connection

    def get_many(self, embedder_name: str, texts: Sequence[str], dimension: int) -> list[np.ndarray | None]:
        """The cached vector of each text (float32, shape (dimension,)), None where there is none."""
        found: dict[bytes, np.ndarray] = {}
        digests = [text_digest(t) for t in texts]
        unique = list(dict.fromkeys(digests))
        with self._lock:
            connection = self._connect()
            for start in range(0, len(unique), _LOOKUP_BATCH):
                part = unique[start : start + _LOOKUP_BATCH]
                rows = connection.execute(
                    "SELECT digest, vector FROM vectors WHERE embedder = ? AND dimension = ? "
                    f"AND digest IN ({','.join('?' * len(part))})",
                    [embedder_name, dimension, *part],
                ).fetchall()
                for digest, blob in rows:
                    if len(blob) == 4 * dimension:  # anything else is not one of our vectors: a miss
                        found[bytes(digest)] = np.frombuffer(blob, dtype=np.float32).copy()
        return [found.get(d) for d in digests]

    def put_many(self, embedder_name: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Store the vector of each text (rows of ``vectors``); texts already stored keep their vector."""
        matrix = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
        if matrix.ndim != 2 or len(matrix) != len(texts):
            raise ValueError(f"expected {len(texts)} vectors, got an array of shape {matrix.shape}")
        dimension = int(matrix.shape[1])
        rows = [(embedder_name, text_digest(t), dimension, row.tobytes()) for t, row in zip(texts, matrix, strict=True)]
        with self._lock:
            connection = self._connect()
            connection.execute("BEGIN")
            try:
                connection.executemany("INSERT OR IGNORE INTO vectors VALUES (?, ?, ?, ?)", rows)
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise

    def count(self, embedder_name: str | None = None) -> int:
        """How many vectors are stored (for one embedder, or in all)."""
        with self._lock:
            connection = self._connect()
            if embedder_name is None:
                row = connection.execute("SELECT COUNT(*) FROM vectors").fetchone()
            else:
                row = connection.execute("SELECT COUNT(*) FROM vectors WHERE embedder = ?", [embedder_name]).fetchone()
        return int(row[0])

    def close(self) -> None:
        """Close this process's connection (it reopens on next use)."""
        with self._lock:
            if self._connection is not None and self._pid == os.getpid():
                self._connection.close()
            self._connection = None


_caches: dict[Path, EmbeddingCache] = {}
_caches_lock = threading.Lock()


def open_cache(directory: Path | str) -> EmbeddingCache:
    """The process-wide cache of ``directory`` (created on first use)."""
    key = Path(directory).expanduser().resolve()
    with _caches_lock:
        cache = _caches.get(key)
        if cache is None:
            cache = _caches[key] = EmbeddingCache(key)
        return cache


def embed_passages_cached(embedder: Embedder, texts: Sequence[str], cache: EmbeddingCache | None) -> PassageEmbeddings:
    """``passage_embeddings(embedder, texts)``, computing only the vectors ``cache`` does not hold yet.

    New vectors are stored in the cache. A text repeated in ``texts`` is embedded once. Without a
    cache, or when the cache fails, every vector is computed.
    """
    if cache is None or not texts:
        return passage_embeddings(embedder, texts)
    dense = _cached_vectors(cache, embedder.name, embedder.dimension, texts, embedder.embed_passages)
    if not isinstance(embedder, CompanionEmbedder):
        return PassageEmbeddings(dense)

    def cached(index: int, given: list[str]) -> np.ndarray:
        name, dimension = embedder.models[index].name, embedder.model_dimension(index)
        return _cached_vectors(cache, name, dimension, given, lambda t: embedder.embed_companion(t, index))

    return PassageEmbeddings(dense, companion_vectors(embedder, texts, cached))


def _cached_vectors(
    cache: EmbeddingCache,
    model_name: str,
    dimension: int,
    texts: Sequence[str],
    embed: Callable[[Sequence[str]], np.ndarray],
) -> np.ndarray:
    """``embed(texts)`` (one model's vectors, (len(texts), dimension)), read from ``cache`` where it has them."""
    try:
        cached = cache.get_many(model_name, texts, dimension)
    except sqlite3.Error as exc:
        logger.warning("The embedding cache %s cannot be read (%s): computing every vector", cache.path, exc)
        return _as_rows(embed(texts), dimension)
    missing = list(dict.fromkeys(t for t, v in zip(texts, cached, strict=True) if v is None))
    computed: dict[str, np.ndarray] = {}
    if missing:
        vectors = _as_rows(embed(missing), dimension)
        computed = dict(zip(missing, vectors, strict=True))
        try:
            cache.put_many(model_name, missing, vectors)
        except sqlite3.Error as exc:
            logger.warning("The embedding cache %s cannot be written (%s)", cache.path, exc)
    out = np.empty((len(texts), dimension), dtype=np.float32)
    for row, (text, vector) in enumerate(zip(texts, cached, strict=True)):
        out[row] = vector if vector is not None else computed[text]
    return out


def _as_rows(vectors: np.ndarray, dimension: int) -> np.ndarray:
    return np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, dimension)
