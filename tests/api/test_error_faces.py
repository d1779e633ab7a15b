"""The API, the OpenAI face and the pages answer an error with the same status and code, and share their limits."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from knowledge import errors as ke
from knowledge.api.errors import exception_handler
from knowledge.api.openai_compat import openai_exception_handler
from knowledge.api.openai_serializers import ChatCompletionCreateSerializer
from knowledge.api.serializers import RagRequestSerializer
from knowledge.errors import http_error
from knowledge.limits import QUESTION_MAX_CHARS
from knowledge.models import Conversation
from knowledge.services import apikeys, conversations
from knowledge.web.documents import _upload_refusal
from knowledge.web.forms import QuestionForm
from tests.knowledge.test_errors import EXPECTED, make_error

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("api_isolated")]

KNOWLEDGE_ERRORS = [cls for cls in EXPECTED if issubclass(cls, ke.KnowledgeError)]


@pytest.mark.parametrize("cls", KNOWLEDGE_ERRORS, ids=lambda cls: cls.__name__)
def test_the_api_the_openai_face_and_the_upload_page_give_one_status_and_code(cls: type[Exception]) -> None:
    exc = make_error(cls)
    mapped = http_error(exc)

    api = exception_handler(exc, {})
    openai = openai_exception_handler(exc, {})
    page_status, page_body = _upload_refusal(exc)  # type: ignore[arg-type]

    assert api is not None and openai is not None
    assert api.status_code == openai.status_code == page_status == mapped.status
    assert api.data["code"] == openai.data["error"]["code"] == page_body["code"] == mapped.code
    assert api.data["detail"] == openai.data["error"]["message"] == mapped.message
    if mapped.retry_after is not None:
        assert api["Retry-After"] == openai["Retry-After"] == str(mapped.retry_after)


def test_an_engine_error_is_the_same_503_on_the_api_and_the_openai_face() -> None:
    from llm.errors import ModelUnavailableError

    exc = ModelUnavailableError("The model cannot be loaded.")
    api, openai = exception_handler(exc, {}), openai_exception_handler(exc, {})

    assert api is not None and openai is not None
    assert api.status_code == openai.status_code == 503
    assert api.data == {"detail": "The model cannot be loaded.", "code": "model_unavailable"}
    assert openai.data == {
        "error": {
            "message": "The model cannot be loaded.",
            "type": "server_error",
            "param": None,
            "code": "model_unavailable",
        }
    }


def _question_form(question: str, user: User) -> QuestionForm:
    return QuestionForm({"question": question, "mode": "extractive", "collection": ""}, user=user)


def _chat_body(question: str) -> dict[str, Any]:
    return {"model": "knowledge-portal", "messages": [{"role": "user", "content": question}]}


def test_every_face_accepts_a_question_of_exactly_the_limit(user: User) -> None:
    question = "x" * QUESTION_MAX_CHARS

    assert RagRequestSerializer(data={"prompt": question}).is_valid()
    assert ChatCompletionCreateSerializer(data=_chat_body(question)).is_valid()
    assert _question_form(question, user).is_valid()


def test_every_face_refuses_a_question_one_character_over_the_limit(user: User) -> None:
    question = "x" * (QUESTION_MAX_CHARS + 1)
    _, raw_key = apikeys.apikey_create(user=user, all_collections=True)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {raw_key}")
    page = Client()
    page.force_login(user)
    conversation = conversations.conversation_create(user=user)

    rag = api.post("/api/v1/rag/", {"prompt": question}, format="json")
    openai = api.post("/api/v1/openai/chat/completions", _chat_body(question), format="json")
    new_chat = page.post("/chat/new/", {"question": question, "mode": "extractive"})
    asked = page.post(
        f"/chat/{conversation.pk}/ask/",
        {"question": question, "mode": "extractive"},
        HTTP_ACCEPT="text/event-stream",
    )

    assert rag.status_code == openai.status_code == new_chat.status_code == asked.status_code == 400
    assert "prompt" in rag.json()
    error = openai.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "messages")
    assert str(QUESTION_MAX_CHARS) in error["message"]
    assert str(QUESTION_MAX_CHARS) in asked.json()["error"]
    assert Conversation.objects.filter(user=user).count() == 1  # the refused question started none


def test_an_api_path_no_route_matches_is_a_json_404(client: Any) -> None:
    for path in ("/api/v1/documents/-3/file/", "/api/v1/no-such-endpoint/"):
        response = client.get(path)
        assert (response.status_code, response["Content-Type"]) == (404, "application/json"), path
        assert response.json() == {"detail": "Not found.", "code": "not_found"}
    page = client.get("/no-such-page/")
    assert page.status_code == 404 and page["Content-Type"].startswith("text/html")
