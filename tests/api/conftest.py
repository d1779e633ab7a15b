"""Fixtures of the API's tests."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User


@pytest.fixture
def user(db: Any) -> User:
    """A signed-up reader: no permission, no group."""
    return User.objects.create_user(username="reader", password="pw-reader-123")
