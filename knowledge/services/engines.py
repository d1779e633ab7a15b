"""The engines of this process, built once from settings: the one composition root.

``ingestion/`` and ``llm/`` never read settings: :mod:`knowledge.services.engine_config` turns settings into
their typed, checked configurations, and the :class:`EngineRegistry` here keeps one embedder, search store,
searcher, reranker and LLM handler per process.

One fork policy for all of them: a forked child (a Celery prefork child, the parsing sandbox) starts with an
empty registry (``os.register_at_fork`` below), so it never uses an engine built in its parent (the
embedder's OpenMP runtime must never cross a fork). One reset: :func:`reset` (tests, a restored or rebuilt
store) and any change of an engine setting (Django's ``setting_changed``, so ``override_settings`` too, wired in
``knowledge/apps.py``) forget the configurations and the handles built from them. Models are kept under their
whole configuration, so a changed setting makes another one and a worker never reloads them per task.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, TypeVar

from django.conf import settings

from knowledge.services import engine_config

if TYPE_CHECKING:
    from ingestion.chunking import ChunkingConfig
    from ingestion.embedding import Embedder, EmbedderConfig
    from ingestion.pipeline import PipelineOptions
    from ingestion.rerank import Reranker
    from ingestion.search import HybridSearcher
    from ingestion.store import SearchStore, StoreIdentity
    from knowledge.services.engine_config import IngestConfig, SearchStoreConfig
    from llm.config import LLMConfig
    from llm.handler import LLMHandler

T = TypeVar("T")
_MISSING: Any = object()


class EngineRegistry:
    """The engines of one process, one per key, each built on first use by one thread while others wait.

    ``model=True`` marks an engine keyed by its whole configuration (a model, the LLM handler): :meth:`reset`
    keeps it, since a changed setting gives another key. :meth:`forget_all` (in a forked child) drops everything.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[Hashable, Any] = {}
        self._models: set[Hashable] = set()
        self._building: dict[Hashable, threading.Lock] = {}
        self._generation = 0
        #: what a parent built, kept unused in a forked child so that nothing of it is torn down there
        self._inherited: list[dict[Hashable, Any]] = []

    def get(self, key: Hashable, build: Callable[[], T], *, model: bool = False) -> T:
        """The engine under ``key``, built by ``build()`` on first use."""
        entry = self._entries.get(key, _MISSING)
        if entry is not _MISSING:
            return entry  # type: ignore[no-any-return]
        with self._lock:
            building = self._building.setdefault(key, threading.Lock())
            generation = self._generation
        with building:
            entry = self._entries.get(key, _MISSING)
            if entry is not _MISSING:
                return entry  # type: ignore[no-any-return]
            built = build()
            with self._lock:
                if generation == self._generation:  # else a reset came during the build: not kept
                    self._entries[key] = built
                    if model:
                        self._models.add(key)
                self._building.pop(key, None)
            return built

    def reset(self) -> None:
        """Forget the configurations and what was built from them; keep the models (see the class)."""
        with self._lock:
            self._generation += 1
            self._entries = {key: value for key, value in self._entries.items() if key in self._models}

    def forget_all(self) -> None:
        """Forget everything (a forked child): the parent's locks and engines are never used here."""
        self._lock = threading.Lock()
        self._building = {}
        self._inherited.append(self._entries)
        self._entries = {}
        self._models = set()
        self._generation += 1


registry = EngineRegistry()


def _after_fork_in_child() -> None:
    registry.forget_all()


# the one fork policy: a child process builds its own engines (the only fork hook of the engines)
os.register_at_fork(after_in_child=_after_fork_in_child)


def reset() -> None:
    """Forget the engines of this process (tests, settings changes, a restored or rebuilt store)."""
    registry.reset()


def on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    """``setting_changed`` receiver: a changed engine setting resets the registry."""
    if setting in engine_config.ENGINE_SETTINGS:
        registry.reset()


def _config(name: str, read: Callable[[], T]) -> T:
    return registry.get(("config", name), read)


def embedder_config() -> EmbedderConfig:
    return _config("embedder", engine_config.read_embedder_config)


def search_config() -> SearchStoreConfig:
    return _config("search", engine_config.read_search_config)


def ingest_config() -> IngestConfig:
    return _config("ingest", engine_config.read_ingest_config)


def llm_config() -> LLMConfig:
    return _config("llm", engine_config.read_llm_config)


def chunking_config() -> ChunkingConfig:
    from ingestion.chunking import ChunkingConfig

    ingest = ingest_config()
    return ChunkingConfig(max_tokens=ingest.chunk_tokens, overlap_tokens=ingest.chunk_overlap)


