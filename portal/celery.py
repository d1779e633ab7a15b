"""The Celery application; configuration comes from Django settings (``CELERY_*``)."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
# Models ship inside packages: nothing may be fetched from a hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

app = Celery("portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


# Observability (knowledge.observability.startup): metrics files, tracing, JSON logs, request ids.
# The handlers import it lazily: this module is imported before Django's settings are loaded.


@signals.celeryd_init.connect
def _celeryd_init(instance: Any = None, **kwargs: Any) -> None:
    from knowledge.observability import startup

    if instance is not None:
        startup.worker_configuring(instance)


@signals.worker_init.connect
def _worker_init(sender: Any = None, **kwargs: Any) -> None:
    from knowledge.observability import startup

    startup.worker_started(sender)


@signals.worker_process_init.connect
def _worker_process_init(**kwargs: Any) -> None:
    from knowledge.observability import startup
    from knowledge.services import warmup

    startup.worker_child_started()
    warmup.start_in_background()  # the models of tasks and async questions, loaded in the background


@signals.worker_process_shutdown.connect
def _worker_process_shutdown(**kwargs: Any) -> None:
    from knowledge.observability import startup

    startup.worker_child_stopping()


@signals.worker_ready.connect
def _worker_ready(**kwargs: Any) -> None:
    from knowledge.observability import startup

    startup.worker_ready()


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _logger_ready(logger: Any = None, **kwargs: Any) -> None:
    from knowledge.observability import startup

    if logger is not None:
        startup.celery_logger_ready(logger)


@signals.before_task_publish.connect
def _before_task_publish(headers: Any = None, **kwargs: Any) -> None:
    from knowledge.observability import startup

    startup.task_publishing(headers)


@signals.task_prerun.connect
def _task_prerun(task_id: str = "", task: Any = None, **kwargs: Any) -> None:
    from knowledge.observability import startup

    startup.task_starting(task_id, task)


@signals.task_postrun.connect
def _task_postrun(task_id: str = "", **kwargs: Any) -> None:
    from knowledge.observability import startup

    startup.task_finished(task_id)
