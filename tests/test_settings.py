"""Settings come from the environment, with safe defaults and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.settings_probe import settings_probe


def test_defaults_are_safe_and_embedded(tmp_path: Path) -> None:
    result = settings_probe(
        tmp_path,
        {},
        "print(s.DEBUG, s.DATABASES['default']['ENGINE'], s.CELERY_BROKER_URL.split(':')[0], "
        "s.CELERY_RESULT_BACKEND.split(':')[0], s.RAG_EMBEDDER, s.RAG_ANSWER_MODE)",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "False",
        "django.db.backends.sqlite3",
        "sqla+sqlite",
        "db+sqlite",
        "e5",
        "extractive",
    ]


def test_secret_key_is_generated_once_and_kept(tmp_path: Path) -> None:
    first = settings_probe(tmp_path, {}, "print(s.SECRET_KEY)")
    second = settings_probe(tmp_path, {}, "print(s.SECRET_KEY)")
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert len(first.stdout.strip()) >= 40
    assert (tmp_path / "var" / "secret_key").read_text().strip() == first.stdout.strip()


def test_secret_key_is_read_from_a_file(tmp_path: Path) -> None:
    keyfile = tmp_path / "key"
    keyfile.write_text("from-a-file-secret\n")
    result = settings_probe(tmp_path, {"DJANGO_SECRET_KEY_FILE": str(keyfile)}, "print(s.SECRET_KEY)")
    assert result.stdout.strip() == "from-a-file-secret"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("MAX_UPLOAD_MB", "lots", "MAX_UPLOAD_MB"),
        ("MAX_UPLOAD_MB", "0", "MAX_UPLOAD_MB must be at least 1"),
        ("RAG_EMBEDDER", "word2vec", "RAG_EMBEDDER must be one of"),
        ("DJANGO_DEBUG", "maybe", "DJANGO_DEBUG"),
        ("DATABASE_URL", "nosuchdb://x", "nosuchdb"),
        ("RAG_LLM_BACKEND", "openai", "RAG_LLM_BASE_URL"),
        ("RAG_COMPANION_EMBEDDER", "/no/such/model", "is not a folder"),
        ("RAG_COMPANION_LANGUAGES", "english", "two-letter language codes"),
        ("RAG_COMPANION_EMBEDDER", "use@french", "two-letter language codes"),
        ("RAG_COMPANION_EMBEDDER", "minilm nosuchmodel@fr", "'nosuchmodel' is not a folder"),
        ("RAG_FUSION", "max", "RAG_FUSION must be one of"),
        ("AUTH_GROUP_MAP", "finance=", "directory-group=portal-group pairs"),
        ("AUTH_LOCAL_LOGIN", "false", "needs a directory"),
        ("OIDC_ISSUER_URL", "https://id.example.com", "OIDC_CLIENT_ID must be set"),
        ("LDAP_SERVER_URI", "ldap://127.0.0.1", "LDAP_USER_SEARCH"),
        ("RAG_GROUP_SYNC_S", "0", "RAG_GROUP_SYNC_S must be at least 1"),
    ],
)
def test_malformed_values_stop_the_start_with_a_clear_error(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    result = settings_probe(tmp_path, {variable: value}, "print('started')")
    assert result.returncode != 0
    assert "started" not in result.stdout
    assert message in result.stderr


@pytest.mark.parametrize(
    ("extra", "companion"),
    [
        ({}, "minilm@en use@fr"),
        ({"RAG_EMBEDDER": "sentence-transformers"}, ""),  # MiniLM is the embedder already
        ({"RAG_COMPANION_EMBEDDER": "none"}, ""),
        ({"RAG_COMPANION_EMBEDDER": "auto"}, "minilm@en use@fr"),  # docker-compose's default
        ({"RAG_COMPANION_EMBEDDER": " minilm   use@de,fr "}, "minilm use@de,fr"),
    ],
)
def test_the_companion_embedder_is_on_by_default_with_e5(tmp_path: Path, extra: dict[str, str], companion: str) -> None:
    result = settings_probe(tmp_path, extra, "print(repr(s.RAG_COMPANION_EMBEDDER), s.RAG_COMPANION_LANGUAGES)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{companion!r} ('en',)"


def test_retired_latent_terms_are_refused_with_a_reason(tmp_path: Path) -> None:
    result = settings_probe(tmp_path, {"RAG_EMBEDDER_TERMS": "64"}, "print(1)")
    assert result.returncode != 0
    assert "RAG_EMBEDDER_TERMS was retired" in result.stderr


def test_the_postgres_search_store_is_refused_on_sqlite(tmp_path: Path) -> None:
    result = settings_probe(
        tmp_path, {"RAG_SEARCH_BACKEND": "postgres", "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3"}, "print(1)"
    )
    assert result.returncode != 0
    assert "DATABASE_URL is not PostgreSQL" in result.stderr


_FORWARDED_HTTPS = (
    "from django.test import RequestFactory; "
    "r = RequestFactory().get('/', HTTP_X_FORWARDED_PROTO='https'); "
    "print(s.SECURE_PROXY_SSL_HEADER is not None, r.is_secure())"
)


def test_x_forwarded_proto_is_ignored_unless_a_proxy_is_declared(tmp_path: Path) -> None:
    result = settings_probe(tmp_path, {}, _FORWARDED_HTTPS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


def test_x_forwarded_proto_counts_behind_a_declared_proxy(tmp_path: Path) -> None:
    result = settings_probe(tmp_path, {"DJANGO_TRUST_PROXY": "true"}, _FORWARDED_HTTPS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]
