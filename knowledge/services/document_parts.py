"""Big PDFs processed as page ranges, one task each, so one big file does not hold one worker for its length.

A text PDF with more than ``RAG_SPLIT_PAGES`` pages is planned as parts of that many pages
(:func:`document_split`); a PDF with pages that need OCR, as parts of ``RAG_SPLIT_OCR_PAGES`` pages
read with OCR by the workers of the ``ocr`` queue. Each part parses, chunks and embeds its pages and
keeps the result in its ``DocumentPart`` row (:func:`document_part_process`); the part that finds
every part done writes all the chunks and vectors as
:func:`~knowledge.services.documents.document_process` does (one index writer session held until the
database has committed), marks the document ready and deletes the parts.

A plan is current while its parts exist and the document is ``processing``: a new plan or a
whole-file run deletes the parts, a failure deletes them and marks the document (or its new version)
failed, a new version or a reingest makes the document ``queued``, a delete removes everything; the
part tasks of an outdated plan then do nothing.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from ingestion.errors import EmptyDocumentError, IngestionError
from ingestion.types import ParsedDocument
from knowledge import task_dispatch
from knowledge.models import Chunk, Document, DocumentPart
from knowledge.observability import instrumentation as observe
from knowledge.services import document_runs, engines, leases
from knowledge.services.document_runs import ProcessOutcome

if TYPE_CHECKING:
    from ingestion.parsing import FileFacts
    from ingestion.pipeline import PipelineOptions
    from ingestion.sandbox import Limited
    from ingestion.store import PassageEmbeddings, StoreIdentity

logger = logging.getLogger(__name__)

PDF = "application/pdf"
#: the status of a part task that had nothing to do (outdated plan, document gone)
SKIPPED = "skipped"
_STAGE_MAX = 32  # Document.stage's max_length


def document_split_ranges(
    *, document: Document, ocr: bool, facts: FileFacts | None = None, scans: bool | None = None
) -> tuple[list[range], bool]:
    """The page ranges (1-based) ``document`` is processed in ([] when whole), and whether they need OCR.

    Only a PDF with more than ``RAG_SPLIT_PAGES`` pages (and at most ``RAG_MAX_PAGES``) is split. With
    ``ocr``, a PDF with pages for OCR to read is split in ranges of ``RAG_SPLIT_OCR_PAGES`` pages instead.
    The file is read in a memory-limited child (see ``document_runs.document_inspect``), unless the caller
    already did: ``facts``, with ``scans`` when it already knows whether the file has pages for OCR (then its
    pages are not looked through again).
    """
    if facts is None:
        try:
            facts = document_runs.document_inspect(document=document, scans=ocr and settings.RAG_OCR and scans is None)
        except (IngestionError, OSError, ValueError):
            return [], False  # processed whole, which reports the problem
    if scans is None:
        scans = bool(facts.scan_pages)
    if facts.mime_type != PDF or facts.page_count is None:
        return [], False
    count = facts.page_count
    if count > settings.RAG_MAX_PAGES:
        return [], False
    size = settings.RAG_SPLIT_OCR_PAGES if scans else settings.RAG_SPLIT_PAGES
    if size <= 0 or count <= size:
        return [], scans
    return [range(first, min(first + size, count + 1)) for first in range(1, count + 1, size)], scans


def document_split(
    *, document_id: int, ocr: bool, dispatch: bool = True, facts: FileFacts | None = None, scans: bool | None = None
) -> list[int]:
    """Plan a big PDF as parts and return their ids in page order; [] when it is processed whole.

    The document becomes ``processing``; a previous plan's parts are dropped. With ``dispatch`` one
    ``knowledge.document_ingest_part`` task per part (``knowledge.document_ocr_part`` for a scan, on the
    ``ocr`` queue) is sent once the plan is committed.
    """
    document = Document.objects.filter(pk=document_id).first()
    if document is None:
        return []
    ranges, scans = document_split_ranges(document=document, ocr=ocr, facts=facts, scans=scans)
    if not ranges:
        return []
    with transaction.atomic():
        locked = Document.objects.select_for_update().filter(pk=document_id).first()
        if locked is None:
            return []
        DocumentPart.objects.filter(document_id=document_id).delete()
        parts = DocumentPart.objects.bulk_create(
            DocumentPart(document_id=document_id, number=number, first_page=pages[0], last_page=pages[-1], ocr=scans)
            for number, pages in enumerate(ranges, 1)
        )
        Document.objects.filter(pk=document_id).update(
            status=Document.Status.PROCESSING,
            stage=f"split into {len(parts)} parts"[:_STAGE_MAX],
            error="",
            attempts=locked.attempts + 1,
            updated_at=timezone.now(),
        )
        document_runs.document_mark_processing(document_id)
        part_ids = [part.pk for part in parts]
        if dispatch:
            transaction.on_commit(lambda: _send(document_id, part_ids, ocr=scans))
    return part_ids


def document_parts_redispatch_stale(*, cutoff: datetime) -> int:
    """Send again the pending parts no process works on of every split document with no progress since ``cutoff``.

    Returns how many documents had parts sent. A part delivered twice is harmless (it is idempotent).
    """
    stale = list(
        Document.objects.filter(
            status=Document.Status.PROCESSING,
            updated_at__lt=cutoff,
            parts__status=DocumentPart.Status.PENDING,
            parts__lease_until__isnull=True,
        )
        .distinct()
        .values_list("pk", flat=True)
    )
    for document_id in stale:
        # the document's clock restarts: the parts get a whole period before being sent again
        Document.objects.filter(pk=document_id).update(updated_at=timezone.now())
        pending = list(
            DocumentPart.objects.filter(
                document_id=document_id, status=DocumentPart.Status.PENDING, lease_until__isnull=True
            ).values_list("pk", "ocr")
        )
        logger.warning(
            "Split document %s made no progress: sending its %d pending parts again", document_id, len(pending)
        )
        # the parts of one plan all share its OCR flag (see document_split)
        send = functools.partial(_send, document_id, [pk for pk, _ in pending], ocr=any(ocr for _, ocr in pending))
        with transaction.atomic():
            transaction.on_commit(send)
    return len(stale)


def document_parts_recover(*, now: datetime) -> int:
    """Send again each part whose lease ran out before ``now`` (its worker died); return how many.

    Each is a lost run of its document (``document_runs.document_count_lost_run``), which may fail it.
    """
    expired = DocumentPart.objects.filter(lease_until__lt=now, document__status=Document.Status.PROCESSING).values_list(
        "pk", "document_id", "lease_until", "ocr"
    )
    sent = 0
    for part_id, document_id, until, ocr in list(expired):
        if not leases.lease_take_over(DocumentPart, part_id, until):
            continue  # a new delivery took it over first
        logger.warning("The worker processing part %s of document %s stopped; sending it again", part_id, document_id)
        if document_runs.document_count_lost_run(document_id=document_id):
            continue
        _send(document_id, [part_id], ocr=ocr)
        sent += 1
    return sent


def _send(document_id: int, part_ids: Sequence[int], *, ocr: bool) -> None:
    try:
        for part_id in part_ids:
            task_dispatch.document_part(document_id=document_id, part_id=part_id, ocr=ocr)
    except Exception:  # the broker is down: beat sends the pending parts again later
        logger.exception("Could not queue the parts of document %s; they are sent again later", document_id)


@observe.observe_ingestion
def document_part_process(
    *, document_id: int, part_id: int, progress: Callable[[str], None] | None = None
) -> ProcessOutcome:
    """Parse, chunk and embed one part of a split document; the part that completes the set indexes it.

    Idempotent: a part already done is not processed again, and a part of an outdated plan (the
    document was deleted, replaced, reingested or failed meanwhile) does nothing (status "skipped").
    A permanent ingestion error fails the whole document with its reason and leaves no chunk, vector
    or part behind; transient errors propagate so the task is retried.
    """
    return _part_run(document_id=document_id, part_id=part_id, progress=progress)


def document_parts_process(
    *, document_id: int, part_ids: Sequence[int], ocr: bool = True, progress: Callable[[str], None] | None = None
) -> ProcessOutcome:
    """Process the parts of a split document one after the other in this process (no worker).

    The next part's pages are parsed (in their memory-limited child) while this part's chunks are embedded,
    and every part is read with OCR where a page needs it when ``ocr`` (the plan did not look for such pages).
    """
    timings: dict[str, float] = {}
    ahead = _InProcess(part_ids, ocr=ocr)
    try:
        for part_id in part_ids:
            outcome = _part_run(document_id=document_id, part_id=part_id, progress=progress, ahead=ahead)
            for stage, seconds in outcome.timings.items():
                timings[stage] = timings.get(stage, 0.0) + seconds
            if outcome.status != Document.Status.PROCESSING:
                break
    finally:
        ahead.close()
    return _outcome(document_id, timings)


class _InProcess:
    """The parts of one document run in sequence by this process: the parse of each next part is started
    (:func:`ingestion.pipeline.parse_ahead`) when the part before it starts embedding."""

    def __init__(self, part_ids: Sequence[int], *, ocr: bool) -> None:
        self.ocr = ocr
        self._following = dict(itertools.pairwise(part_ids))
        self._started: dict[int, Limited[ParsedDocument]] = {}

    def parsing(self, part_id: int) -> Limited[ParsedDocument] | None:
        return self._started.pop(part_id, None)

    def start_next(self, part_id: int) -> None:
        from ingestion.pipeline import parse_ahead

        following = self._following.get(part_id)
        part = (
            DocumentPart.objects.select_related("document")
            .filter(pk=following, status=DocumentPart.Status.PENDING)
            .first()
        )
        if part is not None:
            source = document_runs.document_source(part.document)
            self._started[part.pk] = parse_ahead(
                source.path,
                options=_part_options(part, ocr=self.ocr),
                filename=source.name,
                mime_type=source.mime_type or None,
                background=True,
            )

    def close(self) -> None:
        for parsing in self._started.values():  # the run stopped before these parts: their parse is not wanted
            parsing.cancel()
        self._started.clear()


def _part_options(part: DocumentPart, *, ocr: bool) -> PipelineOptions:
    return replace(engines.pipeline_options(ocr=ocr), pages=range(part.first_page, part.last_page + 1))


def _part_run(
    *, document_id: int, part_id: int, progress: Callable[[str], None] | None, ahead: _InProcess | None = None
) -> ProcessOutcome:
    # The part's lease is held until the run ends, assembling the document included.
    with leases.leased(DocumentPart, part_id) as claim:
        if claim.gone:
            return _skipped(document_id)
        if claim.lease is None:
            return replace(_skipped(document_id), status=document_runs.BUSY, retry_in=claim.busy_for + 1)
        if claim.took_over and document_runs.document_count_lost_run(document_id=document_id):
            return _outcome(document_id, {})
        return _part_run_leased(document_id=document_id, part_id=part_id, progress=progress, ahead=ahead)


def _part_run_leased(
    *, document_id: int, part_id: int, progress: Callable[[str], None] | None, ahead: _InProcess | None
) -> ProcessOutcome:
    part = DocumentPart.objects.select_related("document").filter(pk=part_id, document_id=document_id).first()
    if part is None or part.document.status != Document.Status.PROCESSING:
        return _skipped(document_id)

    timings: dict[str, float] = {}
    if part.status == DocumentPart.Status.PENDING:
        total = DocumentPart.objects.filter(document_id=document_id).count()

        def notify(stage: str) -> None:
            observe.ingestion_stage(stage)
            _set_stage(document_id, f"{stage} (part {part.number} of {total})")
            if progress:
                progress(stage)

        try:
            timings = _part_prepare(part, notify, ahead)
        except IngestionError as exc:
            if exc.transient:
                raise
            return _part_failed(document_id, part_id, exc, part=part)
        except Exception as exc:
            return _part_failed(document_id, part_id, exc, part=part)
    return _assemble_if_complete(document_id, part_id, timings, progress)


def _part_prepare(part: DocumentPart, notify: Callable[[str], None], ahead: _InProcess | None) -> dict[str, float]:
    """Run the pipeline on the part's pages and keep its chunks and vectors in its row."""
    from ingestion.pipeline import embed_prepared, prepare_file

    source = document_runs.document_source(part.document)
    embedder = engines.get_embedder()
    options = _part_options(part, ocr=part.ocr if ahead is None else ahead.ocr)
    prepared = prepare_file(
        source.path,
        embedder=embedder,
        options=options,
        filename=source.name,
        mime_type=source.mime_type or None,  # sniffed at upload
        progress=notify,
        parsing=ahead.parsing(part.pk) if ahead else None,
    )
    if ahead:
        ahead.start_next(part.pk)  # parsed while this part embeds
    result = embed_prepared(prepared, embedder=embedder, options=options, progress=notify)
    # Only a pending part is stored: a duplicate delivery that finished first, or a new plan, wins.
    DocumentPart.objects.filter(pk=part.pk, status=DocumentPart.Status.PENDING).update(
        status=DocumentPart.Status.DONE,
        chunks=[
            {"text": draft.text, "page": draft.page, "heading": draft.heading_path, "token_count": draft.token_count}
            for draft in result.chunks
        ],
        vectors=_embedding_rows(result.embeddings).tobytes(),
        title=(result.parsed.title or "")[:300],
        ocr_pages=list(result.parsed.ocr_pages),
        warnings=list(result.parsed.warnings),
        updated_at=timezone.now(),
    )
    return dict(result.timings)


