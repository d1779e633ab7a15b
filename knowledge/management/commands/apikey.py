"""API keys: ``manage.py apikey create --user NAME [--collection SLUG ...] [--expires-days N]``, list, revoke."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from knowledge.errors import NotFoundError
from knowledge.models import ApiKey, Collection
from knowledge.services import apikeys


class Command(BaseCommand):
    help = "Create, list or revoke API keys. `create` prints the new key alone on its last line."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="create a key (the user is created if missing)")
        create.add_argument("--user", required=True, metavar="NAME")
        create.add_argument(
            "--collection",
            action="append",
            default=[],
            metavar="SLUG",
            help="limit the key to this collection (repeatable); without it the key reads every collection "
            "its user may read",
        )
        create.add_argument("--expires-days", type=int, default=None, metavar="N")
        create.add_argument("--name", default="", help="a label to recognise the key")
        listing = sub.add_parser("list", help="list keys (never the keys themselves)")
        listing.add_argument("--user", default=None, metavar="NAME")
        revoke = sub.add_parser("revoke", help="revoke a key by its prefix (the part after 'kp_')")
        revoke.add_argument("prefix")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        getattr(self, f"_{action}")(**options)

    def _create(self, *, user: str, collection: list[str], expires_days: int | None, name: str, **_: Any) -> None:
        if expires_days is not None and expires_days < 1:
            raise CommandError("--expires-days must be at least 1")
        collections = []
        for slug in collection:
            found = Collection.objects.filter(slug=slug).first()
            if found is None:
                raise CommandError(f"Unknown collection: {slug}")
            collections.append(found)
        account, created = get_user_model().objects.get_or_create(username=user)
        if created:
            account.set_unusable_password()
            account.save()
            self.stdout.write(f"Created user {user} (no password: API access only).")
        key, raw = apikeys.apikey_create(
            user=account,
            name=name,
            all_collections=not collections,
            collections=collections,
            expires_in=timedelta(days=expires_days) if expires_days else None,
        )
        limits = ", ".join(c.slug for c in collections) or "all collections the user may read"
        expiry = key.expires_at.isoformat() if key.expires_at else "never"
        self.stdout.write(f"API key {key.prefix} for {user} ({limits}; expires {expiry}). It is shown only once:")
        self.stdout.write(raw)

    def _list(self, *, user: str | None, **_: Any) -> None:
        keys = ApiKey.objects.select_related("user").prefetch_related("collections")
        if user:
            keys = keys.filter(user__username=user)
        now = timezone.now()
        for key in keys:
            state = (
                "revoked" if key.revoked_at else ("expired" if key.expires_at and key.expires_at <= now else "active")
            )
            slugs = "*" if key.all_collections else ",".join(c.slug for c in key.collections.all()) or "-"
            self.stdout.write(
                f"{key.prefix}\t{key.user.username}\t{state}\t{slugs}\tlast used {key.last_used_at or 'never'}"
            )

    def _revoke(self, *, prefix: str, **_: Any) -> None:
        try:
            key = apikeys.apikey_get(prefix=prefix.removeprefix("kp_").split("_")[0])
        except NotFoundError as exc:
            raise CommandError(exc.message) from exc
        apikeys.apikey_revoke(key=key)
        self.stdout.write(f"Revoked {key.prefix}.")
