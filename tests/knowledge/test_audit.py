"""The audit log (issue 21, item 4): each action recorded once, in its own transaction; the export and retention."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from knowledge.models import AuditEvent, Document
from knowledge.services import apikeys, audit, conversations
from knowledge.services import documents as document_services
from tests.support import sse_events

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("api_isolated")]

QUESTION = "Which waterfall faces the Suitor?"
FJORD = (
    "The Geiranger fjord is a UNESCO World Heritage site in Norway.\n\n"
    "Cruise ships visit the fjord every summer, and the Seven Sisters waterfall faces the Suitor."
)


@pytest.fixture
def reader(db: Any) -> User:
    return User.objects.create_user(username="reader", password="pw-reader-123")


@pytest.fixture
def editor(db: Any) -> User:
    user = User.objects.create_user(username="editor", password="pw-editor-123", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="knowledge", codename__in=["add_document", "delete_document", "view_document"]
        )
    )
    return User.objects.get(pk=user.pk)


@pytest.fixture
def fjord(ingest: Callable[..., Document], text_file: Callable[[str, str], Path]) -> Document:
    document = ingest(text_file("norway.txt", FJORD))
    assert document.status == "ready", document.error
    AuditEvent.objects.all().delete()  # the fixture's own upload is not what the tests count
    return document


def _key_client(user: User) -> APIClient:
    _, raw = apikeys.apikey_create(user=user, all_collections=True)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    return client


def _events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


# --- questions ----------------------------------------------------------------------------------


def test_an_api_question_is_recorded_once_with_its_citations_and_without_its_text(
    reader: User, fjord: Document
) -> None:
    response = _key_client(reader).post("/api/v1/rag/", {"prompt": QUESTION, "mode": "extractive"}, format="json")
    assert response.status_code == 200, response.content
    [event] = _events("question")
    assert (event.user, event.username, event.via) == (reader, "reader", "api_key")
    assert event.api_key is not None and event.api_key_prefix == event.api_key.prefix
    assert event.collections == "default"
    assert event.question == ""  # AUDIT_CONTENT is off by default
    assert event.ip_address == "127.0.0.1"
    cited_ids = {entry["document_id"] for entry in event.cited}
    assert cited_ids == {s["document_id"] for s in response.json()["sources"]} == {fjord.pk}
    assert event.cited[0]["title"] == "norway.txt"


def test_a_streamed_question_is_recorded_once(reader: User, fjord: Document) -> None:
    response = _key_client(reader).post(
        "/api/v1/rag/", {"prompt": QUESTION, "mode": "extractive", "stream": True}, format="json"
    )
    assert sse_events(response)[-1][0] == "done"
    [event] = _events("question")
    assert event.via == "api_key" and {entry["document_id"] for entry in event.cited} == {fjord.pk}


def test_the_question_text_is_kept_only_with_audit_content(settings: Any, reader: User, fjord: Document) -> None:
    settings.AUDIT_CONTENT = True
    client = APIClient()
    client.force_login(reader)
    assert client.post("/api/v1/rag/", {"prompt": QUESTION, "mode": "extractive"}, format="json").status_code == 200
    [event] = _events("question")
    assert event.question == QUESTION and event.via == "session" and event.api_key is None


def test_a_chat_question_is_recorded_once(reader: User, fjord: Document) -> None:
    client = Client()
    client.force_login(reader)
    conversation = conversations.conversation_create(user=reader)
    response = client.post(
        f"/chat/{conversation.pk}/ask/",
        {"question": QUESTION, "mode": "extractive", "collection": ""},
        HTTP_ACCEPT="text/event-stream",
    )
    assert sse_events(response)[-1][0] == "done"
    [event] = _events("question")
    assert (event.username, event.via, event.question) == ("reader", "session", "")
    assert {entry["document_id"] for entry in event.cited} == {fjord.pk}


# --- documents ----------------------------------------------------------------------------------


def test_upload_open_download_replace_and_delete_are_each_recorded_once(
    editor: User, reader: User, fjord: Document
) -> None:
    api = _key_client(editor)
    upload = io.BytesIO(b"Sourdough bread rises with a starter of wild yeast.")
    upload.name = "baking.txt"
    response = api.post("/api/v1/documents/", {"file": upload}, format="multipart")
    assert response.status_code == 201, response.content
    [uploaded] = _events("document_upload")
    assert (uploaded.username, uploaded.via, uploaded.document_id) == ("editor", "api_key", response.json()["id"])
    assert uploaded.document_title == "baking.txt" and uploaded.collections == "default"

    page = Client()
    page.force_login(reader)
    assert page.get(f"/documents/{fjord.pk}/view/").status_code == 200
    [opened] = _events("document_open")
    assert (opened.username, opened.document_id, opened.document_title) == ("reader", fjord.pk, "norway.txt")

    assert _key_client(reader).get(f"/api/v1/documents/{fjord.pk}/file/").status_code == 200
    [downloaded] = _events("document_download")
    assert (downloaded.username, downloaded.via, downloaded.document_id) == ("reader", "api_key", fjord.pk)

    document_services.document_replace(
        document=fjord, file=io.BytesIO(b"The fjord, second edition."), filename="norway-2.txt", actor=editor
    )
    [replaced] = _events("document_replace")
    assert (replaced.username, replaced.document_id) == ("editor", fjord.pk)

    assert api.delete(f"/api/v1/documents/{fjord.pk}/").status_code == 204
    [deleted] = _events("document_delete")
    assert (deleted.username, deleted.document_id, deleted.document_title) == ("editor", fjord.pk, "norway.txt")
    assert AuditEvent.objects.exclude(action="sign_in").count() == 5  # force_login is a sign-in too


def test_an_admin_bulk_deletion_records_each_document(
    admin_user_logged_in: Client,
    fjord: Document,
    ingest: Callable[..., Document],
    text_file: Callable[[str, str], Path],
) -> None:
    other = ingest(text_file("baking.txt", "Sourdough bread rises with a starter of wild yeast."))
    response = admin_user_logged_in.post(
        "/admin/knowledge/document/", {"action": "delete_with_vectors", "_selected_action": [fjord.pk, other.pk]}
    )
    assert response.status_code == 302
    deleted = _events("document_delete")
    assert sorted(e.document_id for e in deleted) == sorted([fjord.pk, other.pk])
    assert {e.username for e in deleted} == {"boss"}


def test_a_refused_upload_leaves_no_event(editor: User, fjord: Document) -> None:
    upload = io.BytesIO(FJORD.encode())  # the same bytes: a duplicate, refused
    upload.name = "again.txt"
    assert _key_client(editor).post("/api/v1/documents/", {"file": upload}, format="multipart").status_code == 409
    assert not AuditEvent.objects.exists()


def test_the_event_outlives_the_user(reader: User, fjord: Document) -> None:
    client = Client()
    client.force_login(reader)
    client.get(f"/documents/{fjord.pk}/view/")
    reader.delete()
    [event] = _events("document_open")
    assert event.user is None and event.username == "reader"


# --- sign-ins -----------------------------------------------------------------------------------


def test_sign_ins_and_failed_sign_ins_are_recorded(reader: User) -> None:
    client = Client()
    assert client.post("/accounts/login/", {"username": "reader", "password": "wrong"}).status_code == 200
    assert client.post("/accounts/login/", {"username": "reader", "password": "pw-reader-123"}).status_code == 302
    [failed] = _events("sign_in_failed")
    assert (failed.user, failed.username, failed.ip_address) == (None, "reader", "127.0.0.1")
    assert "wrong" not in str(failed.__dict__)
    [signed_in] = _events("sign_in")
    assert (signed_in.user, signed_in.username) == (reader, "reader")


# --- export, retention, admin ---------------------------------------------------------------------


def _event(days_ago: int, username: str, action: str = "sign_in") -> AuditEvent:
    event = audit.audit_record(action=action, username=username)
    AuditEvent.objects.filter(pk=event.pk).update(time=timezone.now() - timedelta(days=days_ago))
    return event


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_audit_export_prints_csv_since_a_day(db: Any) -> None:
    _event(10, "old")
    _event(0, "new")
    out = io.StringIO()
    call_command("audit_export", stdout=out)
    rows = _csv(out.getvalue())
    assert [row["username"] for row in rows] == ["old", "new"]
    assert list(rows[0]) == list(audit.CSV_COLUMNS)

    out = io.StringIO()
    since = (timezone.now() - timedelta(days=2)).date().isoformat()
    call_command("audit_export", "--since", since, stdout=out)
    assert [row["username"] for row in _csv(out.getvalue())] == ["new"]


def test_a_cell_a_spreadsheet_would_run_is_exported_as_text(db: Any) -> None:
    _event(0, '=HYPERLINK("http://evil.example","click")')
    out = io.StringIO()
    call_command("audit_export", stdout=out)
    [row] = _csv(out.getvalue())
    assert row["username"] == '\'=HYPERLINK("http://evil.example","click")'


def test_audit_export_refuses_a_bad_date(db: Any) -> None:
    with pytest.raises(CommandError, match="YYYY-MM-DD"):
        call_command("audit_export", "--since", "31/01/2026", stdout=io.StringIO())


def test_prune_deletes_events_past_the_retention(settings: Any) -> None:
    settings.AUDIT_RETENTION_DAYS = 30
    _event(31, "old")
    _event(1, "recent")
    assert audit.audit_prune() == 1
    assert list(AuditEvent.objects.values_list("username", flat=True)) == ["recent"]
    settings.AUDIT_RETENTION_DAYS = 0  # keep forever
    assert audit.audit_prune(now=timezone.now() + timedelta(days=3650)) == 0


def test_prune_runs_on_beat(settings: Any) -> None:
    from knowledge.tasks import audit_prune_task

    assert any(entry["task"] == audit_prune_task.name for entry in settings.CELERY_BEAT_SCHEDULE.values())


def test_admin_lists_and_exports_the_log_for_staff_only(admin_user_logged_in: Client, reader: User) -> None:
    _event(1, "alice", "document_open")
    _event(0, "bob", "document_open")
    page = admin_user_logged_in.get("/admin/knowledge/auditevent/", {"q": "alice"})
    assert page.status_code == 200 and b"alice" in page.content and b"bob" not in page.content
    assert admin_user_logged_in.get("/admin/knowledge/auditevent/add/").status_code == 403

    export = admin_user_logged_in.post(
        "/admin/knowledge/auditevent/?action__exact=document_open",
        {"action": "export_csv", "select_across": "1", "index": "0", "_selected_action": ["0"]},
    )
    assert export.status_code == 200 and export["Content-Type"].startswith("text/csv")
    assert [row["username"] for row in _csv(export.content.decode())] == ["alice", "bob"]

    outsider = Client()
    outsider.force_login(reader)
    assert outsider.get("/admin/knowledge/auditevent/").status_code == 302  # to the admin's login
    refused = outsider.post("/admin/knowledge/auditevent/", {"action": "export_csv", "select_across": "1"})
    assert refused.status_code == 302 and not refused["Content-Type"].startswith("text/csv")
