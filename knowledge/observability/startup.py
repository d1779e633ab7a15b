"""What the entry points call when a process starts: metrics files, tracing, worker logs.

``portal/wsgi.py`` and ``asgi.py`` call :func:`web_started`, ``manage.py`` :func:`command_started`,
``portal/celery.py`` the ``worker_*`` and ``task_*`` functions from Celery's signals. Importing this
module touches neither Django's settings nor prometheus_client.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any

logger = logging.getLogger(__name__)

#: the Celery task header that carries the id of the request that queued the task
REQUEST_ID_HEADER = "portal_request_id"


def web_started(*, role: str = "web") -> None:
    """A web process (gunicorn worker, runserver) is up; Django is set up, the handler not built yet."""
    from knowledge.observability import metrics, tracing

    metrics.check_multiprocess_mode()
    # gunicorn imports the WSGI module in each worker: the files are cleared once per master.
    metrics.clean_at_start(role=role, master_pid=os.getppid())
    tracing.configure_from_settings(role=role)


def command_started() -> None:
    """A management command is about to run (traces runserver's requests and ``ingest --sync``)."""
    from knowledge.observability import tracing

    tracing.configure_from_settings(role="manage")


# --- Celery ---------------------------------------------------------------------------------------


def _prefork(worker: Any) -> bool:
    pool = getattr(worker, "pool_cls", None)
    return "prefork" in getattr(pool, "__module__", str(pool))


def worker_configuring(worker: Any) -> None:
    """``celeryd_init``: with JSON logs, the worker writes no banner and its shutdown notices as JSON lines.

    The banner (the worker's configuration, printed on stdout) and the notices Celery prints from its
    signal handlers are not log records; with ``LOG_FORMAT=json`` every line must be one JSON object.
    """
    from django.conf import settings

    if settings.LOG_FORMAT != "json":
        return
    worker.quiet = True
    logging.captureWarnings(True)  # e.g. Celery's warning about running as root: a log line, not stderr text
    from celery.apps import worker as celery_worker

    celery_worker.safe_say = _json_say


def _json_say(message: str, stream: Any = sys.__stderr__) -> None:
    # Called from signal handlers: one os.write, no logging locks (as Celery's own safe_say).
    import json
    from datetime import UTC, datetime

    from celery import _original_os_write  # the os.write eventlet or gevent cannot have patched

    line = {
        "time": datetime.now(tz=UTC).isoformat(timespec="milliseconds"),
        "level": "INFO",
        "logger": "celery.apps.worker",
        "message": message.strip(),
        "process": os.getpid(),
    }
    with contextlib.suppress(OSError, ValueError, AttributeError):  # a notice lost must never stop a shutdown
        _original_os_write(stream.fileno(), (json.dumps(line, ensure_ascii=False) + "\n").encode())


def worker_started(worker: Any) -> None:
    """``worker_init``: the worker's main process starts (before its pool forks)."""
    from knowledge.observability import metrics, tracing

    metrics.check_multiprocess_mode()
    metrics.clean_at_start(role="worker", master_pid=os.getpid())
    if not _prefork(worker):  # solo and thread pools run tasks in this process
        tracing.configure_from_settings(role="worker", django=False)


def worker_child_started() -> None:
    """``worker_process_init``: a prefork child, where tasks run (exporter threads must start after the fork)."""
    from knowledge.observability import tracing

    tracing.configure_from_settings(role="worker", django=False)


def worker_child_stopping() -> None:
    """``worker_process_shutdown``: send the spans still buffered."""
    from knowledge.observability import tracing

    tracing.flush()


def worker_ready() -> None:
    """``worker_ready``: serve the worker's metrics on ``METRICS_WORKER_PORT`` when set (to ``METRICS_ALLOWED_IPS``)."""
    from django.conf import settings

    from knowledge.observability import metrics

    port = settings.METRICS_WORKER_PORT
    if port and metrics.start_worker_server(port, allowed=settings.METRICS_ALLOWED_IPS):
        logger.info("metrics: serving this worker's metrics on port %s", port)


def celery_logger_ready(celery_logger: logging.Logger) -> None:
    """``after_setup_logger`` / ``after_setup_task_logger``: the worker's handlers write like the web's."""
    from celery.utils.log import get_multiprocessing_logger
    from django.conf import settings

    from knowledge.observability.logging import configure_handlers

    # the pool's own logger (billiard's "multiprocessing": "Process ... exited with ...") has its own handler
    for each in (celery_logger, get_multiprocessing_logger()):
        if each is not None:
            configure_handlers(each, json=settings.LOG_FORMAT == "json", log_content=settings.LOG_CONTENT)


def task_publishing(headers: dict[str, Any] | None) -> None:
    """``before_task_publish``: the task carries the id of the request that queued it."""
    from knowledge.observability.context import request_id_var

    request_id = request_id_var.get()
    if request_id and headers is not None:
        headers.setdefault(REQUEST_ID_HEADER, request_id)


_task_tokens: dict[str, Any] = {}


def task_starting(task_id: str, task: Any) -> None:
    """``task_prerun``: the task's log lines carry the request id it was queued with.

    An eager task (run inside the request) keeps the request's own id.
    """
    from knowledge.observability.context import request_id_var

    request_id = getattr(getattr(task, "request", None), REQUEST_ID_HEADER, None)
    if isinstance(request_id, str) and request_id:
        _task_tokens[task_id] = request_id_var.set(request_id)


def task_finished(task_id: str) -> None:
    """``task_postrun``: back to the id the process had before the task."""
    from knowledge.observability.context import request_id_var

    token = _task_tokens.pop(task_id, None)
    if token is not None:
        try:
            request_id_var.reset(token)
        except ValueError:  # set in another context (should not happen): just clear it
            request_id_var.set(None)
