"""With the database unreachable the API answers 503 JSON, not a 500 page."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from rest_framework.test import APIClient

from tests.services_env import USING_POSTGRES

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def database_down() -> Iterator[None]:
    saved = dict(connection.settings_dict)
    connection.close()
    if USING_POSTGRES:
        connection.settings_dict["PORT"] = 9  # nothing listens there
    else:
        connection.settings_dict["NAME"] = "/nonexistent/dir/db.sqlite3"
    yield
    connection.close()
    connection.settings_dict.clear()
    connection.settings_dict.update(saved)


def test_the_api_answers_503_when_the_database_is_unreachable(database_down: None, settings: Any) -> None:
    settings.API_RATE_LIMIT = "10000/m"
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token kp_abcdef01_whatever")
    response = client.post("/api/v1/rag/", {"prompt": "anything"}, format="json")
    assert response.status_code == 503
    assert response.json()["code"] == "database_unavailable"
    assert response["Retry-After"] == "30"
