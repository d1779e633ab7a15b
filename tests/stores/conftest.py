"""The two search stores side by side: the same tests run on ``faiss`` and on ``postgres``.

The ``postgres`` parameter needs a PostgreSQL with pgvector: ``KP_TEST_SEARCH_BACKEND=postgres pytest -m stores``
starts one (tests/services_env.py); on a database without it, that parameter is skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest

from ingestion.store import PassageEmbeddings, SearchStore, StoreIdentity, StoreWriter

IDENTITY = StoreIdentity("test-embedder", 16)
COMPANION_IDENTITY = StoreIdentity("test-embedder", 16, "test-companion", 8)
BACKENDS = ("faiss", "postgres")


def postgres_problem() -> str | None:
    """Why the test database cannot hold the postgres store (None when it can)."""
    from django.db import connection

    from knowledge.search import schema

    if connection.vendor != "postgresql":
        return "the test database is not PostgreSQL"
    if not schema.pgvector_available(connection):
        return "the test database has no pgvector (KP_TEST_SEARCH_BACKEND=postgres runs these tests on one)"
    return None


def open_backend(
    backend: str, identity: StoreIdentity, folder: Path, *, approximate: bool = False, load: bool = True
) -> SearchStore:
    """A store of ``backend``; ``approximate``: its dense search goes through its approximate index (HNSW)
    whenever it can, even on small sets; ``load=False``: opened to be rebuilt (what it holds is not read)."""
    if backend == "faiss":
        from ingestion.index import FaissStore, IndexConfig

        config = IndexConfig(directory=folder, background_merge=False, approx_threshold=100 if approximate else 200_000)
        return FaissStore(config, identity, load=load)  # type: ignore[return-value]
    from knowledge.search.postgres import PostgresStore

    return PostgresStore(identity, exact_limit=0 if approximate else 5_000)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, db: Any) -> str:
    if request.param == "postgres" and (problem := postgres_problem()):
        pytest.skip(problem)
    return str(request.param)


@pytest.fixture
def open_store(backend: str, tmp_path: Path) -> Callable[..., SearchStore]:
    """Open the parametrised backend's store: ``open_store(identity=IDENTITY, approximate=False, load=True)``;
    every call of one test opens the same store (the same folder, the same database)."""

    def make(identity: StoreIdentity = IDENTITY, *, approximate: bool = False, load: bool = True) -> SearchStore:
        return open_backend(backend, identity, tmp_path / "index", approximate=approximate, load=load)

    return make


@pytest.fixture
def postgres_db(transactional_db: Any) -> None:
    """A committed database with pgvector (tests across connections and processes)."""
    if problem := postgres_problem():
        pytest.skip(problem)


@contextmanager
def writing(store: SearchStore) -> Iterator[StoreWriter]:
    """Write as the services do: the writer around one database transaction."""
    from django.db import transaction

    with store.writer() as writer, transaction.atomic():
        yield writer


def unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return (rows / np.where(norms == 0, 1, norms)).astype(np.float32)


# ---- a synthetic corpus with real lexical content --------------------------------------------------------
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
_ENGLISH = ["the", "and", "of", "is", "in", "to", "with", "for", "on", "this"]
_FRENCH = ["le", "la", "et", "les", "des", "une", "est", "dans", "pour", "avec"]


def vocabulary(size: int, seed: int = 7) -> list[str]:
    rng = np.random.default_rng(seed)
    words: dict[str, None] = {}
    while len(words) < size:
        words["".join(rng.choice(_SYLLABLES, size=int(rng.integers(2, 4))))] = None
    return list(words)


@dataclass(frozen=True)
class Doc:
    document_id: int
    collection_id: int
    chunk_ids: list[int]
    texts: list[str]
    embeddings: PassageEmbeddings


def corpus(
    documents: int,
    chunks_per_document: int,
    *,
    collection_of: Callable[[int], int] = lambda d: 1 + d % 3,
    identity: StoreIdentity = IDENTITY,
    seed: int = 0,
    first_chunk_id: int = 1,
    first_document_id: int = 1,
) -> list[Doc]:
    """Documents of pseudo-words with a Zipf distribution (some terms are everywhere, most are rare), English
    or French stop words, and random unit vectors (the companion's when ``identity`` has one)."""
    rng = np.random.default_rng(seed)
    words = vocabulary(400)
    weights = 1.0 / np.arange(1, len(words) + 1)
    weights /= weights.sum()
    docs = []
    chunk_id = first_chunk_id
    for d in range(documents):
        stop = _FRENCH if d % 5 == 4 else _ENGLISH
        texts = []
        for _ in range(chunks_per_document):
            n = int(rng.integers(8, 30))
            picked = list(rng.choice(words, size=n, p=weights)) + list(rng.choice(stop, size=n // 3))
            rng.shuffle(picked)
            texts.append(" ".join(picked))
        ids = list(range(chunk_id, chunk_id + chunks_per_document))
        chunk_id += chunks_per_document
        dense = unit(rng.normal(size=(chunks_per_document, identity.dimension)))
        companion = None
        if identity.companion_dimension:
            companion = unit(rng.normal(size=(chunks_per_document, identity.companion_dimension)))
        docs.append(Doc(first_document_id + d, collection_of(d), ids, texts, PassageEmbeddings(dense, companion)))
    return docs


def load(store: SearchStore, docs: Sequence[Doc], *, reset: bool = False) -> None:
    """Add ``docs``, as the services do (``reset``: as a rebuild, in one writer block of its own)."""
    with store.writer(reset=True) if reset else writing(store) as writer:
        for doc in docs:
            writer.add(
                doc.chunk_ids,
                doc.embeddings,
                document_id=doc.document_id,
                collection_id=doc.collection_id,
                texts=doc.texts,
            )


def database_url() -> str:
    """DATABASE_URL of the test database, for another process (TCP or a Unix socket folder)."""
    from django.db import connection

    conf = connection.settings_dict
    user = quote(conf.get("USER") or "postgres", safe="")
    password = f":{quote(conf['PASSWORD'], safe='')}" if conf.get("PASSWORD") else ""
    host = conf.get("HOST") or "127.0.0.1"
    if host.startswith("/"):
        return f"postgres://{user}{password}@/{quote(host, safe='')}/{conf['NAME']}"
    return f"postgres://{user}{password}@{host}:{conf.get('PORT') or 5432}/{conf['NAME']}"
