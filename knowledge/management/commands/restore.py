"""Restore a backup into an empty instance: ``manage.py restore FOLDER [--rebuild-index]``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from knowledge.errors import KnowledgeError
from knowledge.services.backup import portal_restore


class Command(BaseCommand):
    help = "Load a backup made by `manage.py backup` into this instance (migrated, with no documents yet)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("folder")
        parser.add_argument(
            "--rebuild-index", action="store_true", help="re-embed from the database instead of copying the index"
        )

    def handle(self, *args: Any, folder: str, rebuild_index: bool, **options: Any) -> None:
        try:
            report = portal_restore(folder=Path(folder), rebuild_index=rebuild_index)
        except KnowledgeError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(
            f"Restored {report.documents} documents and {report.files} files; {report.index_chunks} chunks searchable."
        )
