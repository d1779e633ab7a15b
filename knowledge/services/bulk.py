"""Bulk ingestion of many small texts: each becomes a Markdown document that goes through the real pipeline.

Ingesting thousands of short documents one by one is slow for two reasons that have nothing to do
with their content: the embedder runs half-empty batches (one abstract is one chunk), and every
document saves a new index version. Here the documents of a group are parsed and chunked one by one
by the pipeline's own code, their chunks embedded together in full batches (through the embedding
cache when one is configured), and the whole group written in one transaction and one index version.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from django.conf import settings
from django.db import transaction

from ingestion.errors import IngestionError
from ingestion.language import PassageTerms
from ingestion.store import PassageEmbeddings
from ingestion.types import ChunkDraft, ParsedDocument
from knowledge.errors import DuplicateDocumentError
from knowledge.models import Chunk, Collection, Document
from knowledge.services import audit, document_runs, engines
from knowledge.services.documents import chunk_row, document_chunks_write, document_create, document_files

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

logger = logging.getLogger(__name__)

__all__ = ["BulkOutcome", "TextDocument", "documents_delete_many", "documents_ingest_texts", "markdown_document"]

#: documents written per transaction and index version
GROUP_SIZE = 1000
#: chunks embedded per call (progress is reported between calls)
EMBED_BATCH = 64

# CommonMark lets any ASCII punctuation be escaped with a backslash: escape what would be markup
# anywhere in a line, and what is markup only at the start of one (lists, headings, quotes, rules)
_INLINE_MARKUP = re.compile(r"([\\`*_\[\]<>|~&#])")
_LINE_START_MARKUP = re.compile(r"^([+\-=])|^(\d+)([.)])", re.MULTILINE)


@dataclass(frozen=True)
class TextDocument:
    """A text to ingest as a document: its title becomes the Markdown file's heading."""

    title: str
    text: str
    #: file name shown for the document ("" = made from the title)
    name: str = ""


@dataclass(frozen=True)
class BulkOutcome:
    """What became of one :class:`TextDocument`."""

    document_id: int | None
    status: str
    error: str
    chunks: int
    #: the same text was already a document of the collection: that document is returned
    duplicate: bool = False


def _escape(text: str) -> str:
    text = _INLINE_MARKUP.sub(r"\\\1", text)
    return _LINE_START_MARKUP.sub(lambda m: f"\\{m[1]}" if m[1] else f"{m[2]}\\{m[3]}", text)


