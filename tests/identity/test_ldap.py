"""LDAP / Active Directory sign-in against a real slapd (tests/identity/slapd.py): the portal's login form, the
person's groups mirrored onto Django groups (nested ones too), collection access that follows the directory at
the next sign-in and, for API keys, after ``RAG_GROUP_SYNC_S``; a directory that is down; local accounts."""

from __future__ import annotations

import io
import json
import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.core.cache import cache
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from knowledge.models import AuditEvent, Collection, DirectoryAccount
from knowledge.services import apikeys
from knowledge.services import documents as document_services
from knowledge.services.directory import RETRY_UNREACHABLE_S
from tests.identity.slapd import (
    BASE,
    GROUPS,
    PASSWORDS,
    PEOPLE,
    SERVICE_DN,
    SERVICE_PASSWORD,
    Slapd,
    group,
    person,
    slapd,  # noqa: F401 (the fixture)
)
from tests.settings_probe import settings_probe

ldap = pytest.importorskip("ldap", reason="python-ldap is not installed: pip install -r requirements-ldap.txt")
config = pytest.importorskip("django_auth_ldap.config", reason="django-auth-ldap is not installed")

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("api_isolated")]

LOGIN = "/accounts/login/"
LDAP_BACKEND = "knowledge.services.directory_ldap.PortalLDAPBackend"
LOCAL_PASSWORD = "pw-local-123"
#: what the login page says when a sign-in fails (its apostrophe is escaped in the page)
REFUSED = "Your username and password didn"


@pytest.fixture
def directory(slapd: Slapd, settings: Any) -> Slapd:  # noqa: F811
    """The portal pointed at the slapd as portal/settings.py points it at LDAP_SERVER_URI (its block is checked
    by test_the_settings_block_reads_the_directory_with_its_variables), local sign-in still on."""
    settings.AUTH_LDAP_SERVER_URI = slapd.uri
    settings.AUTH_LDAP_BIND_DN = SERVICE_DN
    settings.AUTH_LDAP_BIND_PASSWORD = SERVICE_PASSWORD
    settings.AUTH_LDAP_USER_SEARCH = config.LDAPSearch(PEOPLE, ldap.SCOPE_SUBTREE, "(uid=%(user)s)")
    settings.AUTH_LDAP_USER_ATTR_MAP = {"first_name": "givenName", "last_name": "sn", "email": "mail"}
    settings.AUTH_LDAP_GROUP_SEARCH = config.LDAPSearch(
        GROUPS, ldap.SCOPE_SUBTREE, "(|(objectClass=groupOfNames)(objectClass=group))"
    )
    settings.AUTH_LDAP_GROUP_TYPE = config.NestedMemberDNGroupType(member_attr="member", name_attr="cn")
    settings.AUTH_LDAP_CONNECTION_OPTIONS = {ldap.OPT_NETWORK_TIMEOUT: 5, ldap.OPT_TIMEOUT: 10}
    settings.AUTHENTICATION_BACKENDS = [LDAP_BACKEND, "django.contrib.auth.backends.ModelBackend"]
    settings.AUTH_GROUP_MAP, settings.AUTH_STAFF_GROUPS, settings.AUTH_SUPERUSER_GROUPS = {}, [], []
    settings.LOGIN_RATE_LIMIT, settings.LOGIN_RATE_LIMIT_IP = "5/1d", "50/1d"
    cache.clear()  # the sign-in counters
    return slapd


@pytest.fixture
def readers_only(db: Any) -> Collection:
    """A collection only the group ``readers`` reads, with one document in it."""
    collection = Collection.objects.create(slug="readers-only", name="Readers only", is_public=False)
    collection.groups.add(Group.objects.get_or_create(name="readers")[0])
    document_services.document_create(
        file=io.BytesIO(b"The readers' handbook."), filename="handbook.txt", collection=collection, dispatch=False
    )
    return collection


def _sign_in(client: Client, username: str, password: str) -> Any:
    return client.post(LOGIN, {"username": username, "password": password, "next": "/"})