def _assemble_if_complete(
    document_id: int, part_id: int, timings: dict[str, float], progress: Callable[[str], None] | None
) -> ProcessOutcome:
    parts = DocumentPart.objects.filter(document_id=document_id)
    if not parts.filter(pk=part_id).exists():
        return _skipped(document_id, timings)
    total = parts.count()
    pending = parts.filter(status=DocumentPart.Status.PENDING).count()
    if pending:
        _set_stage(document_id, f"{total - pending} of {total} parts done")
        return _outcome(document_id, timings)

    observe.ingestion_stage("indexing")
    _set_stage(document_id, "indexing")
    if progress:
        progress("indexing")
    started = time.perf_counter()
    try:
        assembled = _assemble(document_id, part_id)
    except IngestionError as exc:
        if exc.transient:
            raise
        return _part_failed(document_id, part_id, exc)
    except Exception as exc:
        return _part_failed(document_id, part_id, exc)
    if not assembled:
        return _skipped(document_id, timings)
    return _outcome(document_id, {**timings, "index": time.perf_counter() - started})


def _assemble(document_id: int, part_id: int) -> bool:
    """Write the chunks and vectors of every part as the document's; False when another part did it."""
    embedder = engines.get_embedder()
    # As in document_process: the store writes in (or holds its lock until) the database transaction. The
    # lock on the document's row makes this check-and-write happen once, whichever parts finish together.
    with engines.get_store().writer() as writer, transaction.atomic():
        document = (
            Document.objects.select_for_update().filter(pk=document_id, status=Document.Status.PROCESSING).first()
        )
        parts = list(DocumentPart.objects.filter(document_id=document_id).order_by("number"))
        if (
            document is None
            or part_id not in {part.pk for part in parts}
            or any(part.status != DocumentPart.Status.DONE for part in parts)
        ):
            return False
        drafts = [draft for part in parts for draft in part.chunks]
        if not drafts:
            raise EmptyDocumentError("The document contains no extractable text")
        rows = np.concatenate(
            [
                np.frombuffer(bytes(part.vectors), dtype=np.float32).reshape(len(part.chunks), -1)
                for part in parts
                if part.chunks
            ]
        )
        count = document_runs.document_chunks_write(
            writer,
            document_id=document_id,
            collection_id=document.collection_id,
            chunks=[
                Chunk(
                    document_id=document_id,
                    ordinal=ordinal,
                    text=draft["text"],
                    page=draft["page"],
                    heading=draft["heading"],
                    token_count=draft["token_count"],
                )
                for ordinal, draft in enumerate(drafts)
            ],
            embeddings=_embeddings_of_rows(rows, engines.store_identity()),
        )
        parsed = ParsedDocument(
            blocks=(),
            mime_type=PDF,
            page_count=parts[-1].last_page,
            title=parts[0].title or None,
            ocr_pages=tuple(sorted({page for part in parts for page in part.ocr_pages})),
            warnings=tuple(warning for part in parts for warning in part.warnings),
        )
        document_runs.document_mark_ready(document, parsed=parsed, chunk_count=count, embedder=embedder.name)
        DocumentPart.objects.filter(document_id=document_id).delete()
    return True


