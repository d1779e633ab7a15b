"""What every run on a document shares, whole, as page ranges or in bulk: its outcome, which file it reads,
the writer of its chunks, and the one function that marks it ready and the one that fails it.

Versions: a run reads the document's newest version waiting to be processed (see :func:`document_source`),
else its current one. Marking it ready switches the document to that version in the transaction that wrote
its chunks; a new version that fails leaves the current one answering (:func:`document_mark_failed`).

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
from knowledge.models import Chunk, Document, DocumentPart, DocumentVersion
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


#: statuses of a version waiting for, or in, a run
_VERSION_ACTIVE = (DocumentVersion.Status.QUEUED, DocumentVersion.Status.PROCESSING)


@dataclass(frozen=True)
class IngestSource:
    """The file a run on a document reads: its pending new version's, else its current version's."""

    path: Path
    name: str
    #: sniffed at upload (not sniffed again); "" when unknown
    mime_type: str
    version: int


def document_pending_version(document_id: int, current: int) -> DocumentVersion | None:
    """The document's newest version after ``current`` still waiting for, or in, a run (None when none)."""
    return (
        DocumentVersion.objects.filter(document_id=document_id, number__gt=current, status__in=_VERSION_ACTIVE)
        .order_by("-number")
        .first()
    )


def document_source(document: Document) -> IngestSource:
    """What a run on ``document`` reads: the file of its pending new version if it has one, else its own."""
    pending = document_pending_version(document.pk, document.version)
    if pending is not None:
        return IngestSource(Path(pending.file.path), pending.original_name, pending.mime_type, pending.number)
    return IngestSource(Path(document.file.path), document.original_name, document.mime_type, document.version)


def document_mark_processing(*document_ids: int) -> None:
    """The version a run starts on is ``processing`` (the documents' own status is the caller's)."""
    DocumentVersion.objects.filter(document_id__in=document_ids, status=DocumentVersion.Status.QUEUED).update(
        status=DocumentVersion.Status.PROCESSING
    )


def document_inspect(*, document: Document, scans: bool = False) -> FileFacts:
    """What the document's file is (type, PDF pages, with ``scans`` the pages that need OCR).

    Read in a child process under ``RAG_INGEST_MEMORY_MB``, as the parse is: counting the pages of a
    hostile PDF can inflate hundreds of megabytes. Raises ``IngestionError`` (``MemoryLimitError``
    included) when the file cannot be inspected.
    """
    from ingestion.parsing import inspect_file
    from ingestion.sandbox import run_limited

    source = document_source(document)
    path, name = source.path, source.name
    mime = source.mime_type or None  # sniffed at upload: not sniffed again
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


class OutdatedRunError(Exception):
    """A run read a version that is no longer the one to make ready (a newer file came meanwhile): what it
    wrote is rolled back, and the newer version's own run does the work."""


def document_mark_ready(
    document: Document,
    *,
    parsed: ParsedDocument,
    chunk_count: int,
    embedder: str,
    version: int | None = None,
) -> None:
    """Mark a document ready with what its parse found: the one place a document becomes ready, whether it was
    processed whole, as page ranges or in bulk. Call it in the transaction that wrote its chunks.

    When the run read a pending new version, the document switches to it here: its file, name, size and hash
    become the version's, the version is ``ready`` and the previous one ``replaced`` (its chunks were replaced
    by the caller in this transaction). ``version`` is the number the run read (see :func:`document_source`);
    ``OutdatedRunError`` when that is no longer the version to make ready.
    """
    current = Document.objects.filter(pk=document.pk).values_list("version", flat=True).first()
    if current is None:
        raise OutdatedRunError(f"document {document.pk} is gone")
    pending = document_pending_version(document.pk, current)
    target = pending.number if pending is not None else current
    if version is not None and version != target:
        raise OutdatedRunError(f"document {document.pk}: the run read version {version}, version {target} is due")
    now = timezone.now()
    switched: dict[str, object] = {}
    if pending is not None:
        DocumentVersion.objects.filter(document_id=document.pk).exclude(number=pending.number).filter(
            status__in=(DocumentVersion.Status.READY, *_VERSION_ACTIVE)
        ).update(status=DocumentVersion.Status.REPLACED)
        switched = {
            "version": pending.number,
            "file": pending.file.name,
            "original_name": pending.original_name,
            "size": pending.size,
            "sha256": pending.sha256,
        }
    DocumentVersion.objects.filter(document_id=document.pk, number=target).update(
        status=DocumentVersion.Status.READY,
        error="",
        mime_type=parsed.mime_type,
        page_count=parsed.page_count,
        chunk_count=chunk_count,
        ready_at=now,
    )
    name = str(switched.get("original_name") or document.original_name)
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
        processed_at=now,
        title=document.title or parsed.title or name,
        **switched,
    )


def document_mark_failed(document_id: int, reason: str) -> bool:
    """Record a failed run with the sentence a person reads; True when the document keeps answering.

    A new version that fails while the current one is ready is marked failed with its reason, and the document
    is ready again on its current version (its chunks stay). Otherwise the document is failed, with its
    version (its chunks and vectors are the caller's to remove).
    """
    current = Document.objects.filter(pk=document_id).values_list("version", flat=True).first()
    if current is None:
        return False
    pending = document_pending_version(document_id, current)
    now = timezone.now()
    if (
        pending is not None
        and DocumentVersion.objects.filter(
            document_id=document_id, number=current, status=DocumentVersion.Status.READY
        ).exists()
    ):
        DocumentVersion.objects.filter(pk=pending.pk).update(status=DocumentVersion.Status.FAILED, error=reason)
        Document.objects.filter(pk=document_id).update(
            status=Document.Status.READY, stage="", error="", lease_until=None, updated_at=now
        )
        return True
    DocumentVersion.objects.filter(document_id=document_id, number=current).update(
        status=DocumentVersion.Status.FAILED, error=reason, chunk_count=0
    )
    Document.objects.filter(pk=document_id).update(
        status=Document.Status.FAILED,
        stage="",
        error=reason,
        chunk_count=0,
        lease_until=None,
        processed_at=now,
    )
    return False


def document_fail(document_id: int, reason: str) -> None:
    """Fail a run on a document: a new version fails alone (the current one keeps answering); otherwise the
    document is failed and nothing of it stays in the table or the index."""
    with transaction.atomic():
        if document_mark_failed(document_id, reason):
            return
    try:
        with engines.get_store().writer() as writer, transaction.atomic():
            writer.remove_document(document_id)
            Chunk.objects.filter(document_id=document_id).delete()
    except IngestionError:
        logger.exception("Could not remove the vectors of failed document %s", document_id)
        Chunk.objects.filter(document_id=document_id).delete()


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
