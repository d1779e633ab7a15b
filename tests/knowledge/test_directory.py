"""Directory groups mirrored onto Django groups (knowledge.services.directory).

The sign-ins that call it, against a real slapd and a real OpenID provider, are in tests/identity/; here the
rules: which groups count, what the portal calls them, what a sync removes, and when an API key's owner is read
again (through a reader of this module standing in for a directory's)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.utils import timezone

from knowledge.models import Collection, DirectoryAccount
from knowledge.selectors import collections_readable_by
from knowledge.services import apikeys, directory

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice(db: Any) -> User:
    return User.objects.create_user(username="alice")


def _groups(user: User) -> set[str]:
    return set(User.objects.get(pk=user.pk).groups.values_list("name", flat=True))


def test_every_directory_group_counts_under_its_own_name_without_a_map(alice: User) -> None:
    directory.directory_sync(alice, source="ldap", subject="uid=alice", groups=["readers", "Finance Team"])
    assert _groups(alice) == {"readers", "Finance Team"}
    assert DirectoryAccount.objects.get(user=alice).groups == ["Finance Team", "readers"]


def test_the_map_decides_which_groups_count_and_their_names_without_case(alice: User, settings: Any) -> None:
    settings.AUTH_GROUP_MAP = {"CN-Finance": "finance", "legal": "legal"}
    directory.directory_sync(alice, source="oidc", subject="sub-1", groups=["cn-finance", "everyone"])
    assert _groups(alice) == {"finance"}


def test_a_sync_removes_only_the_groups_the_directory_gave(alice: User) -> None:
    alice.groups.add(Group.objects.create(name="by hand"))
    directory.directory_sync(alice, source="ldap", subject="uid=alice", groups=["readers", "writers"])
    directory.directory_sync(alice, source="ldap", subject="uid=alice", groups=["writers"])
    assert _groups(alice) == {"by hand", "writers"}
    directory.directory_sync(alice, source="ldap", subject="uid=alice", groups=[])
    assert _groups(alice) == {"by hand"}


def test_staff_and_superuser_flags_follow_their_groups_only_when_named(alice: User, settings: Any) -> None:
    User.objects.filter(pk=alice.pk).update(is_staff=True)
    alice.refresh_from_db()
    directory.directory_sync(alice, source="ldap", subject="uid=alice", groups=["readers"])
    assert User.objects.get(pk=alice.pk).is_staff  # no AUTH_STAFF_GROUPS: the flag set by hand stays

    settings.AUTH_STAFF_GROUPS, settings.AUTH_SUPERUSER_GROUPS = ["Admins"], ["root"]
    directory.directory_sync(alice, source="ldap", subject="uid=alice", groups=["admins"])
    assert (User.objects.get(pk=alice.pk).is_staff, User.objects.get(pk=alice.pk).is_superuser) == (True, False)
    directory.directory_sync(alice, source="ldap", subject="uid=alice", groups=["readers"])
    assert (User.objects.get(pk=alice.pk).is_staff, User.objects.get(pk=alice.pk).is_superuser) == (False, False)


# What the stand-in directory answers for a user read again: their groups, None (unknown) or unreachable.
ANSWER: dict[str, Any] = {}


def read_again(account: DirectoryAccount) -> list[str] | None:
    ANSWER["asked"] = ANSWER.get("asked", 0) + 1
    if ANSWER["groups"] == "down":
        raise directory.DirectoryUnavailable("connection refused")
    return ANSWER["groups"]  # type: ignore[no-any-return]


@pytest.fixture
def keyed(alice: User, monkeypatch: pytest.MonkeyPatch, settings: Any) -> tuple[User, str, Collection]:
    """alice, directory member of "finance", with a key; the finance collection is restricted to that group."""
    monkeypatch.setitem(directory.READERS, DirectoryAccount.Source.LDAP, f"{__name__}.read_again")
    ANSWER.clear()
    settings.RAG_GROUP_SYNC_S = 900
    directory.directory_sync(alice, source="ldap", subject="uid=alice", groups=["finance"])
    finance = Collection.objects.create(slug="finance", name="Finance", is_public=False)
    finance.groups.add(Group.objects.get(name="finance"))
    _, raw = apikeys.apikey_create(user=alice, all_collections=True)
    return alice, raw, finance


def _age(user: User, seconds: int) -> None:
    DirectoryAccount.objects.filter(user=user).update(synced_at=timezone.now() - timedelta(seconds=seconds))


def _reads_finance(raw: str) -> bool:
    key = apikeys.apikey_authenticate(raw)
    assert key is not None
    return collections_readable_by(user=User.objects.get(pk=key.user_id), api_key=key).filter(slug="finance").exists()


def test_a_key_is_not_read_again_before_the_sync_interval(keyed: tuple[User, str, Collection]) -> None:
    _, raw, _ = keyed
    ANSWER["groups"] = []
    assert _reads_finance(raw)
    assert "asked" not in ANSWER


def test_a_key_loses_access_once_its_owner_left_the_group(keyed: tuple[User, str, Collection]) -> None:
    alice, raw, _ = keyed
    ANSWER["groups"] = ["everyone"]
    _age(alice, 901)
    assert not _reads_finance(raw)
    assert _groups(alice) == {"everyone"}


def test_a_key_of_someone_the_directory_no_longer_knows_keeps_no_directory_group(
    keyed: tuple[User, str, Collection],
) -> None:
    alice, raw, _ = keyed
    ANSWER["groups"] = None
    _age(alice, 901)
    assert not _reads_finance(raw)
    assert _groups(alice) == set()


def test_an_unreachable_directory_changes_nothing_and_is_asked_again_a_minute_later(
    keyed: tuple[User, str, Collection],
) -> None:
    alice, raw, _ = keyed
    ANSWER["groups"] = "down"
    _age(alice, 901)
    assert _reads_finance(raw)
    assert _reads_finance(raw)  # not asked again at once
    assert ANSWER["asked"] == 1
    _age(alice, 901)
    ANSWER["groups"] = []
    assert not _reads_finance(raw)


def test_local_users_are_never_read_again(db: Any) -> None:
    bob = User.objects.create_user(username="bob")
    _, raw = apikeys.apikey_create(user=bob, all_collections=True)
    assert apikeys.apikey_authenticate(raw) is not None
    assert not DirectoryAccount.objects.filter(user=bob).exists()
