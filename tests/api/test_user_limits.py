"""A user's own limits, set in the admin: a daily token quota and a request rate above or below the defaults."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from rest_framework.test import APIClient

from knowledge.models import UsageRecord, UserLimits
from knowledge.services import apikeys

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _isolated(api_isolated: None) -> None:
    cache.clear()


def _client(user: User) -> APIClient:
    _, raw = apikeys.apikey_create(user=user, all_collections=True)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    return client


def _spent(user: User, tokens: int) -> None:
    UsageRecord.objects.create(user=user, endpoint="rag", prompt_tokens=tokens)


def _asks(client: APIClient) -> int:
    return int(client.post("/api/v1/rag/", {"prompt": "bread"}, format="json").status_code)


def test_a_users_own_quota_goes_above_or_below_the_default(user: User, settings: Any) -> None:
    settings.TOKEN_QUOTA_PER_DAY = 100
    other = User.objects.create_user(username="other", password="pw-other-123")
    for who in (user, other):
        _spent(who, 150)
    UserLimits.objects.create(user=user, token_quota_per_day=1000)
    assert _asks(_client(user)) == 200  # above the default: room left
    refused = _client(other).post("/api/v1/rag/", {"prompt": "bread"}, format="json")
    assert refused.status_code == 429 and "(100 tokens)" in refused.json()["detail"]  # the default

    UserLimits.objects.filter(user=user).update(token_quota_per_day=120)  # below what was spent
    refused = _client(user).post("/api/v1/rag/", {"prompt": "bread"}, format="json")
    assert refused.status_code == 429 and "(120 tokens)" in refused.json()["detail"]

    UserLimits.objects.filter(user=user).update(token_quota_per_day=0)  # unlimited, whatever the default
    assert _asks(_client(user)) == 200
    UserLimits.objects.filter(user=user).update(token_quota_per_day=None)  # blank: the default again
    assert _asks(_client(user)) == 429


def test_a_users_own_rate_goes_below_or_above_the_default(user: User, settings: Any) -> None:
    settings.API_RATE_LIMIT = "5/m"
    UserLimits.objects.create(user=user, rate_limit="2/m")
    slow = _client(user)
    assert [slow.get("/api/v1/documents/").status_code for _ in range(3)] == [200, 200, 429]
    assert "the limit is 2/m" in slow.get("/api/v1/documents/").json()["detail"]

    fast_user = User.objects.create_user(username="fast", password="pw-fast-123")
    UserLimits.objects.create(user=fast_user, rate_limit="20/m")
    fast = _client(fast_user)
    assert {fast.get("/api/v1/documents/").status_code for _ in range(8)} == {200}  # past the default 5/m

    plain = _client(User.objects.create_user(username="plain", password="pw-plain-123"))
    assert [plain.get("/api/v1/documents/").status_code for _ in range(6)][-1] == 429  # the default


def test_the_admin_sets_a_users_limits_on_the_user_page(admin_user_logged_in: Any, user: User) -> None:
    client = admin_user_logged_in
    page = client.get(f"/admin/auth/user/{user.pk}/change/")
    assert page.status_code == 200
    assert b"limits-0-token_quota_per_day" in page.content and b"API_RATE_LIMIT" in page.content

    form = {
        "username": user.username,
        "is_active": "on",
        "date_joined_0": "2026-01-01",
        "date_joined_1": "00:00:00",
        "limits-TOTAL_FORMS": "1",
        "limits-INITIAL_FORMS": "0",
        "limits-MIN_NUM_FORMS": "0",
        "limits-MAX_NUM_FORMS": "1",
        "limits-0-token_quota_per_day": "5000",
        "limits-0-rate_limit": "every minute",
    }
    refused = client.post(f"/admin/auth/user/{user.pk}/change/", form)
    assert refused.status_code == 200  # the form again, with the reason
    assert b"Write a rate as 60/m" in refused.content
    assert not UserLimits.objects.exists()

    saved = client.post(f"/admin/auth/user/{user.pk}/change/", {**form, "limits-0-rate_limit": "120/m"})
    assert saved.status_code == 302, saved.content[:2000]
    limits = UserLimits.objects.get(user=user)
    assert (limits.token_quota_per_day, limits.rate_limit) == (5000, "120/m")
