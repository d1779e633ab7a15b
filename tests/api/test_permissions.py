"""Who may read what, as a matrix: for each caller, exactly the allowed chunks appear anywhere."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from knowledge.models import ApiKey, ApiTask, AuditEvent, Collection, Document
from knowledge.services import apikeys, directory, requests
from knowledge.services import documents as document_services

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("api_isolated")]

# One document per collection, all about the same subject, so a question retrieves all of them
# unless the permission filter removes some.
TEXTS = {
    "public": "Project Aurora public roadmap: the Aurora launch is planned for spring.",
    "finance": "Project Aurora finance plan: the Aurora budget is twelve million euros.",
    "legal": "Project Aurora legal review: the Aurora contract was signed in Oslo.",
}
DOCUMENT_PERMISSIONS = ("view_document", "add_document", "change_document", "delete_document")


def grant(user: User, *codenames: str) -> User:
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="knowledge", codename__in=codenames))
    return User.objects.get(pk=user.pk)  # a fresh object: permissions are cached per instance


# The matrix runs for local users, whose groups and flags are set by hand, and for directory users, whose groups
# and flags come from their directory at sign-in (knowledge.services.directory; the sign-ins themselves against
# real servers are in tests/identity/): the same callers must see exactly the same.
DIRECTORY = {
    "AUTH_GROUP_MAP": {"Finance Team": "finance", "Everyone": "everyone"},
    "AUTH_STAFF_GROUPS": ["Portal Admins", "Portal Root"],
    "AUTH_SUPERUSER_GROUPS": ["Portal Root"],
}
DIRECTORY_GROUPS = {
    "member": ["Finance Team", "Everyone"],
    "nobody": ["Everyone", "Unmapped"],
    "staff": ["Portal Admins"],
    "manager": ["Portal Admins"],
    "superuser": ["Portal Root"],
}


def _from_directory(users: dict[str, User]) -> dict[str, User]:
    for name, user in users.items():
        User.objects.filter(pk=user.pk).update(is_staff=False, is_superuser=False)
        user = User.objects.get(pk=user.pk)
        user.groups.clear()
        directory.directory_sync(user, source="ldap", subject=f"uid={name},ou=people", groups=DIRECTORY_GROUPS[name])
        users[name] = User.objects.get(pk=user.pk)
    return users


@pytest.fixture
def origin(request: pytest.FixtureRequest, settings: Any) -> str:
    """Where the users' groups come from: "local" unless a test asks for "directory" too (the matrix does)."""
    chosen = str(getattr(request, "param", "local"))
    if chosen == "directory":
        for name, value in DIRECTORY.items():
            setattr(settings, name, value)
    return chosen


@pytest.fixture
def world(db: Any, origin: str) -> dict[str, Any]:
    finance_group = Group.objects.create(name="finance")
    collections = {
        "public": Collection.objects.get(slug="default"),
        "finance": Collection.objects.create(slug="finance", name="Finance", is_public=False),
        "legal": Collection.objects.create(slug="legal", name="Legal", is_public=False),
        # public and empty: a key limited to it must read nothing once it is deleted
        "gone": Collection.objects.create(slug="gone", name="Soon deleted", is_public=True),
    }
    collections["finance"].groups.add(finance_group)
    docs = {}
    for name, text in TEXTS.items():
        document = document_services.document_create(
            file=io.BytesIO(text.encode()), filename=f"{name}.txt", collection=collections[name], dispatch=False
        )
        document_services.document_process(document_id=document.pk)
        docs[name] = Document.objects.get(pk=document.pk)
    member = User.objects.create_user(username="member")
    member.groups.add(finance_group)
    users = {
        "member": member,
        "nobody": User.objects.create_user(username="nobody"),
        # the staff flag lets one into the admin; it opens no collection and no document
        "staff": User.objects.create_user(username="boss", is_staff=True),
        "manager": grant(User.objects.create_user(username="manager", is_staff=True), *DOCUMENT_PERMISSIONS),
        "superuser": User.objects.create_superuser(username="root", email=""),
    }
    if origin == "directory":
        users = _from_directory(users)
    return {"docs": docs, "collections": collections, "users": users}


ALL = "all collections"
CASES = {
    # caller: (user, key's reach: ALL or the collections it lists, readable documents)
    "user in group finance": ("member", ALL, {"public", "finance"}),
    "user in no group": ("nobody", ALL, {"public"}),
    "staff in no group": ("staff", ALL, {"public"}),
    "document manager in no group": ("manager", ALL, {"public"}),
    "superuser": ("superuser", ALL, {"public", "finance", "legal"}),
    "superuser key limited to legal": ("superuser", ("legal",), {"legal"}),
    "staff key limited to legal": ("staff", ("legal",), set()),
    "member key limited to finance": ("member", ("finance",), {"finance"}),
    "member key listing no collection": ("member", (), set()),
    "member key whose only collection was deleted": ("member", ("gone",), set()),
}


