"""Fixtures of the API's tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User


@pytest.fixture
def api_isolated(portal_dirs: dict[str, Path], settings: Any) -> None:
    """This test's own media and index folders, and a request rate no test reaches."""
    settings.API_RATE_LIMIT = "10000/m"


@pytest.fixture
def user(db: Any) -> User:
    """A signed-up reader: no permission, no group."""
    return User.objects.create_user(username="reader", password="pw-reader-123")