def pipeline_options(*, ocr: bool = True) -> PipelineOptions:
    """How documents are ingested, from the settings (``ocr=False`` skips OCR even when it is enabled)."""
    from ingestion.pipeline import PipelineOptions

    ingest = ingest_config()
    return PipelineOptions(
        chunking=chunking_config(),
        ocr=ocr and ingest.ocr,
        ocr_languages=ingest.ocr_languages,
        max_pages=ingest.max_pages,
        max_unpacked_mb=ingest.max_unpacked_mb,
        max_memory_mb=ingest.max_memory_mb,
        embed_cache_dir=ingest.embed_cache_dir,
    )


def embedder_for(config: EmbedderConfig) -> Embedder:
    """The process's embedder for ``config``, loaded on first use and kept while the process lives."""
    from ingestion.embedding import create_embedder

    return registry.get(("embedder", config), lambda: create_embedder(config), model=True)


def get_embedder() -> Embedder:
    """The process's configured embedder."""
    return embedder_for(embedder_config())


def store_identity() -> StoreIdentity:
    """What the configured embedder makes: the identity the search store must have."""
    from ingestion.embedding import store_identity as identity_of

    return identity_of(get_embedder())


def open_store(identity: StoreIdentity, *, load: bool = True) -> SearchStore:
    """A new handle on the configured search store (``RAG_SEARCH_BACKEND``) for ``identity``.

    ``load=False`` opens it without reading what it holds (a faiss store built by another embedder), to
    rebuild it with ``writer(reset=True)``.
    """
    search = search_config()
    if search.backend == "postgres":
        from knowledge.search.postgres import PostgresStore

        return PostgresStore(identity)
    from ingestion.index import FaissStore, IndexConfig

    config = IndexConfig(directory=search.index_dir, approx_threshold=search.approx_threshold)
    return FaissStore(config, identity, load=load)


def _store_key(kind: str, identity: StoreIdentity) -> tuple[str, str, str, str]:
    search = search_config()
    return (kind, search.backend, str(search.index_dir), identity_key(identity))


def _store(identity: StoreIdentity) -> SearchStore:
    return registry.get(_store_key("store", identity), lambda: open_store(identity))


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
            identity, embedder = saved, embedder_for(previous)

    def build_searcher() -> HybridSearcher:
        search = search_config()
        config = SearchConfig(
            fusion=search.fusion,
            rerank_k=search.rerank_candidates,
            companion_weight=search.companion_weight,
            sentence_weight=search.sentence_weight,
        )
        return HybridSearcher(_store(identity), embedder, config, reranker=get_reranker())

    return registry.get(_store_key("searcher", identity), build_searcher)


# ---- the identity of what the store holds, and the embedders behind identities ------------------------

#: seconds a process trusts what it read of the store's identity (a switch is seen within that time)
_SAVED_IDENTITY_TTL_S = 2.0


def identity_key(identity: StoreIdentity) -> str:
    """An identity as canonical JSON (the key of ``SearchEmbedder``)."""
    return json.dumps(dataclasses.asdict(identity), sort_keys=True)


def saved_identity() -> StoreIdentity | None:
    """The identity of the vectors the store holds now (None when it is empty); read at most every 2 s."""
    from ingestion.store import StoreIdentity

    search = search_config()
    saved: dict[str, tuple[float, StoreIdentity | None]] = registry.get("saved-identities", dict)
    key = f"{search.backend}:{search.index_dir}:{settings.DATABASES['default'].get('NAME')}"
    now = time.monotonic()
    cached = saved.get(key)
    if cached is not None and now - cached[0] < _SAVED_IDENTITY_TTL_S:
        return cached[1]
    identity: StoreIdentity | None = None
    if search.backend == "postgres":
        from knowledge.search.postgres import current_identity

        identity = current_identity()
    else:
        from ingestion.index import read_saved_state

        state = read_saved_state(search.index_dir)
        if state and "embedder" in state and state.get("chunks"):
            identity = StoreIdentity(
                state["embedder"], state["dimension"], state["companion"], state["companion_dimension"]
            )
    saved[key] = (now, identity)
    return identity


def remember_embedder(identity: StoreIdentity) -> None:
    """Record the configured embedder's settings under ``identity`` (once per process), so that questions can
    still be embedded with it after the configuration moves on to another model."""

    def record() -> bool:
        from knowledge.models import SearchEmbedder

        config = dataclasses.asdict(embedder_config())
        SearchEmbedder.objects.update_or_create(identity=identity_key(identity), defaults={"config": config})
        return True

    registry.get(("remembered", identity_key(identity)), record)


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
    search = search_config()
    if not search.reranker_model:
        return None
    from ingestion.rerank import Reranker, RerankerConfig

    config = RerankerConfig(model_dir=search.reranker_model, threads=search.reranker_threads)
    return registry.get(("reranker", config), lambda: Reranker(config), model=True)


def get_llm() -> LLMHandler:
    """The process's LLM handler for the configured model (the model itself loads on first use, once)."""
    from llm.handler import LLMHandler

    config = llm_config()
    return registry.get(("llm", config), lambda: LLMHandler(config), model=True)
