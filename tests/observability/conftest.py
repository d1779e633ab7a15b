"""Fixtures of the observability tests: scrapes of /metrics, an in-memory span exporter, a fake model."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from knowledge.observability import metrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: Any) -> Samples:
    """Every sample /metrics shows, by name and labels."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.content[:300]
    samples: Samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture(autouse=True)
def _isolated(portal_dirs: dict[str, Path], settings: Any) -> None:
    settings.API_RATE_LIMIT = "10000/m"
    settings.METRICS_ALLOWED_IPS = ["0.0.0.0/0", "::/0"]
    metrics._reset_callers()


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """What the configured (JSON) console handler writes during the test."""
    from knowledge.observability.logging import JsonFormatter

    handler = next(h for h in logging.getLogger().handlers if isinstance(h.formatter, JsonFormatter))
    stream = io.StringIO()
    previous = handler.setStream(stream)  # type: ignore[attr-defined]
    yield stream
    handler.setStream(previous)  # type: ignore[attr-defined]


class Recorder(InMemorySpanExporter):
    """Keeps the finished spans while ``recording`` (a tracer provider cannot be removed once set)."""

    recording = False

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return super().export(spans) if self.recording else SpanExportResult.SUCCESS


_RECORDER = Recorder()


@pytest.fixture(scope="session")
def _provider() -> Recorder:
    from knowledge.observability import tracing

    tracing.configure(role="test", span_exporter=_RECORDER, django=False, celery=False)
    return _RECORDER


@pytest.fixture(scope="module")
def _instrumented(_provider: Recorder) -> Iterator[Recorder]:
    """Django and Celery instrumented for one module of tests, then left as they were."""
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.django import DjangoInstrumentor

    from knowledge.observability import tracing

    tracing.configure(role="test", span_exporter=_RECORDER)
    yield _provider
    DjangoInstrumentor().uninstrument()
    CeleryInstrumentor().uninstrument()


@pytest.fixture
def spans(_instrumented: Recorder) -> Iterator[Recorder]:
    """The spans finished during the test, in memory."""
    _instrumented.clear()
    _instrumented.recording = True
    yield _instrumented
    _instrumented.recording = False
    _instrumented.clear()


class FakeLLM:
    """Stands in for the language model: answers at once, with token counts."""

    context_window = 2048

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def count_message_tokens(self, messages: Any) -> int:
        return sum(self.count_tokens(message["content"]) for message in messages)

    def model_name(self) -> str:
        return "fake-model"

    def is_loaded(self) -> bool:
        return True

    def generate(self, prompt: Any, **kwargs: Any) -> Any:
        from llm.types import Generation

        return Generation(
            text="The lighthouse [1].", prompt_tokens=40, completion_tokens=8, model="fake-model", finish_reason="stop"
        )

    def stream(self, prompt: Any, **kwargs: Any) -> Iterator[Any]:
        yield "The lighthouse "
        yield "[1]."
        yield self.generate(prompt)


@pytest.fixture
def fake_llm(monkeypatch: pytest.MonkeyPatch) -> FakeLLM:
    from knowledge.services import engines

    llm = FakeLLM()
    monkeypatch.setattr(engines, "get_llm", lambda: llm)
    return llm
