"""Who may read what: the collections a request may search, resolved once per request."""

from __future__ import annotations

from typing import TYPE_CHECKING

from knowledge.errors import NotFoundError
from knowledge.selectors import collections_readable_by

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
    from django.db.models import QuerySet

    from knowledge.models import ApiKey, Collection


def collection_ids_for(
    *, user: AbstractBaseUser | AnonymousUser, api_key: ApiKey | None = None, slug: str | None = None
) -> list[int]:
    """Ids of the collections to search: all readable ones, or the one named by ``slug``.

    Raises ``NotFoundError`` for a collection that does not exist or that the caller (or its key)
    may not read, with the same message: a restricted collection's name cannot be probed.
    """
    readable = collections_readable_by(user=user, api_key=api_key)
    if not slug:
        return list(readable.values_list("pk", flat=True))
    return [readable_collection(readable=readable, slug=slug).pk]


def readable_collection(*, readable: QuerySet[Collection], slug: str) -> Collection:
    """The collection ``slug`` among ``readable``; ``NotFoundError`` alike whether it is unknown or unreadable."""
    collection = readable.filter(slug=slug).first()
    if collection is None:
        raise NotFoundError(unknown_collection_message(slug))
    return collection


def unknown_collection_message(slug: str) -> str:
    return f"Unknown collection: {slug}."