def _signed_in(username: str, password: str | None = None) -> Client:
    client = Client()
    response = _sign_in(client, username, password or PASSWORDS[username])
    assert response.status_code == 302, response.content.decode()[-2000:]
    return client


def _collections(client: Client | APIClient) -> set[str]:
    """The collections whose documents the caller sees through the API."""
    response = client.get("/api/v1/documents/")
    assert response.status_code == 200
    return {document["collection"] for document in json.loads(response.content)}


def _groups(username: str) -> set[str]:
    return set(User.objects.get(username=username).groups.values_list("name", flat=True))


def _leave_readers(directory: Slapd, name: str) -> None:
    directory.ldapmodify(f"dn: {group('readers')}\nchangetype: modify\ndelete: member\nmember: {person(name)}\n")


def _key_of(username: str) -> APIClient:
    _, raw = apikeys.apikey_create(user=User.objects.get(username=username), all_collections=True)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    return client


def _groups_read_ago(username: str, seconds: int) -> None:
    DirectoryAccount.objects.filter(user__username=username).update(
        synced_at=timezone.now() - timedelta(seconds=seconds)
    )


def test_a_directory_user_signs_in_with_the_login_form_and_reads_their_groups_collection(
    directory: Slapd, readers_only: Collection
) -> None:
    client = _signed_in("alice")

    alice = User.objects.get(username="alice")
    assert (alice.email, alice.first_name, alice.last_name) == ("alice@example.org", "Alice", "Archer")
    assert not alice.has_usable_password()  # the directory keeps the password
    account = DirectoryAccount.objects.get(user=alice)
    assert (account.source, account.subject, account.groups) == ("ldap", person("alice"), ["readers"])
    assert _groups("alice") == {"readers"}
    assert _collections(client) == {"readers-only"}
    [event] = AuditEvent.objects.filter(action="sign_in")
    assert event.user == alice


def test_a_wrong_directory_password_fails_is_counted_and_audited_once(
    directory: Slapd, settings: Any, readers_only: Collection
) -> None:
    settings.LOGIN_RATE_LIMIT = "2/1d"
    client = Client()
    failed = _sign_in(client, "alice", "not-her-password")

    assert failed.status_code == 200
    assert REFUSED in failed.content.decode()
    assert "_auth_user_id" not in client.session
    [event] = AuditEvent.objects.filter(action="sign_in_failed")
    assert (event.user, event.username) == (None, "alice")
    assert not User.objects.filter(username="alice").exists()
    # the failure counts against the account: one more and even her right password waits
    assert _sign_in(client, "alice", "still-wrong").status_code == 200
    assert _sign_in(client, "alice", PASSWORDS["alice"]).status_code == 429


def test_nested_groups_count_and_the_staff_and_superuser_groups_set_the_flags(directory: Slapd, settings: Any) -> None:
    settings.AUTH_STAFF_GROUPS, settings.AUTH_SUPERUSER_GROUPS = ["Staff-All"], ["root-admins"]
    _signed_in("bob")
    _signed_in("alice")

    bob, alice = User.objects.get(username="bob"), User.objects.get(username="alice")
    assert _groups("bob") == {"admins", "staff-all"}  # staff-all through admins
    assert (bob.is_staff, bob.is_superuser) == (True, False)
    assert (alice.is_staff, alice.is_superuser) == (False, False)


def test_the_group_map_renames_the_groups_that_count_and_drops_the_others(directory: Slapd, settings: Any) -> None:
    settings.AUTH_GROUP_MAP = {"READERS": "Handbook readers", "staff-all": "staff-all"}
    _signed_in("alice")
    _signed_in("bob")

    assert _groups("alice") == {"Handbook readers"}
    assert _groups("bob") == {"staff-all"}
    assert not Group.objects.filter(name__in=["readers", "admins"]).exists()


def test_a_person_removed_from_a_group_loses_it_and_its_collection_at_their_next_sign_in(
    directory: Slapd, readers_only: Collection
) -> None:
    by_hand = Group.objects.create(name="given by hand")
    assert _collections(_signed_in("alice")) == {"readers-only"}
    User.objects.get(username="alice").groups.add(by_hand)

    _leave_readers(directory, "alice")
    client = _signed_in("alice")

    assert _groups("alice") == {"given by hand"}
    assert _collections(client) == set()


