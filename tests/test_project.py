"""The project skeleton: checks, migrations, the default collection, admin and probes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from knowledge.models import Collection

REPO = Path(__file__).resolve().parents[1]


def test_system_check_is_clean() -> None:
    call_command("check", fail_level="WARNING")


@pytest.mark.django_db
def test_no_migration_is_missing() -> None:
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


@pytest.mark.django_db
def test_a_database_left_part_way_through_the_replaced_migrations_is_refused_with_what_to_do() -> None:
    from django.db import connection

    from knowledge.checks import check_migration_history, replaced

    def record(names: tuple[str, ...]) -> None:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM django_migrations WHERE app = 'knowledge'")
            for name in names:
                cursor.execute(
                    "INSERT INTO django_migrations (app, name, applied) VALUES ('knowledge', %s, CURRENT_TIMESTAMP)",
                    [name],
                )

    steps = tuple(replaced())
    assert steps[0] == "0001_initial" and steps[-1] == "0011_search_recent_postings"
    assert check_migration_history(databases=["default"]) == []  # migrated by this release
    record(steps[:5])  # an older release's database, stopped at 0005
    [error] = check_migration_history(databases=["default"])
    assert error.id == "knowledge.E002"
    assert "0005_document_parts" in error.msg and "git checkout" in (error.hint or "")
    record(steps)  # every step of the older release: 0001_schema counts as applied, nothing to refuse
    assert check_migration_history(databases=["default"]) == []
    record(())  # nothing applied yet: a new database
    assert check_migration_history(databases=["default"]) == []
    assert check_migration_history(databases=None) == []  # read only when a database is named


@pytest.mark.django_db
def test_default_collection_exists_after_migrate() -> None:
    default = Collection.objects.get(slug="default")
    assert default.is_public


@pytest.mark.django_db
def test_admin_lists_the_portal_models(admin_user_logged_in: Any) -> None:
    for path in (
        "/admin/",
        "/admin/knowledge/document/",
        "/admin/knowledge/collection/",
        "/admin/knowledge/chunk/",
        "/admin/knowledge/conversation/",
        "/admin/knowledge/document/add/",
    ):
        response = admin_user_logged_in.get(path)
        assert response.status_code == 200, path


@pytest.mark.django_db
def test_admin_login_page_signs_in(client: Any, django_user_model: Any) -> None:
    django_user_model.objects.create_superuser(username="admin", password="s3cret-pass", email="")
    response = client.post("/admin/login/?next=/admin/", {"username": "admin", "password": "s3cret-pass"})
    assert response.status_code == 302
    assert client.get("/admin/").status_code == 200


def test_healthz_answers_without_a_database(client: Any) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_reports_database_broker_and_index(client: Any, portal_dirs: Any) -> None:
    response = client.get("/readyz")
    body = response.json()
    assert set(body["checks"]) == {"database", "broker", "index", "model", "warmup"}
    assert body["checks"]["database"]["ok"] is True
    assert response.status_code == (200 if all(c["ok"] for c in body["checks"].values()) else 503)


@pytest.mark.django_db
def test_anonymous_visitors_are_sent_to_login(client: Any) -> None:
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


@pytest.mark.django_db
def test_ensure_admin_creates_the_account_once(settings: Any, tmp_path: Path, django_user_model: Any) -> None:
    settings.VAR_DIR = tmp_path
    settings.DJANGO_SUPERUSER_PASSWORD = ""
    call_command("ensure_admin")
    password = (tmp_path / "admin_password").read_text().strip()
    admin = django_user_model.objects.get(username="admin")
    assert admin.is_superuser and admin.check_password(password)
    call_command("ensure_admin")  # a second run changes nothing
    assert django_user_model.objects.filter(username="admin").count() == 1
    assert (tmp_path / "admin_password").read_text().strip() == password


def test_engines_import_without_django() -> None:
    code = (
        "import sys, llm, ingestion; "
        "bad = [m for m in sys.modules if m == 'django' or m.startswith(('django.', 'knowledge', 'portal'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
