"""Use cases of documents: add, replace (a new version), restore a version, delete, and process (the worker's
side of ingestion)."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path, PurePath
from typing import IO, TYPE_CHECKING

from django.conf import settings
from django.core.files import File
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from ingestion.errors import IngestionError
from knowledge import task_dispatch
from knowledge.errors import (
    DuplicateDocumentError,
    NotFoundError,
    PermissionDeniedError,
    SameVersionError,
    UnsupportedUploadError,
    UploadTooLargeError,
    VersionPendingError,
)
from knowledge.models import DEFAULT_COLLECTION_SLUG, Chunk, Collection, Document, DocumentPart, DocumentVersion
from knowledge.observability import instrumentation as observe
from knowledge.services import access, audit, document_parts, engines, leases
from knowledge.services.document_runs import (
    BUSY,
    OutdatedRunError,
    ProcessOutcome,
    document_chunks_write,
    document_count_lost_run,
    document_fail,
    document_inspect,
    document_mark_processing,
    document_mark_ready,
    document_pending_version,
    document_source,
)

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

    from ingestion.parsing import FileFacts
    from ingestion.types import ChunkDraft
    from knowledge.models import ApiKey

logger = logging.getLogger(__name__)

#: Documents are stored as "documents/<random>/<name>": the name shown is the original one.
_MAX_NAME = 200


def _sanitize_filename(name: str) -> str:
    # Keep only the final component: "../../etc/passwd.pdf" is stored as "passwd.pdf".
    base = Path(name.replace("\\", "/")).name.strip().lstrip(".") or "upload"
    safe = "".join(ch if ch.isalnum() or ch in "._- " else "_" for ch in base)
    return safe[-_MAX_NAME:]


def _sha256(stream: IO[bytes]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    stream.seek(0)
    for block in iter(lambda: stream.read(1 << 20), b""):
        digest.update(block)
        size += len(block)
    stream.seek(0)
    return digest.hexdigest(), size


def collection_get_default() -> Collection:
    collection, _ = Collection.objects.get_or_create(
        slug=DEFAULT_COLLECTION_SLUG, defaults={"name": "Default", "is_public": True}
    )
    return collection


def collection_for_upload(*, slug: str | None, readable: QuerySet[Collection]) -> Collection:
    """The collection an upload goes to: the one named or the default, which the uploader must be able to read.

    A named collection that is unknown or unreadable is refused alike (``NotFoundError``): no name can be probed.
    """
    if slug:
        return access.readable_collection(readable=readable, slug=slug)
    default = collection_get_default()
    if not readable.filter(pk=default.pk).exists():
        raise PermissionDeniedError("You may not add documents to the default collection.")
    return default


def document_check_type(*, file: IO[bytes], filename: str) -> str:
    """The sniffed MIME type of an upload; ``UnsupportedUploadError`` (415) for types we cannot read."""
    import tempfile

    from ingestion.errors import UnsupportedFormatError
    from ingestion.parsing import SUPPORTED_TYPES, sniff_mime

    suffix = Path(_sanitize_filename(filename)).suffix
    with tempfile.NamedTemporaryFile(suffix=suffix) as probe:
        file.seek(0)
        probe.write(file.read(1 << 20))  # the first MiB is enough to tell the type
        probe.flush()
        file.seek(0)
        try:
            return sniff_mime(Path(probe.name), filename)
        except UnsupportedFormatError as exc:
            raise UnsupportedUploadError(exc.message, accepted=sorted(SUPPORTED_TYPES.values())) from exc


def document_validate_upload(
    *, file: IO[bytes], collection: Collection, exclude_id: int | None = None
) -> tuple[str, int]:
    """Check an upload against the size limit and the collection's files; return (sha256, size)."""
    sha256, size = _sha256(file)
    if size > settings.MAX_UPLOAD_MB * 1024 * 1024:
        raise UploadTooLargeError(f"The file is larger than the {settings.MAX_UPLOAD_MB} MB upload limit.")
    _refuse_duplicate(collection_id=collection.pk, sha256=sha256, exclude_id=exclude_id)
    return sha256, size


