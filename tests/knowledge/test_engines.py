"""The registry of the process's engines: one per configuration, one fork policy, reset by settings changes."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from ingestion import embedding
from ingestion.embedding import EmbedderConfig
from knowledge.services import engine_config, engines
from llm.handler import LLMHandler


class FakeEmbedder:
    name = "fake"
    dimension = 4
    max_tokens = 16


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[engines.EngineRegistry]:
    """A registry of its own for the test, with an embedder that loads nothing (the session's models stay)."""
    fresh = engines.EngineRegistry()
    monkeypatch.setattr(engines, "registry", fresh)
    monkeypatch.setattr(embedding, "create_embedder", lambda config: FakeEmbedder())
    yield fresh


def test_one_embedder_per_config(registry: engines.EngineRegistry) -> None:
    config = EmbedderConfig(backend="e5", batch_size=16, threads=2)

    assert engines.embedder_for(config) is engines.embedder_for(EmbedderConfig(backend="e5", batch_size=16, threads=2))
    assert engines.embedder_for(EmbedderConfig(backend="e5", batch_size=8)) is not engines.embedder_for(config)


def test_an_engine_is_built_once_under_concurrency(
    registry: engines.EngineRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    created: list[EmbedderConfig] = []

    def slow_create(config: EmbedderConfig) -> Any:
        created.append(config)
        time.sleep(0.2)
        return FakeEmbedder()

    monkeypatch.setattr(embedding, "create_embedder", slow_create)
    config = EmbedderConfig(backend="e5", batch_size=3)
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(engines.embedder_for(config))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(created) == 1
    assert all(result is results[0] for result in results)


def test_the_llm_handler_is_one_per_config_across_threads(registry: engines.EngineRegistry) -> None:
    barrier = threading.Barrier(8)
    seen: list[LLMHandler] = []

    def grab() -> None:
        barrier.wait()
        seen.append(engines.get_llm())

    with override_settings(RAG_LLM_MODEL="one-per-process-test"):
        threads = [threading.Thread(target=grab) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert engines.get_llm() is seen[0]

    assert len({id(h) for h in seen}) == 1
    with override_settings(RAG_LLM_MODEL="another"):
        assert engines.get_llm() is not seen[0]
    with override_settings(RAG_LLM_MODEL="one-per-process-test"):
        assert engines.get_llm() is seen[0]  # kept under its configuration: the model is not loaded again


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_builds_its_own_engines(registry: engines.EngineRegistry, settings: Any) -> None:
    settings.RAG_RERANKER_MODEL = "/nonexistent/reranker"  # a reranker loads on first use: none is loaded here
    parent = (engines.get_embedder(), engines.get_llm(), engines.get_reranker(), engines.embedder_config())
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, and leave without running any pytest teardown
        try:
            child = (engines.get_embedder(), engines.get_llm(), engines.get_reranker(), engines.embedder_config())
            fresh = all(mine is not theirs for mine, theirs in zip(child, parent, strict=True))
            same = child[1].config == parent[1].config and child[3] == parent[3]
            again = engines.get_embedder() is child[0] and engines.get_llm() is child[1]
            os.write(write, b"new" if fresh and same and again else b"reused")
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 16)
    os.waitpid(pid, 0)
    os.close(read)

    assert answer == b"new"
    assert engines.get_embedder() is parent[0] and engines.get_llm() is parent[1]  # the parent keeps its own


def test_a_changed_engine_setting_gives_new_engines(registry: engines.EngineRegistry, settings: Any) -> None:
    embedder, llm, config = engines.get_embedder(), engines.get_llm(), engines.search_config()

    with override_settings(RAG_EMBED_BATCH_SIZE=7, RAG_LLM_CONTEXT_WINDOW=1024, RAG_FUSION="rrf"):
        assert engines.embedder_config().batch_size == 7
        assert engines.get_embedder() is not embedder
        assert engines.get_llm() is not llm and engines.get_llm().config.context_window == 1024
        assert engines.search_config().fusion == "rrf"

    assert engines.get_embedder() is embedder and engines.get_llm() is llm
    assert engines.search_config() == config
    settings.RAG_OCR = not settings.RAG_OCR  # the pytest-django fixture sends the same signal
    assert engines.pipeline_options().ocr is settings.RAG_OCR


def test_another_setting_or_a_reset_keeps_the_loaded_models(registry: engines.EngineRegistry) -> None:
    embedder, llm, config = engines.get_embedder(), engines.get_llm(), engines.embedder_config()

    with override_settings(API_RATE_LIMIT="1/m"):
        assert engines.embedder_config() is config
    engines.reset()

    assert engines.embedder_config() is not config and engines.embedder_config() == config
    assert engines.get_embedder() is embedder and engines.get_llm() is llm


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"RAG_EMBED_BATCH_SIZE": 0}, "RAG_EMBED_BATCH_SIZE must be at least 1"),
        ({"RAG_EMBEDDER": "word2vec"}, "RAG_EMBEDDER must be one of"),
        ({"RAG_SEARCH_BACKEND": "elastic"}, "RAG_SEARCH_BACKEND must be one of"),
        ({"RAG_COMPANION_WEIGHT": -1.0}, "RAG_COMPANION_WEIGHT must be at least 0"),
        ({"RAG_SENTENCE_WEIGHT": -0.5}, "RAG_SENTENCE_WEIGHT must be at least 0"),
        ({"RAG_CHUNK_OVERLAP": 400, "RAG_CHUNK_TOKENS": 350}, "RAG_CHUNK_OVERLAP must be smaller"),
        ({"RAG_LLM_BACKEND": "openai", "RAG_LLM_BASE_URL": ""}, "needs RAG_LLM_BASE_URL"),
        ({"RAG_LLM_TIMEOUT": "soon"}, "RAG_LLM_TIMEOUT must be a number"),
    ],
)
def test_a_bad_engine_setting_is_refused_naming_its_variable(
    registry: engines.EngineRegistry, overrides: dict[str, Any], named: str
) -> None:
    engine_config.read_all()  # the settings of the test run are good
    with override_settings(**overrides), pytest.raises(ImproperlyConfigured, match=named):
        engine_config.read_all()
