"""The audit log as CSV on standard output: ``manage.py audit_export [--since YYYY-MM-DD]``."""

from __future__ import annotations

from datetime import date, datetime, time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from knowledge.services import audit


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"--since must be a date as YYYY-MM-DD (2026-01-31); got {value!r}") from None


class Command(BaseCommand):
    help = "Print the audit log as CSV, oldest first; --since keeps the events from that day (UTC) on."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--since", metavar="YYYY-MM-DD", help="only the events from this day on (UTC)")

    def handle(self, *args: Any, since: str | None, **options: Any) -> None:
        start = datetime.combine(_day(since), time.min, tzinfo=timezone.get_current_timezone()) if since else None
        audit.audit_write_csv(self.stdout, audit.audit_rows(since=start))
