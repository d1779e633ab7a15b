"""Directory groups mirrored onto Django groups (knowledge.services.directory).

The sign-ins that call it, and the API keys that read a directory again after ``RAG_GROUP_SYNC_S``, are tested
against a real slapd and a real OpenID provider in tests/identity/; here the rules: which groups count, what the
portal calls them, what a sync removes, and that a local user is never read again."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group, User

from knowledge.models import DirectoryAccount
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


def test_local_users_are_never_read_again(db: Any) -> None:
    bob = User.objects.create_user(username="bob")
    _, raw = apikeys.apikey_create(user=bob, all_collections=True)
    assert apikeys.apikey_authenticate(raw) is not None
    assert not DirectoryAccount.objects.filter(user=bob).exists()
