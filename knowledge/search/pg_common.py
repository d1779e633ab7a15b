"""What the ``postgres`` store's modules share: the vector type's binary form, a space, BM25 scoring of a
question, the SQL of the filters, the lexical analyser."""

from __future__ import annotations

import logging
import struct
import threading
import weakref
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.core.exceptions import ImproperlyConfigured

from ingestion.language import TextAnalyzer
from ingestion.store import StoreIdentity

from . import schema
from .checks import PGVECTOR_IMAGE

#: rows per INSERT statement (each row of search_chunk has 9 parameters)
_INSERT_ROWS = 500
#: pgvector 0.6's largest hnsw.ef_search
_EF_SEARCH_MAX = 1000
#: up to this many allowed collections, each term's postings are read best first over all of them at once
_MERGED_COLLECTIONS = 32

logger = logging.getLogger(__name__)

_analyzer: TextAnalyzer | None = None
_analyzer_lock = threading.Lock()


def _default_analyzer() -> TextAnalyzer:
    global _analyzer
    with _analyzer_lock:
        if _analyzer is None:
            _analyzer = TextAnalyzer()
        return _analyzer


# ---- pgvector's binary format, straight from and to numpy -------------------------------------------------
class _Vector:
    """A float32 vector as a query parameter (numpy arrays themselves keep their usual adaptation)."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array


_VECTOR_TYPES: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
_VECTOR_TYPES_LOCK = threading.Lock()


def _register_vector(raw: Any) -> None:
    """Teach one psycopg connection pgvector's binary format (once per connection)."""
    with _VECTOR_TYPES_LOCK:
        if raw in _VECTOR_TYPES:
            return
    from psycopg.adapt import Dumper, Loader
    from psycopg.pq import Format

    with raw.cursor() as cursor:
        cursor.execute("SELECT oid FROM pg_type WHERE typname = 'vector'")
        row = cursor.fetchone()
    if row is None:
        raise ImproperlyConfigured(
            "the pgvector extension is not installed in the database of DATABASE_URL: run `manage.py migrate` "
            f"on a server with pgvector (e.g. the {PGVECTOR_IMAGE} image)"
        )
    oid = row[0]

    class VectorDumper(Dumper):
        format = Format.BINARY

        def dump(self, obj: Any) -> bytes:
            values = np.asarray(obj.array, dtype=">f4").reshape(-1)
            return struct.pack(">HH", len(values), 0) + values.tobytes()

    VectorDumper.oid = oid

    class VectorLoader(Loader):
        format = Format.BINARY

        def load(self, data: Any) -> np.ndarray:
            return np.frombuffer(bytes(data), dtype=">f4", offset=4).astype(np.float32)

    raw.adapters.register_dumper(_Vector, VectorDumper)
    raw.adapters.register_loader(oid, VectorLoader)
    with _VECTOR_TYPES_LOCK:
        _VECTOR_TYPES[raw] = True


@dataclass(frozen=True)
class _Space:
    """One set of vectors: the identity that computed them and their table."""

    id: int
    identity: StoreIdentity
    state: str

    @property
    def table(self) -> str:
        return schema.vectors_table(self.id)


@dataclass(frozen=True)
class _Scoring:
    """What BM25 scores a question's postings with: its terms (rarest first), their idfs, the parameters."""

    term_ids: list[int]
    idfs: list[float]
    k1: float
    b: float
    average: float


def _describe(identity: StoreIdentity) -> str:
    text = f"{identity.embedder} (dim {identity.dimension})"
    if identity.companion:
        text += f" with the companion {identity.companion} (dim {identity.companion_dimension})"
    return text


def _filters(
    alias: str, collections: Collection[int] | None, documents: Collection[int] | None
) -> tuple[str, list[Any]]:
    clauses, params = [], []
    if collections is not None:
        clauses.append(f"{alias}collection_id = ANY(%s::bigint[])")
        params.append(sorted(int(c) for c in collections))
    if documents is not None:
        clauses.append(f"{alias}document_id = ANY(%s::bigint[])")
        params.append(sorted(int(d) for d in documents))
    return "".join(f" AND {c}" for c in clauses), params


def _nothing_allowed(collections: Collection[int] | None, documents: Collection[int] | None) -> bool:
    return (collections is not None and len(collections) == 0) or (documents is not None and len(documents) == 0)