def _key(world: dict[str, Any], case: str) -> tuple[ApiKey, APIClient]:
    username, reach, _ = CASES[case]
    if reach == ALL:
        key, raw = apikeys.apikey_create(user=world["users"][username], all_collections=True)
    else:
        limit = [world["collections"][slug] for slug in reach]
        key, raw = apikeys.apikey_create(user=world["users"][username], all_collections=False, collections=limit)
    world["collections"]["gone"].delete()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    return ApiKey.objects.get(pk=key.pk), client


@pytest.mark.parametrize("origin", ["local", "directory"], indirect=True)
@pytest.mark.parametrize("case", sorted(CASES))
def test_each_caller_sees_exactly_the_allowed_documents_everywhere(world: dict[str, Any], case: str) -> None:
    key, client = _key(world, case)
    allowed = {world["docs"][name].pk for name in CASES[case][2]}
    audited_before = AuditEvent.objects.count()

    answer = client.post("/api/v1/rag/", {"prompt": "What is the plan of Project Aurora?", "top_k": 50}, format="json")
    assert answer.status_code == 200
    body = answer.json()
    # the sources of an answer, or the closest passages of a question they do not answer: allowed ones alone
    assert {s["document_id"] for s in body["sources"] + body["related"]} == allowed

    assert _context_documents(world, case, key) <= allowed

    listed = client.get("/api/v1/documents/").json()
    assert {d["id"] for d in listed} == allowed

    counts = client.get("/api/v1/status/").json()["documents"]
    assert counts.get("ready", 0) == len(allowed)

    for name, document in world["docs"].items():
        detail = client.get(f"/api/v1/documents/{document.pk}/")
        download = client.get(f"/api/v1/documents/{document.pk}/file/")
        expected = 200 if document.pk in allowed else 404
        assert (detail.status_code, download.status_code) == (expected, expected), name
        if expected == 200:
            assert b"".join(download.streaming_content).decode() == TEXTS[name]

    # An unreadable collection is answered exactly as one that does not exist: its name cannot be probed.
    unknown = client.post("/api/v1/rag/", {"prompt": "Aurora", "collection": "no-such-thing"}, format="json")
    assert unknown.status_code == 404
    for name in TEXTS:
        slug = world["collections"][name].slug
        response = client.post("/api/v1/rag/", {"prompt": "Aurora", "collection": slug}, format="json")
        if world["docs"][name].pk in allowed:
            assert response.status_code == 200, name
        else:
            assert response.status_code == 404, name
            assert response.json() == _with_slug(unknown.json(), "no-such-thing", slug), name

    # The audit log holds each action above exactly once, all of them the caller's, through its key: the questions
    # answered (the refused ones are not questions asked of anything) and the downloads that were served.
    events = AuditEvent.objects.order_by("id")[audited_before:]
    expected = sorted(
        [AuditEvent.Action.QUESTION] * (1 + len(allowed)) + [AuditEvent.Action.DOCUMENT_DOWNLOAD] * len(allowed)
    )
    assert sorted(event.action for event in events) == expected
    assert {(event.user_id, event.api_key_id, event.via) for event in events} <= {
        (key.user_id, key.pk, AuditEvent.Via.API_KEY)
    }
    downloads = [event.document_id for event in events if event.action == AuditEvent.Action.DOCUMENT_DOWNLOAD]
    assert sorted(downloads) == sorted(allowed)