def test_an_api_key_follows_its_owners_groups_once_rag_group_sync_s_has_passed(
    directory: Slapd, settings: Any, readers_only: Collection
) -> None:
    settings.RAG_GROUP_SYNC_S = 900
    _signed_in("alice")
    key = _key_of("alice")
    assert _collections(key) == {"readers-only"}

    _leave_readers(directory, "alice")
    _groups_read_ago("alice", 60)
    assert _collections(key) == {"readers-only"}  # read 60 s ago: not again yet
    _groups_read_ago("alice", 901)
    assert _collections(key) == set()  # no sign-in: the key's use read her groups again
    assert _groups("alice") == set()
    assert DirectoryAccount.objects.get(user__username="alice").synced_at > timezone.now() - timedelta(seconds=60)


def test_a_person_the_directory_no_longer_knows_keeps_no_directory_group_on_their_key(
    directory: Slapd, readers_only: Collection
) -> None:
    _signed_in("alice")
    key = _key_of("alice")
    directory.ldapmodify(f"dn: {person('alice')}\nchangetype: delete\n")
    _groups_read_ago("alice", 10_000)

    assert _collections(key) == set()
    assert DirectoryAccount.objects.get(user__username="alice").groups == []


def test_a_stopped_directory_keeps_the_keys_groups_and_the_form_says_sign_in_failed(
    directory: Slapd, readers_only: Collection, settings: Any
) -> None:
    _signed_in("alice")
    key = _key_of("alice")
    directory.stop()
    _groups_read_ago("alice", 10_000)

    assert _collections(key) == {"readers-only"}  # nothing changed; asked again a minute later
    assert _groups("alice") == {"readers"}
    assert DirectoryAccount.objects.get(user__username="alice").synced_at > timezone.now() - timedelta(seconds=10_000)

    refused = _sign_in(Client(), "alice", PASSWORDS["alice"])
    assert refused.status_code == 200
    assert REFUSED in refused.content.decode()
    assert AuditEvent.objects.filter(action="sign_in_failed", username="alice").count() == 1

    # asked again a minute later, not at every use: once it answers again, the key follows the directory
    assert _collections(key) == {"readers-only"}
    next_read = DirectoryAccount.objects.get(user__username="alice").synced_at + timedelta(
        seconds=settings.RAG_GROUP_SYNC_S
    )
    assert timedelta(0) < next_read - timezone.now() <= timedelta(seconds=RETRY_UNREACHABLE_S)
    directory.start()
    _leave_readers(directory, "alice")
    _groups_read_ago("alice", 10_000)
    assert _collections(key) == set()


def test_a_wrong_service_account_password_leaves_the_keys_groups_as_they_are(
    directory: Slapd, settings: Any, readers_only: Collection
) -> None:
    _signed_in("alice")
    key = _key_of("alice")
    _leave_readers(directory, "alice")
    settings.AUTH_LDAP_BIND_PASSWORD = "not-the-service-password"
    _groups_read_ago("alice", 10_000)

    assert _collections(key) == {"readers-only"}
    assert _groups("alice") == {"readers"}


def test_a_directory_that_never_answers_fails_the_sign_in_and_the_key_refresh_in_seconds(
    directory: Slapd, settings: Any, readers_only: Collection
) -> None:
    _signed_in("alice")
    key = _key_of("alice")
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        settings.AUTH_LDAP_SERVER_URI = f"ldap://127.0.0.1:{silent.getsockname()[1]}"
        settings.AUTH_LDAP_CONNECTION_OPTIONS = {ldap.OPT_NETWORK_TIMEOUT: 1, ldap.OPT_TIMEOUT: 1}
        _groups_read_ago("alice", 10_000)
        started = time.monotonic()
        assert _collections(key) == {"readers-only"}
        refused = _sign_in(Client(), "alice", PASSWORDS["alice"])
        took = time.monotonic() - started

    assert refused.status_code == 200 and REFUSED in refused.content.decode()
    assert took < 10


