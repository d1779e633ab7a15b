"""The pages through Django's test client: access rules, uploads, the answer stream, feedback, admin."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from knowledge.models import ApiKey, Chunk, Collection, Conversation, Document, Message, UsageRecord
from knowledge.services import answering, conversations
from knowledge.services.answering import Answer, Source, StreamPiece
from knowledge.services.apikeys import apikey_authenticate
from tests.support import sse_events
from tests.web.support import PASSWORD

pytestmark = pytest.mark.django_db


def _client_for(user: Any, *, language: str = "en") -> Client:
    client = Client(HTTP_ACCEPT_LANGUAGE=language)
    client.force_login(user)
    return client


@pytest.fixture
def reader(make_user: Callable[..., Any]) -> Any:
    return make_user("reader")


DOCUMENT_PERMISSIONS = ("view_document", "add_document", "change_document", "delete_document")


def _grant(user: Any, *codenames: str) -> Any:
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="knowledge", codename__in=codenames))
    return type(user).objects.get(pk=user.pk)  # a fresh object: permissions are cached per instance


@pytest.fixture
def staff(make_user: Callable[..., Any]) -> Any:
    """A document manager: the staff flag and the document permissions (no group)."""
    return _grant(make_user("curator", staff=True), *DOCUMENT_PERMISSIONS)


@pytest.fixture
def chunk(db: Any) -> Chunk:
    """A ready document with one chunk, written directly (no ingestion needed for these tests)."""
    collection = Collection.objects.get_or_create(slug="default", defaults={"name": "Default"})[0]
    document = Document.objects.create(
        collection=collection, title="guide.pdf", file="documents/x/guide.pdf", sha256="a" * 64, status="ready"
    )
    return Chunk.objects.create(document=document, ordinal=0, text="Reliance is the largest company.", page=2)


@pytest.fixture
def fake_answers(monkeypatch: pytest.MonkeyPatch, chunk: Chunk) -> list[dict[str, Any]]:
    """Replace retrieval and generation by a fixed stream; record what each call was given."""
    calls: list[dict[str, Any]] = []

    def stream(**kwargs: Any) -> Iterator[StreamPiece | Answer]:
        calls.append(kwargs)
        source = Source(
            id=chunk.pk,
            document_id=chunk.document_id,
            title="guide.pdf",
            page=2,
            score=0.8,
            text=chunk.text,
            highlight="the largest company",
            heading="Overview",
        )
        yield StreamPiece("Reliance is the largest ")
        yield StreamPiece("company [1].")
        yield Answer(
            output="Reliance is the largest company [1].",
            sources=[source],
            prompt_tokens=12,
            completion_tokens=7,
            seconds=0.2,
            model="test-model",
            mode=kwargs["mode"],
        )

    monkeypatch.setattr(answering, "answer_question_stream", stream)
    return calls


@pytest.mark.parametrize("path", ["/", "/chat/1/", "/documents/", "/documents/1/"])
def test_anonymous_visitors_are_sent_to_the_login_page(client: Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=")


def test_document_pages_are_for_document_managers_only(reader: Any, make_user: Callable[..., Any]) -> None:
    for user in (reader, make_user("staff-without-permissions", staff=True)):
        client = _client_for(user)
        assert client.get("/documents/").status_code == 403
        assert client.post("/documents/upload/").status_code == 403
        assert 'href="/documents/"' not in client.get("/").content.decode()


ROLES = {
    # role: (staff flag, document permissions, superuser)
    "reader": (False, (), False),
    "staff without permissions": (True, (), False),
    "viewer": (False, ("view_document",), False),
    "manager": (True, DOCUMENT_PERMISSIONS, False),
    "superuser": (True, (), True),
}


@pytest.fixture
def restricted(chunk: Chunk) -> Document:
    """A ready document in a collection limited to a group nobody here belongs to, with a stored file."""
    from knowledge.services import documents as document_services

    board = Collection.objects.create(slug="board", name="Board", is_public=False)
    board.groups.add(Group.objects.create(name="board"))
    document = document_services.document_create(
        file=SimpleUploadedFile("salaries.txt", b"Board salaries grid.\n"),
        filename="salaries.txt",
        collection=board,
        dispatch=False,
    )
    Document.objects.filter(pk=document.pk).update(status="ready")
    Chunk.objects.create(document=document, ordinal=0, text="Board salaries grid.")
    return document


@pytest.mark.parametrize("role", sorted(ROLES))
def test_document_pages_follow_model_permissions_and_collection_groups(
    role: str, make_user: Callable[..., Any], chunk: Chunk, restricted: Document, django_user_model: Any
) -> None:
    staff_flag, codenames, superuser = ROLES[role]
    if superuser:
        user = django_user_model.objects.create_superuser(username="root", password=PASSWORD, email="")
    else:
        user = _grant(make_user("someone", staff=staff_flag), *codenames)
    may = {action: superuser or f"{action}_document" in codenames for action in ("view", "add", "change", "delete")}
    client = _client_for(user)
    public_id, secret_id = chunk.document_id, restricted.pk

    assert client.get("/documents/").status_code == (200 if may["view"] else 403)
    assert ('href="/documents/"' in client.get("/").content.decode()) is may["view"]
    assert client.get(f"/documents/{public_id}/").status_code == (200 if may["view"] else 403)
    # the restricted collection's chunks and file stay closed to all but its group (and superusers)
    secret = client.get(f"/documents/{secret_id}/")
    assert secret.status_code == (200 if superuser else 404 if may["view"] else 403)
    assert (b"Board salaries grid." in secret.content) is superuser
    download = client.get(f"/api/v1/documents/{secret_id}/file/")
    assert download.status_code == (200 if superuser else 404)
    if may["view"] and not superuser:
        assert "salaries.txt" not in client.get("/documents/").content.decode()
    if staff_flag and may["view"]:  # the Django admin follows the same groups
        admin_list = client.get("/admin/knowledge/document/")
        assert admin_list.status_code == 200
        assert ("salaries.txt" in admin_list.content.decode()) is superuser

    assert _upload(client, "new.txt", b"A new note.\n").status_code == (201 if may["add"] else 403)
    reingest = client.post(f"/documents/{public_id}/reingest/", HTTP_HX_REQUEST="true")
    assert reingest.status_code == (204 if may["change"] else 403)
    secret_delete = client.post(f"/documents/{secret_id}/delete/", HTTP_HX_REQUEST="true")
    assert secret_delete.status_code == (204 if superuser else 404 if may["delete"] else 403)
    delete = client.post(f"/documents/{public_id}/delete/", HTTP_HX_REQUEST="true")
    assert delete.status_code == (204 if may["delete"] else 403)
    assert Document.objects.filter(pk=public_id).exists() is not may["delete"]


def test_login_page_signs_in_and_goes_home(client: Client, reader: Any) -> None:
    response = client.post("/accounts/login/", {"username": "reader", "password": PASSWORD, "next": "/"})
    assert response.status_code == 302 and response["Location"] == "/"
    assert b"Ask your documents" in client.get("/").content


def test_home_offers_only_readable_collections(make_user: Callable[..., Any]) -> None:
    hr = Group.objects.create(name="hr")
    secret = Collection.objects.create(slug="hr-files", name="HR files", is_public=False)
    secret.groups.add(hr)
    outsider = make_user("outsider")
    insider = make_user("insider", groups=(hr,))
    assert b"HR files" not in _client_for(outsider).get("/").content
    assert b"HR files" in _client_for(insider).get("/").content
    # Naming the collection anyway is refused.
    conversation = conversations.conversation_create(user=outsider)
    response = _client_for(outsider).post(
        f"/chat/{conversation.pk}/ask/",
        {"question": "salaries?", "collection": "hr-files", "mode": "extractive"},
        HTTP_ACCEPT="text/event-stream",
    )
    assert response.status_code == 400
    assert not Message.objects.exists()
    # ... exactly as a collection that does not exist: a restricted name cannot be probed
    unknown = _client_for(outsider).post(
        f"/chat/{conversation.pk}/ask/",
        {"question": "salaries?", "collection": "no-such-thing", "mode": "extractive"},
        HTTP_ACCEPT="text/event-stream",
    )
    assert (unknown.status_code, unknown.json()) == (response.status_code, response.json())


def test_a_conversation_is_visible_to_its_owner_only(reader: Any, make_user: Callable[..., Any]) -> None:
    conversation = conversations.conversation_create(user=reader, title="Mine")
    other = _client_for(make_user("someone-else"))
    assert other.get(f"/chat/{conversation.pk}/").status_code == 404
    assert other.post(f"/chat/{conversation.pk}/ask/", {"question": "hi", "mode": "extractive"}).status_code == 404
    assert _client_for(reader).get(f"/chat/{conversation.pk}/").status_code == 200


def test_the_first_question_starts_a_conversation_that_asks_it(reader: Any) -> None:
    client = _client_for(reader)
    response = client.post("/chat/new/", {"question": "What is Reliance?", "mode": "extractive", "collection": ""})
    conversation = Conversation.objects.get(user=reader)
    assert response["Location"] == f"/chat/{conversation.pk}/"
    page = client.get(response["Location"]).content.decode()
    assert "data-autosubmit" in page and "What is Reliance?" in page
    assert "data-autosubmit" not in client.get(response["Location"]).content.decode()  # asked once only


def test_the_answer_streams_then_is_stored_with_its_sources(reader: Any, fake_answers: list[dict[str, Any]]) -> None:
    client = _client_for(reader)
    conversation = conversations.conversation_create(user=reader)
    response = client.post(
        f"/chat/{conversation.pk}/ask/",
        {"question": "Which company is the largest?", "mode": "generative", "collection": ""},
        HTTP_ACCEPT="text/event-stream",
    )
    assert response["Content-Type"].startswith("text/event-stream")
    events = sse_events(response)
    assert [name for name, _data in events] == ["token", "token", "done"]
    assert "".join(data["text"] for name, data in events if name == "token") == "Reliance is the largest company [1]."
    done = events[-1][1]
    message = Message.objects.get(pk=done["message_id"])
    assert message.mode == "generative" and message.model == "test-model"
    assert message.sources[0]["title"] == "guide.pdf" and message.sources[0]["page"] == 2
    assert list(message.cited_chunks.values_list("pk", flat=True)) == [message.sources[0]["id"]]
    assert (message.prompt_tokens, message.completion_tokens) == (12, 7)
    assert message.latency_ms is not None
    # The rendered message links [1] to its source, which shows the page and marks the highlight.
    assert f'href="#m{message.pk}-s1"' in done["html"]
    assert f'id="m{message.pk}-s1"' in done["html"]
    assert "page 2" in done["html"] and "<mark>the largest company</mark>" in done["html"]
    assert done["title"] == "Which company is the largest?"
    assert UsageRecord.objects.get(endpoint="chat").completion_tokens == 7


def test_a_follow_up_question_carries_the_conversation_history(reader: Any, fake_answers: list[dict[str, Any]]) -> None:
    client = _client_for(reader)
    conversation = conversations.conversation_create(user=reader)
    for question in ("First question?", "And then?"):
        response = client.post(
            f"/chat/{conversation.pk}/ask/",
            {"question": question, "mode": "extractive", "collection": ""},
            HTTP_ACCEPT="text/event-stream",
        )
        sse_events(response)
    assert fake_answers[0]["history"] == []
    assert fake_answers[1]["history"] == [("First question?", "Reliance is the largest company [1].")]
    assert fake_answers[1]["top_k"] == 5 and fake_answers[1]["mode"] == "extractive"


def test_without_javascript_the_answer_is_made_in_full(reader: Any, fake_answers: list[dict[str, Any]]) -> None:
    client = _client_for(reader)
    conversation = conversations.conversation_create(user=reader)
    response = client.post(f"/chat/{conversation.pk}/ask/", {"question": "Largest?", "mode": "extractive"})
    message = Message.objects.get()
    assert response.status_code == 302 and response["Location"].endswith(f"/chat/{conversation.pk}/#m{message.pk}")
    page = client.get(f"/chat/{conversation.pk}/").content.decode()
    assert 'class="cite"' in page and "guide.pdf" in page


def test_feedback_is_stored_and_can_be_taken_back(
    reader: Any, make_user: Callable[..., Any], fake_answers: list[dict[str, Any]]
) -> None:
    client = _client_for(reader)
    conversation = conversations.conversation_create(user=reader)
    sse_events(
        client.post(
            f"/chat/{conversation.pk}/ask/", {"question": "Q?", "mode": "extractive"}, HTTP_ACCEPT="text/event-stream"
        )
    )
    message = Message.objects.get()
    url = f"/messages/{message.pk}/feedback/"
    response = client.post(url, {"feedback": "1"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and 'aria-pressed="true"' in response.content.decode()
    message.refresh_from_db()
    assert message.feedback == 1
    client.post(url, {"feedback": "-1"}, HTTP_HX_REQUEST="true")
    message.refresh_from_db()
    assert message.feedback == -1
    client.post(url, {"feedback": "-1"}, HTTP_HX_REQUEST="true")  # the same thumb again: no vote
    message.refresh_from_db()
    assert message.feedback is None
    assert _client_for(make_user("stranger")).post(url, {"feedback": "1"}).status_code == 404


def _upload(client: Client, name: str, content: bytes) -> Any:
    return client.post(
        "/documents/upload/", {"file": SimpleUploadedFile(name, content)}, HTTP_ACCEPT="application/json"
    )


def test_upload_answers_per_file_with_the_reason_of_a_refusal(staff: Any, settings: Any) -> None:
    client = _client_for(staff)
    created = _upload(client, "notes.txt", b"Plain notes about the portal.\n")
    assert created.status_code == 201
    body = created.json()
    document = Document.objects.get(pk=body["document"]["id"])
    assert document.status == "queued" and document.uploaded_by == staff and document.mime_type == "text/plain"

    duplicate = _upload(client, "copy.txt", b"Plain notes about the portal.\n")
    assert duplicate.status_code == 409
    assert duplicate.json()["code"] == "duplicate" and "notes.txt" in duplicate.json()["error"]

    unsupported = _upload(client, "tool.exe", b"MZ\x90\x00" + bytes(range(256)) * 8)
    assert unsupported.status_code == 415
    assert "PDF" in unsupported.json()["accepted"] and "Unsupported file type" in unsupported.json()["error"]

    settings.MAX_UPLOAD_MB = 1
    too_large = _upload(client, "big.txt", b"a" * (1024 * 1024 + 1))
    assert too_large.status_code == 413 and "1 MB" in too_large.json()["error"]
    assert Document.objects.count() == 1


def test_upload_without_javascript_takes_several_files(staff: Any) -> None:
    client = _client_for(staff)
    files = [SimpleUploadedFile("a.txt", b"first file\n"), SimpleUploadedFile("b.md", b"# Second\n\ntext\n")]
    response = client.post("/documents/upload/", {"file": files}, follow=True)
    assert Document.objects.count() == 2
    assert "a.txt is uploaded and queued." in response.content.decode()


def test_the_list_polls_only_while_a_document_is_in_progress(staff: Any, chunk: Chunk) -> None:
    client = _client_for(staff)
    page = client.get("/documents/").content.decode()
    assert 'data-polling="false"' in page and "every 2s" not in page
    Document.objects.create(
        collection=chunk.document.collection, title="pending.pdf", file="documents/y/p.pdf", sha256="b" * 64
    )
    partial = client.get("/documents/", HTTP_HX_REQUEST="true").content.decode()
    assert partial.lstrip().startswith('<div id="document-list"')
    assert "every 2s" in partial and "pending.pdf" in partial


def test_the_list_filters_by_words_status_and_collection(staff: Any, chunk: Chunk) -> None:
    other = Collection.objects.create(slug="other", name="Other")
    Document.objects.create(
        collection=other, title="failed.pdf", file="documents/z/f.pdf", sha256="c" * 64, status="failed", error="Bad"
    )
    client = _client_for(staff)
    assert "failed.pdf" not in client.get("/documents/?q=guide").content.decode()
    by_status = client.get("/documents/?status=failed").content.decode()
    assert "failed.pdf" in by_status and "guide.pdf" not in by_status and "Bad" in by_status
    by_collection = client.get(f"/documents/?collection={other.pk}").content.decode()
    assert "failed.pdf" in by_collection and "guide.pdf" not in by_collection


def test_document_page_shows_status_pages_and_chunks(staff: Any, chunk: Chunk) -> None:
    page = _client_for(staff).get(f"/documents/{chunk.document_id}/").content.decode()
    assert "guide.pdf" in page and "Reliance is the largest company." in page and "page 2" in page
    assert f'href="/api/v1/documents/{chunk.document_id}/file/"' in page


def test_reingest_and_delete_go_through_the_services(staff: Any, chunk: Chunk, monkeypatch: pytest.MonkeyPatch) -> None:
    from knowledge.services import documents as document_services

    deleted: list[int] = []
    monkeypatch.setattr(document_services, "document_delete", lambda *, document, **_: deleted.append(document.pk))
    client = _client_for(staff)
    response = client.post(f"/documents/{chunk.document_id}/reingest/", HTTP_HX_REQUEST="true")
    assert response.status_code == 204 and "documents-changed" in response["HX-Trigger"]
    assert Document.objects.get(pk=chunk.document_id).status == "queued"
    response = client.post(f"/documents/{chunk.document_id}/delete/", {"next": "/documents/"}, HTTP_HX_REQUEST="true")
    assert response["HX-Location"] == "/documents/" and deleted == [chunk.document_id]


def test_the_interface_speaks_french_when_the_browser_asks(reader: Any) -> None:
    page = _client_for(reader, language="fr-FR,fr;q=0.9").get("/").content.decode()
    assert 'lang="fr"' in page and "Interrogez vos documents" in page and "Nouvelle conversation" in page


def test_admin_shows_a_new_api_key_once_and_revokes_keys(admin_user_logged_in: Client, reader: Any) -> None:
    client = admin_user_logged_in
    response = client.post(
        "/admin/knowledge/apikey/add/",
        {"user": reader.pk, "name": "integration", "expires_in_days": "30", "collections": []},
        follow=True,
    )
    assert response.status_code == 200
    text = response.content.decode()
    key = ApiKey.objects.get(user=reader)
    raw = text.split("<code>", 1)[1].split("</code>", 1)[0]
    assert raw.startswith(f"kp_{key.prefix}_") and apikey_authenticate(raw) == key
    assert key.expires_at is not None and key.name == "integration"
    assert raw not in client.get(f"/admin/knowledge/apikey/{key.pk}/change/").content.decode()

    client.post("/admin/knowledge/apikey/", {"action": "revoke", "_selected_action": [key.pk]})
    key.refresh_from_db()
    assert key.revoked_at is not None and apikey_authenticate(raw) is None


def test_admin_keys_say_whether_they_read_all_collections(admin_user_logged_in: Client, reader: Any) -> None:
    from knowledge.selectors import collections_readable_by

    client = admin_user_logged_in
    default = Collection.objects.get(slug="default")
    client.post(
        "/admin/knowledge/apikey/add/",
        {"user": reader.pk, "name": "wide", "all_collections": "on", "collections": []},
    )
    wide = ApiKey.objects.get(name="wide")
    assert wide.all_collections and list(collections_readable_by(user=reader, api_key=wide)) == [default]
    client.post("/admin/knowledge/apikey/add/", {"user": reader.pk, "name": "narrow", "collections": [default.pk]})
    narrow = ApiKey.objects.get(name="narrow")
    assert not narrow.all_collections and list(collections_readable_by(user=reader, api_key=narrow)) == [default]
    both = client.post(
        "/admin/knowledge/apikey/add/",
        {"user": reader.pk, "name": "both", "all_collections": "on", "collections": [default.pk]},
    )
    assert both.status_code == 200 and not ApiKey.objects.filter(name="both").exists()
    assert "all_collections" in client.get(f"/admin/knowledge/apikey/{narrow.pk}/change/").content.decode()

    # emptying a limited key's list in the admin leaves it with no access, not with every collection
    change = client.post(f"/admin/knowledge/apikey/{narrow.pk}/change/", {"name": "narrow", "collections": []})
    assert change.status_code == 302
    narrow.refresh_from_db()
    assert not narrow.all_collections and not collections_readable_by(user=reader, api_key=narrow).exists()


def test_admin_usage_list_is_read_only_with_daily_totals(admin_user_logged_in: Client, reader: Any) -> None:
    UsageRecord.objects.create(user=reader, endpoint="rag", prompt_tokens=10, completion_tokens=5, end_user_id="42")
    UsageRecord.objects.create(user=reader, endpoint="chat", prompt_tokens=1, completion_tokens=2)
    response = admin_user_logged_in.get("/admin/knowledge/usagerecord/")
    assert response.status_code == 200
    totals = response.context["daily_totals"]
    assert totals[0]["user__username"] == "reader" and totals[0]["tokens"] == 18 and totals[0]["requests"] == 2
    filtered = admin_user_logged_in.get("/admin/knowledge/usagerecord/?endpoint=rag").context["daily_totals"]
    assert filtered[0]["tokens"] == 15
    assert admin_user_logged_in.get("/admin/knowledge/usagerecord/add/").status_code == 403


def test_a_marker_in_a_document_never_becomes_a_citation_link(
    reader: Any, ingest: Callable[..., Any], tmp_path: Any
) -> None:
    # two sources, so that a document's own "[2]" would have a source to point at
    for name, text in (
        ("warranty.txt", "The Zephyr warranty lasts five years, as the sales contract says [2]."),
        ("coverage.txt", "The Zephyr warranty covers the engine and the gearbox of every boat."),
    ):
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        ingest(path)
    client = _client_for(reader)
    conversation = conversations.conversation_create(user=reader)
    client.post(
        f"/chat/{conversation.pk}/ask/",
        {"question": "How long does the Zephyr warranty last?", "mode": "extractive"},
    )
    message = Message.objects.get()
    assert len(message.sources) == 2 and "five years" in message.answer
    page = client.get(f"/chat/{conversation.pk}/").content.decode()
    assert "contract says" in page and 'says <a class="cite"' not in page


def test_conversation_history_keeps_the_last_turns_oldest_first(reader: Any) -> None:
    conversation = conversations.conversation_create(user=reader)
    for n in range(5):
        Message.objects.create(conversation=conversation, question=f"q{n}", answer=f"a{n}")
    assert conversations.conversation_history(conversation=conversation, turns=2) == [("q3", "a3"), ("q4", "a4")]
    assert conversations.cited_numbers("see [2] and [1], [2], [9]", sources=3) == [2, 1]


def test_answers_and_passages_are_escaped() -> None:
    from knowledge.web.presenters import answer_html, passage_html

    html = answer_html("<script>x</script> [1] [7]", sources=[{"title": "a<b", "page": 3}], anchor="m1")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert 'href="#m1-s1"' in html and "[7]" in html and "#m1-s7" not in html
    assert passage_html("a <b> c", "<b>") == "a <mark>&lt;b&gt;</mark> c"


def test_a_question_no_passage_answers_shows_the_closest_passages_apart(reader: Any, portal_dirs: Any) -> None:
    from knowledge.services import documents as document_services

    document = document_services.document_create(
        file=io.BytesIO(b"Sourdough bread rises with a starter of wild yeast.\n\nBakers feed it every day."),
        filename="baking.txt",
        dispatch=False,
    )
    document_services.document_process(document_id=document.pk)
    chunk = Chunk.objects.get(document=document)
    conversation = conversations.conversation_create(user=reader)
    response = _client_for(reader).post(
        f"/chat/{conversation.pk}/ask/",
        {"question": "Who won the football world cup in 1998?", "mode": "extractive", "collection": ""},
        HTTP_ACCEPT="text/event-stream",
    )
    done = sse_events(response)[-1][1]
    message = Message.objects.get(pk=done["message_id"])
    assert message.answer.startswith("No relevant document")
    assert [(source["id"], source["related"]) for source in message.sources] == [(chunk.pk, True)]
    assert not message.cited_chunks.exists()
    html = done["html"]
    assert "Closest passages (not an answer)" in html and ">Sources<" not in html
    assert f"/documents/{document.pk}/view/?chunk={chunk.pk}" in html
