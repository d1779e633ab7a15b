"""Structured logs: one JSON object a line, with the request id and the trace id of each record.

Configured from ``LOGGING`` (portal/settings.py) for the web processes and from the Celery logging
signals for the workers. Prompts, answers and document text passed as ``extra`` fields are left
out unless ``LOG_CONTENT`` is true.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.json import JsonFormatter as _BaseJsonFormatter

from knowledge.observability.context import request_id_var

#: ``extra`` fields that may hold what people typed or uploaded
CONTENT_FIELDS = frozenset({"prompt", "question", "answer", "output", "text", "content", "messages", "document_text"})

_REDACTED = "[redacted: LOG_CONTENT=false]"


def current_trace_ids() -> tuple[str | None, str | None]:
    """The trace id and span id of the current span (None, None without tracing)."""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None, None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def _current_task() -> Any:
    import sys

    if "celery" not in sys.modules:  # the web processes never pay for this
        return None
    from celery import current_task

    task = current_task
    return task if task and getattr(task, "request", None) is not None and task.request.id else None


class ContextFilter(logging.Filter):
    """Adds ``request_id``, ``trace_id``, ``span_id`` (and the Celery task) to every record; hides content."""

    def __init__(self, name: str = "", log_content: bool = False) -> None:
        super().__init__(name)
        self.log_content = log_content

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            # django.request logs a 4xx/5xx after the middleware has finished, with the request attached
            record.request_id = request_id_var.get() or getattr(getattr(record, "request", None), "request_id", None)
        if not hasattr(record, "trace_id"):
            record.trace_id, record.span_id = current_trace_ids()
        task = _current_task()
        if task is not None and not hasattr(record, "task_id"):
            record.task_id = task.request.id
            record.task_name = task.name
        if not self.log_content:
            for field in CONTENT_FIELDS & record.__dict__.keys():
                setattr(record, field, _REDACTED)
        return True


class JsonFormatter(_BaseJsonFormatter):
    """``{"time", "level", "logger", "message", "request_id", "trace_id", …, extra fields}`` on one line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("json_ensure_ascii", False)
        super().__init__(*args, **kwargs)

    def add_fields(self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        log_record["time"] = datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds")
        log_record["level"] = record.levelname
        log_record["logger"] = record.name
        log_record["message"] = record.getMessage()
        log_record["request_id"] = getattr(record, "request_id", None)
        log_record["trace_id"] = getattr(record, "trace_id", None)
        log_record["span_id"] = getattr(record, "span_id", None)
        log_record["process"] = record.process
        super().add_fields(log_record, record, message_dict)
        # the base class copies "message" and the extras; keep ours first and drop the empty ones
        for key in ("trace_id", "span_id", "request_id"):
            if log_record.get(key) is None:
                log_record.pop(key, None)


def configure_handlers(logger: logging.Logger, *, json: bool, log_content: bool) -> None:
    """Put the context filter (and the JSON formatter) on every handler of ``logger``.

    The Celery workers set up their own handlers; this makes them write like the web processes.
    """
    context = ContextFilter(log_content=log_content)
    for handler in logger.handlers:
        if json:
            handler.setFormatter(JsonFormatter())
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(context)
