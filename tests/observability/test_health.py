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
def test_an_unreachable_model_server_makes_the_portal_not_ready(client: Any, settings: Any) -> None:
    settings.RAG_LLM_BACKEND = "openai"
    settings.RAG_LLM_BASE_URL = "http://127.0.0.1:9/v1"  # the discard port: nothing listens
    engines.reset()
    try:
        response = client.get("/readyz")
    finally:
        engines.reset()

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
def test_readiness_says_when_the_third_search_side_waits_for_a_rebuild(
    client: Any, settings: Any, portal_dirs: dict[str, Path]
) -> None:
    from ingestion.index import IndexConfig, VectorIndex
    from tests.ingestion.fixtures_engine import unit_vectors

    assert settings.RAG_COMPANION_EMBEDDER == "minilm"  # the default
    index = VectorIndex(IndexConfig(portal_dirs["index"]), embedder_name="e5:multilingual-e5-small", dimension=384)
    with index.writer() as writer:  # vectors alone, as saved before the companion was set
        writer.add([1], unit_vectors(1, 384), document_id=1, collection_id=1, texts=["a"])

    check = client.get("/readyz").json()["checks"]["index"]

    assert check["ok"] is True and check["chunks_without_terms"] == 1
    assert "rebuild_index" in check["note"]
    settings.RAG_COMPANION_EMBEDDER = ""  # no third side configured: nothing to say
    assert "note" not in client.get("/readyz").json()["checks"]["index"]
