"""`manage.py ensure_admin` prints a password only when it made it up (never one set by the operator)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

pytestmark = pytest.mark.django_db


def _run() -> str:
    out = io.StringIO()
    call_command("ensure_admin", stdout=out)
    return out.getvalue()


def test_a_password_from_the_environment_is_never_printed(
    settings: Any, tmp_path: Path, django_user_model: Any
) -> None:
    settings.VAR_DIR = tmp_path
    settings.DJANGO_SUPERUSER_PASSWORD = "operator-Chosen-pw-42"
    created = _run()
    assert "operator-Chosen-pw-42" not in created
    assert "password from DJANGO_SUPERUSER_PASSWORD" in created
    assert django_user_model.objects.get(username="admin").check_password("operator-Chosen-pw-42")
    assert not (tmp_path / "admin_password").exists()

    settings.DJANGO_SUPERUSER_PASSWORD = "operator-Changed-pw-43"
    changed = _run()
    assert "operator-Changed-pw-43" not in changed and "DJANGO_SUPERUSER_PASSWORD" in changed
    assert "operator-Changed-pw-43" not in _run()


def test_a_generated_password_is_printed_once_then_only_where_it_is_kept(settings: Any, tmp_path: Path) -> None:
    settings.VAR_DIR = tmp_path
    settings.DJANGO_SUPERUSER_PASSWORD = ""
    first = _run()
    password = (tmp_path / "admin_password").read_text().strip()
    assert f"with password: {password}" in first
    again = _run()
    assert password not in again
    assert str(tmp_path / "admin_password") in again
