"""docker-compose.yml is how users deploy: it must validate (no Docker engine runs here)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose_config() -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose (Debian package) is missing; .ci/run installs it")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    # what a user's compose gets: no RAG_* of the test run (RAG_LLM_PROCESS=own) interpolated into it
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RAG_")},
        "DJANGO_SECRET_KEY": "compose-validation-only",
    }
    quiet = subprocess.run([binary, "config", "-q"], cwd=REPO, env=env, capture_output=True, text=True)
    assert quiet.returncode == 0, quiet.stderr
    full = subprocess.run([binary, "config"], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return full.stdout


def test_compose_file_validates(compose_config: str) -> None:
    for service in ("postgres:", "redis:", "llm:", "web:", "worker:", "beat:"):
        assert f"  {service}" in compose_config


def test_web_and_worker_share_the_one_model_process(compose_config: str) -> None:
    import yaml

    services = yaml.safe_load(compose_config)["services"]
    assert "llm_server" in services["llm"]["command"]
    for name in ("web", "worker"):
        environment = services[name]["environment"]
        assert (environment["RAG_LLM_PROCESS"], environment["RAG_LLM_SERVER"]) == ("shared", "http://llm:8011")


def test_compose_has_health_checks_and_named_volumes(compose_config: str) -> None:
    assert compose_config.count("healthcheck:") >= 4
    for volume in ("pgdata", "media", "index"):
        assert f"  {volume}:" in compose_config


def test_compose_refuses_to_start_without_a_secret_key() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed")
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SECRET_KEY"}
    result = subprocess.run([binary, "config", "-q"], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr


def test_the_compose_configuration_passes_the_deployment_checks(compose_config: str, tmp_path: Path) -> None:
    import sys

    import yaml

    web = yaml.safe_load(compose_config)["services"]["web"]["environment"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_", "CELERY_"))}
    env.update({key: str(value) for key, value in web.items() if value is not None})
    env["DJANGO_SECRET_KEY"] = "x" * 20 + "a-long-random-secret-for-the-deploy-check-only" + "y" * 20
    for folder in ("VAR_DIR", "MEDIA_ROOT", "INDEX_DIR", "STATIC_ROOT"):
        env[folder] = str(tmp_path / folder.lower())
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_compose_runs_the_postgres_search_store_on_a_pgvector_image(compose_config: str) -> None:
    import yaml

    services = yaml.safe_load(compose_config)["services"]
    assert services["postgres"]["image"] == "pgvector/pgvector:pg16"
    for name in ("migrate", "web", "worker", "beat"):
        assert services[name]["environment"]["RAG_SEARCH_BACKEND"] == "postgres", name