def _embedding_rows(embeddings: PassageEmbeddings) -> np.ndarray:
    """A part's embeddings as one float32 row per chunk: the dense vector, then the companion's if any."""
    columns = [embeddings.dense] if embeddings.companion is None else [embeddings.dense, embeddings.companion]
    return np.ascontiguousarray(np.concatenate(columns, axis=1), dtype=np.float32)


def _embeddings_of_rows(rows: np.ndarray, identity: StoreIdentity) -> PassageEmbeddings:
    """The inverse of :func:`_embedding_rows` (rows of parts embedded by another model fail clearly)."""
    from ingestion.store import PassageEmbeddings

    width = identity.dimension + identity.companion_dimension
    if rows.shape[1] != width:
        raise ValueError(
            f"the parts were embedded as rows of {rows.shape[1]} values, the configured embedder makes {width}"
        )
    companion = rows[:, identity.dimension :] if identity.companion_dimension else None
    return PassageEmbeddings(np.ascontiguousarray(rows[:, : identity.dimension]), companion)


def _part_failed(document_id: int, part_id: int, exc: Exception, *, part: DocumentPart | None = None) -> ProcessOutcome:
    """Fail the whole document for good, unless the part belongs to an outdated plan."""
    code, reason = _failure(exc, part)
    with transaction.atomic():
        current = (
            Document.objects.select_for_update().filter(pk=document_id, status=Document.Status.PROCESSING).exists()
            and DocumentPart.objects.filter(pk=part_id).exists()
        )
        if not current:
            return _skipped(document_id)
        # The other parts of the plan now do nothing; a new version fails alone (the current one keeps
        # answering), else document_fail below removes any chunk and vector.
        DocumentPart.objects.filter(document_id=document_id).delete()
        kept = document_runs.document_mark_failed(document_id, reason)
    observe.ingestion_failed(code)
    if not kept:
        document_runs.document_fail(document_id, reason)
    return _outcome(document_id, {})


