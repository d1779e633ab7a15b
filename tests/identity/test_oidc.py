"""OpenID Connect sign-in against a real provider (oidc-provider on node, tests/identity/oidc.py): discovery, the
code flow with PKCE, the groups claim mirrored onto Django groups, a group taken away at the provider lost at the
next sign-in and, for API keys, at the next read with the refresh token; failures end on the login page.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urljoin, urlparse

import httpx
import pytest
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.utils import timezone

from knowledge.models import AuditEvent, Collection, DirectoryAccount, Document
from knowledge.services.apikeys import apikey_create
from knowledge.services.directory_oidc import oidc_groups_of
from knowledge.services.directory_oidc import oidc_provider as discovered_provider
from tests.identity.oidc import ACCOUNTS, TestProvider, oidc_settings
from tests.identity.oidc import oidc_provider as oidc_provider  # fixture
from tests.identity.oidc import provider as provider  # fixture
from tests.web.support import policy_directives

pytestmark = pytest.mark.django_db

CALLBACK = "http://testserver/oidc/callback/"


@pytest.fixture
def oidc_on(settings: Any, provider: TestProvider, api_isolated: None) -> TestProvider:
    oidc_settings(settings, provider, CALLBACK)
    return provider


@pytest.fixture
def finance_report() -> Document:
    """A document of a collection only the group ``finance`` may read."""
    collection = Collection.objects.create(slug="finance", name="Finance", is_public=False)
    collection.groups.add(Group.objects.get_or_create(name="finance")[0])
    return Document.objects.create(
        collection=collection, title="Q3 results", file="documents/q3/q3.pdf", sha256="0" * 64, status="ready"
    )


def _start(client: Any, next_url: str = "/") -> str:
    response = client.get("/oidc/authenticate/", {"next": next_url})
    assert response.status_code == 302
    return str(response["Location"])


def _sign_in(client: Any, provider: TestProvider, username: str, next_url: str = "/", **kwargs: Any) -> Any:
    callback = provider.sign_in(_start(client, next_url), username, **kwargs)
    assert callback.startswith(CALLBACK), callback
    return client.get(callback.removeprefix("http://testserver"))


def _alice_with_a_key(client: Any, provider: TestProvider) -> tuple[DirectoryAccount, str]:
    """alice signed in once through the provider (so the portal holds her refresh token), and a key of hers."""
    _sign_in(client, provider, "alice")
    account = DirectoryAccount.objects.get(subject=ACCOUNTS["alice"]["sub"])
    _, raw_key = apikey_create(user=account.user, all_collections=True)
    return account, raw_key


def _titles(client: Any, **headers: str) -> list[str]:
    response = client.get("/api/v1/documents/", headers=headers)
    assert response.status_code == 200, response.content
    return [document["title"] for document in response.json()]


def _form_action(client: Any) -> str:
    """The login page's CSP ``form-action`` sources."""
    directives = dict(d.partition(" ")[::2] for d in policy_directives(client.get("/accounts/login/")))
    return directives["form-action"]


def _failures() -> int:
    return AuditEvent.objects.filter(action=AuditEvent.Action.SIGN_IN_FAILED).count()


def test_discovery_finds_the_providers_endpoints(oidc_on: TestProvider) -> None:
    found = discovered_provider()
    assert found.issuer == oidc_on.issuer
    assert found.authorization_endpoint == f"{oidc_on.issuer}/auth"
    assert found.token_endpoint == f"{oidc_on.issuer}/token"
    assert found.jwks_uri == f"{oidc_on.issuer}/jwks"
    assert found.userinfo_endpoint == f"{oidc_on.issuer}/me"


def test_login_page_offers_the_provider_beside_the_password_form(client: Any, oidc_on: TestProvider) -> None:
    page = client.get("/accounts/login/?next=/documents/").content.decode()
    assert 'id="oidc-sign-in"' in page
    assert "Sign in with Test IdP" in page
    assert 'href="/oidc/authenticate/?next=/documents/"' in page
    assert 'id="id_password"' in page


