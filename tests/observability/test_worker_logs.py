"""A worker's log: JSON lines only, and no question, answer or document text unless LOG_CONTENT is true."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from rest_framework.test import APIClient

from knowledge.models import Collection
from knowledge.services import apikeys
from knowledge.services import documents as document_services
from tests.conftest import wait_for

pytestmark = [pytest.mark.worker, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SECRET = "The vault of the Geneva office opens with the code written behind the blue clock."
QUESTION = "How does the vault of the Geneva office open? zebra-question-marker"


@pytest.mark.parametrize("log_content", ["false", "true"])
def test_a_worker_logs_the_answer_of_a_restricted_document_only_with_log_content(
    celery_worker_factory: Any, settings: Any, log_content: str
) -> None:
    settings.API_RATE_LIMIT = "10000/m"
    board = Group.objects.create(name="board")
    restricted = Collection.objects.create(slug="board", name="Board", is_public=False)
    restricted.groups.add(board)
    document = document_services.document_create(
        file=io.BytesIO(SECRET.encode()), filename="vault.txt", collection=restricted, dispatch=False
    )
    document_services.document_process(document_id=document.pk)
    user = User.objects.create_user(username="board-member")
    user.groups.add(board)
    _, raw = apikeys.apikey_create(user=user, all_collections=True)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    worker = celery_worker_factory(LOG_CONTENT=log_content, LOG_FORMAT="json")

    accepted = client.post(
        "/api/v1/rag/",
        {"prompt": QUESTION, "collection": "board", "mode": "extractive", "async": True},
        format="json",
    ).json()

    def finished() -> dict[str, Any] | None:
        body = client.get(accepted["status_url"]).json()
        return body if body["status"] in {"succeeded", "failed"} else None

    body = wait_for(finished, timeout=180)
    assert body["status"] == "succeeded", body
    assert "blue clock" in body["result"]["output"]  # the answer quotes the restricted document
    wait_for(lambda: "succeeded in" in worker.log.read_text(errors="replace"), timeout=30)
    worker.stop()
    log = worker.log.read_text(errors="replace")

    if log_content == "false":
        assert "blue clock" not in log
        assert "zebra-question-marker" not in log
    else:  # the same run with content on shows the answer: the line is there to be hidden
        assert "blue clock" in log
    # LOG_FORMAT=json: every line the worker wrote (start-up, tasks, shutdown) is one JSON object
    assert [json.loads(line)["message"] for line in log.splitlines() if line.strip()]