def _refuse_duplicate(*, collection_id: int, sha256: str, exclude_id: int | None) -> None:
    """``DuplicateDocumentError`` when another document of the collection has these bytes, as its current file
    or as a new version being processed (which becomes its file when ready)."""
    existing = Document.objects.filter(collection_id=collection_id, sha256=sha256).exclude(pk=exclude_id).first()
    if existing is None:
        pending = DocumentVersion.objects.filter(
            document__collection_id=collection_id,
            sha256=sha256,
            status__in=(DocumentVersion.Status.QUEUED, DocumentVersion.Status.PROCESSING),
        ).exclude(document_id=exclude_id)
        existing = Document.objects.filter(pk__in=pending.values("document_id")).first()
    if existing is not None:
        raise DuplicateDocumentError(existing)


def document_create(
    *,
    file: IO[bytes],
    filename: str,
    collection: Collection | None = None,
    title: str = "",
    uploaded_by: AbstractBaseUser | None = None,
    dispatch: bool = True,
    check_type: bool = False,
    api_key: ApiKey | None = None,
    ip_address: str = "",
) -> Document:
    """Store an uploaded file and queue its ingestion once the row is committed; the upload is audited.

    Raises ``DuplicateDocumentError`` when the same bytes are already in the collection and
    ``UploadTooLargeError`` above ``MAX_UPLOAD_MB``.
    """
    collection = collection or collection_get_default()
    sha256, size = document_validate_upload(file=file, collection=collection)
    mime_type = document_check_type(file=file, filename=filename) if check_type else ""
    name = _sanitize_filename(filename)
    with transaction.atomic():
        document = Document(
            collection=collection,
            title=(title or name)[:300],
            original_name=name,
            mime_type=mime_type,
            size=size,
            sha256=sha256,
            uploaded_by=uploaded_by,
            status=Document.Status.QUEUED,
        )
        document.file.save(name, File(file, name=name), save=False)
        document.save()
        # version 1 is the same stored file
        DocumentVersion.objects.create(
            document=document,
            number=1,
            file=document.file.name,
            original_name=name,
            mime_type=mime_type,
            size=size,
            sha256=sha256,
            created_by=uploaded_by,
        )
        audit.audit_document(
            action=audit.Action.DOCUMENT_UPLOAD,
            document=document,
            user=uploaded_by,
            api_key=api_key,
            ip_address=ip_address,
        )
        if dispatch:
            _dispatch_on_commit(document.pk)
    return document


def document_same_name(*, collection: Collection, filename: str, file: IO[bytes]) -> Document | None:
    """The newest document of ``collection`` stored under the name ``filename`` would get, if any: the upload
    page then asks whether the file is a new version of it or a document of its own. None when the collection
    already holds these very bytes (the upload is then refused as a duplicate, never asked about)."""
    name = _sanitize_filename(filename)
    same = Document.objects.filter(collection=collection, original_name=name).order_by("-created_at", "-pk").first()
    if same is None or Document.objects.filter(collection=collection, sha256=_sha256(file)[0]).exists():
        return None
    return same


