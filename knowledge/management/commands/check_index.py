"""Check that the search store and the database agree: ``manage.py check_index [--repair]``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from knowledge.services import index as index_services


def _sample(ids: list[int]) -> str:
    shown = ", ".join(str(i) for i in ids[:10])
    return shown + (f", … ({len(ids)} in all)" if len(ids) > 10 else "")


class Command(BaseCommand):
    help = "Report chunks without a vector and vectors without a chunk; --repair fixes both."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--repair", action="store_true", help="embed missing chunks and remove extra vectors")

    def handle(self, *args: Any, repair: bool, **options: Any) -> None:
        problem = index_services.index_verify()
        if problem:
            raise CommandError(f"{problem} Run `manage.py rebuild_index`.")
        report = index_services.index_check()
        self.stdout.write(f"{report.chunks} chunks of ready documents, {report.vectors} vectors in the search store.")
        if report.missing:
            self.stdout.write(f"Missing vectors for {len(report.missing)} chunk(s): {_sample(report.missing)}")
        if report.extra:
            self.stdout.write(f"Extra vectors with no chunk: {len(report.extra)}: {_sample(report.extra)}")
        if report.consistent:
            self.stdout.write("The search store and the database agree.")
            return
        if not repair:
            raise CommandError("The search store and the database differ; run with --repair to fix it.")
        after = index_services.index_repair()
        if not after.consistent:
            raise CommandError(
                f"Repair incomplete: {len(after.missing)} missing, {len(after.extra)} extra vectors remain."
            )
        self.stdout.write(f"Repaired: the search store now holds {after.vectors} vectors, one per chunk.")
