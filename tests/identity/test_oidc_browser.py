"""OpenID Connect sign-in in a real browser (Chromium through Playwright): the portal's button, the provider's own
login page, and back on the portal signed in, with the provider's groups."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connections

from tests.identity.oidc import ACCOUNTS, TestProvider, oidc_settings
from tests.identity.oidc import oidc_provider as oidc_provider  # fixture
from tests.identity.oidc import provider as provider  # fixture
from tests.web.support import CHROMIUM, CHROMIUM_ARGS

# Playwright's sync API runs an event loop in the test thread; Django would then refuse its database calls.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

sync_api: Any = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


@pytest.fixture
def page(live_server: Any) -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(base_url=live_server.url, locale="en-GB")
        context.set_default_timeout(20_000)
        yield context.new_page()
        context.close()
        browser.close()
        # the test's queries ran beside Playwright's event loop, on connections of their own: closed here, or the
        # test database could not be dropped at the end
        connections.close_all()


def test_a_person_signs_in_through_the_providers_login_page(
    page: Any, live_server: Any, settings: Any, provider: TestProvider, django_user_model: Any
) -> None:
    oidc_settings(settings, provider, f"{live_server.url}/oidc/callback/")

    page.goto("/")
    page.wait_for_url("**/accounts/login/**")
    page.get_by_role("link", name="Sign in with Test IdP").click()

    # the provider's own login page, on its own origin
    page.wait_for_url(f"{provider.issuer}/interaction/**")
    page.fill("#username", "alice")
    page.fill("#password", ACCOUNTS["alice"]["password"])
    page.click("#submit")

    page.wait_for_url(f"{live_server.url}/**")
    assert "/accounts/login/" not in page.url and "/oidc/" not in page.url
    alice = django_user_model.objects.get(directory__subject=ACCOUNTS["alice"]["sub"])
    assert sorted(alice.groups.values_list("name", flat=True)) == ["everyone", "finance"]
    sync_api.expect(page.locator("body")).to_contain_text("alice")


def test_signing_out_ends_the_session_at_the_provider_too(
    page: Any, live_server: Any, settings: Any, provider: TestProvider
) -> None:
    oidc_settings(settings, provider, f"{live_server.url}/oidc/callback/")
    page.goto("/accounts/login/")
    page.get_by_role("link", name="Sign in with Test IdP").click()
    page.fill("#username", "alice")
    page.fill("#password", ACCOUNTS["alice"]["password"])
    page.click("#submit")
    page.wait_for_url(f"{live_server.url}/**")

    # the button is a form of the portal's page: its Content-Security-Policy lets it go on to the provider
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{provider.issuer}/session/end**")
    page.get_by_role("button", name="Yes, sign me out").click()
    page.wait_for_url(f"{live_server.url}/accounts/login/")

    # signed out at the provider too: its login form asks again, where it would otherwise sign straight back in
    page.get_by_role("link", name="Sign in with Test IdP").click()
    page.wait_for_url(f"{provider.issuer}/interaction/**")
    sync_api.expect(page.locator("#username")).to_be_visible()