def document_replace(
    *,
    document: Document,
    file: IO[bytes],
    filename: str,
    dispatch: bool = True,
    actor: AbstractBaseUser | None = None,
    api_key: ApiKey | None = None,
    ip_address: str = "",
    check_type: bool = False,
    restored_from: int | None = None,
) -> Document:
    """Store a new file of a document as its next version and queue its ingestion; audited once as a replace.

    While the current version is ready it keeps answering: the new version waits in its own row and replaces it
    when its chunks are ready (see ``document_runs.document_mark_ready``), or fails alone with its reason.
    A document without a ready version takes the new file as its current version at once.

    Raises ``SameVersionError`` when the file is the current version's, ``VersionPendingError`` while an
    earlier new version is still waiting or being processed, ``DuplicateDocumentError`` when another document
    of the collection has these bytes, ``UploadTooLargeError`` above ``MAX_UPLOAD_MB``.
    """
    sha256, size = _sha256(file)
    if size > settings.MAX_UPLOAD_MB * 1024 * 1024:
        raise UploadTooLargeError(f"The file is larger than the {settings.MAX_UPLOAD_MB} MB upload limit.")
    mime_type = document_check_type(file=file, filename=filename) if check_type else ""
    name = _sanitize_filename(filename)
    with transaction.atomic():
        # one new version at a time per document: concurrent uploads wait here for each other
        locked = Document.objects.select_for_update().filter(pk=document.pk).first()
        if locked is None:
            raise NotFoundError("No such document.")
        if locked.sha256 == sha256:
            raise SameVersionError(f"This file is already version {locked.version} of “{locked.title}”.")
        pending = document_pending_version(locked.pk, locked.version)
        if pending is not None:
            raise VersionPendingError(
                f"Version {pending.number} of “{locked.title}” is still being processed; try again when it is done."
            )
        _refuse_duplicate(collection_id=locked.collection_id, sha256=sha256, exclude_id=locked.pk)
        number = (locked.versions.order_by("-number").values_list("number", flat=True).first() or 0) + 1
        version = DocumentVersion(
            document=locked,
            number=number,
            original_name=name,
            mime_type=mime_type,
            size=size,
            sha256=sha256,
            created_by=actor,
            restored_from=restored_from,
        )
        version.file.save(name, File(file, name=name), save=False)
        version.save()
        answering = locked.versions.filter(number=locked.version, status=DocumentVersion.Status.READY).exists()
        if answering:
            # the current version answers until the new one is ready; this run's count is the new file's
            Document.objects.filter(pk=locked.pk).update(
                status=Document.Status.QUEUED, stage="", error="", lost_runs=0, updated_at=timezone.now()
            )
        else:
            # nothing answers: the new file is the document's at once (an earlier run of the old one is outdated)
            active = (DocumentVersion.Status.QUEUED, DocumentVersion.Status.PROCESSING)
            locked.versions.filter(status__in=active).exclude(pk=version.pk).update(
                status=DocumentVersion.Status.REPLACED
            )
            Document.objects.filter(pk=locked.pk).update(
                version=number,
                file=version.file.name,
                original_name=name,
                mime_type=mime_type,
                size=size,
                sha256=sha256,
                status=Document.Status.QUEUED,
                error="",
                stage="",
                lease_until=None,
                lost_runs=0,
                updated_at=timezone.now(),
            )
        document.refresh_from_db()
        audit.audit_document(
            action=audit.Action.DOCUMENT_REPLACE, document=document, user=actor, api_key=api_key, ip_address=ip_address
        )
        if dispatch:
            _dispatch_on_commit(document.pk)
    return document


def document_version_restore(
    *,
    document: Document,
    number: int,
    dispatch: bool = True,
    actor: AbstractBaseUser | None = None,
    api_key: ApiKey | None = None,
    ip_address: str = "",
) -> Document:
    """Make an older version current again: its file becomes a new version (see :func:`document_replace`),
    so the history only grows and a restore that fails leaves the current version answering."""
    version = DocumentVersion.objects.filter(document=document, number=number).first()
    if version is None or not version.file:
        raise NotFoundError(f"“{document.title}” has no version {number}.")
    try:
        handle = version.file.open("rb")
    except FileNotFoundError as exc:
        raise NotFoundError(f"The file of version {number} is missing from storage.") from exc
    with handle:
        return document_replace(
            document=document,
            file=handle,
            filename=version.original_name or PurePath(version.file.name).name,
            dispatch=dispatch,
            actor=actor,
            api_key=api_key,
            ip_address=ip_address,
            restored_from=number,
        )


def document_files(document: Document) -> list[str]:
    """The stored file names of every version of a document (each once)."""
    names = {document.file.name, *document.versions.values_list("file", flat=True)}
    return sorted(name for name in names if name)


def document_reingest(*, document: Document, dispatch: bool = True) -> Document:
    """Queue a document to be parsed and indexed again (its chunks are replaced, never duplicated)."""
    with transaction.atomic():
        Document.objects.filter(pk=document.pk).update(
            status=Document.Status.QUEUED, error="", stage="", lease_until=None, lost_runs=0, updated_at=timezone.now()
        )
        if dispatch:
            _dispatch_on_commit(document.pk)
    document.refresh_from_db()
    return document


