"""People from the company directory (OpenID Connect, LDAP / Active Directory): their groups mirrored onto Django
groups, so that collection access follows the directory.

At every sign-in the sign-in backend (``directory_oidc``, ``directory_ldap``) calls ``directory_sync`` with the
groups the directory reports. ``AUTH_GROUP_MAP`` decides which of them count and what the portal calls them; the
user is put in those Django groups and taken out of the ones the directory gave at the previous sync (groups
given by hand in the admin stay). ``AUTH_STAFF_GROUPS`` / ``AUTH_SUPERUSER_GROUPS`` set the two flags.

API keys work without the person: when a directory user's key is used and their groups are older than
``RAG_GROUP_SYNC_S``, ``directory_refresh_due`` reads them again through the backend's reader (LDAP: a search
with the service account; OpenID: the refresh token). A person the directory no longer knows, or whose refresh
is refused, keeps no directory group; a directory that cannot be reached changes nothing and is asked again a
minute later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import Group
from django.db import transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from knowledge.models import DirectoryAccount

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

log = logging.getLogger(__name__)

# source -> the function that reads a known user's directory groups again: (account) -> their groups, or None
# when the directory no longer knows them (or refuses the refresh); DirectoryUnavailable when it cannot answer.
READERS = {
    DirectoryAccount.Source.LDAP: "knowledge.services.directory_ldap.ldap_groups_read",
    DirectoryAccount.Source.OIDC: "knowledge.services.directory_oidc.oidc_groups_read",
}
RETRY_UNREACHABLE_S = 60


class DirectoryUnavailable(Exception):
    """The directory could not be asked (down, timeout, bad service account): nothing is changed."""


class PermissionsBackend(ModelBackend):
    """Django's permissions without its passwords: the backend in place of ``ModelBackend`` when
    ``AUTH_LOCAL_LOGIN=false``, so staff rights still work while only the directory signs people in."""

    def authenticate(
        self, request: Any, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> None:
        return None


def _folded(names: Iterable[str]) -> set[str]:
    return {name.casefold() for name in names}


def portal_groups(directory_groups: Iterable[str]) -> list[str]:
    """The portal's names for the directory groups that count (``AUTH_GROUP_MAP``; all of them when it is empty).

    Directory group names compare without case (LDAP's do), the portal's names are kept as written.
    """
    mapping = {directory.casefold(): portal for directory, portal in settings.AUTH_GROUP_MAP.items()}
    names = (mapping.get(group.casefold()) if mapping else group.strip() for group in directory_groups)
    return sorted({name for name in names if name})


@transaction.atomic
def directory_sync(
    user: AbstractBaseUser,
    *,
    source: str,
    subject: str,
    groups: Sequence[str],
    refresh_token: str | None = None,
) -> DirectoryAccount:
    """Mirror ``groups`` (as the directory names them) onto ``user``; remember what came from the directory."""
    account = DirectoryAccount.objects.select_for_update().filter(user=user).first()
    if account is None:
        account = DirectoryAccount(user=user)
    previous = set(account.groups)
    current = portal_groups(groups)
    stale = previous - set(current)
    if stale:
        user.groups.remove(*Group.objects.filter(name__in=stale))  # type: ignore[attr-defined]
    if current:
        user.groups.add(*(Group.objects.get_or_create(name=name)[0] for name in current))  # type: ignore[attr-defined]
    member_of = _folded(groups)
    flags = {}
    if settings.AUTH_STAFF_GROUPS:
        flags["is_staff"] = bool(member_of & _folded(settings.AUTH_STAFF_GROUPS))
    if settings.AUTH_SUPERUSER_GROUPS:
        flags["is_superuser"] = bool(member_of & _folded(settings.AUTH_SUPERUSER_GROUPS))
    changed = [name for name, value in flags.items() if getattr(user, name) != value]
    for name in changed:
        setattr(user, name, flags[name])
    if changed:
        user.save(update_fields=changed)
    account.source, account.subject, account.groups = source, subject, current
    account.synced_at = timezone.now()
    if refresh_token is not None:
        account.refresh_token = refresh_token
    account.save()
    if stale or set(current) != previous:
        log.info("directory groups of %s: %s", user, ", ".join(current) or "none")
    return account


def directory_refresh_due(user: AbstractBaseUser) -> None:
    """Read a directory user's groups again when the last read is older than ``RAG_GROUP_SYNC_S`` (a local user
    is left as is). Called where an API key is accepted, so a key follows its owner's groups."""
    account = DirectoryAccount.objects.filter(user=user).first()
    if account is None or timezone.now() - account.synced_at < timedelta(seconds=settings.RAG_GROUP_SYNC_S):
        return
    reader: Callable[[DirectoryAccount], Sequence[str] | None] = import_string(READERS[account.source])
    try:
        groups = reader(account)
    except DirectoryUnavailable as exc:
        log.warning("directory groups of %s not read again: %s", user, exc)
        DirectoryAccount.objects.filter(pk=account.pk).update(
            synced_at=timezone.now() - timedelta(seconds=max(0, settings.RAG_GROUP_SYNC_S - RETRY_UNREACHABLE_S))
        )
        return
    directory_sync(user, source=account.source, subject=account.subject, groups=groups or [])