def markdown_document(title: str, text: str) -> str:
    """A Markdown file holding ``title`` as its heading and ``text`` as paragraphs, every character literal.

    Markdown punctuation in the text is escaped, so that parsing the file gives back the text (with its
    whitespace collapsed inside paragraphs), not emphasis, lists or HTML.
    """
    lines = [" ".join(line.split()) for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    body = _escape("\n".join(lines).strip())
    heading = " ".join(title.split())
    return f"# {_escape(heading)}\n\n{body}\n" if heading else f"{body}\n"


def _file_name(item: TextDocument, position: int) -> str:
    if item.name:
        return item.name
    stem = re.sub(r"[^\w-]+", "-", item.title.casefold()).strip("-")[:60] or f"text-{position}"
    return f"{stem}.md"


@dataclass
class _Pending:
    position: int
    document: Document
    parsed: ParsedDocument | None = None
    chunks: list[ChunkDraft] = field(default_factory=list)
    #: the chunks' lexical analysis, made with the chunking (the store then needs no second pass)
    terms: list[PassageTerms] = field(default_factory=list)
    error: str = ""


def documents_ingest_texts(
    *,
    items: Sequence[TextDocument],
    collection: Collection,
    embed_cache_dir: str | Path | None = None,
    progress: Callable[[int], None] | None = None,
    group_size: int = GROUP_SIZE,
) -> list[BulkOutcome]:
    """Ingest ``items`` into ``collection`` as Markdown documents, in groups; one outcome per item, in order.

    Each document is stored like an upload, parsed and chunked by the pipeline with the configured
    chunking, embedded with the configured embedder, and its chunks and vectors written like
    :func:`~knowledge.services.documents.document_process` writes them. ``embed_cache_dir`` is the
    embedding cache folder (None: ``RAG_EMBED_CACHE_DIR``; "": no cache). ``progress`` is called with
    the number of documents newly finished (ready, failed or duplicate). A text already in the
    collection is not ingested again: its outcome names the existing document.
    """
    if embed_cache_dir is None:
        embed_cache_dir = settings.RAG_EMBED_CACHE_DIR
    outcomes: list[BulkOutcome | None] = [None] * len(items)
    size = max(1, group_size)
    for start in range(0, len(items), size):
        group = range(start, min(len(items), start + size))
        _ingest_group(items, group, collection, str(embed_cache_dir), outcomes, progress or (lambda n: None))
    return [o for o in outcomes if o is not None]


def _ingest_group(
    items: Sequence[TextDocument],
    group: range,
    collection: Collection,
    embed_cache_dir: str,
    outcomes: list[BulkOutcome | None],
    progress: Callable[[int], None],
) -> None:
    from ingestion.pipeline import embed_chunks, prepare_file

    pending: list[_Pending] = []
    duplicates = 0
    for position in group:
        item = items[position]
        name = _file_name(item, position)
        try:
            document = document_create(
                file=io.BytesIO(markdown_document(item.title, item.text).encode("utf-8")),
                filename=name,
                collection=collection,
                title=" ".join(item.title.split()) or name,
                dispatch=False,
            )
        except DuplicateDocumentError as exc:
            existing = exc.existing
            outcomes[position] = BulkOutcome(
                existing.pk, existing.status, existing.error, existing.chunk_count, duplicate=True
            )
            duplicates += 1
            continue
        pending.append(_Pending(position, document))
    if duplicates:
        progress(duplicates)
    if not pending:
        return

    ids = [p.document.pk for p in pending]
    Document.objects.filter(pk__in=ids).update(status=Document.Status.PROCESSING, stage="chunking", attempts=1)
    document_runs.document_mark_processing(*ids)
    embedder = engines.get_embedder()
    options = replace(engines.pipeline_options(ocr=False), embed_cache_dir=embed_cache_dir)
    for entry in pending:
        try:
            prepared = prepare_file(
                Path(entry.document.file.path),
                embedder=embedder,
                options=options,
                filename=entry.document.original_name,
                mime_type=entry.document.mime_type or None,  # sniffed when it was stored
            )
        except IngestionError as exc:
            entry.error = exc.message
            continue
        except Exception:  # as document_process does: a bug fails the document, not the whole run
            logger.exception("Unexpected error while ingesting document %s", entry.document.pk)
            entry.error = "An unexpected error stopped the ingestion of this document; see the log."
            continue
        entry.parsed, entry.chunks, entry.terms = prepared.parsed, prepared.chunks, list(prepared.terms)

    # the chunks of the whole group are embedded together, in full batches, in document order
    Document.objects.filter(pk__in=ids).update(stage="embedding")
    ready = [e for e in pending if not e.error]
    drafts = [draft for entry in ready for draft in entry.chunks]
    ends = np.cumsum([len(entry.chunks) for entry in ready])  # chunks embedded when each document is done
    reported = len(pending) - len(ready)  # failed ones are finished
    if reported:
        progress(reported)
    parts: list[PassageEmbeddings] = []
    for start in range(0, len(drafts), EMBED_BATCH):
        batch = drafts[start : start + EMBED_BATCH]
        parts.append(embed_chunks(batch, embedder=embedder, options=options))
        finished = len(pending) - len(ready) + int(np.searchsorted(ends, start + len(batch), side="right"))
        if finished > reported:
            progress(finished - reported)
            reported = finished
    embeddings = PassageEmbeddings.concatenate(parts, dimension=embedder.dimension)

    _write_group(pending, ready, embeddings, collection, embedder.name)
    rows = {
        pk: (status, error, chunks)
        for pk, status, error, chunks in Document.objects.filter(pk__in=ids).values_list(
            "pk", "status", "error", "chunk_count"
        )
    }
    for entry in pending:
        outcomes[entry.position] = BulkOutcome(entry.document.pk, *rows[entry.document.pk])


def _write_group(
    pending: list[_Pending],
    ready: list[_Pending],
    embeddings: PassageEmbeddings,
    collection: Collection,
    embedder_name: str,
) -> None:
    """Write the chunks and search entries of a group in one transaction (one faiss segment)."""
    # as in document_process: the store writes in (or holds its lock until) the database transaction
    with engines.get_store().writer() as writer, transaction.atomic():
        Chunk.objects.filter(document_id__in=[e.document.pk for e in pending if e.error]).delete()
        offset = 0
        for entry in ready:
            count = len(entry.chunks)
            document_chunks_write(
                writer,
                document_id=entry.document.pk,
                collection_id=collection.pk,
                chunks=[chunk_row(entry.document.pk, draft) for draft in entry.chunks],
                embeddings=embeddings.take(range(offset, offset + count)),
                terms=entry.terms or None,
            )
            offset += count
            assert entry.parsed is not None
            document_runs.document_mark_ready(
                entry.document, parsed=entry.parsed, chunk_count=count, embedder=embedder_name
            )
        for entry in pending:
            if entry.error:
                writer.remove_document(entry.document.pk)  # what an earlier ingestion of it left
                document_runs.document_mark_failed(entry.document.pk, entry.error)


def documents_delete_many(
    *, documents: Iterable[Document], actor: AbstractBaseUser | None = None, ip_address: str = ""
) -> int:
    """Delete documents with their chunks, their vectors (one index version) and their stored files; each
    deletion is audited.

    Returns how many documents were deleted. Empty folders left by the stored files are removed.
    """
    documents = list(documents)
    if not documents:
        return 0
    files = [(d.file.storage, name) for d in documents for name in document_files(d)]
    with engines.get_store().writer() as writer, transaction.atomic():
        for document in documents:
            audit.audit_document(
                action=audit.Action.DOCUMENT_DELETE, document=document, user=actor, ip_address=ip_address
            )
            writer.remove_document(document.pk)
        Document.objects.filter(pk__in=[d.pk for d in documents]).delete()

    def remove_files() -> None:
        for storage, name in files:
            try:
                storage.delete(name)
                folder = Path(storage.path(name)).parent  # "documents/<random>/": empty now
                folder.rmdir()
            except (NotImplementedError, OSError):  # a remote storage, or a folder not empty
                continue

    transaction.on_commit(remove_files)
    return len(documents)
