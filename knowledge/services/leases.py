"""Leases: which process is working on a document, or on a page range of one, right now.

A run takes the lease of the row it works on (``Document.lease_until`` or ``DocumentPart.lease_until``)
and a thread of its process renews it every ``RAG_LEASE_S / 4`` seconds until the run ends. A lease
that ran out therefore means its process died (kill -9, the OOM killer, a lost machine) without an
outcome: the next delivery, or ``documents_recover`` (beat), takes it over and counts the dead run.

Taking and renewing compare the value last written (compare-and-set), so two processes never both
hold one lease, and a process that lost its lease (it stalled past it) stops renewing it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, connections
from django.utils import timezone

from knowledge.models import Document, DocumentPart

logger = logging.getLogger(__name__)

_Model = type[Document] | type[DocumentPart]
#: the leases this process holds: a run that calls another (a whole document planned as parts, run in
#: process) works under the lease it already has
_held: dict[tuple[str, int], Lease] = {}


def lease_period() -> timedelta:
    """How long a lease lasts without being renewed."""
    return timedelta(seconds=settings.RAG_LEASE_S)


@dataclass
class Lease:
    """A lease this process holds on one row, renewed by a thread until :meth:`release`."""

    model: _Model
    pk: int
    until: datetime
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def start(self) -> Lease:
        self._thread = threading.Thread(target=self._renew, name=f"lease-{self.model.__name__}-{self.pk}", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        every = settings.RAG_LEASE_S / 4
        try:
            while not self._stop.wait(every):
                until = timezone.now() + lease_period()
                try:
                    with self._lock:
                        if not self.model.objects.filter(pk=self.pk, lease_until=self.until).update(lease_until=until):
                            return  # the run ended (its outcome cleared the lease) or another took it over
                        self.until = until
                except DatabaseError:  # a busy database (SQLite's lock): the next beat tries again
                    logger.warning("Could not renew the lease of %s %s", self.model.__name__, self.pk, exc_info=True)
        finally:
            connections.close_all()  # this thread's own connections

    def release(self) -> None:
        """Stop renewing and give the lease back (a no-op when the run's outcome already cleared it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=settings.RAG_LEASE_S)
        try:
            with self._lock:
                self.model.objects.filter(pk=self.pk, lease_until=self.until).update(lease_until=None)
        except DatabaseError:  # it runs out by itself; the recovery then finds the work done or sends it again
            logger.warning("Could not release the lease of %s %s", self.model.__name__, self.pk, exc_info=True)


@dataclass(frozen=True)
class Claim:
    """The outcome of asking for a row's lease."""

    #: the lease, when this process got it (or already held it)
    lease: Lease | None = None
    #: the row no longer exists
    gone: bool = False
    #: the lease taken had run out: the run that held it died without an outcome
    took_over: bool = False
    #: another live run holds the lease: seconds until it runs out unless renewed
    busy_for: float = 0.0


@contextmanager
def leased(model: _Model, pk: int) -> Iterator[Claim]:
    """Hold the lease of one ``Document`` or ``DocumentPart`` row for the duration of the block.

    Yields a :class:`Claim`: with ``lease`` set the block may work on the row; otherwise another
    process is working on it (``busy_for``) or the row is gone. Nested blocks for the same row share
    the outer lease.
    """
    key = (model.__name__, pk)
    if key in _held:
        yield Claim(lease=_held[key])
        return
    claim = _take(model, pk)
    if claim.lease is None:
        yield claim
        return
    _held[key] = claim.lease
    try:
        yield claim
    finally:
        del _held[key]
        claim.lease.release()


def _take(model: _Model, pk: int) -> Claim:
    for _ in range(5):  # another process may take or renew it between the read and the write
        row = model.objects.filter(pk=pk).values("lease_until").first()
        if row is None:
            return Claim(gone=True)
        held = row["lease_until"]
        now = timezone.now()
        if held is not None and held > now:
            return Claim(busy_for=(held - now).total_seconds())
        until = now + lease_period()
        if model.objects.filter(pk=pk, lease_until=held).update(lease_until=until):
            return Claim(lease=Lease(model, pk, until).start(), took_over=held is not None)
    return Claim(busy_for=1.0)


def lease_take_over(model: _Model, pk: int, expired: datetime) -> bool:
    """Clear a lease that ran out at ``expired`` (its run died); False when another process did it first."""
    return bool(model.objects.filter(pk=pk, lease_until=expired).update(lease_until=None))
