"""Readiness: the model is checked cheaply, and an unreachable database answers 503 (not 500)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from knowledge.services import engines

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.django_db
def test_readiness_checks_that_the_model_can_be_loaded_without_loading_it(client: Any) -> None:
    loaded_before = engines.get_llm().is_loaded()  # an earlier test in this process may have loaded it
    body = client.get("/readyz").json()

    model = body["checks"]["model"]
    assert model == {"ok": True, "backend": "local", "loaded": loaded_before, "model": model["model"]}
    if not loaded_before:
        assert model["model"].endswith(".gguf")
        assert not engines.get_llm().is_loaded()


@pytest.mark.django_db
def test_credentials_in_the_model_server_url_are_never_shown(client: Any, settings: Any, captured_logs: Any) -> None:
    from django.contrib.auth.models import User
    from rest_framework.test import APIClient

    from knowledge.services import apikeys
    from tests.llm.fake_openai import fake_openai_server

    settings.API_RATE_LIMIT = "10000/m"
    settings.RAG_LLM_BACKEND = "openai"
    settings.RAG_LLM_MODEL = ""
    settings.READYZ_DETAIL_IPS = ["127.0.0.0/8"]
    _, raw = apikeys.apikey_create(user=User.objects.create_user(username="caller"), all_collections=True)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    shown = []
    with fake_openai_server() as server:
        settings.RAG_LLM_BASE_URL = server.base_url.replace("http://", "http://portal-user:s3cret-pw@")
        shown.append(client.get("/api/v1/status/").content.decode())  # anonymous
        shown.append(client.get("/readyz").content.decode())  # from an allowed address: details
        engines.get_llm().load()  # the server is asked (and httpx logs the request)
        shown.append(client.get("/api/v1/status/").content.decode())
        server.behaviour.status = 503
        answer = api.post("/api/v1/generate/", {"prompt": "Hi"}, format="json")
        assert answer.status_code == 503
        shown.append(answer.content.decode())
    settings.RAG_LLM_BASE_URL = "http://portal-user:s3cret-pw@127.0.0.1:9/v1"  # nothing listens
    shown.append(client.get("/readyz").content.decode())
    shown.append(api.post("/api/v1/generate/", {"prompt": "Hi"}, format="json").content.decode())
    log_lines = captured_logs.getvalue().splitlines()
    shown.extend(log_lines)

    assert json.loads(shown[0])["model"]["name"] == "remote model"
    assert json.loads(shown[2])["model"]["name"] == "test-model"
    assert "127.0.0.1:9" in shown[-1 - len(log_lines)]  # the 503 still names the server, without credentials
    assert any("HTTP Request" in line for line in log_lines)
    for text in shown:
        assert "s3cret-pw" not in text and "portal-user" not in text, text


@pytest.mark.django_db
def test_an_unreachable_model_server_makes_the_portal_not_ready(client: Any, settings: Any) -> None:
    settings.RAG_LLM_BACKEND = "openai"
    settings.RAG_LLM_BASE_URL = "http://127.0.0.1:9/v1"  # the discard port: nothing listens
    response = client.get("/readyz")

    assert response.status_code == 503
    model = response.json()["checks"]["model"]
    assert model["ok"] is False and model["backend"] == "openai"
    assert "does not answer" in model["error"]


PROBE = """
import django, json
django.setup()
from django.test import Client
response = Client().get("/readyz", HTTP_HOST="localhost")
print(json.dumps({"status": response.status_code, "body": response.json()}))
"""


def test_readyz_answers_503_when_the_database_is_unreachable(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DATABASE_", "DJANGO_SETTINGS"))}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "portal.settings",
            # a closed port: the driver's connection is refused at once
            "DATABASE_URL": "postgres://portal:portal@127.0.0.1:9/portal",
            "VAR_DIR": str(tmp_path / "var"),
            "INDEX_DIR": str(tmp_path / "index"),
        }
    )
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == 503
    assert result["body"]["status"] == "not ready"
    database = result["body"]["checks"]["database"]
    assert database["ok"] is False and database["error"]
    for line in done.stderr.splitlines():  # the process logged JSON lines, if anything
        if line.startswith("{"):
            json.loads(line)


@pytest.mark.django_db
def test_readiness_says_when_the_companion_side_waits_for_a_rebuild(
    client: Any, settings: Any, portal_dirs: dict[str, Path]
) -> None:
    from ingestion.store import PassageEmbeddings
    from tests.ingestion.fixtures_engine import unit_vectors

    assert settings.RAG_COMPANION_EMBEDDER == "minilm@en use@fr"  # the default
    identity = engines.store_identity()
    with engines.open_store(identity).writer() as writer:  # one chunk without its companion vector
        writer.add(
            [1],
            PassageEmbeddings(unit_vectors(1, identity.dimension), unit_vectors(1, identity.companion_dimension)),
            document_id=1,
            collection_id=1,
            texts=["a"],
        )
        writer.add(
            [2], PassageEmbeddings(unit_vectors(1, identity.dimension)), document_id=2, collection_id=1, texts=["b"]
        )
    engines.reset()

    check = client.get("/readyz").json()["checks"]["index"]

    assert check["ok"] is True and check["chunks_without_companion"] == 1
    assert "rebuild_index" in check["note"]
    settings.RAG_COMPANION_EMBEDDER = ""  # no third side configured: nothing to say of it (the models differ now)
    engines.reset()
    assert "embedded without" not in client.get("/readyz").json()["checks"]["index"].get("note", "")


@pytest.mark.django_db
def test_readiness_says_when_the_store_holds_other_models_than_the_configured_ones(
    client: Any, settings: Any, portal_dirs: dict[str, Path]
) -> None:
    from ingestion.store import PassageEmbeddings, StoreIdentity
    from tests.ingestion.fixtures_engine import unit_vectors

    # a store built by an earlier release's default (the English companion alone)
    english = engines.get_embedder().models[0]  # type: ignore[attr-defined]
    former = StoreIdentity(engines.store_identity().embedder, 384, english.label, 384)
    with engines.open_store(former).writer() as writer:
        writer.add(
            [1],
            PassageEmbeddings(unit_vectors(1, 384), unit_vectors(1, 384)),
            document_id=1,
            collection_id=1,
            texts=["a"],
        )
    engines.reset()

    check = client.get("/readyz").json()["checks"]["index"]

    assert check["ok"] is True  # questions are still answered, with the models that built the store
    assert "not of the configured models" in check["note"] and "rebuild_index" in check["note"]
    settings.RAG_COMPANION_EMBEDDER = "minilm"  # configured as the store was built: nothing to say
    engines.reset()
    assert "note" not in client.get("/readyz").json()["checks"]["index"]


@pytest.mark.django_db
def test_anonymous_callers_get_the_readiness_status_alone(client: Any, settings: Any, staff_user: Any) -> None:
    settings.READYZ_DETAIL_IPS = ["127.0.0.0/8", "::1/128"]  # the default

    outside = client.get("/readyz", REMOTE_ADDR="203.0.113.9")
    local = client.get("/readyz", REMOTE_ADDR="127.0.0.1")
    client.force_login(staff_user)
    staff = client.get("/readyz", REMOTE_ADDR="203.0.113.9")

    assert outside.json() == {"status": "ready" if outside.status_code == 200 else "not ready"}
    assert outside.status_code == local.status_code == staff.status_code
    for detailed in (local, staff):
        checks = detailed.json()["checks"]
        assert set(checks) == {"database", "broker", "index", "model", "warmup"}
        assert "@" not in checks["broker"].get("url", "")  # the broker's credentials are never shown


@pytest.mark.django_db
def test_the_broker_is_named_without_its_credentials(client: Any) -> None:
    from celery import current_app

    url = current_app.conf.broker_url
    if not url.startswith("redis://"):
        pytest.skip("needs the Redis broker (a user name on a password-less Redis is accepted)")
    current_app.conf.broker_url = url.replace("redis://", "redis://default:s3cret-pw@", 1)
    try:
        broker = client.get("/readyz").json()["checks"]["broker"]
    finally:
        current_app.conf.broker_url = url

    assert broker["ok"] is True, broker
    assert "s3cret-pw" not in broker["url"] and "default" not in broker["url"]
    assert broker["url"].startswith("redis://127.0.0.1")