def _with_slug(body: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    return {field: value.replace(old, new) if isinstance(value, str) else value for field, value in body.items()}


def _context_documents(world: dict[str, Any], case: str, key: ApiKey) -> set[int]:
    """The documents whose text would be put in a generative prompt for this caller."""
    from knowledge.services import access, answering

    ids = access.collection_ids_for(user=world["users"][CASES[case][0]], api_key=key)
    sources = answering.sources_retrieve(question="Project Aurora plan", collection_ids=ids, top_k=50)
    return {s.document_id for s in sources}


def test_a_key_limited_to_collections_never_becomes_unlimited(world: dict[str, Any]) -> None:
    member = world["users"]["member"]
    key, raw = apikeys.apikey_create(user=member, all_collections=False, collections=[world["collections"]["gone"]])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    finance = world["docs"]["finance"]
    assert client.get(f"/api/v1/documents/{finance.pk}/file/").status_code == 404

    world["collections"]["gone"].delete()
    assert client.get(f"/api/v1/documents/{finance.pk}/file/").status_code == 404
    assert client.get("/api/v1/documents/").json() == []
    key.collections.set([world["collections"]["finance"]])
    assert client.get(f"/api/v1/documents/{finance.pk}/file/").status_code == 200
    key.collections.clear()  # as when the list is emptied in the admin
    assert client.get(f"/api/v1/documents/{finance.pk}/file/").status_code == 404


def test_a_key_is_either_for_all_collections_or_for_those_it_lists(world: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="all_collections"):
        apikeys.apikey_create(
            user=world["users"]["member"], all_collections=True, collections=[world["collections"]["finance"]]
        )


MANAGERS = {
    # user: (may upload, may delete) through the API; reading still follows the collections' groups
    "nobody": (False, False),
    "staff": (False, False),
    "manager": (True, True),
    "superuser": (True, True),
}


@pytest.mark.parametrize("username", sorted(MANAGERS))
def test_managing_documents_through_the_api_follows_model_permissions(world: dict[str, Any], username: str) -> None:
    may_add, may_delete = MANAGERS[username]
    _, raw = apikeys.apikey_create(user=world["users"][username], all_collections=True)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")

    upload = client.post("/api/v1/documents/", {"file": SimpleUploadedFile("new.txt", b"A brand new note.\n")})
    assert upload.status_code == (201 if may_add else 403)

    legal = world["docs"]["legal"]
    response = client.delete(f"/api/v1/documents/{legal.pk}/")
    if not may_delete:
        assert response.status_code == 403
    else:  # a manager outside the legal group does not even see the document
        assert response.status_code == (204 if username == "superuser" else 404)
    public = world["docs"]["public"]
    assert client.delete(f"/api/v1/documents/{public.pk}/").status_code == (204 if may_delete else 403)
    assert Document.objects.filter(pk=public.pk).exists() is not may_delete


def test_an_upload_names_an_unreadable_collection_as_if_it_did_not_exist(world: dict[str, Any]) -> None:
    _, raw = apikeys.apikey_create(user=world["users"]["manager"], all_collections=True)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    answers = {}
    for slug in ("legal", "no-such-thing"):
        response = client.post(
            "/api/v1/documents/", {"file": SimpleUploadedFile("n.txt", b"note\n"), "collection": slug}
        )
        answers[slug] = (response.status_code, _with_slug(response.json(), slug, "SLUG"))
    assert answers["legal"] == answers["no-such-thing"] and answers["legal"][0] == 404


def test_a_task_is_read_only_with_the_key_or_session_that_made_it(world: dict[str, Any]) -> None:
    member = world["users"]["member"]
    wide, wide_raw = apikeys.apikey_create(user=member, all_collections=True)
    _, narrow_raw = apikeys.apikey_create(
        user=member, all_collections=False, collections=[world["docs"]["public"].collection]
    )
    by_key = ApiTask.objects.create(user=member, api_key=wide, endpoint="rag")
    by_session = ApiTask.objects.create(user=member, api_key=None, endpoint="rag")

    def reader(raw: str | None) -> APIClient:
        client = APIClient()
        if raw is None:
            client.force_login(member)
        else:
            client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
        return client

    expectations = {
        (wide_raw, by_key): 200,
        (narrow_raw, by_key): 404,
        (None, by_key): 404,
        (None, by_session): 200,
        (wide_raw, by_session): 404,
    }
    for (raw, task), expected in expectations.items():
        response = reader(raw).get(f"/api/v1/tasks/{task.pk}/")
        assert response.status_code == expected, (raw == wide_raw, raw is None, task.api_key_id)


def test_anonymous_callers_read_nothing(world: dict[str, Any]) -> None:
    client = APIClient()
    assert client.post("/api/v1/rag/", {"prompt": "Aurora"}, format="json").status_code == 401
    assert client.get("/api/v1/documents/").status_code == 401
    assert client.get(f"/api/v1/documents/{world['docs']['public'].pk}/file/").status_code == 401
    assert client.get("/api/v1/status/").json()["documents"] == {}
    from django.contrib.auth.models import AnonymousUser

    assert requests.access.collection_ids_for(user=AnonymousUser()) == []


def test_an_inactive_user_key_is_refused(world: dict[str, Any]) -> None:
    member = world["users"]["member"]
    _, client = _key(world, "user in group finance")
    member.is_active = False
    member.save()
    assert client.get("/api/v1/documents/").status_code == 401