def test_the_button_speaks_french(client: Any, oidc_on: TestProvider) -> None:
    page = client.get("/accounts/login/", headers={"Accept-Language": "fr"}).content.decode()
    assert "Se connecter avec Test IdP" in page


def test_code_flow_with_pkce_signs_in_and_mirrors_the_groups_claim(
    client: Any, oidc_on: TestProvider, finance_report: Document
) -> None:
    authorize = urlparse(_start(client, "/documents/"))
    params = {name: values[0] for name, values in parse_qs(authorize.query).items()}
    assert f"{authorize.scheme}://{authorize.netloc}{authorize.path}" == f"{oidc_on.issuer}/auth"
    assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43
    assert params["nonce"] and params["state"] and params["redirect_uri"] == CALLBACK
    assert params["scope"] == "openid email profile groups"

    response = _sign_in(client, oidc_on, "alice", "/documents/")

    assert response.status_code == 302 and response["Location"] == "/documents/"
    account = DirectoryAccount.objects.select_related("user").get(source="oidc", subject=ACCOUNTS["alice"]["sub"])
    alice = account.user
    assert (alice.username, alice.email, alice.first_name, alice.last_name) == (
        "alice",
        "alice@example.org",
        "Alice",
        "Archer",
    )
    assert not alice.has_usable_password()
    assert sorted(alice.groups.values_list("name", flat=True)) == ["everyone", "finance"]
    assert account.refresh_token
    assert _titles(client) == ["Q3 results"]
    assert AuditEvent.objects.filter(action=AuditEvent.Action.SIGN_IN, user=alice).count() == 1
    assert _failures() == 0


def _follow_at_the_provider(browser: httpx.Client, url: str) -> str:
    """Where the provider sends ``browser`` from ``url`` (its redirects followed while they stay at the provider)."""
    response = browser.get(url)
    while response.status_code in (302, 303) and not response.headers["location"].startswith("http://testserver"):
        response = browser.get(urljoin(url, response.headers["location"]))
    return response.headers.get("location", "") if response.status_code in (302, 303) else response.text


