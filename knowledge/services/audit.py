"""The audit log (``AuditEvent``): who asked what, opened, downloaded, uploaded, replaced or deleted which
document, and who signed in.

Each event is written by the service that does the action, inside the action's transaction, never from a
log line. Names and ids are always kept; the question's text only when ``AUDIT_CONTENT`` is true.
``AUDIT_RETENTION_DAYS`` bounds how long an event is kept (:func:`audit_prune`, run by beat).
"""

from __future__ import annotations

import csv
import ipaddress
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from knowledge.models import AuditEvent

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser
    from django.http import HttpRequest

    from knowledge.models import ApiKey, Document

Action = AuditEvent.Action

#: the columns of the CSV export (the admin's and ``manage.py audit_export``'s)
CSV_COLUMNS = (
    "time",
    "action",
    "username",
    "user_id",
    "via",
    "api_key",
    "collections",
    "document_id",
    "document_title",
    "cited",
    "question",
    "ip_address",
)


def client_ip(request: HttpRequest | None) -> str:
    """The connection's address (``REMOTE_ADDR``), as the rate limits count it; "" when there is none."""
    address = request.META.get("REMOTE_ADDR", "") if request is not None else ""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return ""


def cited_of(sources: Iterable[Any]) -> list[dict[str, Any]]:
    """``{"document_id", "title", "page"}`` of each source (an ``answering.Source``), repeats left out."""
    cited: list[dict[str, Any]] = []
    for source in sources:
        entry = {"document_id": source.document_id, "title": source.title, "page": source.page}
        if entry not in cited:
            cited.append(entry)
    return cited


def audit_record(
    *,
    action: str,
    user: AbstractBaseUser | None = None,
    username: str = "",
    api_key: ApiKey | None = None,
    collections: Sequence[str] = (),
    document: Document | None = None,
    cited: Sequence[dict[str, Any]] = (),
    question: str = "",
    ip_address: str = "",
) -> AuditEvent:
    """Record one action. Call it inside the transaction of the action itself.

    ``username`` is taken from ``user`` when it is signed in (a failed sign-in gives the name as typed);
    ``question`` is dropped unless ``AUDIT_CONTENT`` is true.
    """
    known = user if user is not None and user.is_authenticated else None
    if known is not None:
        username = known.get_username()
    via = AuditEvent.Via.API_KEY if api_key is not None else AuditEvent.Via.SESSION
    return AuditEvent.objects.create(
        action=Action(action),
        user=known,
        username=username[:150],
        via=via,
        api_key=api_key,
        api_key_prefix=api_key.prefix if api_key is not None else "",
        collections=",".join(dict.fromkeys(collections))[:500],
        document_id=document.pk if document is not None else None,
        document_title=document.title if document is not None else "",
        cited=list(cited),
        question=question if settings.AUDIT_CONTENT else "",
        ip_address=ip_address or None,
    )


def audit_document(
    *,
    action: str,
    document: Document,
    user: AbstractBaseUser | None,
    api_key: ApiKey | None = None,
    ip_address: str = "",
) -> AuditEvent:
    """Record what ``user`` did with ``document``: opened, downloaded, uploaded, replaced or deleted it."""
    return audit_record(
        action=action,
        user=user,
        api_key=api_key,
        collections=[document.collection.slug],
        document=document,
        ip_address=ip_address,
    )


def on_user_logged_in(sender: Any, request: HttpRequest | None, user: AbstractBaseUser, **kwargs: Any) -> None:
    """``user_logged_in``: a sign-in, from the portal, the admin or any other backend."""
    audit_record(action=Action.SIGN_IN, user=user, ip_address=client_ip(request))


def on_user_login_failed(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any
) -> None:
    """``user_login_failed``: a refused sign-in, with the name as typed (never the password)."""
    username = str(credentials.get("username", ""))
    audit_record(action=Action.SIGN_IN_FAILED, username=username, ip_address=client_ip(request))


def audit_prune(now: datetime | None = None) -> int:
    """Delete the events older than ``AUDIT_RETENTION_DAYS`` (0: keep them all); the number deleted."""
    days = settings.AUDIT_RETENTION_DAYS
    if days <= 0:
        return 0
    cutoff = (now or timezone.now()) - timedelta(days=days)
    deleted, _ = AuditEvent.objects.filter(time__lt=cutoff).delete()
    return deleted


def audit_events(*, since: datetime | None = None) -> QuerySet[AuditEvent]:
    """The events from ``since`` on (all without it), oldest first."""
    events = AuditEvent.objects.order_by("time", "id")
    return events.filter(time__gte=since) if since is not None else events


def _cited_text(cited: list[dict[str, Any]]) -> str:
    parts = []
    for entry in cited:
        page = f" p.{entry['page']}" if entry.get("page") else ""
        parts.append(f"{entry.get('document_id')}:{entry.get('title', '')}{page}")
    return "; ".join(parts)


def audit_rows(since: datetime | None = None, *, events: QuerySet[AuditEvent] | None = None) -> Iterator[list[str]]:
    """The CSV rows of the events (``events``, else :func:`audit_events` from ``since``): the header first."""
    yield list(CSV_COLUMNS)
    for event in (events if events is not None else audit_events(since=since)).iterator():
        yield [
            event.time.isoformat(),
            event.action,
            event.username,
            str(event.user_id or ""),
            event.via,
            event.api_key_prefix,
            event.collections,
            str(event.document_id or ""),
            event.document_title,
            _cited_text(event.cited),
            event.question,
            event.ip_address or "",
        ]


def audit_write_csv(out: Any, rows: Iterable[list[str]]) -> None:
    """Write ``rows`` as CSV to the text stream ``out``.

    A cell that a spreadsheet would run as a formula (a question or a title starting with ``=``, ``+``,
    ``-``, ``@``, a tab or a carriage return) is written behind a ``'``, so opening the export runs nothing.
    """
    writer = csv.writer(out)
    for row in rows:
        writer.writerow([f"'{cell}" if cell.startswith(_FORMULA_STARTS) else cell for cell in row])


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
