"""An upload while the broker is unreachable is kept, stays queued, and is processed once it is back."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import transaction

from knowledge.models import Document
from knowledge.services import documents as document_services
from tests.conftest import wait_for

pytestmark = [pytest.mark.worker, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def broker_outage() -> Iterator[Callable[[], None]]:
    """Point this process's Celery app at a port where nothing listens; yield a function that ends the outage."""
    from portal.celery import app

    real, real_write = app.conf.broker_url, app.conf.broker_write_url
    dead = "redis://127.0.0.1:9/0" if real.startswith("redis") else "sqla+sqlite:////nonexistent/dir/broker.db"

    def forget_connections() -> None:
        # the connection and producer pools belong to the broker they were built for
        app._pool = None
        app.amqp._producer_pool = None

    def restore() -> None:
        app.conf.broker_url, app.conf.broker_write_url = real, real_write
        forget_connections()

    # Celery publishes through broker_write_url when it is set (it is, to the same URL).
    app.conf.broker_url = app.conf.broker_write_url = dead
    forget_connections()
    yield restore
    restore()


def test_an_upload_during_a_broker_outage_is_processed_when_it_returns(
    celery_worker_factory: Any, broker_outage: Callable[[], None]
) -> None:
    with transaction.atomic():
        document = document_services.document_create(
            file=io.BytesIO(b"Written while the broker was down: the archive of the harbour master."),
            filename="outage.txt",
        )
    document.refresh_from_db()
    assert document.status == "queued"  # stored: nothing lost, nothing processed yet

    broker_outage()
    celery_worker_factory()
    assert document_services.documents_redispatch_stale(older_than_s=0) == 1  # what beat does periodically

    def finished() -> Document | None:
        current = Document.objects.get(pk=document.pk)
        return current if current.status in {"ready", "failed"} else None

    done = wait_for(finished, timeout=180)
    assert done.status == "ready", done.error
    assert done.chunk_count > 0
