"""Who may read what, as a matrix: for each caller, exactly the allowed chunks appear anywhere."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from rest_framework.test import APIClient

from knowledge.models import Collection, Document
from knowledge.services import apikeys, requests
from knowledge.services import documents as document_services

pytestmark = pytest.mark.django_db

# One document per collection, all about the same subject, so a question retrieves all of them
# unless the permission filter removes some.
TEXTS = {
    "public": "Project Aurora public roadmap: the Aurora launch is planned for spring.",
    "finance": "Project Aurora finance plan: the Aurora budget is twelve million euros.",
    "legal": "Project Aurora legal review: the Aurora contract was signed in Oslo.",
}


@pytest.fixture(autouse=True)
def _isolated(portal_dirs: dict[str, Path], settings: Any) -> None:
    settings.API_RATE_LIMIT = "10000/m"


@pytest.fixture
def world(db: Any) -> dict[str, Any]:
    finance_group = Group.objects.create(name="finance")
    collections = {
        "public": Collection.objects.get(slug="default"),
        "finance": Collection.objects.create(slug="finance", name="Finance", is_public=False),
        "legal": Collection.objects.create(slug="legal", name="Legal", is_public=False),
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
    return {
        "docs": docs,
        "collections": collections,
        "users": {
            "member": member,
            "nobody": User.objects.create_user(username="nobody"),
            "staff": User.objects.create_user(username="boss", is_staff=True),
        },
    }


CASES = {
    # caller: (user, key limited to, readable documents)
    "user in group finance": ("member", None, {"public", "finance"}),
    "user in no group": ("nobody", None, {"public"}),
    "staff": ("staff", None, {"public", "finance", "legal"}),
    "staff key limited to legal": ("staff", "legal", {"legal"}),
    "member key limited to finance": ("member", "finance", {"finance"}),
}


def _caller(world: dict[str, Any], case: str) -> APIClient:
    username, limited_to, _ = CASES[case]
    limit = [world["collections"][limited_to]] if limited_to else []
    _, raw = apikeys.apikey_create(user=world["users"][username], collections=limit)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    return client


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_caller_sees_exactly_the_allowed_documents_everywhere(world: dict[str, Any], case: str) -> None:
    client = _caller(world, case)
    allowed = {world["docs"][name].pk for name in CASES[case][2]}

    answer = client.post("/api/v1/rag/", {"prompt": "What is the plan of Project Aurora?", "top_k": 50}, format="json")
    assert answer.status_code == 200
    assert {s["document_id"] for s in answer.json()["sources"]} == allowed

    generative_context = _context_documents(world, case)
    assert generative_context <= allowed

    listed = client.get("/api/v1/documents/").json()
    assert {d["id"] for d in listed} == allowed

    counts = client.get("/api/v1/status/").json()["documents"]
    assert counts["ready"] == len(allowed)

    for name, document in world["docs"].items():
        detail = client.get(f"/api/v1/documents/{document.pk}/")
        download = client.get(f"/api/v1/documents/{document.pk}/file/")
        expected = 200 if document.pk in allowed else 404
        assert (detail.status_code, download.status_code) == (expected, expected), name
        if expected == 200:
            assert b"".join(download.streaming_content).decode() == TEXTS[name]

    for name, collection in world["collections"].items():
        response = client.post("/api/v1/rag/", {"prompt": "Aurora", "collection": collection.slug}, format="json")
        assert response.status_code == (200 if world["docs"][name].pk in allowed else 403), name


def _context_documents(world: dict[str, Any], case: str) -> set[int]:
    """The documents whose text would be put in a generative prompt for this caller."""
    from knowledge.services import access, answering

    username, limited_to, _ = CASES[case]
    key = None
    if limited_to:
        key, _ = apikeys.apikey_create(user=world["users"][username], collections=[world["collections"][limited_to]])
    ids = access.collection_ids_for(user=world["users"][username], api_key=key)
    sources = answering.sources_retrieve(question="Project Aurora plan", collection_ids=ids, top_k=50)
    return {s.document_id for s in sources}


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
    client = _caller(world, "user in group finance")
    member.is_active = False
    member.save()
    assert client.get("/api/v1/documents/").status_code == 401
