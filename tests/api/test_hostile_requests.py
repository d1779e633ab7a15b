"""Hostile request bodies get a 4xx JSON answer, never a 500."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from knowledge.services import apikeys

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_api(portal_dirs: dict[str, Path], settings: Any, django_user_model: Any) -> APIClient:
    settings.API_RATE_LIMIT = "10000/m"
    _, raw = apikeys.apikey_create(
        user=django_user_model.objects.create_superuser(username="ops", email=""), all_collections=True
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    return client


DEEP = '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}"


@pytest.mark.parametrize("path", ["/api/v1/rag/", "/api/v1/generate/", "/api/v1/openai/chat/completions"])
@pytest.mark.parametrize(
    "body",
    [DEEP.encode(), b'{"prompt": "\xff\xfe invalid utf-8"}', b"{", b"[]", b'"just a string"', b"null"],
    ids=["deeply-nested", "invalid-utf8", "truncated", "array", "string", "null"],
)
def test_malformed_json_bodies_get_400(staff_api: APIClient, path: str, body: bytes) -> None:
    response = staff_api.post(path, data=body, content_type="application/json")
    assert response.status_code == 400, response.content[:300]
    assert response["Content-Type"].startswith("application/json")


def test_a_huge_prompt_gets_400(staff_api: APIClient) -> None:
    response = staff_api.post("/api/v1/rag/", {"prompt": "word " * 200_000}, format="json")
    assert response.status_code == 400
    assert "prompt" in response.json()


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", b"garbage without a boundary"),
        ("multipart/form-data; boundary=xx", b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a.txt"'),
        ("multipart/form-data; boundary=xx", b"--xx--\r\n"),
        ("application/json", b'{"file": "not a file"}'),
    ],
    ids=["no-boundary", "truncated-part", "no-parts", "json-instead-of-file"],
)
def test_malformed_uploads_get_400(staff_api: APIClient, content_type: str, body: bytes) -> None:
    response = staff_api.post("/api/v1/documents/", data=body, content_type=content_type)
    assert response.status_code == 400, response.content[:300]
    assert response["Content-Type"].startswith("application/json")


def test_a_wrong_content_type_gets_415(staff_api: APIClient) -> None:
    response = staff_api.post("/api/v1/rag/", data=b"prompt=hello", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
