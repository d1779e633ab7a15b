"""Sync the document sources now: ``manage.py sync [SOURCE ...]``."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Q
from tqdm import tqdm

from knowledge.errors import SourceBusyError
from knowledge.models import Source, SourceRun
from knowledge.services import sources as source_services


class Command(BaseCommand):
    help = (
        "Sync document sources (folders, websites, S3 buckets) now, in this process: new items are ingested by the "
        "workers, changed ones become new versions, vanished ones are removed. Without SOURCE, every enabled source."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("sources", nargs="*", metavar="SOURCE", help="a source's name or id (default: all enabled)")

    def handle(self, *args: Any, **options: Any) -> None:
        names: list[str] = options["sources"]
        if names:
            wanted = Q(name__in=names) | Q(pk__in=[int(name) for name in names if name.isdigit()])
            chosen = list(Source.objects.filter(wanted))
            missing = sorted(set(names) - {s.name for s in chosen} - {str(s.pk) for s in chosen})
            if missing:
                raise CommandError(f"No such source: {', '.join(missing)}.")
        else:
            chosen = list(Source.objects.filter(enabled=True))
            if not chosen:
                self.stdout.write("No source to sync: add one in the admin (Knowledge › Sources).")
                return
        failed = 0
        for source in chosen:
            failed += not self._sync(source)
        if failed:
            raise CommandError(f"{failed} of {len(chosen)} sources could not be synced.")

    def _sync(self, source: Source) -> bool:
        # a progress bar on standard error: items found while listing, then each item brought
        bar = tqdm(desc=source.name, unit="item", file=sys.stderr, mininterval=1.0 if sys.stderr.isatty() else 10.0)

        def progress(event: str, key: str) -> None:
            if event == "found":
                bar.total = (bar.total or 0) + 1
                bar.refresh()
            elif event != "removed":
                bar.update()

        try:
            run = source_services.source_sync(source, trigger="command", progress=progress)
        except SourceBusyError as exc:
            self.stderr.write(exc.message)
            return False
        finally:
            bar.close()
        if run.status == SourceRun.Status.FAILED:
            self.stderr.write(f"{source.name}: failed: {run.error}")
            return False
        self.stdout.write(
            f"{source.name}: {run.found} found, {run.added} added, {run.updated} updated, {run.removed} removed, "
            f"{run.failed} failed."
        )
        for failure in run.failures:
            self.stdout.write(f"  {failure['key']}: {failure['reason']}")
        return True
