"""Structured logs: one JSON object a line, with the request id and the trace id of each record.

Configured from ``LOGGING`` (portal/settings.py) for the web processes and from the Celery logging
signals for the workers. Prompts, answers and document text passed as ``extra`` fields are left
out unless ``LOG_CONTENT`` is true.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.json import JsonFormatter as _BaseJsonFormatter

from knowledge.observability.context import request_id_var

#: ``extra`` fields that may hold what people typed or uploaded
CONTENT_FIELDS = frozenset({"prompt", "question", "answer", "output", "text", "content", "messages", "document_text"})

_REDACTED = "[redacted: LOG_CONTENT=false]"

#: what Celery's task lines ("received", "succeeded in …: <return value>", "raised …") pass in their
#: context (the record's ``args`` and its ``data`` extra): the task's arguments hold the question,
#: its return value the answer
CELERY_CONTENT_KEYS = frozenset({"args", "kwargs", "return_value"})

#: the user name and password of a URL (``http://user:secret@host``): httpx logs each request's URL
_URL_USERINFO = re.compile(r"(?<=://)[^\s/?#@]+@")


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
            if isinstance(record.args, Mapping) and CELERY_CONTENT_KEYS & record.args.keys():
                record.args = _without_content(record.args)
            data = getattr(record, "data", None)
            if isinstance(data, Mapping) and CELERY_CONTENT_KEYS & data.keys():
                record.data = _without_content(data)
        _hide_url_credentials(record)
        return True


def _hide_url_credentials(record: logging.LogRecord) -> None:
    """Credentials written into a URL never reach a log line, whatever ``LOG_CONTENT`` says."""
    try:
        message = record.getMessage()
    except Exception:  # a malformed call: logging reports it when it formats the record
        return
    if "@" in message and "://" in message:
        cleaned = _URL_USERINFO.sub("", message)
        if cleaned != message:
            record.msg, record.args = cleaned, None


def _without_content(context: Mapping[str, Any]) -> dict[str, Any]:
    # a copy: Celery passes the same dict as the message's arguments and as ``data``
    return {key: _REDACTED if key in CELERY_CONTENT_KEYS else value for key, value in context.items()}


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
        # django.request's request object: its repr carries the query string, where searches travel
        log_record.pop("request", None)


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


class GunicornAccessFilter(logging.Filter):
    """Turns gunicorn's access record (its "atoms") into fields: method, path, status, duration, bytes.

    The path goes without its query string, and no request header is copied but the request id.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        atoms = record.args
        if isinstance(atoms, Mapping) and "m" in atoms and "U" in atoms:
            record.event = "http_access"
            record.method = atoms["m"]
            record.path = atoms["U"]
            record.status = _int_or_none(atoms.get("s"))
            record.duration_ms = round(atoms["D"] / 1000, 1) if isinstance(atoms.get("D"), int) else None
            record.bytes = atoms.get("B")
            record.remote_addr = atoms.get("h")
            request_id = atoms.get("{x-request-id}o")
            if isinstance(request_id, str) and request_id != "-":
                record.request_id = request_id
        return True


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


#: gunicorn's access line in plain logs: no query string, referer or user agent (they may carry what people typed)
GUNICORN_ACCESS_FORMAT = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms'


def gunicorn_logconfig(django_logging: Mapping[str, Any]) -> dict[str, Any]:
    """gunicorn's ``logconfig_dict``: its start-up and access lines written as the portal's (``LOGGING``) are.

    The same formatter and filters as Django's console handler; gunicorn's error log on stderr, its
    access log on stdout, neither passed on to the root logger (which would write them twice).
    """
    import copy

    config = copy.deepcopy(dict(django_logging))
    console = config["handlers"]["console"]
    config["filters"] = {**config.get("filters", {}), "gunicorn_access": {"()": GunicornAccessFilter}}
    config["handlers"]["gunicorn_access"] = {
        **console,
        "stream": "ext://sys.stdout",
        "filters": ["gunicorn_access", *console.get("filters", [])],
    }
    config["loggers"] = {
        **config.get("loggers", {}),
        "gunicorn.error": {"level": "INFO", "handlers": ["console"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["gunicorn_access"], "propagate": False},
    }
    return config
