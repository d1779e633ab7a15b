"""Rebuild the FAISS index from the database: ``manage.py rebuild_index``."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand

from knowledge.services import index as index_services


class Command(BaseCommand):
    help = "Rebuild the search index from the chunks of every ready document, with the configured embedder."

    def handle(self, *args: Any, **options: Any) -> None:
        bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(unit="chunk", file=sys.stderr)
        report = index_services.index_rebuild(progress=bar.update if bar else None)
        if bar is not None:
            bar.close()
        self.stdout.write(
            f"Index rebuilt: {report.vectors} vectors from {report.documents} documents (version {report.version})."
        )
