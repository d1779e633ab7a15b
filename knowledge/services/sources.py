"""Sources that sync: a folder, a website or an S3 bucket kept in step with a collection.

A run lists everything the source holds (``ingestion.sources``), then compares it with what the source brought
before (``SourceItem``): a new item is ingested as a new document, a changed one (its content hash differs)
becomes the document's next version, a renamed one (a vanished item's bytes under a new key) keeps its document,
and a vanished one is deleted. The listing is complete before anything is changed: a source that cannot be
reached, or that lists nothing where it held documents (an unmounted share), fails its run with the reason and
removes nothing; so does a website crawl cut short by its page limit for what it did not reach.

Every document and its ``SourceItem`` are written in one transaction, so a run killed half-way leaves no
half-brought item: the next run (beat's, at ``every_minutes``; the admin's, ``manage.py sync`` or the API's)
takes over a run whose heartbeat stopped and brings what is still missing.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from ingestion.errors import IngestionError
from ingestion.sources import Item, Listing, SourceConfigError, SourceError, SourceUnreachable, source_from
from knowledge import task_dispatch
from knowledge.errors import KnowledgeError, SameVersionError, SourceBusyError, VersionPendingError
from knowledge.models import Document, Source, SourceItem, SourceRun
from knowledge.services import documents as document_services

if TYPE_CHECKING:
    from ingestion.sources import Source as Engine

log = logging.getLogger(__name__)

#: a run whose heartbeat is older than this was killed (its process died): the next run takes over
RUN_STALE_S = 300
#: runs kept per source (the admin shows the last ones); older ones are deleted when a run starts
RUNS_KEPT = 100
#: what a progress callback receives: (what happened, the item's key); "found" while listing
Progress = Callable[[str, str], None]


def _patterns(text: str) -> list[str]:
    return [pattern.strip() for pattern in text.split(",") if pattern.strip()]


def source_engine(source: Source) -> Engine:
    """The ``ingestion.sources`` engine of ``source``; ``SourceConfigError`` when its settings are not valid."""
    options: dict[str, Any] = {"max_bytes": settings.MAX_UPLOAD_MB * 1024 * 1024}
    if source.kind in (Source.Kind.FOLDER, Source.Kind.S3):
        options.update(include=_patterns(source.include), exclude=_patterns(source.exclude))
    if source.kind == Source.Kind.WEBSITE:
        options.update(max_depth=source.max_depth, max_pages=source.max_pages)
    if source.kind == Source.Kind.S3:
        options.update(
            endpoint_url=settings.S3_ENDPOINT_URL or None,
            region=settings.S3_REGION or None,
            access_key_id=settings.S3_ACCESS_KEY_ID or None,
            secret_access_key=settings.S3_SECRET_ACCESS_KEY or None,
        )
    return source_from(source.kind, source.location, options)


def source_check(source: Source) -> None:
    """Raise ``SourceConfigError`` (a sentence) when ``source`` cannot be built; nothing is contacted."""
    source_engine(source).close()


# --- runs ---------------------------------------------------------------------------------------------------


def source_run_start(source: Source, *, trigger: str) -> SourceRun:
    """Open a run of ``source`` (``SourceBusyError`` while a live one runs; a dead one is closed as interrupted)
    and schedule the next one."""
    now = timezone.now()
    with transaction.atomic():
        Source.objects.select_for_update().filter(pk=source.pk).first()
        running = source.runs.filter(status=SourceRun.Status.RUNNING).first()
        if running is not None:
            if now - running.heartbeat_at < timedelta(seconds=RUN_STALE_S):
                raise SourceBusyError(
                    f"A sync of {source.name} is already running (since {running.started_at:%H:%M:%S})."
                )
            _run_close(running, error="Interrupted: the process running it stopped; the next run took over.")
        run = SourceRun.objects.create(source=source, trigger=trigger)
        kept = source.runs.order_by("-started_at", "-pk").values_list("pk", flat=True)[:RUNS_KEPT]
        source.runs.exclude(pk__in=list(kept)).delete()
        source.next_run_at = now + timedelta(minutes=source.every_minutes) if source.every_minutes else None
        Source.objects.filter(pk=source.pk).update(next_run_at=source.next_run_at)
    return run


def _refuse_if_live(source: Source, running: SourceRun) -> None:
    if timezone.now() - running.heartbeat_at < timedelta(seconds=RUN_STALE_S):
        since = timezone.localtime(running.started_at)
        raise SourceBusyError(f"A sync of {source.name} is already running (since {since:%H:%M:%S}).")


def _run_close(run: SourceRun, *, error: str = "") -> SourceRun:
    run.status = SourceRun.Status.FAILED if error else SourceRun.Status.SUCCEEDED
    run.error = error
    run.finished_at = timezone.now()
    run.save()
    return run


def source_sync(source: Source, *, trigger: str = "command", progress: Progress | None = None) -> SourceRun:
    """Sync ``source`` now, in this process; returns its finished run (``failed`` with ``error`` when the source
    could not be listed, in which case nothing was changed). ``SourceBusyError`` while another run is live."""
    run = source_run_start(source, trigger=trigger)
    try:
        with source_engine(source) as engine:
            try:
                listing = _listing(engine, progress)
            except SourceUnreachable as exc:
                return _run_close(run, error=str(exc))
            held = {item.key: item for item in source.items.select_related("document")}
            if not listing.items and held:
                return _run_close(
                    run, error=f"The source listed nothing where it held {len(held)} documents: nothing was removed."
                )
            sync = _Sync(source, run, engine, listing, held, progress)
            sync.bring()
            sync.remove_vanished()
    except SourceConfigError as exc:
        return _run_close(run, error=str(exc))
    except Exception as exc:
        _run_close(run, error=f"The sync stopped: {exc}")
        raise
    run.found = len(listing.items)
    run.failed, run.failures = len(sync.failures), sync.failures[:200]
    log.info(
        "source %s synced: %d found, %d added, %d updated, %d removed, %d failed",
        source.name, run.found, run.added, run.updated, run.removed, run.failed,
    )  # fmt: skip
    return _run_close(run)


def _listing(engine: Engine, progress: Progress | None) -> Listing:
    found: list[Item] = []
    for item in engine.items():
        found.append(item)
        if progress:
            progress("found", item.key)
    return Listing(items=tuple(found), failures=tuple(engine.failures))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class _Sync:
    """One run's work once the source is listed: bring what is new or changed, then remove what vanished. The
    counts go on ``run``; ``failures`` lists ``{"key", "reason"}`` of what could not be listed or brought."""

    source: Source
    run: SourceRun
    engine: Engine
    listing: Listing
    held: dict[str, SourceItem]
    progress: Progress | None
    failures: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.failures = [{"key": f.key, "reason": f.reason} for f in self.listing.failures]
        self.listed = {item.key for item in self.listing.items}
        # what vanished from its key, by content: a new key with the same bytes is a rename, not a new document
        self.vanished = {known.sha256: known for key, known in self.held.items() if key not in self.listed}

    def _beat(self, outcome: str, key: str) -> None:
        SourceRun.objects.filter(pk=self.run.pk).update(heartbeat_at=timezone.now())
        if outcome in ("added", "updated", "removed"):
            setattr(self.run, outcome, getattr(self.run, outcome) + 1)
        if self.progress:
            self.progress(outcome, key)

    def bring(self) -> None:
        for item in self.listing.items:
            known = self.held.get(item.key)
            if known is not None and item.version and known.version == item.version:
                self._beat("unchanged", item.key)  # the marker says unchanged: nothing is downloaded
                continue
            try:
                with self.engine.fetched(item) as path:
                    outcome = self._bring_one(item, path, known)
            except VersionPendingError:
                outcome = "waiting"  # its previous new version is still being read: the next run brings this one
            except (SourceError, IngestionError, KnowledgeError) as exc:
                self.failures.append({"key": item.key, "reason": str(exc)})
                outcome = "failed"
            self._beat(outcome, item.key)

    def _bring_one(self, item: Item, path: Path, known: SourceItem | None) -> str:
        sha256 = _sha256(path)
        with transaction.atomic():
            if known is None and (moved := self.vanished.pop(sha256, None)) is not None:
                SourceItem.objects.filter(pk=moved.pk).update(
                    key=item.key, version=item.version, url=item.url, seen_at=timezone.now()
                )
                Document.objects.filter(pk=moved.document_id).update(
                    title=item.name[:300], origin_url=self.engine.link(item)
                )
                return "updated"
            if known is not None and known.sha256 == sha256:
                SourceItem.objects.filter(pk=known.pk).update(version=item.version, seen_at=timezone.now())
                return "unchanged"
            with path.open("rb") as handle:
                if known is None:
                    document = document_services.document_create(
                        file=handle, filename=item.name, collection=self.source.collection, check_type=True
                    )
                    SourceItem.objects.create(
                        source=self.source, key=item.key, document=document, version=item.version, sha256=sha256,
                        url=item.url,
                    )  # fmt: skip
                    outcome = "added"
                else:
                    try:
                        document = document_services.document_replace(
                            document=known.document, file=handle, filename=item.name, check_type=True
                        )
                    except SameVersionError:
                        document = known.document
                    SourceItem.objects.filter(pk=known.pk).update(
                        version=item.version, sha256=sha256, url=item.url, seen_at=timezone.now()
                    )
                    outcome = "updated"
            Document.objects.filter(pk=document.pk).update(origin_url=self.engine.link(item))
        return outcome

    def remove_vanished(self) -> None:
        cut_short = self.source.kind == Source.Kind.WEBSITE and len(self.listing.items) >= self.source.max_pages
        gone = [key for key in self.held if key not in self.listed]
        for known in SourceItem.objects.filter(source=self.source, key__in=gone).select_related("document"):
            if cut_short or self.listing.keeps(known.key):
                continue  # hidden by a failure or beyond the crawl's limit: not gone
            document_services.document_delete(document=known.document)
            self._beat("removed", known.key)


# --- scheduling ---------------------------------------------------------------------------------------------


def sources_due(*, now: Any = None) -> list[int]:
    """Ids of the enabled scheduled sources whose next run is due (never run counts as due)."""
    now = now or timezone.now()
    due = Source.objects.filter(enabled=True, every_minutes__gt=0)
    return [
        source.pk for source in due.only("pk", "next_run_at") if source.next_run_at is None or source.next_run_at <= now
    ]


def sources_dispatch_due() -> int:
    """Send a sync task for each due source (beat, every minute); a source's next run is set when it starts."""
    ids = sources_due()
    for source_id in ids:
        Source.objects.filter(pk=source_id).update(next_run_at=timezone.now() + timedelta(minutes=1))
        task_dispatch.source_sync(source_id=source_id, trigger="schedule")
    return len(ids)


def source_sync_request(source: Source, *, trigger: str) -> None:
    """Ask a worker to sync ``source`` now (the admin's action, the API); ``SourceBusyError`` while one runs."""
    running = source.runs.filter(status=SourceRun.Status.RUNNING).first()
    if running is not None:
        _refuse_if_live(source, running)
    task_dispatch.source_sync(source_id=source.pk, trigger=trigger)


def source_sync_task(*, source_id: int, trigger: str) -> dict[str, Any]:
    """The worker's side: sync the source if it still exists; a summary of the run."""
    source = Source.objects.filter(pk=source_id).first()
    if source is None:
        return {"ok": False, "error": "No such source."}
    try:
        run = source_sync(source, trigger=trigger)
    except SourceBusyError as exc:
        return {"ok": False, "error": exc.message}
    return {"ok": run.status == SourceRun.Status.SUCCEEDED, "run": run.pk, "error": run.error}