def document_version_retry(*, version: DocumentVersion, dispatch: bool = True) -> bool:
    """Queue again a new version whose run failed while the current one kept answering (the current one answers
    meanwhile, as for any new version). False, and nothing done, when it is not the document's newest version or
    another new version is waiting or being processed."""
    with transaction.atomic():
        locked = Document.objects.select_for_update().filter(pk=version.document_id).first()
        if locked is None or version.number <= locked.version:
            return False
        newest = locked.versions.order_by("-number").values_list("number", flat=True).first()
        if newest != version.number or document_pending_version(locked.pk, locked.version) is not None:
            return False
        DocumentVersion.objects.filter(pk=version.pk).update(status=DocumentVersion.Status.QUEUED, error="")
        Document.objects.filter(pk=locked.pk).update(
            status=Document.Status.QUEUED, stage="", error="", lost_runs=0, updated_at=timezone.now()
        )
        if dispatch:
            _dispatch_on_commit(locked.pk)
    return True


def document_delete(
    *, document: Document, actor: AbstractBaseUser | None = None, api_key: ApiKey | None = None, ip_address: str = ""
) -> None:
    """Delete a document with its chunks, its vectors and its stored file; the deletion is audited."""
    with engines.get_store().writer() as writer, transaction.atomic():
        audit.audit_document(
            action=audit.Action.DOCUMENT_DELETE, document=document, user=actor, api_key=api_key, ip_address=ip_address
        )
        writer.remove_document(document.pk)
        file_names = document_files(document)
        storage = document.file.storage
        document.delete()

        def remove_files() -> None:
            for name in file_names:
                storage.delete(name)

        transaction.on_commit(remove_files)


def _dispatch_on_commit(document_id: int) -> None:
    def send() -> None:
        try:
            task_dispatch.document_ingest(document_id=document_id)
        except Exception:  # the broker is down: the document stays queued and is re-sent later
            logger.exception("Could not queue document %s; it stays queued", document_id)

    transaction.on_commit(send)


def _set_stage(document_id: int, stage: str) -> None:
    Document.objects.filter(pk=document_id).update(stage=stage, updated_at=timezone.now())


def document_plan_facts(*, document: Document, ocr: bool) -> FileFacts | None:
    """What a delivery decides its plan from, read once: the file's type and pages and, on the normal queue
    with OCR on, its pages without text (a document with some goes to the OCR queue, where they are not looked
    for again). None when the file cannot be inspected (the parse reports the problem)."""
    try:
        return document_inspect(document=document, scans=settings.RAG_OCR and not ocr)
    except (IngestionError, OSError, ValueError):
        return None


def chunk_row(document_id: int, draft: ChunkDraft) -> Chunk:
    """The (unsaved) Chunk row of a chunk draft."""
    return Chunk(
        document_id=document_id,
        ordinal=draft.ordinal,
        text=draft.text,
        page=draft.page,
        heading=draft.heading_path,
        token_count=draft.token_count,
    )


def chunk_draft(chunk: Chunk) -> ChunkDraft:
    """The chunk draft a stored Chunk row holds (the inverse of :func:`chunk_row`), to embed it again."""
    from ingestion.types import ChunkDraft

    return ChunkDraft(
        ordinal=chunk.ordinal,
        text=chunk.text,
        page=chunk.page,
        headings=tuple(chunk.heading.split(" > ")) if chunk.heading else (),
        token_count=chunk.token_count,
    )


@observe.observe_ingestion
def document_process(
    *,
    document_id: int,
    ocr: bool = True,
    force: bool = False,
    split: bool = True,
    progress: Callable[[str], None] | None = None,
) -> ProcessOutcome:
    """Parse, chunk, embed and index one document, replacing whatever it had before.

    With ``split``, a PDF over ``RAG_SPLIT_PAGES`` pages is processed as page ranges, one after the other
    in this process, the parse of the next range overlapping the embedding of the previous one (see
    ``knowledge.services.document_parts``; the workers run them side by side instead).

    Idempotent: running it again replaces the document's chunks and vectors. A permanent
    ingestion error marks the document failed with its reason and leaves no chunk or vector
    behind; transient errors propagate so the task is retried. While it runs, this process holds the
    document's lease (``knowledge.services.leases``); a document another live run holds is left alone
    (status "busy").
    """
    with _document_run(document_id) as stopped:
        if stopped is not None:
            return stopped
        return _document_process(document_id=document_id, ocr=ocr, force=force, split=split, progress=progress)


