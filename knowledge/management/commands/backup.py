"""Back up the portal: ``manage.py backup FOLDER [--no-index]``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from knowledge.errors import KnowledgeError
from knowledge.services.backup import portal_backup


class Command(BaseCommand):
    help = "Write the database rows, the uploaded files and the index into FOLDER (a consistent snapshot)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("folder")
        parser.add_argument("--no-index", action="store_true", help="leave the index out (restore rebuilds it)")

    def handle(self, *args: Any, folder: str, no_index: bool, **options: Any) -> None:
        try:
            report = portal_backup(folder=Path(folder), include_index=not no_index)
        except KnowledgeError as exc:
            raise CommandError(exc.message) from exc
        index = f"{report.index_chunks} chunks of the search store" if report.index_chunks else "no search store"
        self.stdout.write(f"Backed up {report.documents} documents, {report.files} files, {index} to {folder}.")