def test_a_local_account_still_signs_in_with_the_directory_up_or_down(directory: Slapd) -> None:
    User.objects.create_user(username="boss", password=LOCAL_PASSWORD)
    _signed_in("boss", LOCAL_PASSWORD)
    directory.stop()
    _signed_in("boss", LOCAL_PASSWORD)
    assert not DirectoryAccount.objects.exists()


def test_a_local_account_is_not_taken_over_by_a_directory_entry_of_its_name(directory: Slapd) -> None:
    local = User.objects.create_user(username="alice", password=LOCAL_PASSWORD, is_superuser=True)

    assert _sign_in(Client(), "alice", PASSWORDS["alice"]).status_code == 200
    _signed_in("alice", LOCAL_PASSWORD)
    assert not DirectoryAccount.objects.filter(user=local).exists()


def test_without_local_sign_in_only_the_directory_signs_people_in(directory: Slapd, settings: Any) -> None:
    settings.AUTHENTICATION_BACKENDS = [LDAP_BACKEND, "knowledge.services.directory.PermissionsBackend"]
    User.objects.create_user(username="boss", password=LOCAL_PASSWORD)

    assert _sign_in(Client(), "boss", LOCAL_PASSWORD).status_code == 200
    client = _signed_in("alice")
    assert client.get("/api/v1/documents/").status_code == 200  # the session is the directory backend's


def test_a_deactivated_directory_user_loses_their_session(directory: Slapd) -> None:
    client = _signed_in("alice")
    User.objects.filter(username="alice").update(is_active=False)
    assert client.get("/api/v1/documents/").status_code in (401, 403)


def test_the_settings_block_reads_the_directory_with_its_variables(slapd: Slapd, tmp_path: Path) -> None:  # noqa: F811
    """portal/settings.py, from the LDAP_* variables: bob found with the user filter, his groups (nested) read
    through the group search with the service account; the timeouts; a filter without the name refused."""
    code = (
        "import ldap, time; from knowledge.services.directory_ldap import PortalLDAPBackend, _Member, _group_names; "
        "b = PortalLDAPBackend(); c = ldap.initialize(s.AUTH_LDAP_SERVER_URI); "
        "[c.set_option(k, v) for k, v in s.AUTH_LDAP_CONNECTION_OPTIONS.items()]; "
        "c.simple_bind_s(s.AUTH_LDAP_BIND_DN, s.AUTH_LDAP_BIND_PASSWORD); "
        "[(dn, attrs)] = s.AUTH_LDAP_USER_SEARCH.execute(c, {'user': 'bob'}); "
        "print(dn, attrs['mail'], _group_names(b, _Member(dn=dn, connection=c)), s.AUTH_LDAP_START_TLS, "
        "s.AUTHENTICATION_BACKENDS[0]); "
        "o = s.AUTH_LDAP_CONNECTION_OPTIONS; print(o[ldap.OPT_NETWORK_TIMEOUT], o[ldap.OPT_TIMEOUT])"
    )
    env = {
        "LDAP_SERVER_URI": slapd.uri,
        "LDAP_BIND_DN": SERVICE_DN,
        "LDAP_BIND_PASSWORD": SERVICE_PASSWORD,
        "LDAP_USER_SEARCH": BASE,
        "LDAP_GROUP_SEARCH": GROUPS,
    }
    result = settings_probe(tmp_path, env, code)
    assert result.returncode == 0, result.stderr
    found, timeouts = result.stdout.splitlines()[-2:]
    assert found == f"{person('bob')} ['bob@example.org'] ['admins', 'staff-all'] False {LDAP_BACKEND}"
    assert timeouts == "5 10"  # seconds to connect, to answer

    wrong = settings_probe(tmp_path, {**env, "LDAP_USER_FILTER": "(uid=alice)"}, "print(1)")
    assert wrong.returncode != 0
    assert "LDAP_USER_FILTER must hold %(user)s" in wrong.stderr
