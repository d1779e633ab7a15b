"""The engines of this process, built once from settings.

``ingestion/`` and ``llm/`` never read settings: this module turns settings into their plain config
objects and keeps one embedder, one index and one LLM handler per process (a forked worker child
builds its own: the embedder's OpenMP runtime must never cross a fork).
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from django.conf import settings

if TYPE_CHECKING:
    from ingestion.chunking import ChunkingConfig
    from ingestion.embedding import Embedder, EmbedderConfig
    from ingestion.pipeline import PipelineOptions
    from ingestion.rerank import Reranker
    from ingestion.search import HybridSearcher
    from ingestion.store import SearchStore, StoreIdentity
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
        _saved.clear()


def embedder_config() -> EmbedderConfig:
    from ingestion.embedding import EmbedderConfig

    return EmbedderConfig(
        backend=settings.RAG_EMBEDDER,
        model=settings.RAG_EMBEDDER_MODEL,
        engine=settings.RAG_EMBEDDER_ENGINE,
        batch_size=settings.RAG_EMBED_BATCH_SIZE,
        threads=settings.RAG_EMBED_THREADS,
        quantize=settings.RAG_EMBEDDER_QUANTIZE,
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


def store_identity() -> StoreIdentity:
    """What the configured embedder makes: the identity the search store must have."""
    from ingestion.embedding import store_identity as identity_of

    return identity_of(get_embedder())


def open_store(identity: StoreIdentity, *, load: bool = True) -> SearchStore:
    """A new handle on the configured search store (``RAG_SEARCH_BACKEND``) for ``identity``.

    ``load=False`` opens it without reading what it holds (a faiss store built by another embedder), to
    rebuild it with ``writer(reset=True)``.
    """
    if settings.RAG_SEARCH_BACKEND == "postgres":
        from knowledge.search.postgres import PostgresStore

        return PostgresStore(identity)
    from ingestion.index import FaissStore, IndexConfig

    config = IndexConfig(directory=settings.INDEX_DIR, approx_threshold=settings.INDEX_APPROX_THRESHOLD)
    return FaissStore(config, identity, load=load)


def _store(identity: StoreIdentity) -> SearchStore:
    key = f"store:{settings.RAG_SEARCH_BACKEND}:{settings.INDEX_DIR}:{identity_key(identity)}"
    store: SearchStore = _cached(key, lambda: open_store(identity))
    return store


def get_store() -> SearchStore:
    """The process's search store for the configured embedder (``RAG_SEARCH_BACKEND``), to write to.

    While the store still holds another model's vectors it cannot be written: ``IndexBusyError`` (the
    document waits and is retried) while ``rebuild_index`` builds the new ones, ``IndexMismatchError``
    ("run rebuild_index") when no rebuild runs. The faiss store picks up what other processes wrote by
    itself, in the background; the postgres store reads the database at every search.
    """
    identity = store_identity()
    remember_embedder(identity)
    saved = saved_identity()
    if saved is not None and saved != identity:
        from knowledge.models import SearchRebuild

        if SearchRebuild.objects.running().filter(embedder=identity.embedder).exists():
            from ingestion.errors import IndexBusyError

            raise IndexBusyError(
                "The search store is being rebuilt for the new embedding model: this document waits until it is done"
            )
    return _store(identity)


def get_searcher() -> HybridSearcher:
    """The process's searcher. It embeds questions with the model that built the store: after a change of
    embedding model, the previous one answers until ``rebuild_index`` has switched the store to the new one."""
    from ingestion.search import HybridSearcher, SearchConfig

    identity, embedder = store_identity(), get_embedder()
    saved = saved_identity()
    if saved is not None and saved != identity:
        previous = _recorded_config(saved)
        if previous is not None:  # else the searcher says the store needs `rebuild_index`
            from ingestion.embedding import get_embedder as build

            identity, embedder = saved, build(previous)

    def build_searcher() -> HybridSearcher:
        config = SearchConfig(
            fusion=settings.RAG_FUSION,
            rerank_k=settings.RAG_RERANK_CANDIDATES,
            companion_weight=settings.RAG_COMPANION_WEIGHT,
        )
        return HybridSearcher(_store(identity), embedder, config, reranker=get_reranker())

    key = f"searcher:{settings.RAG_SEARCH_BACKEND}:{settings.INDEX_DIR}:{identity_key(identity)}"
    searcher: HybridSearcher = _cached(key, build_searcher)
    return searcher


# ---- the identity of what the store holds, and the embedders behind identities ------------------------

#: seconds a process trusts what it read of the store's identity (a switch is seen within that time)
_SAVED_IDENTITY_TTL_S = 2.0
_saved: dict[str, tuple[float, StoreIdentity | None]] = {}


def identity_key(identity: StoreIdentity) -> str:
    """An identity as canonical JSON (the key of ``SearchEmbedder``)."""
    return json.dumps(dataclasses.asdict(identity), sort_keys=True)


def saved_identity() -> StoreIdentity | None:
    """The identity of the vectors the store holds now (None when it is empty); read at most every 2 s."""
    from ingestion.store import StoreIdentity

    key = f"{settings.RAG_SEARCH_BACKEND}:{settings.INDEX_DIR}:{settings.DATABASES['default'].get('NAME')}"
    now = time.monotonic()
    cached = _saved.get(key)
    if cached is not None and now - cached[0] < _SAVED_IDENTITY_TTL_S:
        return cached[1]
    identity: StoreIdentity | None = None
    if settings.RAG_SEARCH_BACKEND == "postgres":
        from knowledge.search.postgres import current_identity

        identity = current_identity()
    else:
        from ingestion.index import read_saved_state

        state = read_saved_state(settings.INDEX_DIR)
        if state and "embedder" in state and state.get("chunks"):
            identity = StoreIdentity(
                state["embedder"], state["dimension"], state["companion"], state["companion_dimension"]
            )
    _saved[key] = (now, identity)
    return identity


def remember_embedder(identity: StoreIdentity) -> None:
    """Record the configured embedder's settings under ``identity`` (once per process), so that questions can
    still be embedded with it after the configuration moves on to another model."""

    def record() -> bool:
        from knowledge.models import SearchEmbedder

        config = dataclasses.asdict(embedder_config())
        SearchEmbedder.objects.update_or_create(identity=identity_key(identity), defaults={"config": config})
        return True

    _cached(f"remembered:{identity_key(identity)}", record)


def _recorded_config(identity: StoreIdentity) -> EmbedderConfig | None:
    """The embedder settings that made ``identity`` (None when never recorded: a store from an older release)."""
    from ingestion.embedding import EmbedderConfig
    from knowledge.models import SearchEmbedder

    row = SearchEmbedder.objects.filter(identity=identity_key(identity)).first()
    if row is None:
        return None
    known = {field.name for field in dataclasses.fields(EmbedderConfig)}
    values = {name: value for name, value in row.config.items() if name in known}
    if "companion_languages" in values:
        values["companion_languages"] = tuple(values["companion_languages"])
    return EmbedderConfig(**values)


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
