"""Sign-in with an LDAP / Active Directory account (django-auth-ldap), the person's groups mirrored by
``directory_sync``.

The portal's login form checks the password with a bind as the person; their groups are then read with the
service account (``AUTH_LDAP_GROUP_SEARCH``; nested groups count) and handed to ``directory_sync``, which alone
decides the Django groups and the staff / superuser flags (django-auth-ldap's own ``MIRROR_GROUPS`` and
``USER_FLAGS_BY_GROUP`` stay off). ``ldap_groups_read`` reads them again for an API key in use.

An existing Django user is taken over only when it is this directory's already, or has no password of its own: a
directory entry that happens to carry the name of a local account (``admin``, say) does not become it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ldap
from django_auth_ldap.backend import LDAPBackend

from knowledge.models import DirectoryAccount
from knowledge.services.directory import DirectoryUnavailable, directory_sync

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser
    from django_auth_ldap.config import LDAPGroupType, LDAPSearch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Member:
    # what a django-auth-ldap group type asks of a user to find their groups: the DN and a bound connection
    dn: str
    connection: Any


def _group_names(backend: LDAPBackend, member: Any) -> list[str]:
    """The names (``cn``) of the directory groups ``member`` is in, directly or through other groups; none when
    no group search is configured. Raises ``ldap.LDAPError`` when the directory does not answer."""
    search: LDAPSearch | None = backend.settings.GROUP_SEARCH
    group_type: LDAPGroupType | None = backend.settings.GROUP_TYPE
    if search is None or group_type is None:
        return []
    names = (group_type.group_name_from_info(info) for info in group_type.user_groups(member, search))
    return sorted({name for name in names if name})


class PortalLDAPBackend(LDAPBackend):
    """django-auth-ldap's backend, with the person's directory groups mirrored at every sign-in."""

    def get_or_build_user(self, username: str, ldap_user: Any) -> tuple[AbstractBaseUser, bool]:
        user, built = super().get_or_build_user(username, ldap_user)
        if not built:
            account = DirectoryAccount.objects.filter(user=user).first()
            foreign = account.source != DirectoryAccount.Source.LDAP if account else user.has_usable_password()
            if foreign:
                log.warning("directory sign-in of %s refused: a local or other directory's account has that name", user)
                raise ldap_user.AuthenticationFailed(f"{user} is not an account of this directory")
        return user, built

    def authenticate_ldap_user(self, ldap_user: Any, password: str) -> AbstractBaseUser | None:
        user: AbstractBaseUser | None = super().authenticate_ldap_user(ldap_user, password)
        if user is None:
            return None
        try:
            groups = _group_names(self, ldap_user)
        except ldap.LDAPError as exc:
            # without their groups the portal cannot tell what they may read: no sign-in rather than stale rights
            log.warning("directory sign-in of %s refused: their groups could not be read: %s", user, exc)
            return None
        directory_sync(user, source=DirectoryAccount.Source.LDAP, subject=ldap_user.dn, groups=groups)
        return user

    def get_user(self, user_id: Any) -> AbstractBaseUser | None:
        # as Django's ModelBackend: a deactivated person's sessions end with the deactivation
        user: AbstractBaseUser | None = super().get_user(user_id)
        return user if user is not None and user.is_active else None


def ldap_groups_read(account: DirectoryAccount) -> list[str] | None:
    """The directory groups of ``account``'s user, read again with the service account; None when the directory no
    longer finds them (``AUTH_LDAP_USER_SEARCH``). Raises ``DirectoryUnavailable`` when it cannot be asked."""
    backend = PortalLDAPBackend()
    user = backend.get_user(account.user_id)
    if user is None:
        return None
    ldap_user = user.ldap_user  # type: ignore[attr-defined]
    try:
        connection = ldap_user.connection  # bound with AUTH_LDAP_BIND_DN
        try:
            found = backend.settings.USER_SEARCH.execute(connection, {"user": user.ldap_username})  # type: ignore[attr-defined]
            if len(found) != 1:
                return None
            return _group_names(backend, _Member(dn=found[0][0], connection=connection))
        finally:
            connection.unbind_s()
    except ldap.LDAPError as exc:
        raise DirectoryUnavailable(f"{backend.settings.SERVER_URI}: {exc}") from exc
