"""What every run on a document shares, whole, as page ranges or in bulk: its outcome, what its file is, the
writer of its chunks, and the one function that marks it ready and the one that fails it.

Below :mod:`knowledge.services.documents` (whole files, the choice between whole and parts) and
:mod:`knowledge.services.document_parts` (page ranges), which both use it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from ingestion.errors import IngestionError
from knowledge.models import Chunk, Document, DocumentPart
from knowledge.observability import instrumentation as observe
from knowledge.services import engines

if TYPE_CHECKING:
    from ingestion.language import PassageTerms
    from ingestion.parsing import FileFacts
    from ingestion.store import PassageEmbeddings, StoreWriter
    from ingestion.types import ParsedDocument

logger = logging.getLogger(__name__)


#: the status of a delivery that found another live run working on the document: try again later
BUSY = "busy"


@dataclass(frozen=True)
class ProcessOutcome:
    document_id: int
    status: str
    error: str
    chunks: int
    pages: int | None
    timings: dict[str, float]
    #: planned as this many page ranges, each sent as its own task (status "split")
    parts: int = 0
    #: status "busy": seconds until the other run's lease runs out unless it renews it
    retry_in: float = 0.0

    @classmethod
    def of(cls, document: Document, timings: dict[str, float]) -> ProcessOutcome:
        """Where ``document`` stands after a run that spent ``timings`` (seconds per stage)."""
        return cls(document.pk, document.status, document.error, document.chunk_count, document.page_count, timings)


def document_inspect(*, document: Document, scans: bool = False) -> FileFacts:
    """What the document's file is (type, PDF pages, with ``scans`` the pages that need OCR).

    Read in a child process under ``RAG_INGEST_MEMORY_MB``, as the parse is: counting the pages of a
    hostile PDF can inflate hundreds of megabytes. Raises ``IngestionError`` (``MemoryLimitError``
    included) when the file cannot be inspected.
    """
    from ingestion.parsing import inspect_file
    from ingestion.sandbox import run_limited

    path = Path(document.file.path)
    name = document.original_name
    mime = document.mime_type or None  # sniffed at upload: not sniffed again
    return run_limited(
        lambda: inspect_file(path, filename=name, scans=scans, mime_type=mime), memory_mb=settings.RAG_INGEST_MEMORY_MB
    )


def document_chunks_write(
    writer: StoreWriter,
    *,
    document_id: int,
    collection_id: int,
    chunks: Sequence[Chunk],
    embeddings: PassageEmbeddings,
    terms: Sequence[PassageTerms] | None = None,
) -> int:
    """Replace a document's chunks and their search entries with ``chunks`` (unsaved, in order), their
    ``embeddings`` and (when the pipeline computed it) their lexical analysis ``terms``.

    Call it inside ``with store.writer() as writer, transaction.atomic():``: the postgres store writes in
    that transaction, and the faiss store's writer lock is held until the database has committed.
    Returns how many chunks were written.
    """
    Chunk.objects.filter(document_id=document_id).delete()
    rows = Chunk.objects.bulk_create(chunks)
    writer.remove_document(document_id)
    writer.add(
        [row.pk for row in rows],
        embeddings,
        document_id=document_id,
        collection_id=collection_id,
        texts=[row.text for row in rows],
        terms=terms,
    )
    return len(rows)


def document_mark_ready(
    document: Document,
    *,
    parsed: ParsedDocument,
    chunk_count: int,
    embedder: str,
) -> None:
    """Mark a document ready with what its parse found: the one place a document becomes ready, whether it was
    processed whole, as page ranges or in bulk. Call it in the transaction that wrote its chunks."""
    Document.objects.filter(pk=document.pk).update(
        status=Document.Status.READY,
        stage="",
        error="",
        lease_until=None,
        mime_type=parsed.mime_type,
        page_count=parsed.page_count,
        chunk_count=chunk_count,
        ocr_pages=list(parsed.ocr_pages),
        warnings=list(parsed.warnings),
        embedder=embedder,
        processed_at=timezone.now(),
        title=document.title or parsed.title or document.original_name,
    )


def document_mark_failed(document_id: int, reason: str) -> None:
    """Mark a document failed with the sentence a person reads (its chunks and vectors are the caller's)."""
    Document.objects.filter(pk=document_id).update(
        status=Document.Status.FAILED,
        stage="",
        error=reason,
        chunk_count=0,
        lease_until=None,
        processed_at=timezone.now(),
    )


def document_fail(document_id: int, reason: str) -> None:
    """Mark a document failed and make sure nothing of it stays in the table or the index."""
    try:
        with engines.get_store().writer() as writer, transaction.atomic():
            writer.remove_document(document_id)
            Chunk.objects.filter(document_id=document_id).delete()
    except IngestionError:
        logger.exception("Could not remove the vectors of failed document %s", document_id)
        Chunk.objects.filter(document_id=document_id).delete()
    document_mark_failed(document_id, reason)


def document_count_lost_run(*, document_id: int) -> bool:
    """Count a run on the document that died without an outcome; True when that failed the document.

    After ``RAG_MAX_DELIVERIES`` such runs the document is failed with the reason instead of being read
    again: a file that kills or exhausts every worker it is given to must not go round forever.
    """
    Document.objects.filter(pk=document_id).update(lost_runs=F("lost_runs") + 1)
    lost = Document.objects.filter(pk=document_id).values_list("lost_runs", flat=True).first()
    logger.warning("A run on document %s ended with its worker (%s so far)", document_id, lost)
    if lost is None or lost < settings.RAG_MAX_DELIVERIES:
        return False
    DocumentPart.objects.filter(document_id=document_id).delete()
    observe.ingestion_failed("worker_lost")
    document_fail(
        document_id,
        f"This document stopped the worker {lost} times while being read (it may be damaged or built to "
        "exhaust memory); it was not read again.",
    )
    return True
