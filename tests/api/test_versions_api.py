"""PUT /api/v1/documents/{id}/file/: a new version of a document, and the versions in the document's JSON."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from rest_framework.test import APIClient

from knowledge.models import AuditEvent, Collection, Document
from knowledge.services import apikeys
from knowledge.services import documents as document_services

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("api_isolated")]

OLD = b"The Oslo office opens at eight and closes at four on Fridays."
NEW = b"The Oslo office now opens at nine and closes at five, Fridays included."


def _client(user: User) -> APIClient:
    _, raw = apikeys.apikey_create(user=user, all_collections=True)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    return client


def _file(content: bytes, name: str = "hours.txt") -> io.BytesIO:
    upload = io.BytesIO(content)
    upload.name = name
    return upload


@pytest.fixture
def editor(db: Any) -> User:
    user = User.objects.create_user(username="editor", password="pw-editor-123", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="knowledge", codename__in=["change_document"])
    )
    return user


@pytest.fixture
def hours(db: Any) -> Document:
    document = document_services.document_create(file=io.BytesIO(OLD), filename="hours.txt", dispatch=False)
    document_services.document_process(document_id=document.pk)
    document.refresh_from_db()
    assert document.status == "ready", document.error
    return document


def test_a_first_upload_is_version_1_in_the_json(hours: Document, editor: User) -> None:
    body = _client(editor).get(f"/api/v1/documents/{hours.pk}/").json()
    assert body["version"] == 1
    [version] = body["versions"]
    assert set(version) == {"number", "status", "size", "created", "created_by", "error"}
    assert (version["number"], version["status"], version["size"], version["error"]) == (1, "ready", len(OLD), "")
    listed = _client(editor).get("/api/v1/documents/").json()
    assert [d["version"] for d in listed] == [1] and listed[0]["versions"][0]["number"] == 1


def test_put_a_new_version_answers_202_and_it_replaces_the_current_one_once_ready(
    hours: Document, editor: User, django_capture_on_commit_callbacks: Any
) -> None:
    api = _client(editor)
    with django_capture_on_commit_callbacks(execute=False):
        response = api.put(f"/api/v1/documents/{hours.pk}/file/", {"file": _file(NEW)}, format="multipart")
    assert response.status_code == 202, response.content
    body = response.json()
    assert (body["id"], body["status"], body["version"]) == (hours.pk, "queued", 1)
    assert [(v["number"], v["status"], v["created_by"]) for v in body["versions"]] == [
        (2, "queued", "editor"),
        (1, "ready", None),
    ]
    assert AuditEvent.objects.filter(action="document_replace", document_id=hours.pk).count() == 1

    # the current version is still what a download gives until the new one is ready
    assert b"".join(api.get(f"/api/v1/documents/{hours.pk}/file/").streaming_content) == OLD
    document_services.document_process(document_id=hours.pk)
    body = api.get(f"/api/v1/documents/{hours.pk}/").json()
    assert (body["status"], body["version"], body["size"]) == ("ready", 2, len(NEW))
    assert [(v["number"], v["status"]) for v in body["versions"]] == [(2, "ready"), (1, "replaced")]
    assert b"".join(api.get(f"/api/v1/documents/{hours.pk}/file/").streaming_content) == NEW


def test_a_failed_new_version_shows_its_reason_and_the_current_one_stays(hours: Document, editor: User) -> None:
    api = _client(editor)
    broken = _file(b"%PDF-1.4\n% broken\n", "hours.pdf")
    assert api.put(f"/api/v1/documents/{hours.pk}/file/", {"file": broken}, format="multipart").status_code == 202
    document_services.document_process(document_id=hours.pk)
    body = api.get(f"/api/v1/documents/{hours.pk}/").json()
    assert (body["status"], body["version"], body["error"]) == ("ready", 1, "")
    newest = body["versions"][0]
    assert (newest["number"], newest["status"]) == (2, "failed") and newest["error"]


def test_put_refusals(hours: Document, editor: User, user: User, django_capture_on_commit_callbacks: Any) -> None:
    api = _client(editor)
    url = f"/api/v1/documents/{hours.pk}/file/"
    same = api.put(url, {"file": _file(OLD)}, format="multipart")
    assert (same.status_code, same.json()["code"]) == (409, "same_version")
    empty = api.put(url, {"file": _file(b"")}, format="multipart")
    assert empty.status_code == 400 and "file" in empty.json()
    missing = api.put(url, {}, format="multipart")
    assert missing.status_code == 400 and "file" in missing.json()
    assert api.put("/api/v1/documents/999999/file/", {"file": _file(NEW)}, format="multipart").status_code == 404
    unsupported = api.put(url, {"file": _file(bytes(range(256)) * 10, "blob.bin")}, format="multipart")
    assert unsupported.status_code == 415

    with django_capture_on_commit_callbacks(execute=False):
        assert api.put(url, {"file": _file(NEW)}, format="multipart").status_code == 202
    pending = api.put(url, {"file": _file(NEW + b" Again.")}, format="multipart")
    assert (pending.status_code, pending.json()["code"]) == (409, "version_pending")

    # a reader may download, not upload; a document of a collection the editor may not read is unknown
    assert _client(user).put(url, {"file": _file(NEW)}, format="multipart").status_code == 403
    secret = Collection.objects.create(slug="hr", name="HR", is_public=False)
    hidden = document_services.document_create(
        file=io.BytesIO(b"Salaries."), filename="pay.txt", collection=secret, dispatch=False
    )
    hidden_put = api.put(f"/api/v1/documents/{hidden.pk}/file/", {"file": _file(NEW)}, format="multipart")
    assert hidden_put.status_code == 404
    assert Document.objects.get(pk=hidden.pk).versions.count() == 1


def test_the_schema_describes_the_put(editor: User) -> None:
    schema = _client(editor).get("/api/schema/?format=json").json()
    operation = schema["paths"]["/api/v1/documents/{document_id}/file/"]["put"]
    assert "multipart/form-data" in operation["requestBody"]["content"]
    assert {"202", "404", "409"} <= set(operation["responses"])
    document = schema["components"]["schemas"]["Document"]["properties"]
    assert {"version", "versions"} <= set(document)
