"""API keys: created once and shown once, stored as a SHA-256, revocable, expiring."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

from django.db import transaction
from django.utils import timezone

from knowledge.errors import NotFoundError
from knowledge.models import ApiKey, Collection
from knowledge.services.directory import directory_refresh_due

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

KEY_PREFIX = "kp"
# Writing last_used_at on every request would turn each read into a write: once a minute is enough.
_LAST_USED_GRANULARITY = timedelta(minutes=1)


def _hash(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def apikey_create(
    *,
    user: AbstractBaseUser,
    all_collections: bool,
    name: str = "",
    collections: Sequence[Collection] = (),
    expires_in: timedelta | None = None,
) -> tuple[ApiKey, str]:
    """Create a key for ``user``; return the row and the raw key (the only time it exists in clear).

    The key reads every collection its user may read (``all_collections``) or only the ``collections``
    listed, never both: a limited key without collections reads nothing.
    """
    if all_collections and collections:
        raise ValueError("A key reads all_collections or the collections listed, not both.")
    prefix = secrets.token_hex(4)
    raw_key = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    with transaction.atomic():
        key = ApiKey.objects.create(
            user=user,
            name=name,
            prefix=prefix,
            key_hash=_hash(raw_key),
            all_collections=all_collections,
            expires_at=timezone.now() + expires_in if expires_in else None,
        )
        if collections:
            key.collections.set(collections)
    return key, raw_key


def apikey_authenticate(raw_key: str) -> ApiKey | None:
    """The active key matching ``raw_key`` (not revoked, not expired, user active), else None."""
    parts = raw_key.strip().split("_")
    if len(parts) < 3 or parts[0] != KEY_PREFIX:
        return None
    key = ApiKey.objects.select_related("user").filter(prefix=parts[1]).first()
    if key is None or not hmac.compare_digest(key.key_hash, _hash(raw_key.strip())):
        return None
    now = timezone.now()
    if key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= now):
        return None
    if not key.user.is_active:
        return None
    directory_refresh_due(key.user)  # a key follows its owner's directory groups (RAG_GROUP_SYNC_S)
    if key.last_used_at is None or now - key.last_used_at > _LAST_USED_GRANULARITY:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return key


def apikey_revoke(*, key: ApiKey) -> None:
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])


def apikey_get(*, prefix: str) -> ApiKey:
    key = ApiKey.objects.filter(prefix=prefix).first()
    if key is None:
        raise NotFoundError(f"No API key starts with {prefix}.")
    return key
