"""The hooks the domain calls: decorators and one-line calls that record metrics and spans.

They observe and never change what the decorated code does or returns; an error while observing
is logged and swallowed.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace

from knowledge.observability import context, metrics, tracing

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

#: the stage spans of the document being ingested in this thread
_stages: ContextVar[tracing.StageSpans | None] = ContextVar("portal_ingestion_stages", default=None)


def _quietly(what: str, func: Callable[[], None]) -> None:
    try:
        func()
    except Exception:  # observing must never break the work observed
        logger.exception("observability: could not record %s", what)


# --- ingestion -------------------------------------------------------------------------------------


def observe_ingestion(func: F) -> F:
    """Around ``document_process``: an "ingest" span with one child per stage, and the ingestion metrics.

    The outcome's ``timings`` (parse, chunk, embed from the pipeline; index from the domain) feed
    the stage histograms; a ready document counts its pages and chunks.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with tracing.span("ingest", **{"portal.document_id": kwargs.get("document_id")}) as span:
            stages = tracing.StageSpans()
            token = _stages.set(stages)
            try:
                outcome = func(*args, **kwargs)
            except BaseException as exc:
                stages.close(exc)
                raise
            finally:
                _stages.reset(token)
            stages.close()
            _quietly("the ingestion", lambda: _ingestion_done(outcome, span))
            return outcome

    return wrapper  # type: ignore[return-value]


def _ingestion_done(outcome: Any, span: trace.Span) -> None:
    span.set_attribute("portal.status", outcome.status)
    if not outcome.timings and outcome.status != "failed":
        return  # already ready: nothing was done
    for stage, seconds in outcome.timings.items():
        if stage in metrics.STAGES:
            metrics.INGESTION_STAGE_SECONDS.labels(stage).observe(seconds)
    if outcome.status == "ready":
        metrics.INGESTION_DOCUMENTS.labels("ready").inc()
        metrics.INGESTION_CHUNKS.inc(outcome.chunks)
        if outcome.pages:
            metrics.INGESTION_PAGES.inc(outcome.pages)
        span.set_attribute("portal.chunks", outcome.chunks)
    elif outcome.status == "failed":
        metrics.INGESTION_DOCUMENTS.labels("failed").inc()


def ingestion_stage(stage: str) -> None:
    """The pipeline reported ``stage`` ("parsing", "chunking", "embedding", "indexing")."""
    stages = _stages.get()
    if stages is not None:
        _quietly("a stage", lambda: stages.enter(stage))


def ingestion_failed(code: str) -> None:
    """The document being ingested failed for good; ``code`` is the IngestionError's (or "unexpected")."""

    def record() -> None:
        reason = metrics.failure_reason(code)
        metrics.INGESTION_FAILURES.labels(reason).inc()
        stages = _stages.get()
        if stages is not None:
            stages.close(reason)
        span = trace.get_current_span()
        span.set_attribute("portal.failure_reason", reason)
        span.set_status(trace.Status(trace.StatusCode.ERROR, reason))

    _quietly("a failure", record)


# --- answering -------------------------------------------------------------------------------------


