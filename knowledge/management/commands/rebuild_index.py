"""Rebuild the search store from the database: ``manage.py rebuild_index``."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand
from tqdm import tqdm

from knowledge.models import DOCUMENT_ANSWERING_STATUSES, Chunk
from knowledge.services import index as index_services


class Command(BaseCommand):
    help = (
        "Rebuild the search store (RAG_SEARCH_BACKEND) from the chunks of every ready document, with the configured "
        "embedder. Questions are answered from the old contents until the new ones replace them."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        total = Chunk.objects.filter(document__status__in=DOCUMENT_ANSWERING_STATUSES).count()
        # a progress bar on standard error, also when it is not a terminal (a log shows where a long rebuild is)
        bar = tqdm(total=total, unit="chunk", file=sys.stderr, mininterval=1.0 if sys.stderr.isatty() else 10.0)
        try:
            report = index_services.index_rebuild(progress=bar.update)
        finally:
            bar.close()
        self.stdout.write(
            f"Search store ({report.backend}) rebuilt: {report.vectors} chunks from {report.documents} documents."
        )
        if report.requeued:
            self.stdout.write(
                f"{report.requeued} documents that failed while the store awaited this rebuild were queued again."
            )