def _document_process(
    *, document_id: int, ocr: bool, force: bool, split: bool, progress: Callable[[str], None] | None
) -> ProcessOutcome:
    from ingestion.pipeline import embed_prepared, prepare_file

    document = Document.objects.select_related("collection").get(pk=document_id)
    if document.status == Document.Status.READY and not force:
        return ProcessOutcome.of(document, {})
    if split:
        # In this process each part's parse reads a page with OCR where it needs it: the plan does not look
        # through the pages for such pages first (a second reading of every page's text layer).
        part_ids = document_parts.document_split(document_id=document_id, ocr=ocr, dispatch=False, scans=False)
        if part_ids:
            return document_parts.document_parts_process(
                document_id=document_id, part_ids=part_ids, ocr=ocr, progress=progress
            )

    Document.objects.filter(pk=document_id).update(
        status=Document.Status.PROCESSING, stage="parsing", error="", attempts=document.attempts + 1
    )
    document_mark_processing(document_id)
    # The parts of an earlier split of this document, if any, are outdated: their tasks do nothing.
    DocumentPart.objects.filter(document_id=document_id).delete()

    def notify(stage: str) -> None:
        observe.ingestion_stage(stage)
        _set_stage(document_id, stage)
        if progress:
            progress(stage)

    timings: dict[str, float] = {}
    try:
        embedder = engines.get_embedder()
        options = engines.pipeline_options(ocr=ocr)
        source = document_source(document)
        prepared = prepare_file(
            source.path,
            embedder=embedder,
            options=options,
            filename=source.name,
            mime_type=source.mime_type or None,  # sniffed at upload
            progress=notify,
        )
        result = embed_prepared(prepared, embedder=embedder, options=options, progress=notify)
        timings = dict(result.timings)
        notify("indexing")
        index_started = time.perf_counter()
        # The postgres store writes in this transaction; the faiss store's writer lock is held until the
        # database has committed, so a consistency check (which takes the same lock) never sees one
        # without the other. If the store's save then fails, the error below marks the document failed
        # and removes its chunks.
        with engines.get_store().writer() as writer, transaction.atomic():
            count = document_chunks_write(
                writer,
                document_id=document_id,
                collection_id=document.collection_id,
                chunks=[chunk_row(document_id, draft) for draft in result.chunks],
                embeddings=result.embeddings,
                terms=result.terms,
            )
            document_mark_ready(
                document, parsed=result.parsed, chunk_count=count, embedder=embedder.name, version=source.version
            )
        timings["index"] = time.perf_counter() - index_started
    except OutdatedRunError:
        # a newer file came while this run read the old one: nothing was written, the newer one's run follows
        logger.info("Document %s got a new version during its run; the run's result is dropped", document_id)
    except IngestionError as exc:
        if exc.transient:
            raise
        observe.ingestion_failed(exc.code)
        document_fail(document_id, exc.message)
    except Exception as exc:
        if type(exc).__name__ == "SoftTimeLimitExceeded":  # Celery's per-document time limit
            observe.ingestion_failed("timeout")
            document_fail(
                document_id,
                f"The document took longer than {settings.RAG_INGEST_TIME_LIMIT} s to process and was stopped.",
            )
        else:
            logger.exception("Unexpected error while ingesting document %s", document_id)
            observe.ingestion_failed("unexpected")
            document_fail(
                document_id, "An unexpected error stopped the ingestion of this document; see the worker log."
            )
    document.refresh_from_db()
    return ProcessOutcome.of(document, timings)