def observe_retrieval(func: F) -> F:
    """Around the retrieval of passages: a "retrieve" span and ``portal_retrieval_seconds``."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with tracing.span("retrieve", **{"portal.top_k": kwargs.get("top_k")}) as span:
            started = time.perf_counter()
            sources = func(*args, **kwargs)
            seconds = time.perf_counter() - started

            def record() -> None:
                metrics.RETRIEVAL_SECONDS.observe(seconds)
                span.set_attribute("portal.sources", len(sources))

            _quietly("a retrieval", record)
            return sources

    return wrapper  # type: ignore[return-value]


def observe_answers(operation: str, *, answer_type: type) -> Callable[[F], F]:
    """Around a function returning an answer (or a generator ending with one): an "answer" span,
    a "generate" child span measured from the answer's timings, and the answer metrics.

    ``operation``: "rag" (retrieval, then an extractive or generated answer) or "generate".
    ``answer_type``: the class of the answer (``knowledge.services.answering.Answer``), which tells a
    stream's answer from its pieces; given by the caller, as observing depends on no service.
    """

    def decorate(func: F) -> F:
        if inspect.isgeneratorfunction(func):

            @functools.wraps(func)
            def stream(*args: Any, **kwargs: Any) -> Iterator[Any]:
                # Not current across yields (the caller may resume the stream from another context):
                # made current only while the wrapped generator runs.
                span = tracing.tracer().start_span("answer", attributes={"portal.operation": operation})
                span_context = trace.set_span_in_context(span)
                items = func(*args, **kwargs)
                try:
                    while True:
                        token = otel_context.attach(span_context)
                        try:
                            item = next(items)
                        except StopIteration:
                            return
                        finally:
                            otel_context.detach(token)
                        if isinstance(item, answer_type):
                            _quietly("an answer", lambda item=item: _answer_done(item, operation, span))
                        yield item
                except Exception as exc:
                    span.record_exception(exc)
                    span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
                    raise
                finally:
                    items.close()
                    span.end()

            return stream  # type: ignore[return-value]

        @functools.wraps(func)
        def plain(*args: Any, **kwargs: Any) -> Any:
            with tracing.span("answer", **{"portal.operation": operation}) as span:
                answer = func(*args, **kwargs)
                _quietly("an answer", lambda: _answer_done(answer, operation, span))
                return answer

        return plain  # type: ignore[return-value]

    return decorate


def _answer_done(answer: Any, operation: str, span: trace.Span) -> None:
    metrics.ANSWER_SECONDS.labels(operation, answer.mode).observe(answer.seconds)
    span.set_attribute("portal.mode", answer.mode)
    span.set_attribute("portal.grounded", bool(answer.grounded))
    span.set_attribute("portal.sources", len(answer.sources))
    generate_s = answer.timings.get("generate")
    if generate_s is None and operation == "generate":
        generate_s = answer.seconds  # no retrieval: the whole call is the generation
    if generate_s is None:
        return
    metrics.GENERATION_SECONDS.labels(operation).observe(generate_s)
    if answer.completion_tokens and generate_s > 0:
        metrics.GENERATION_TOKENS_PER_SECOND.labels(operation).observe(answer.completion_tokens / generate_s)
    end = time.time_ns()
    tracing.record_span(
        "generate",
        start_ns=end - int(generate_s * 1e9),
        end_ns=end,
        parent=span,
        **{
            "gen_ai.request.model": answer.model,
            "gen_ai.usage.input_tokens": answer.prompt_tokens,
            "gen_ai.usage.output_tokens": answer.completion_tokens,
        },
    )


# --- tokens and rejections ------------------------------------------------------------------------


def usage_recorded(sender: Any, instance: Any, created: bool = False, **kwargs: Any) -> None:
    """``post_save`` of a UsageRecord: count its tokens by endpoint and (capped) caller."""
    if not created:
        return

    def record() -> None:
        from django.conf import settings

        if instance.api_key_id is not None:
            caller_type, caller = "key", f"key:{instance.api_key.prefix}"
        elif instance.user_id is not None:
            caller_type, caller = "session", f"user:{instance.user_id}"
        else:
            caller_type, caller = "anonymous", "anonymous"
        label = metrics.caller_label(caller, limit=settings.METRICS_MAX_CALLERS)
        endpoint = metrics.endpoint_label(instance.endpoint)
        if instance.prompt_tokens:
            metrics.TOKENS.labels(endpoint, caller_type, label, "prompt").inc(instance.prompt_tokens)
        if instance.completion_tokens:
            metrics.TOKENS.labels(endpoint, caller_type, label, "completion").inc(instance.completion_tokens)
        context.note(
            tokens=instance.prompt_tokens + instance.completion_tokens, end_user_id=instance.end_user_id or None
        )

    _quietly("the tokens", record)


def api_rejected(code: str, request: Any = None) -> None:
    """An API request refused by the rate limit or the quota (``code``: rate_limited, quota_exceeded)."""

    def record() -> None:
        match = getattr(request, "resolver_match", None)
        endpoint = (match.url_name or match.route) if match is not None else "unknown"
        metrics.API_REJECTIONS.labels(code, metrics.endpoint_label(endpoint)).inc()

    _quietly("a rejection", record)
