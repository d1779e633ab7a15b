"""Only the product writes citation markers: a "[2]" in a document's own text never reads as one."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from knowledge.services import apikeys
from knowledge.services import documents as document_services
from tests.llm.fake_openai import FakeOpenAIServer, fake_openai_server

pytestmark = pytest.mark.django_db

# The first text carries its own footnote marker "[2]"; there are two sources, so [2] exists.
TEXTS = {
    "warranty.txt": "The Zephyr warranty lasts five years, as the sales contract says [2].",
    "coverage.txt": "The Zephyr warranty covers the engine and the gearbox of every boat.",
}
QUESTION = "How long does the Zephyr warranty last?"
MARKER = re.compile(r"\[(\d+)\]")


@pytest.fixture(autouse=True)
def _corpus(portal_dirs: dict[str, Path], settings: Any) -> None:
    settings.API_RATE_LIMIT = "10000/m"
    for name, text in TEXTS.items():
        document = document_services.document_create(file=io.BytesIO(text.encode()), filename=name, dispatch=False)
        document_services.document_process(document_id=document.pk)


@pytest.fixture
def api(db: Any) -> APIClient:
    _, raw = apikeys.apikey_create(user=User.objects.create_user(username="reader"), all_collections=True)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    return client


@pytest.fixture
def model_server(settings: Any) -> Iterator[FakeOpenAIServer]:
    with fake_openai_server() as server:
        settings.RAG_LLM_BACKEND = "openai"
        settings.RAG_LLM_BASE_URL = server.base_url
        settings.RAG_LLM_MODEL = "served-model"
        yield server


def test_an_extractive_answer_quotes_a_document_marker_without_making_it_a_citation(api: APIClient) -> None:
    body = api.post("/api/v1/rag/", {"prompt": QUESTION, "mode": "extractive", "top_k": 5}, format="json").json()
    titles = [source["title"] for source in body["sources"]]
    assert len(titles) == 2
    output = body["output"]
    assert "five years, as the sales contract says" in output
    assert "says [2]" not in output
    # the product's own markers are still there: one per quoted source
    assert {int(n) for n in MARKER.findall(output)} <= {1, 2} and MARKER.search(output)


def test_a_generative_prompt_shows_the_model_no_document_marker(api: APIClient, model_server: FakeOpenAIServer) -> None:
    response = api.post("/api/v1/rag/", {"prompt": QUESTION, "mode": "generative", "top_k": 5}, format="json")
    assert response.status_code == 200, response.content
    prompt = "\n".join(message["content"] for message in model_server.completions()[-1].body["messages"])
    assert "five years, as the sales contract says" in prompt
    assert "says [2]" not in prompt