def test_signing_out_ends_the_session_at_the_provider_too(client: Any, oidc_on: TestProvider) -> None:
    with httpx.Client(timeout=10) as browser:
        callback = oidc_on.sign_in(_start(client), "alice", browser=browser)
        client.get(callback.removeprefix("http://testserver"))
        # while the provider's session lasts, asking again signs in without the login form
        assert _follow_at_the_provider(browser, _start(client)).startswith(CALLBACK)

        response = client.post("/accounts/logout/")

        assert "_auth_user_id" not in client.session  # signed out of the portal
        end_session = urlparse(response["Location"])
        endpoint = f"{end_session.scheme}://{end_session.netloc}{end_session.path}"
        assert endpoint == discovered_provider().end_session_endpoint
        assert parse_qs(end_session.query) == {
            "client_id": [oidc_on.client_for(CALLBACK)[0]],
            "post_logout_redirect_uri": ["http://testserver/accounts/login/"],
        }
        page = browser.get(response["Location"])  # the provider asks to confirm, then sends back to the login page
        form = re.search(r'<form[^>]*action="([^"]+)"', page.text)
        assert page.status_code == 200 and form is not None, page.text
        fields = dict(re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', page.text))
        done = browser.post(urljoin(response["Location"], form.group(1)), data={**fields, "logout": "yes"})
        assert done.status_code in (302, 303), done.text
        assert done.headers["location"] == "http://testserver/accounts/login/"
        # the provider's session is over: signing in again shows its login form
        assert not _follow_at_the_provider(browser, _start(client)).startswith(CALLBACK)


def test_a_local_account_signs_out_of_the_portal_alone(client: Any, oidc_on: TestProvider, django_user_model: Any):
    django_user_model.objects.create_user(username="local", password="pw-local-123")
    assert client.login(username="local", password="pw-local-123")  # the password form, not the provider
    response = client.post("/accounts/logout/")
    assert response.status_code == 302 and response["Location"] == "/accounts/login/"


def test_with_oidc_sign_out_off_the_providers_session_is_left_alone(
    client: Any, oidc_on: TestProvider, settings: Any
) -> None:
    assert _form_action(client) == f"'self' {oidc_on.issuer}"
    settings.OIDC_SIGN_OUT = False
    _sign_in(client, oidc_on, "alice")
    response = client.post("/accounts/logout/")
    assert response.status_code == 302 and response["Location"] == "/accounts/login/"
    assert "_auth_user_id" not in client.session
    # forms lead nowhere else than the portal then
    assert _form_action(client) == "'self'"


def test_a_group_removed_at_the_provider_is_lost_at_the_next_sign_in(
    client: Any, oidc_on: TestProvider, finance_report: Document, django_user_model: Any
) -> None:
    _sign_in(client, oidc_on, "alice")
    assert _titles(client) == ["Q3 results"]
    client.post("/accounts/logout/")

    oidc_on.set_account("alice", groups=["everyone"])
    _sign_in(client, oidc_on, "alice")

    assert _titles(client) == []
    alice = django_user_model.objects.get(username="alice")
    assert list(alice.groups.values_list("name", flat=True)) == ["everyone"]


def test_a_person_is_known_by_their_subject_not_their_email_or_username(
    client: Any, oidc_on: TestProvider, django_user_model: Any
) -> None:
    _sign_in(client, oidc_on, "alice")
    first = django_user_model.objects.get(directory__subject=ACCOUNTS["alice"]["sub"])
    client.post("/accounts/logout/")

    oidc_on.rename("alice", "alice.archer")
    oidc_on.set_account("alice.archer", email="a.archer@example.org")
    _sign_in(client, oidc_on, "alice.archer", password=ACCOUNTS["alice"]["password"])

    again = django_user_model.objects.get(directory__subject=ACCOUNTS["alice"]["sub"])
    assert again.pk == first.pk and again.username == "alice" and again.email == "a.archer@example.org"
    assert django_user_model.objects.count() == 1


def test_a_local_account_of_the_same_name_is_not_taken_over(
    client: Any, oidc_on: TestProvider, django_user_model: Any
) -> None:
    local = django_user_model.objects.create_user(username="alice", password="local-pw-123", email="x@example.org")

    _sign_in(client, oidc_on, "alice")

    account = DirectoryAccount.objects.get(subject=ACCOUNTS["alice"]["sub"])
    assert account.user.pk != local.pk and account.user.username == "alice-2"
    local.refresh_from_db()
    assert local.email == "x@example.org" and not hasattr(local, "directory")


def test_an_api_key_follows_its_owners_groups_through_the_refresh_token(
    client: Any, oidc_on: TestProvider, finance_report: Document, settings: Any
) -> None:
    account, raw_key = _alice_with_a_key(client, oidc_on)
    api = {"Authorization": f"Token {raw_key}"}
    client.post("/accounts/logout/")
    assert _titles(client, **api) == ["Q3 results"]

    oidc_on.set_account("alice", groups=["everyone"])
    assert _titles(client, **api) == ["Q3 results"]  # within RAG_GROUP_SYNC_S: not asked again

    def sync_due() -> None:
        DirectoryAccount.objects.filter(pk=account.pk).update(
            synced_at=timezone.now() - timedelta(seconds=settings.RAG_GROUP_SYNC_S + 1)
        )

    sync_due()
    assert _titles(client, **api) == []
    rotated = DirectoryAccount.objects.get(pk=account.pk).refresh_token
    assert rotated and rotated != account.refresh_token  # the provider rotates it: the new one is kept

    # the kept token works: the group given back is found at the next read
    oidc_on.set_account("alice", groups=["finance"])
    sync_due()
    assert _titles(client, **api) == ["Q3 results"]


def test_one_refresh_at_a_time_per_person(
    client: Any, oidc_on: TestProvider, finance_report: Document, settings: Any
) -> None:
    account, raw_key = _alice_with_a_key(client, oidc_on)
    client.post("/accounts/logout/")
    oidc_on.set_account("alice", groups=["everyone"])
    DirectoryAccount.objects.filter(pk=account.pk).update(synced_at=timezone.now() - timedelta(days=1))

    # another request is refreshing: this one keeps the groups as they are and leaves the token alone
    cache.add(f"oidc-refresh:{account.pk}", True, timeout=60)
    try:
        assert _titles(client, Authorization=f"Token {raw_key}") == ["Q3 results"]
    finally:
        cache.delete(f"oidc-refresh:{account.pk}")
    assert DirectoryAccount.objects.get(pk=account.pk).refresh_token == account.refresh_token


def test_an_api_key_loses_the_directory_groups_when_the_refresh_is_refused(
    client: Any, oidc_on: TestProvider, finance_report: Document, settings: Any
) -> None:
    account, raw_key = _alice_with_a_key(client, oidc_on)
    client.post("/accounts/logout/")

    oidc_on.remove_account("alice")  # gone from the directory: the provider refuses the refresh
    DirectoryAccount.objects.filter(pk=account.pk).update(synced_at=timezone.now() - timedelta(days=1))

    assert _titles(client, Authorization=f"Token {raw_key}") == []
    assert DirectoryAccount.objects.get(pk=account.pk).groups == []


def test_an_api_key_keeps_its_groups_while_the_provider_cannot_be_reached(
    client: Any, oidc_on: TestProvider, finance_report: Document, settings: Any
) -> None:
    account, raw_key = _alice_with_a_key(client, oidc_on)
    client.post("/accounts/logout/")
    DirectoryAccount.objects.filter(pk=account.pk).update(synced_at=timezone.now() - timedelta(days=1))
    discovered_provider()  # known to this process: now only its token endpoint is down
    with oidc_on.stopped():
        assert _titles(client, Authorization=f"Token {raw_key}") == ["Q3 results"]
        synced = DirectoryAccount.objects.get(pk=account.pk)
    assert synced.groups == ["everyone", "finance"]
    # asked again a minute later, not at every request
    assert timezone.now() - synced.synced_at < timedelta(seconds=settings.RAG_GROUP_SYNC_S)


def test_an_unreachable_provider_is_a_message_on_the_login_page(
    client: Any, oidc_on: TestProvider, settings: Any
) -> None:
    settings.OIDC_ISSUER_URL = "http://127.0.0.1:9"  # nothing listens there

    response = client.get("/oidc/authenticate/", {"next": "/documents/"}, follow=True)

    assert response.status_code == 200
    assert response.redirect_chain[-1][0] == "/accounts/login/?next=%2Fdocuments%2F"
    assert "Sign-in with Test IdP is not available right now" in response.content.decode()


def test_a_provider_naming_another_issuer_is_not_used(client: Any, oidc_on: TestProvider, settings: Any) -> None:
    settings.OIDC_ISSUER_URL = oidc_on.issuer.replace("127.0.0.1", "localhost")

    response = client.get("/oidc/authenticate/", follow=True)

    assert "Sign-in with Test IdP is not available right now" in response.content.decode()
    assert not response.wsgi_request.user.is_authenticated


def test_cancelling_at_the_provider_ends_on_the_login_page_and_is_recorded_once(
    client: Any, oidc_on: TestProvider
) -> None:
    response = _sign_in(client, oidc_on, "alice", "/documents/", cancel=True)

    assert response.status_code == 302 and response["Location"] == "/accounts/login/?next=%2Fdocuments%2F"
    page = client.get(response["Location"]).content.decode()
    assert "The sign-in with Test IdP was cancelled or refused." in page
    assert not DirectoryAccount.objects.exists()
    assert _failures() == 1


def test_an_answer_this_browser_did_not_ask_for_is_refused_and_recorded_once(
    client: Any, oidc_on: TestProvider, django_user_model: Any
) -> None:
    from django.test import Client

    callback = oidc_on.sign_in(_start(client), "alice")
    other_browser = Client()

    response = other_browser.get(callback.removeprefix("http://testserver"), follow=True)

    assert response.status_code == 200
    assert "This sign-in took too long or was started in another browser." in response.content.decode()
    assert not response.wsgi_request.user.is_authenticated
    assert _failures() == 1
    # the state is used once: the answer replayed in the browser that asked is refused too
    client.get(callback.removeprefix("http://testserver"))
    replay = client.get(callback.removeprefix("http://testserver"), follow=True)
    assert "This sign-in took too long" in replay.content.decode()
    assert _failures() == 2


def test_a_code_the_provider_refuses_is_a_message_not_an_error(client: Any, oidc_on: TestProvider) -> None:
    callback = urlparse(oidc_on.sign_in(_start(client), "alice"))
    forged = callback.query.replace("code=", "code=x")

    response = client.get(f"{callback.path}?{forged}", follow=True)

    assert response.status_code == 200
    assert "The sign-in with Test IdP did not succeed." in response.content.decode()
    assert not response.wsgi_request.user.is_authenticated
    assert _failures() == 1


def test_a_disabled_account_is_refused(client: Any, oidc_on: TestProvider, django_user_model: Any) -> None:
    _sign_in(client, oidc_on, "alice")
    django_user_model.objects.filter(username="alice").update(is_active=False)
    client.post("/accounts/logout/")

    response = _sign_in(client, oidc_on, "alice")

    assert "Your account is disabled." in client.get(response["Location"]).content.decode()
    assert AuditEvent.objects.get(action=AuditEvent.Action.SIGN_IN_FAILED).username == "alice"


def test_without_local_accounts_the_login_page_shows_only_the_provider(
    client: Any, settings: Any, provider: TestProvider, django_user_model: Any
) -> None:
    oidc_settings(settings, provider, CALLBACK, local_login=False)
    django_user_model.objects.create_user(username="carol", password="carol-pw-123")

    page = client.get("/accounts/login/").content.decode()
    assert "Sign in with Test IdP" in page
    assert 'id="id_password"' not in page and 'id="id_username"' not in page

    response = client.post("/accounts/login/", {"username": "carol", "password": "carol-pw-123"})
    assert response.status_code == 200 and not response.wsgi_request.user.is_authenticated

    # the admin's own login page has no button: it sends people to the portal's
    response = client.get("/admin/login/?next=/admin/")
    assert response.status_code == 302 and response["Location"] == "/accounts/login/?next=%2Fadmin%2F"

    _sign_in(client, provider, "bob")
    assert client.get("/").status_code == 200


def test_without_oidc_there_is_no_button_and_no_oidc_page(client: Any) -> None:
    page = client.get("/accounts/login/").content.decode()
    assert "oidc-sign-in" not in page and 'id="id_password"' in page
    assert client.get("/oidc/authenticate/").status_code == 404
    assert client.get("/oidc/callback/?code=x&state=y").status_code == 404


@pytest.mark.parametrize(
    ("claim", "claims", "groups"),
    [
        ("groups", {"groups": ["finance", "hr"]}, ["finance", "hr"]),
        ("groups", {"groups": "finance"}, ["finance"]),
        ("groups", {}, []),
        ("groups", {"groups": None}, []),
        ("realm_access.roles", {"realm_access": {"roles": ["admin"]}}, ["admin"]),
        ("roles", {"roles": ["reader", 7, {"odd": 1}, " "]}, ["reader", "7"]),
    ],
)
def test_the_groups_claim_is_read_as_named(settings: Any, claim: str, claims: dict[str, Any], groups: list[str]):
    settings.OIDC_GROUPS_CLAIM = claim
    assert oidc_groups_of(claims) == groups
