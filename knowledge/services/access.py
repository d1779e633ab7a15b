"""Who may read what: the collections a request may search, resolved once per request."""

from __future__ import annotations

from typing import TYPE_CHECKING

from knowledge.errors import NotFoundError, PermissionDeniedError
from knowledge.models import Collection
from knowledge.selectors import collections_readable_by

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

    from knowledge.models import ApiKey


def collection_ids_for(
    *, user: AbstractBaseUser | AnonymousUser, api_key: ApiKey | None = None, slug: str | None = None
) -> list[int]:
    """Ids of the collections to search: all readable ones, or the one named by ``slug``.

    Raises ``NotFoundError`` for an unknown slug and ``PermissionDeniedError`` for a collection
    the caller (or its key) may not read.
    """
    readable = collections_readable_by(user=user, api_key=api_key)
    if not slug:
        return list(readable.values_list("pk", flat=True))
    collection = Collection.objects.filter(slug=slug).first()
    if collection is None:
        raise NotFoundError(f"Unknown collection: {slug}.")
    if not readable.filter(pk=collection.pk).exists():
        raise PermissionDeniedError(f"You may not read the collection {slug}.")
    return [collection.pk]
