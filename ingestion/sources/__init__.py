"""Sources that sync: the engines that enumerate and download what a folder, a website or an S3 bucket holds.

A source knows nothing of documents or collections. The domain's sync service asks it two things:

* :meth:`Source.items` streams the :class:`Item` it finds now, each with a stable ``key`` and a cheap
  ``version`` marker. What could not be listed is recorded in :attr:`Source.failures` as a
  :class:`Failure` (an unreadable sub-folder, a broken link); the rest of the enumeration goes on. When
  the source as a whole cannot be reached (a missing folder, a site that is down, a refused bucket) the
  enumeration raises :class:`SourceUnreachable` before or instead of yielding anything trustworthy, and
  the service must remove nothing.
* :meth:`Source.fetch` downloads one item's content to a temporary file, streaming and under a size cap.

:meth:`Source.listing` drains :meth:`Source.items` into a :class:`Listing`, which also answers whether a
key the service holds but did not see must be kept (:meth:`Listing.keeps`): a held document under a
sub-folder that could not be read, or behind a link that timed out, has not vanished.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ingestion.sources.base import (
    DEFAULT_MAX_BYTES,
    KINDS,
    Failure,
    Item,
    Listing,
    Source,
    extension_for,
    mime_for_name,
)
from ingestion.sources.errors import ItemTooLarge, ItemUnavailable, SourceConfigError, SourceError, SourceUnreachable

__all__ = [
    "DEFAULT_MAX_BYTES",
    "KINDS",
    "Failure",
    "Item",
    "ItemTooLarge",
    "ItemUnavailable",
    "Listing",
    "Source",
    "SourceConfigError",
    "SourceError",
    "SourceUnreachable",
    "extension_for",
    "mime_for_name",
    "source_from",
]


def source_from(kind: str, location: str, options: Mapping[str, Any] | None = None) -> Source:
    """Build the source of ``kind`` ("folder", "website" or "s3") at ``location`` with its ``options``.

    ``location`` is a folder path, a start or sitemap URL, or ``bucket`` / ``bucket/prefix`` (``s3://`` may
    lead). ``options`` are the keyword arguments of :class:`~ingestion.sources.folder.FolderSource`,
    :class:`~ingestion.sources.website.WebsiteSource` or :class:`~ingestion.sources.s3.S3Source`; an unknown
    kind, option or value raises :class:`SourceConfigError`. Nothing is contacted here.
    """
    options = dict(options or {})
    if kind == "folder":
        from ingestion.sources.folder import FolderSource

        factory: Any = FolderSource
        target: Any = Path(location)
    elif kind == "website":
        from ingestion.sources.website import WebsiteSource

        factory, target = WebsiteSource, location
    elif kind == "s3":
        from ingestion.sources.s3 import S3Source

        bucket, _, prefix = location.removeprefix("s3://").partition("/")
        factory, target = S3Source, bucket
        if prefix:
            if options.get("prefix") not in (None, prefix):
                raise SourceConfigError("The bucket's prefix is given twice, in the location and the options")
            options["prefix"] = prefix
    else:
        raise SourceConfigError(f"Unknown source kind {kind!r}; expected one of {', '.join(KINDS)}")
    try:
        source: Source = factory(target, **options)
    except TypeError as error:
        raise SourceConfigError(f"Invalid options for a {kind} source: {error}") from error
    return source
