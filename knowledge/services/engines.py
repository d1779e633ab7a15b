"""The engines of this process, built once from settings.

``ingestion/`` and ``llm/`` never read settings: this module turns settings into their plain config
objects and keeps one embedder, one index and one LLM handler per process (a forked worker child
builds its own: the embedder's OpenMP runtime must never cross a fork).
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from django.conf import settings

if TYPE_CHECKING:
    from ingestion.chunking import ChunkingConfig
    from ingestion.embedding import Embedder, EmbedderConfig
    from ingestion.index import VectorIndex
    from ingestion.pipeline import PipelineOptions
    from ingestion.rerank import Reranker
    from ingestion.search import HybridSearcher
    from llm.config import LLMConfig
    from llm.handler import LLMHandler

_lock = threading.RLock()  # builders call each other (the searcher needs the index)
_cache: dict[str, Any] = {}
_cache_pid = os.getpid()


def _cached(key: str, build: Any) -> Any:
    global _cache_pid
    with _lock:
        if _cache_pid != os.getpid():
            _cache.clear()
            _cache_pid = os.getpid()
        if key not in _cache:
            _cache[key] = build()
        return _cache[key]


def reset() -> None:
    """Forget the engines of this process (tests, settings changes)."""
    with _lock:
        _cache.clear()


def embedder_config() -> EmbedderConfig:
    from ingestion.embedding import EmbedderConfig

    return EmbedderConfig(
        backend=settings.RAG_EMBEDDER,
        model=settings.RAG_EMBEDDER_MODEL,
        engine=settings.RAG_EMBEDDER_ENGINE,
        batch_size=settings.RAG_EMBED_BATCH_SIZE,
        threads=settings.RAG_EMBED_THREADS,
        quantize=settings.RAG_EMBEDDER_QUANTIZE,
        terms=settings.RAG_EMBEDDER_TERMS,
        companion=settings.RAG_COMPANION_EMBEDDER,
        companion_languages=settings.RAG_COMPANION_LANGUAGES,
    )


def chunking_config() -> ChunkingConfig:
    from ingestion.chunking import ChunkingConfig

    return ChunkingConfig(max_tokens=settings.RAG_CHUNK_TOKENS, overlap_tokens=settings.RAG_CHUNK_OVERLAP)


def pipeline_options(*, ocr: bool = True) -> PipelineOptions:
    """How documents are ingested, from the settings (``ocr=False`` skips OCR even when it is enabled)."""
    from ingestion.pipeline import PipelineOptions

    return PipelineOptions(
        chunking=chunking_config(),
        ocr=ocr and settings.RAG_OCR,
        ocr_languages=settings.RAG_OCR_LANGUAGES,
        max_pages=settings.RAG_MAX_PAGES,
        max_unpacked_mb=settings.RAG_MAX_UNPACKED_MB,
        max_memory_mb=settings.RAG_INGEST_MEMORY_MB,
        embed_cache_dir=settings.RAG_EMBED_CACHE_DIR,
    )


def get_embedder() -> Embedder:
    from ingestion.embedding import get_embedder as build

    return build(embedder_config())


def get_index() -> VectorIndex:
    """The process's index, reloaded when another process saved a newer version."""
    from ingestion.index import IndexConfig, VectorIndex

    def build() -> VectorIndex:
        embedder = get_embedder()
        config = IndexConfig(directory=settings.INDEX_DIR, approx_threshold=settings.INDEX_APPROX_THRESHOLD)
        return VectorIndex(config, embedder_name=embedder.name, dimension=embedder.dimension)

    index: VectorIndex = _cached(f"index:{settings.INDEX_DIR}", build)
    index.reload_if_stale()
    return index


def get_searcher() -> HybridSearcher:
    from ingestion.search import HybridSearcher, SearchConfig

    def build() -> HybridSearcher:
        config = SearchConfig(
            fusion=settings.RAG_FUSION,
            rerank_k=settings.RAG_RERANK_CANDIDATES,
            terms_weight=settings.RAG_TERMS_WEIGHT,
        )
        return HybridSearcher(get_index(), get_embedder(), config, reranker=get_reranker())

    searcher: HybridSearcher = _cached(f"searcher:{settings.INDEX_DIR}", build)
    get_index()  # reload when stale; the searcher rebuilds its BM25 side on a new version
    return searcher


def get_reranker() -> Reranker | None:
    """The configured cross-encoder (``RAG_RERANKER_MODEL``), or None when reranking is off."""
    if not settings.RAG_RERANKER_MODEL:
        return None
    from ingestion.rerank import Reranker, RerankerConfig

    config = RerankerConfig(model_dir=settings.RAG_RERANKER_MODEL, threads=settings.RAG_EMBED_THREADS)
    reranker: Reranker = _cached(f"reranker:{settings.RAG_RERANKER_MODEL}", lambda: Reranker(config))
    return reranker


def llm_config() -> LLMConfig:
    from llm.config import LLMConfig

    return LLMConfig(
        backend=settings.RAG_LLM_BACKEND,
        model_dir=settings.RAG_LLM_MODEL_DIR,
        model_file=settings.RAG_LLM_MODEL_FILE,
        base_url=settings.RAG_LLM_BASE_URL,
        api_key=settings.RAG_LLM_API_KEY,
        model=settings.RAG_LLM_MODEL,
        context_window=settings.RAG_LLM_CONTEXT_WINDOW,
        max_tokens=settings.LLM_MAX_TOKENS,
        timeout=settings.RAG_LLM_TIMEOUT,
        threads=settings.RAG_LLM_THREADS,
    )


def get_llm() -> LLMHandler:
    """The process's LLM handler (the model itself loads on first use, once)."""
    from llm.handler import get_handler

    return get_handler(llm_config())
