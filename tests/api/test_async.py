"""`"async": true` requests complete on a real Celery worker."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from knowledge.models import AuditEvent
from knowledge.services import apikeys
from knowledge.services import documents as document_services
from tests.conftest import wait_for

pytestmark = [pytest.mark.worker, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_an_async_rag_request_completes_on_a_worker(celery_worker: Any, settings: Any) -> None:
    settings.API_RATE_LIMIT = "10000/m"
    document = document_services.document_create(
        file=io.BytesIO(b"The lighthouse of Alexandria was one of the Seven Wonders of the Ancient World."),
        filename="wonders.txt",
        dispatch=False,
    )
    document_services.document_process(document_id=document.pk)
    user = User.objects.create_user(username="async-user")
    _, raw = apikeys.apikey_create(user=user, all_collections=True)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")

    response = client.post("/api/v1/rag/", {"prompt": "Which lighthouse was a wonder?", "async": True}, format="json")
    assert response.status_code == 202
    accepted = response.json()
    assert set(accepted) == {"task_id", "status", "status_url"}
    assert accepted["status_url"].endswith(f"/api/v1/tasks/{accepted['task_id']}/")

    def finished() -> dict[str, Any] | None:
        body = client.get(accepted["status_url"]).json()
        return body if body["status"] in {"succeeded", "failed"} else None

    body = wait_for(finished, timeout=180)
    assert body["status"] == "succeeded", body
    assert set(body["result"]) == {"output", "answered", "sources", "related", "meta"}
    assert body["result"]["sources"][0]["document_id"] == document.pk
    # audited once, by the worker that answered, with the address of the one who asked
    [event] = AuditEvent.objects.filter(action=AuditEvent.Action.QUESTION)
    assert (event.user_id, event.via, event.ip_address) == (user.pk, "api_key", "127.0.0.1")
    assert [entry["document_id"] for entry in event.cited] == [document.pk]

    other = User.objects.create_user(username="someone-else")
    _, other_raw = apikeys.apikey_create(user=other, all_collections=True)
    intruder = APIClient()
    intruder.credentials(HTTP_AUTHORIZATION=f"Token {other_raw}")
    assert intruder.get(accepted["status_url"]).status_code == 404
