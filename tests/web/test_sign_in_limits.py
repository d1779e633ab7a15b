"""Sign-in attempts are limited per account and per address, on the portal's and the admin's login."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.signals import user_login_failed
from django.core.cache import cache
from django.test import Client

from tests.web.support import PASSWORD

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"
ADMIN_LOGIN = "/admin/login/"


@pytest.fixture(autouse=True)
def _fresh_counters(settings: Any) -> None:
    # Day-long windows: the counters are fixed windows (django-ratelimit), and a window that ends in the
    # middle of a test would start its count again.
    settings.LOGIN_RATE_LIMIT = "3/1d"
    settings.LOGIN_RATE_LIMIT_IP = "10/1d"
    cache.clear()


@pytest.fixture
def checked() -> Any:
    """The passwords Django actually checked and found wrong."""
    failures: list[str] = []

    def count(sender: Any, credentials: dict[str, Any], **kwargs: Any) -> None:
        failures.append(credentials.get("username", ""))

    user_login_failed.connect(count)
    yield failures
    user_login_failed.disconnect(count)


def _sign_in(client: Client, path: str, username: str, password: str, address: str = "10.0.0.1") -> Any:
    return client.post(path, {"username": username, "password": password, "next": "/"}, REMOTE_ADDR=address)


@pytest.mark.parametrize("path", [LOGIN, ADMIN_LOGIN])
def test_an_account_is_refused_after_too_many_wrong_passwords_without_checking_more(
    path: str, make_user: Callable[..., Any], checked: list[str]
) -> None:
    make_user("boss", staff=True)
    client = Client()
    for _ in range(3):
        assert _sign_in(client, path, "boss", "wrong").status_code == 200
    assert len(checked) == 3
    # Even the right password is not looked at now, and the page says why.
    refused = _sign_in(client, path, "Boss ", PASSWORD)
    assert refused.status_code == 429
    assert 0 < int(refused["Retry-After"]) <= 24 * 3600
    text = refused.content.decode()
    assert "Too many sign-in attempts. Try again in" in text and "minute" in text
    assert len(checked) == 3
    assert "_auth_user_id" not in client.session
    # Other accounts are not locked by it.
    make_user("other", staff=True)
    assert _sign_in(Client(), path, "other", PASSWORD).status_code == 302


def test_an_address_is_refused_after_too_many_failures_across_accounts(
    make_user: Callable[..., Any], settings: Any, checked: list[str]
) -> None:
    settings.LOGIN_RATE_LIMIT_IP = "4/1d"
    make_user("reader")
    client = Client()
    for name in ("ann", "bob", "cid", "dan"):
        assert _sign_in(client, LOGIN, name, "guess").status_code == 200
    assert _sign_in(client, ADMIN_LOGIN, "eve", "guess").status_code == 429
    assert _sign_in(client, LOGIN, "reader", PASSWORD).status_code == 429
    assert len(checked) == 4
    # Another address still signs in.
    assert _sign_in(Client(), LOGIN, "reader", PASSWORD, address="10.0.0.2").status_code == 302


def test_successful_sign_ins_do_not_count(make_user: Callable[..., Any]) -> None:
    make_user("reader")
    for _ in range(5):
        client = Client()
        assert _sign_in(client, LOGIN, "reader", PASSWORD).status_code == 302
        assert "_auth_user_id" in client.session


def test_the_refusal_speaks_french(make_user: Callable[..., Any]) -> None:
    make_user("reader")
    client = Client(HTTP_ACCEPT_LANGUAGE="fr")
    for _ in range(3):
        _sign_in(client, LOGIN, "reader", "faux")
    refused = _sign_in(client, LOGIN, "reader", "faux")
    assert refused.status_code == 429
    assert "Trop de tentatives de connexion" in refused.content.decode()
