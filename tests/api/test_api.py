"""The REST API: every endpoint, field, range and error code of ARCHITECTURE section 6."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission, User
from rest_framework.test import APIClient

from knowledge.models import Collection, Document
from knowledge.services import apikeys, engines
from knowledge.services import documents as document_services
from tests.support import sse_events

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("api_isolated")]

SOURCE_FIELDS = {"id", "document_id", "title", "page", "score", "text", "highlight", "url", "origin_url"}
META_FIELDS = {"tokens_used", "prompt_tokens", "completion_tokens", "response_time", "model"}


@pytest.fixture
def staff(db: Any) -> User:
    """A document manager: the staff flag and the permissions to add and delete documents (no group)."""
    editor = User.objects.create_user(username="editor", password="pw-editor-123", is_staff=True)
    editor.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="knowledge", codename__in=["add_document", "delete_document"]
        )
    )
    return editor


def _client(user: User, **key_options: Any) -> APIClient:
    key_options.setdefault("all_collections", not key_options.get("collections"))
    _, raw = apikeys.apikey_create(user=user, **key_options)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    return client


def _found(body: dict[str, Any]) -> set[int]:
    """The documents an answer drew on: its sources, or the closest passages of a question none answers."""
    return {s["document_id"] for s in body["sources"] + body["related"]}


@pytest.fixture
def api(user: User) -> APIClient:
    return _client(user)


@pytest.fixture
def staff_api(staff: User) -> APIClient:
    return _client(staff)


def _ingest(text: str, name: str, collection: Collection | None = None) -> Document:
    document = document_services.document_create(
        file=io.BytesIO(text.encode()), filename=name, collection=collection, dispatch=False
    )
    document_services.document_process(document_id=document.pk)
    document.refresh_from_db()
    assert document.status == "ready", document.error
    return document


@pytest.fixture
def corpus_docs(db: Any) -> dict[str, Document]:
    secret = Collection.objects.create(slug="hr", name="HR", is_public=False)
    return {
        "fjord": _ingest(
            "The Geiranger fjord is a UNESCO World Heritage site in Norway.\n\n"
            "Cruise ships visit the fjord every summer, and the Seven Sisters waterfall faces the Suitor.",
            "norway.txt",
        ),
        "bread": _ingest(
            "Sourdough bread rises with a starter of wild yeast and lactic bacteria.\n\n"
            "Bakers feed the starter with flour and water every day.",
            "baking.txt",
        ),
        "salary": _ingest(
            "Confidential: the salary bands for engineers were raised by four percent in March.",
            "salaries.txt",
            collection=secret,
        ),
    }


# --- authentication -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/api/v1/rag/"),
        ("post", "/api/v1/generate/"),
        ("get", "/api/v1/documents/"),
        ("post", "/api/v1/documents/"),
        ("get", "/api/v1/documents/1/"),
        ("delete", "/api/v1/documents/1/"),
        ("post", "/api/rag/"),
        ("post", "/api/generate/"),
    ],
)
def test_requests_without_credentials_get_401_json(method: str, path: str) -> None:
    response = getattr(APIClient(), method)(path, {}, format="json")
    assert response.status_code == 401
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["code"] == "not_authenticated"
    assert response["WWW-Authenticate"] == "Token"


def test_an_unknown_key_is_refused(db: Any) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token kp_deadbeef_nope")
    response = client.post("/api/v1/rag/", {"prompt": "hi"}, format="json")
    assert response.status_code == 401
    assert "Invalid" in response.json()["detail"]


def test_an_expired_or_revoked_key_is_refused(user: User) -> None:
    from datetime import timedelta

    from django.utils import timezone

    key, raw = apikeys.apikey_create(user=user, all_collections=True, expires_in=timedelta(days=1))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    assert client.get("/api/v1/documents/").status_code == 200
    key.refresh_from_db()
    assert key.last_used_at is not None
    key.expires_at = timezone.now() - timedelta(seconds=1)
    key.save()
    assert client.get("/api/v1/documents/").status_code == 401
    key.expires_at = None
    key.save()
    apikeys.apikey_revoke(key=key)
    assert client.get("/api/v1/documents/").status_code == 401


def test_keys_are_stored_hashed(user: User) -> None:
    key, raw = apikeys.apikey_create(user=user, all_collections=True)
    assert raw not in (key.key_hash, key.prefix)
    assert len(key.key_hash) == 64


def test_a_session_works_too(client: Any, user: User, corpus_docs: Any) -> None:
    client.force_login(user)
    response = client.post(
        "/api/v1/rag/", {"prompt": "Which waterfall faces the Suitor?"}, content_type="application/json"
    )
    assert response.status_code == 200


def test_status_is_public_and_describes_model_index_and_queue(corpus_docs: Any, client: Any, staff: User) -> None:
    for path in ("/api/v1/status/", "/api/status/"):
        response = APIClient().get(path)
        assert response.status_code == 200
        body = response.json()
        assert {"status", "model", "index", "queue", "documents"} <= set(body)
        assert body["model"]["name"] and body["index"]["ok"]
        assert "vectors" not in body["index"] and body["documents"] == {}  # nothing to count for anonymous
    client.force_login(staff)
    body = client.get("/api/v1/status/").json()
    assert body["index"]["vectors"] == len(engines.get_store().ids())
    assert body["documents"]["ready"] == 2  # the staff flag does not open the HR collection


def test_status_counts_only_what_the_caller_may_read(api: APIClient, corpus_docs: Any) -> None:
    body = api.get("/api/v1/status/").json()
    assert body["documents"]["ready"] == 2  # the HR document is not counted
    assert "vectors" not in body["index"]


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x" * 8001}, "prompt"),
        ({"prompt": "hi", "temperature": -0.1}, "temperature"),
        ({"prompt": "hi", "temperature": 2.01}, "temperature"),
        ({"prompt": "hi", "top_p": 0}, "top_p"),
        ({"prompt": "hi", "top_p": 1.5}, "top_p"),
        ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "hi", "max_tokens": 10**6}, "max_tokens"),
        ({"prompt": "hi", "max_tokens": "many"}, "max_tokens"),
        ({"prompt": "hi", "top_k": 0}, "top_k"),
        ({"prompt": "hi", "top_k": 51}, "top_k"),
        ({"prompt": "hi", "mode": "creative"}, "mode"),
        ({"prompt": "hi", "colection": "default"}, "colection"),
        ({"prompt": "hi", "user_id": "x" * 201}, "user_id"),
        ({"prompt": "hi", "stream": True, "async": True}, "stream"),
        ({"prompt": "hi", "history": [{"role": "system", "content": "x"}]}, "history"),
        ({"prompt": "hi", "history": [{"role": "user"}]}, "history"),
        ({"prompt": "hi", "history": [{"role": "user", "content": "x", "name": "y"}]}, "history"),
        ({"prompt": "hi", "history": [{"role": "user", "content": "x"}] * 101}, "history"),
        ({"prompt": "hi", "history": "earlier"}, "history"),
    ],
)
def test_rag_refuses_invalid_input_with_field_errors(api: APIClient, payload: dict[str, Any], field: str) -> None:
    response = api.post("/api/v1/rag/", payload, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()


@pytest.mark.parametrize("field", ["top_k", "collection", "mode"])
def test_generate_refuses_rag_only_fields(api: APIClient, field: str) -> None:
    value = {"top_k": 3, "collection": "default", "mode": "extractive"}[field]
    response = api.post("/api/v1/generate/", {"prompt": "hi", field: value}, format="json")
    assert response.status_code == 400
    assert response.json()[field] == ["Unknown field."]


def test_malformed_json_is_a_400(api: APIClient) -> None:
    response = api.post("/api/v1/rag/", data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["code"] == "parse_error"


def test_several_errors_are_reported_together(api: APIClient) -> None:
    response = api.post("/api/v1/rag/", {"prompt": "hi", "top_k": 99, "foo": 1}, format="json")
    assert response.status_code == 400
    assert set(response.json()) == {"top_k", "foo"}


# --- rag ----------------------------------------------------------------------------------------


def test_rag_answers_from_the_corpus_with_sources(api: APIClient, corpus_docs: dict[str, Document]) -> None:
    response = api.post(
        "/api/v1/rag/", {"prompt": "Which waterfall faces the Suitor in the fjord?", "top_k": 3}, format="json"
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"output", "answered", "sources", "related", "meta"}
    assert body["answered"] is True and body["related"] == []
    assert set(body["meta"]) == META_FIELDS
    assert body["meta"]["response_time"].endswith("s")
    assert body["sources"]
    for source in body["sources"]:
        assert set(source) == SOURCE_FIELDS
        assert source["url"] == f"/documents/{source['document_id']}/view/?chunk={source['id']}"  # no pages: text
    top = body["sources"][0]
    assert top["document_id"] == corpus_docs["fjord"].pk
    assert top["title"] == "norway.txt"
    assert "Seven Sisters" in top["highlight"]
    assert "Seven Sisters" in body["output"] and "[1]" in body["output"]
    assert body["meta"]["tokens_used"] == 0  # extractive: no model call


def test_the_aliases_answer_like_v1(api: APIClient, corpus_docs: Any) -> None:
    payload = {"prompt": "How do bakers feed the starter?", "mode": "extractive"}
    v1 = api.post("/api/v1/rag/", payload, format="json").json()
    alias = api.post("/api/rag/", payload, format="json").json()
    assert v1["output"] == alias["output"]
    assert [s["id"] for s in v1["sources"]] == [s["id"] for s in alias["sources"]]


def test_a_user_never_retrieves_a_collection_they_may_not_read(api: APIClient, corpus_docs: Any) -> None:
    response = api.post("/api/v1/rag/", {"prompt": "salary bands for engineers", "top_k": 50}, format="json")
    assert response.status_code == 200
    assert corpus_docs["salary"].pk not in _found(response.json())
    assert "salary" not in response.json()["output"]
    # a collection one may not read is answered as one that does not exist
    forbidden = api.post("/api/v1/rag/", {"prompt": "salary bands", "collection": "hr"}, format="json")
    assert forbidden.status_code == 404
    assert forbidden.json() == {"detail": "Unknown collection: hr.", "code": "not_found"}
    assert api.post("/api/v1/rag/", {"prompt": "x", "collection": "nope"}, format="json").status_code == 404


def test_group_members_and_superusers_read_a_restricted_collection(user: User, staff: User, corpus_docs: Any) -> None:
    hr = Collection.objects.get(slug="hr")
    group = Group.objects.create(name="hr-team")
    hr.groups.add(group)
    user.groups.add(group)
    superuser = User.objects.create_superuser(username="root", email="")
    for client in (_client(user), _client(superuser)):
        response = client.post("/api/v1/rag/", {"prompt": "salary bands engineers", "collection": "hr"}, format="json")
        assert response.status_code == 200
        assert _found(response.json()) == {corpus_docs["salary"].pk}
    # the staff flag and the document permissions open no collection
    refused = _client(staff).post("/api/v1/rag/", {"prompt": "salary", "collection": "hr"}, format="json")
    assert refused.status_code == 404


def test_a_key_limited_to_one_collection_sees_only_it(user: User, corpus_docs: Any) -> None:
    hr = Collection.objects.get(slug="hr")
    group = Group.objects.create(name="hr-team")
    hr.groups.add(group)
    user.groups.add(group)
    client = _client(user, collections=[hr])
    response = client.post("/api/v1/rag/", {"prompt": "fjord waterfall bread salary", "top_k": 50}, format="json")
    assert _found(response.json()) == {corpus_docs["salary"].pk}
    assert client.post("/api/v1/rag/", {"prompt": "x", "collection": "default"}, format="json").status_code == 404
    listed = client.get("/api/v1/documents/").json()
    assert {d["id"] for d in listed} == {corpus_docs["salary"].pk}


def test_nothing_relevant_says_so_without_calling_the_model(api: APIClient, settings: Any, corpus_docs: Any) -> None:
    settings.RAG_SCORE_THRESHOLD = 0.99
    response = api.post(
        "/api/v1/rag/", {"prompt": "Quelle est la capitale du Pérou ?", "mode": "generative"}, format="json"
    )
    body = response.json()
    assert response.status_code == 200
    assert body["answered"] is False and body["sources"] == []
    assert body["output"].startswith("Aucun document pertinent")
    assert body["meta"]["tokens_used"] == 0
    # the closest passages are listed apart, as not an answer
    assert {s["document_id"] for s in body["related"]} == {corpus_docs["fjord"].pk, corpus_docs["bread"].pk}
    assert all(set(source) == SOURCE_FIELDS for source in body["related"])


def test_a_question_the_documents_do_not_answer_gets_not_found(api: APIClient, corpus_docs: Any) -> None:
    for prompt, start in [
        ("Who won the football world cup in 1998?", "No relevant document"),
        ("Qui a gagné la coupe du monde de football en 1998 ?", "Aucun document pertinent"),
    ]:
        body = api.post("/api/v1/rag/", {"prompt": prompt, "mode": "generative"}, format="json").json()
        assert body["answered"] is False and body["sources"] == [] and body["related"], prompt
        assert body["output"].startswith(start) and body["meta"]["tokens_used"] == 0


def test_a_confidence_of_zero_answers_whatever_is_found(api: APIClient, settings: Any, corpus_docs: Any) -> None:
    settings.RAG_ANSWER_CONFIDENCE = 0.0
    body = api.post("/api/v1/rag/", {"prompt": "Who won the football world cup in 1998?"}, format="json").json()
    assert body["answered"] is True and body["sources"] and body["related"] == []


def test_a_follow_up_is_searched_with_the_history(api: APIClient, corpus_docs: Any) -> None:
    def top_document(first_question: str) -> int:
        history = [{"role": "user", "content": first_question}, {"role": "assistant", "content": "As quoted [1]"}]
        body = api.post(
            "/api/v1/rag/", {"prompt": "And what happens every day there?", "history": history}, format="json"
        ).json()
        return (body["sources"] + body["related"])[0]["document_id"]

    # the same follow-up finds what the conversation is about
    assert top_document("Which waterfall faces the Suitor in the Geiranger fjord?") == corpus_docs["fjord"].pk
    assert top_document("What does sourdough bread rise with?") == corpus_docs["bread"].pk


@pytest.mark.slow
def test_generative_rag_really_generates_and_counts_tokens(api: APIClient, corpus_docs: Any) -> None:
    response = api.post(
        "/api/v1/rag/",
        {"prompt": "Which waterfall faces the Suitor?", "mode": "generative", "max_tokens": 12, "temperature": 0},
        format="json",
    )
    assert response.status_code == 200, response.content
    body = response.json()
    meta = body["meta"]
    assert body["output"]
    assert meta["completion_tokens"] > 0 and meta["prompt_tokens"] > 0
    assert meta["tokens_used"] == meta["prompt_tokens"] + meta["completion_tokens"]
    assert meta["model"].startswith("SmolLM2")
    assert body["sources"][0]["document_id"] == corpus_docs["fjord"].pk


@pytest.mark.slow
def test_generate_returns_text_without_sources(api: APIClient) -> None:
    response = api.post("/api/v1/generate/", {"prompt": "Say hello.", "max_tokens": 5, "temperature": 0}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"output", "meta"}
    assert 0 < body["meta"]["completion_tokens"] <= 5
    alias = api.post("/api/generate/", {"prompt": "Say hello.", "max_tokens": 5, "temperature": 0}, format="json")
    assert alias.json()["output"] == body["output"]  # temperature 0 is greedy


@pytest.mark.slow
def test_streaming_sends_tokens_then_one_final_event(api: APIClient, corpus_docs: Any) -> None:
    response = api.post(
        "/api/v1/rag/",
        {
            "prompt": "Which waterfall faces the Suitor?",
            "mode": "generative",
            "max_tokens": 8,
            "temperature": 0,
            "stream": True,
        },
        format="json",
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/event-stream")
    events = sse_events(response)
    assert [name for name, _ in events[:-1]] == ["token"] * (len(events) - 1)
    name, final = events[-1]
    assert name == "done"
    assert set(final) == {"output", "answered", "sources", "related", "meta"}
    assert "".join(data["text"] for _, data in events[:-1]).strip() == final["output"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/api/v1/generate/", {"prompt": "Write a long story about a dragon."}),
        ("/api/v1/rag/", {"prompt": "Which waterfall faces the Suitor?", "mode": "generative"}),
    ],
)
def test_the_plain_answer_is_the_drained_stream_cut_by_max_tokens(
    api: APIClient, user: User, corpus_docs: Any, path: str, payload: dict[str, Any]
) -> None:
    from knowledge.services import answering, requests

    ask = {**payload, "max_tokens": 3, "temperature": 0}
    plain = api.post(path, ask, format="json").json()
    name, done = sse_events(api.post(path, {**ask, "stream": True}, format="json"))[-1]
    assert name == "done"
    for body in (plain, done):
        del body["meta"]["response_time"]
    assert plain == done
    assert plain["meta"]["completion_tokens"] == 3

    # the model said why it stopped, and that travels in the answer of both forms
    endpoint = requests.RAG if "rag" in path else requests.GENERATE
    question = requests.QuestionRequest(endpoint=endpoint, top_p=0.9, **ask)
    answer = requests.question_answer(request=question, user=user)
    streamed = answering.answer_of(requests.question_stream(request=question, user=user))
    assert answer.finish_reason == streamed.finish_reason == "length"
    assert (answer.output, answer.completion_tokens) == (streamed.output, streamed.completion_tokens)
    assert answer.output == plain["output"]


def test_streaming_extractive_answers_and_errors_stay_json(api: APIClient, corpus_docs: Any) -> None:
    response = api.post("/api/v1/rag/", {"prompt": "sourdough starter", "stream": True}, format="json")
    events = sse_events(response)
    assert events[-1][0] == "done" and events[-1][1]["sources"]
    forbidden = api.post("/api/v1/rag/", {"prompt": "x", "stream": True, "collection": "hr"}, format="json")
    assert forbidden.status_code == 404  # an unreadable collection is answered as an unknown one
    assert forbidden["Content-Type"].startswith("application/json")


def test_an_unloadable_model_gives_503(api: APIClient, settings: Any) -> None:
    settings.RAG_LLM_MODEL_DIR = "/nonexistent/model"
    response = api.post("/api/v1/generate/", {"prompt": "hi", "max_tokens": 3}, format="json")
    assert response.status_code == 503
    assert response.json()["code"] == "model_unavailable"


# --- limits ---------------------------------------------------------------------------------------


def test_the_rate_limit_answers_429_with_retry_after(api: APIClient, settings: Any) -> None:
    settings.API_RATE_LIMIT = "3/m"
    codes = [api.get("/api/v1/documents/").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    response = api.get("/api/v1/documents/")
    assert response.json()["code"] == "rate_limited"
    assert 0 < int(response["Retry-After"]) <= 60


def test_the_token_quota_answers_429_once_spent_and_resets_the_next_day(
    api: APIClient, user: User, settings: Any, corpus_docs: Any
) -> None:
    from datetime import timedelta

    from knowledge.models import UsageRecord

    settings.TOKEN_QUOTA_PER_DAY = 100
    UsageRecord.objects.create(user=user, endpoint="rag", prompt_tokens=90, completion_tokens=20)
    response = api.post("/api/v1/rag/", {"prompt": "sourdough"}, format="json")
    assert response.status_code == 429
    assert response.json()["code"] == "quota_exceeded"
    assert int(response["Retry-After"]) <= 86400
    UsageRecord.objects.update(created_at=UsageRecord.objects.get().created_at - timedelta(days=1))
    assert api.post("/api/v1/rag/", {"prompt": "sourdough"}, format="json").status_code == 200


def test_usage_is_recorded_per_key_and_end_user(user: User, corpus_docs: Any) -> None:
    from knowledge.models import UsageRecord

    key, raw = apikeys.apikey_create(user=user, all_collections=True)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    client.post("/api/v1/rag/", {"prompt": "sourdough", "user_id": "customer-7"}, format="json")
    record = UsageRecord.objects.get()
    assert (record.user, record.api_key, record.end_user_id, record.endpoint) == (user, key, "customer-7", "rag")


# --- documents ------------------------------------------------------------------------------------


def test_staff_upload_a_document_and_follow_its_status(
    staff_api: APIClient, django_capture_on_commit_callbacks: Any
) -> None:
    upload = io.BytesIO(b"Meeting notes: the Oslo office opens in May.")
    upload.name = "notes.txt"
    with django_capture_on_commit_callbacks(execute=False):
        response = staff_api.post("/api/v1/documents/", {"file": upload, "title": "Notes"}, format="multipart")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "queued" and body["title"] == "Notes" and body["collection"] == "default"
    detail = staff_api.get(f"/api/v1/documents/{body['id']}/")
    assert detail.status_code == 200 and detail.json()["id"] == body["id"]
    assert body["id"] in {d["id"] for d in staff_api.get("/api/v1/documents/").json()}


def test_only_staff_upload_and_delete(api: APIClient, corpus_docs: dict[str, Document]) -> None:
    upload = io.BytesIO(b"text")
    upload.name = "a.txt"
    assert api.post("/api/v1/documents/", {"file": upload}, format="multipart").status_code == 403
    assert api.delete(f"/api/v1/documents/{corpus_docs['bread'].pk}/").status_code == 403
    assert api.get(f"/api/v1/documents/{corpus_docs['bread'].pk}/").status_code == 200
    assert api.get(f"/api/v1/documents/{corpus_docs['salary'].pk}/").status_code == 404


def test_uploads_over_the_limit_get_413(staff_api: APIClient, settings: Any) -> None:
    settings.MAX_UPLOAD_MB = 1
    upload = io.BytesIO(b"a" * (1024 * 1024 + 1))
    upload.name = "big.txt"
    response = staff_api.post("/api/v1/documents/", {"file": upload}, format="multipart")
    assert response.status_code == 413
    assert response.json()["code"] == "too_large"


def test_unsupported_uploads_get_415_with_the_accepted_types(staff_api: APIClient) -> None:
    upload = io.BytesIO(bytes(range(256)) * 10)
    upload.name = "blob.bin"
    response = staff_api.post("/api/v1/documents/", {"file": upload}, format="multipart")
    assert response.status_code == 415
    assert "PDF" in response.json()["accepted_types"]
    assert not Document.objects.exists()


def test_a_duplicate_upload_gets_409_naming_the_document(staff_api: APIClient, corpus_docs: Any) -> None:
    upload = io.BytesIO(
        b"Sourdough bread rises with a starter of wild yeast and lactic bacteria.\n\n"
        b"Bakers feed the starter with flour and water every day."
    )
    upload.name = "again.txt"
    response = staff_api.post("/api/v1/documents/", {"file": upload}, format="multipart")
    assert response.status_code == 409
    assert response.json()["document_id"] == corpus_docs["bread"].pk


def test_a_path_in_the_file_name_is_dropped(staff_api: APIClient, portal_dirs: dict[str, Path]) -> None:
    upload = io.BytesIO(b"%PDF-1.4 not really but sniffed later")
    upload.name = "../../etc/passwd.txt"
    response = staff_api.post("/api/v1/documents/", {"file": upload}, format="multipart")
    assert response.status_code == 201
    document = Document.objects.get(pk=response.json()["id"])
    assert Path(document.file.path).resolve().is_relative_to(portal_dirs["media"].resolve())
    assert document.original_name == "passwd.txt"


def test_staff_delete_a_document_and_its_vectors(staff_api: APIClient, corpus_docs: dict[str, Document]) -> None:
    bread = corpus_docs["bread"]
    response = staff_api.delete(f"/api/v1/documents/{bread.pk}/")
    assert response.status_code == 204
    assert not Document.objects.filter(pk=bread.pk).exists()
    answer = staff_api.post("/api/v1/rag/", {"prompt": "sourdough starter flour", "top_k": 10}, format="json").json()
    assert bread.pk not in _found(answer)
    assert staff_api.delete(f"/api/v1/documents/{bread.pk}/").status_code == 404


# --- docs -------------------------------------------------------------------------------------------


def test_openapi_schema_and_viewers_are_served_without_a_cdn(client: Any) -> None:
    schema = client.get("/api/schema/")
    assert schema.status_code == 200
    assert b"/api/v1/rag/" in schema.content
    for path in ("/swagger/", "/redoc/"):
        page = client.get(path)
        assert page.status_code == 200
        html = page.content.decode()
        assert "cdn." not in html and "unpkg" not in html and "jsdelivr" not in html


@pytest.mark.slow
def test_generative_answers_through_the_machines_model_process_match_the_own_model(
    api: APIClient, corpus_docs: Any, settings: Any, tmp_path: Path
) -> None:
    import os
    import signal
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    body = {"prompt": "Which waterfall faces the Suitor?", "mode": "generative", "max_tokens": 8, "temperature": 0}
    own = api.post("/api/v1/rag/", body, format="json").json()

    settings.VAR_DIR = tmp_path
    settings.RAG_LLM_PROCESS = "shared"
    settings.RAG_LLM_SERVER = f"http://127.0.0.1:{port}"
    try:
        shared = api.post("/api/v1/rag/", body, format="json")
        assert shared.status_code == 200, shared.content
        assert engines.get_llm().is_loaded()
        assert (tmp_path / "llm-server" / "llm-server.pid").is_file()  # started by this (web) process
        answer = shared.json()
        assert answer["output"] == own["output"]
        assert answer["meta"]["prompt_tokens"] == own["meta"]["prompt_tokens"]
        assert answer["meta"]["completion_tokens"] == own["meta"]["completion_tokens"]
        events = sse_events(api.post("/api/v1/rag/", {**body, "stream": True}, format="json"))
        assert events[-1][0] == "done"
        assert events[-1][1]["output"] == own["output"]
    finally:
        pid = int((tmp_path / "llm-server" / "llm-server.pid").read_text())
        os.killpg(pid, signal.SIGTERM)
