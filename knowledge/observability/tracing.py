"""OpenTelemetry traces: set up once per process, off unless an exporter is named.

Without an exporter (the default) no tracer provider is installed and nothing is instrumented: the
portal's own spans go to OpenTelemetry's no-op tracer, which costs a function call. With one
(``OTEL_TRACES_EXPORTER=otlp`` or ``console``), Django requests and Celery tasks are instrumented
(the trace context travels in the task's headers, so a task's spans belong to the request that
queued it) and the portal adds its spans: ingest → parse, chunk, embed, index; answer → retrieve,
generate.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any

from opentelemetry import trace

logger = logging.getLogger(__name__)

TRACER_NAME = "knowledge"
#: requests that are never traced (probes and scrapes)
EXCLUDED_URLS = "/healthz$,/readyz$,/metrics$,/static/"

_lock = threading.Lock()
_provider: Any = None


def tracer() -> trace.Tracer:
    """The portal's tracer (a no-op one until :func:`configure` installs a provider)."""
    return trace.get_tracer(TRACER_NAME)


def enabled() -> bool:
    return _provider is not None


def _console_exporter(path: str) -> Any:
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    out: IO[str] = open(path, "a", encoding="utf-8", buffering=1) if path else sys.stdout  # noqa: SIM115 (lives with the process)
    return ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + os.linesep)


def configure(
    *,
    role: str,
    exporters: Sequence[str] = (),
    service_name: str = "knowledge-portal",
    console_file: str = "",
    span_exporter: Any = None,
    django: bool = True,
    celery: bool = True,
) -> bool:
    """Install the tracer provider and instrument Django and Celery; False when tracing stays off.

    ``exporters``: ``otlp`` (batched; endpoint, headers and protocol from the standard ``OTEL_*``
    variables) and/or ``console`` (one JSON object a line, to ``console_file`` or stdout).
    ``span_exporter``: an extra exporter (tests use an in-memory one). Safe to call twice.
    """
    global _provider
    if not exporters and span_exporter is None:
        return False
    with _lock:
        if _provider is None:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

            resource = Resource.create({"service.name": service_name, "portal.role": role})
            provider = TracerProvider(resource=resource)
            if "otlp" in exporters:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

                provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            if "console" in exporters:
                provider.add_span_processor(SimpleSpanProcessor(_console_exporter(console_file)))
            if span_exporter is not None:
                provider.add_span_processor(SimpleSpanProcessor(span_exporter))
            trace.set_tracer_provider(provider)
            _provider = provider
    if django:
        from opentelemetry.instrumentation.django import DjangoInstrumentor

        instrumentor = DjangoInstrumentor()
        if not instrumentor.is_instrumented_by_opentelemetry:
            excluded = None if os.environ.get("OTEL_PYTHON_DJANGO_EXCLUDED_URLS") else EXCLUDED_URLS
            instrumentor.instrument(excluded_urls=excluded)
    if celery:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        celery_instrumentor = CeleryInstrumentor()
        if not celery_instrumentor.is_instrumented_by_opentelemetry:
            celery_instrumentor.instrument()
    return True


def configure_from_settings(*, role: str, django: bool = True, celery: bool = True) -> bool:
    """:func:`configure` with ``OTEL_TRACES_EXPORTER``, ``OTEL_SERVICE_NAME`` and ``TRACES_CONSOLE_FILE``."""
    from django.conf import settings

    return configure(
        role=role,
        exporters=settings.OTEL_TRACES_EXPORTER,
        service_name=settings.OTEL_SERVICE_NAME,
        console_file=settings.TRACES_CONSOLE_FILE,
        django=django,
        celery=celery,
    )


def flush() -> None:
    """Export the spans still buffered (a worker child about to exit)."""
    if _provider is not None:
        _provider.force_flush()


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[trace.Span]:
    """A span of the portal, current while the block runs; exceptions are recorded on it."""
    with tracer().start_as_current_span(name, attributes=_clean(attributes)) as current:
        yield current


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in attributes.items() if value is not None}


def record_span(name: str, *, start_ns: int, end_ns: int, parent: trace.Span | None = None, **attributes: Any) -> None:
    """A span measured after the fact (explicit start and end), child of ``parent`` or of the current span."""
    context = trace.set_span_in_context(parent) if parent is not None else None
    finished = tracer().start_span(name, context=context, start_time=start_ns, attributes=_clean(attributes))
    finished.end(end_time=end_ns)


class StageSpans:
    """One live span per pipeline stage, driven by the pipeline's progress callback.

    ``ingestion.pipeline`` reports "parsing", "chunking", "embedding" (and the domain "indexing")
    as it goes: each report ends the span of the previous stage and starts the next one, as
    children of the span current when this object was made (the "ingest" span).
    """

    NAMES = {"parsing": "parse", "chunking": "chunk", "embedding": "embed", "indexing": "index"}

    def __init__(self) -> None:
        self._parent = trace.set_span_in_context(trace.get_current_span())
        self._current: trace.Span | None = None

    def enter(self, stage: str) -> None:
        name = self.NAMES.get(stage)
        if name is None:  # a progress message that is not a stage
            return
        self.close()
        self._current = tracer().start_span(name, context=self._parent)

    def close(self, error: BaseException | str | None = None) -> None:
        """End the open stage's span; with ``error`` (an exception or a reason), as failed."""
        current, self._current = self._current, None
        if current is None:
            return
        if isinstance(error, BaseException):
            current.record_exception(error)
        if error is not None:
            current.set_status(trace.Status(trace.StatusCode.ERROR, str(error)[:200]))
        current.end()