def document_ingest(*, document_id: int, ocr: bool, force: bool = False) -> ProcessOutcome:
    """One delivery of a document's task: inspect it, then hand a scan to the OCR queue, plan a big PDF
    as page ranges (each its own task), or process it whole.

    ``ocr`` is true on the OCR queue (the document was found to need it). The whole delivery holds the
    document's lease, the inspection included: a worker that dies at any point is noticed once the
    lease runs out, and the document is sent again (see :func:`documents_recover`).
    """
    with _document_run(document_id) as stopped:
        if stopped is not None:
            return stopped
        document = Document.objects.get(pk=document_id)
        if document.status == Document.Status.READY and not force:
            return ProcessOutcome.of(document, {})
        facts = document_plan_facts(document=document, ocr=ocr)
        if not ocr and facts is not None and facts.scan_pages:
            Document.objects.filter(pk=document_id).update(stage="waiting for OCR")
            task_dispatch.document_ocr(document_id=document_id, force=force)
            return ProcessOutcome(document_id, "ocr", "", 0, None, {})
        # the OCR queue gets only documents found to have pages for OCR
        parts = (
            document_parts.document_split(document_id=document_id, ocr=ocr, facts=facts, scans=ocr and settings.RAG_OCR)
            if facts is not None
            else []
        )
        if parts:
            return ProcessOutcome(document_id, "split", "", 0, None, {}, parts=len(parts))
        return document_process(document_id=document_id, ocr=ocr, force=force, split=False)


@contextmanager
def _document_run(document_id: int) -> Iterator[ProcessOutcome | None]:
    """Hold the document's lease for the block: yields None when this process may work on the document,
    else the outcome to return (deleted, busy with another live run, or failed after too many lost runs)."""
    with leases.leased(Document, document_id) as claim:
        if claim.gone:
            yield ProcessOutcome(document_id, "deleted", "", 0, None, {})
        elif claim.lease is None:
            yield ProcessOutcome(document_id, BUSY, "", 0, None, {}, retry_in=claim.busy_for + 1)
        elif claim.took_over and document_count_lost_run(document_id=document_id):
            yield ProcessOutcome.of(Document.objects.get(pk=document_id), {})
        else:
            yield None


def documents_recover() -> int:
    """Send again the work of workers that died, and the tasks that were lost; return how many were sent.

    A document or a page range whose lease ran out had its worker die mid-run (kill -9, out of memory,
    a lost machine): the run is counted (:func:`document_count_lost_run`) and the work sent again, at
    once rather than after the broker's visibility timeout. Then :func:`documents_redispatch_stale`.
    Beat runs it every ``RAG_LEASE_S / 2`` seconds, and a worker when it starts.
    """
    now = timezone.now()
    expired = Document.objects.filter(
        status__in=(Document.Status.QUEUED, Document.Status.PROCESSING), lease_until__lt=now
    ).values_list("pk", "lease_until")
    sent = 0
    for document_id, until in list(expired):
        if not leases.lease_take_over(Document, document_id, until):
            continue  # a new delivery took it over first
        logger.warning("The worker processing document %s stopped; sending the document again", document_id)
        if document_count_lost_run(document_id=document_id):
            continue
        # Its plan, if it had one, is outdated: the document starts over.
        DocumentPart.objects.filter(document_id=document_id).delete()
        Document.objects.filter(pk=document_id).update(status=Document.Status.QUEUED, stage="", updated_at=now)
        with transaction.atomic():
            _dispatch_on_commit(document_id)
        sent += 1
    return sent + document_parts.document_parts_recover(now=now) + documents_redispatch_stale()


def documents_redispatch_stale(*, older_than_s: int | None = None) -> int:
    """Queue again every document still ``queued`` after ``RAG_REDISPATCH_AFTER_S`` that no process works on.

    The pending parts no process works on of a split document that made no progress for as long are
    sent again too (their tasks were lost: the broker went down after the plan was committed);
    ``older_than_s`` overrides the age. Returns how many documents had something sent.
    """
    age = older_than_s if older_than_s is not None else settings.RAG_REDISPATCH_AFTER_S
    cutoff = timezone.now() - timedelta(seconds=age)
    return _documents_redispatch_queued(cutoff) + document_parts.document_parts_redispatch_stale(cutoff=cutoff)


def _documents_redispatch_queued(cutoff: datetime) -> int:
    stale = list(
        Document.objects.filter(
            status=Document.Status.QUEUED, lease_until__isnull=True, updated_at__lt=cutoff
        ).values_list("pk", flat=True)
    )
    for document_id in stale:
        Document.objects.filter(pk=document_id).update(updated_at=timezone.now())
        with transaction.atomic():
            _dispatch_on_commit(document_id)
    return len(stale)