def _failure(exc: Exception, part: DocumentPart | None) -> tuple[str, str]:
    """The failure's code (for the metrics) and the sentence a person reads."""
    if isinstance(exc, IngestionError):
        return exc.code, exc.message
    if type(exc).__name__ == "SoftTimeLimitExceeded":  # Celery's per-task time limit
        limit = settings.RAG_INGEST_TIME_LIMIT
        if part is None:
            return "timeout", f"Indexing the document took longer than {limit} s and was stopped."
        return "timeout", (
            f"Pages {part.first_page}-{part.last_page} took longer than {limit} s to process and were stopped."
        )
    if isinstance(exc, FileNotFoundError):
        return "unexpected", "The stored file of this document is missing; upload it again."
    logger.error("Unexpected error while ingesting a part of a split document", exc_info=exc)
    return "unexpected", "An unexpected error stopped the ingestion of this document; see the worker log."


def _set_stage(document_id: int, stage: str) -> None:
    # Parts run side by side: only a document still being processed shows their progress.
    Document.objects.filter(pk=document_id, status=Document.Status.PROCESSING).update(
        stage=stage[:_STAGE_MAX], updated_at=timezone.now()
    )


def _outcome(document_id: int, timings: dict[str, float]) -> ProcessOutcome:
    document = Document.objects.filter(pk=document_id).first()
    return _skipped(document_id, timings) if document is None else ProcessOutcome.of(document, timings)


def _skipped(document_id: int, timings: dict[str, float] | None = None) -> ProcessOutcome:
    return ProcessOutcome(document_id, SKIPPED, "", 0, None, timings or {})
