"""Backup and restore of a whole portal: database rows, stored files and the search store.

A backup folder holds ``data.json.gz`` (Django's serialized rows of the portal, the users and
groups, keeping primary keys so chunk ids still match the store), ``media/`` (the uploaded files)
and ``index/`` (the search store's ids and embeddings in ``part-NNNNNN.npz`` files with the
``identity.json`` of the model that made them, whatever the backend, so a backup of a faiss install
restores into a postgres one; optional: it can always be rebuilt from the database).
Works on SQLite and PostgreSQL alike; for large PostgreSQL databases ``pg_dump`` is the faster
alternative for the rows (see the README).

A backup holds password hashes and every document: its folders are written 0700 and its files 0600,
whatever the umask. A restore trusts nothing in it: every entry and the stored file names are checked
before anything is written (:func:`backup_validate`), and the index parts are read as plain arrays.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import stat
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from django.conf import settings
from django.core import management
from django.db import transaction

from knowledge.errors import KnowledgeError
from knowledge.models import Chunk, Document, DocumentVersion
from knowledge.services import engines

if TYPE_CHECKING:
    from ingestion.store import StoreIdentity

#: 2: the search store as parts of ids and embeddings (any backend); 1 held a copy of a FAISS version
FORMAT = 2
MANIFEST_FILE = "manifest.json"
DATA_FILE = "data.json.gz"
MEDIA_FOLDER = "media"
INDEX_FOLDER = "index"
IDENTITY_FILE = "identity.json"
#: what a backup holds, in an order that loads (users and groups before what refers to them)
MODELS = [
    "auth.group",
    "auth.user",
    "knowledge.collection",
    "knowledge.document",
    "knowledge.documentversion",
    "knowledge.chunk",
    "knowledge.conversation",
    "knowledge.message",
    "knowledge.apikey",
    "knowledge.usagerecord",
]


@dataclass(frozen=True)
class BackupReport:
    folder: Path
    documents: int
    files: int
    #: chunks in the backed-up (or restored) search store, None without one
    index_chunks: int | None


def portal_backup(*, folder: Path, include_index: bool = True) -> BackupReport:
    """Write a backup of the portal into ``folder`` (created; must be empty or absent)."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise KnowledgeError(f"The backup folder {folder} is not empty.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    _private_dir(folder)

    # One transaction: the rows written are a consistent snapshot even while workers ingest.
    with transaction.atomic():
        out = io.StringIO()
        management.call_command("dumpdata", *MODELS, format="json", indent=None, stdout=out)
        # every version's file: the current ones and the older ones a restore may bring back
        files = sorted(
            {
                *Document.objects.exclude(file="").values_list("file", flat=True),
                *DocumentVersion.objects.exclude(file="").values_list("file", flat=True),
            }
        )
        documents = Document.objects.count()
    with _private_file(folder / DATA_FILE) as raw, gzip.open(raw, "wt", encoding="utf-8") as handle:
        handle.write(out.getvalue())

    media = Path(settings.MEDIA_ROOT)
    copied = 0
    for name in files:
        source = media / name
        if _safe_relative_name(name) and source.is_file():
            _private_copy(source, folder, Path(MEDIA_FOLDER) / name)
            copied += 1

    chunks = _export_index(folder) if include_index else None
    with _private_file(folder / MANIFEST_FILE) as handle:
        handle.write(
            json.dumps({"format": FORMAT, "documents": documents, "files": copied, "index_chunks": chunks}).encode()
        )
    return BackupReport(folder=folder, documents=documents, files=copied, index_chunks=chunks)


def _export_index(folder: Path) -> int | None:
    """Write the search store's entries (ids and embeddings, whatever the backend) into ``index/``.

    The store is read after the rows were dumped: entries of documents ingested meanwhile are dropped at
    restore and missing ones embedded again (:func:`_import_index`), so nothing depends on the two
    being one snapshot. Returns how many chunks were written, None for an empty store.
    """
    store = engines.get_store()
    written = 0
    for number, batch in enumerate(store.export(), start=1):
        if number == 1:
            _private_dir(folder / INDEX_FOLDER)
        arrays = {
            "chunk_ids": batch.chunk_ids.astype(np.int64),
            "document_ids": batch.document_ids.astype(np.int64),
            "collection_ids": batch.collection_ids.astype(np.int64),
            "dense": batch.embeddings.dense.astype(np.float32),
        }
        if batch.embeddings.companion is not None:
            arrays["companion"] = batch.embeddings.companion.astype(np.float32)
        with _private_file(folder / INDEX_FOLDER / _part_name(number)) as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]
        written += len(batch.chunk_ids)
    if not written:
        return None
    with _private_file(folder / INDEX_FOLDER / IDENTITY_FILE) as handle:
        handle.write(json.dumps(asdict(store.identity)).encode("utf-8"))
    return written


def _part_name(number: int) -> str:
    return f"part-{number:06d}.npz"


_PART_NAME = re.compile(r"part-[0-9]{6}\.npz")


def _private_dir(path: Path) -> None:
    """Create ``path`` (its parent exists) readable by its owner only, whatever the umask."""
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


def _private_file(path: Path) -> IO[bytes]:
    """A new file at ``path`` opened for writing, readable by its owner only from its creation on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.fchmod(fd, 0o600)  # a umask may have taken bits off the mode given to open
    return os.fdopen(fd, "wb")


def _private_copy(source: Path, root: Path, relative: Path) -> None:
    """Copy the file ``source`` to ``root / relative``, creating the folders between them privately."""
    folder = root
    for part in relative.parent.parts:
        folder = folder / part
        _private_dir(folder)
    with open(source, "rb") as src, _private_file(root / relative) as dst:
        shutil.copyfileobj(src, dst, 1024 * 1024)


def portal_restore(*, folder: Path, rebuild_index: bool = False) -> BackupReport:
    """Restore a backup into this (empty) instance; rebuild the index when the backup has none.

    The whole backup is checked first (:func:`backup_validate`): a backup with anything unexpected is
    refused before a row or a file is written.
    """
    folder = Path(folder)
    checked = backup_validate(folder=folder)
    if Document.objects.exists():
        raise KnowledgeError("This instance already has documents: restore into an empty one.")

    media = Path(settings.MEDIA_ROOT)
    with tempfile.TemporaryDirectory(prefix="kp-restore-") as scratch:
        fixture = Path(scratch) / "restore.json"  # loaddata reads a file; a private one, not in the backup
        fixture.write_text(checked.data, encoding="utf-8")
        with transaction.atomic():  # rows and files: a copy that fails leaves no row behind
            # The default collection made by the migration would clash with the backed-up one.
            from knowledge.models import Collection

            Collection.objects.filter(documents__isnull=True).delete()
            management.call_command("loaddata", str(fixture), verbosity=0)
            for relative in checked.media_files:
                target = media / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(folder / MEDIA_FOLDER / relative, target)

    from knowledge.services.index import index_rebuild, index_repair

    engines.reset()
    if checked.index_parts and not rebuild_index and checked.index_identity == engines.store_identity():
        _import_index(folder / INDEX_FOLDER, checked.index_parts)
        chunks = index_repair().vectors  # embeds what the backup's store lacked (ingested during the backup)
    else:
        chunks = index_rebuild().vectors
    return BackupReport(
        folder=folder, documents=Document.objects.count(), files=checked.manifest.get("files", 0), index_chunks=chunks
    )


def _import_index(source: Path, parts: list[str]) -> None:
    """Write the backed-up entries whose chunk was restored into a fresh search store, a document at a time."""
    from ingestion.store import PassageEmbeddings

    store = engines.open_store(engines.store_identity(), load=False)
    with store.writer(reset=True) as writer, transaction.atomic():
        writer.clear()
        for name in parts:
            arrays = _read_part(source / name, store.identity)
            ids = arrays["chunk_ids"]
            texts = dict(Chunk.objects.filter(pk__in=ids.tolist()).values_list("pk", "text"))
            keep = np.flatnonzero([int(i) in texts for i in ids.tolist()])
            documents = arrays["document_ids"][keep]
            for document_id in dict.fromkeys(documents.tolist()):
                rows = keep[documents == document_id]
                companion = arrays.get("companion")
                writer.add(
                    ids[rows].tolist(),
                    PassageEmbeddings(arrays["dense"][rows], None if companion is None else companion[rows]),
                    document_id=int(document_id),
                    collection_id=int(arrays["collection_ids"][rows[0]]),
                    texts=[texts[int(i)] for i in ids[rows].tolist()],
                )


def _read_part(path: Path, identity: StoreIdentity) -> dict[str, np.ndarray]:
    """One backed-up part, checked: plain arrays (never pickles) of matching lengths and widths."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError) as exc:
        raise KnowledgeError(f"The backup's index/{path.name} cannot be read ({exc}).") from exc
    expected = {"chunk_ids", "document_ids", "collection_ids", "dense"} | (
        {"companion"} if identity.companion else set()
    )
    n = len(arrays.get("chunk_ids", ()))
    widths = {"dense": identity.dimension, "companion": identity.companion_dimension}
    if (
        set(arrays) != expected
        or any(len(a) != n for a in arrays.values())
        or any(
            arrays[name].ndim != 2 or arrays[name].shape[1] != width for name, width in widths.items() if name in arrays
        )
    ):
        raise KnowledgeError(f"The backup's index/{path.name} does not hold what a backup writes: refused.")
    return arrays


@dataclass(frozen=True)
class CheckedBackup:
    """What :func:`backup_validate` found in a backup that may be restored."""

    manifest: dict[str, Any]
    #: the rows, as loaddata reads them (JSON)
    data: str
    #: the stored files, relative to ``media/``
    media_files: list[PurePosixPath]
    #: the backup's search store parts ("part-000001.npz", in order), empty without one
    index_parts: list[str]
    #: what built the backed-up store (None without one)
    index_identity: StoreIdentity | None


def backup_validate(*, folder: Path) -> CheckedBackup:
    """Check that ``folder`` is a backup as :func:`portal_backup` writes it, and nothing else.

    Only the expected entries (``manifest.json``, ``data.json.gz``, ``media/``, ``index/``), only
    regular files and folders (no link, device or pipe), an index folder of ``identity.json`` and
    ``part-NNNNNN.npz`` files (or a format-1 index, restored by a rebuild), rows of the backed-up models
    only, and stored file names that stay inside the media folder. Raises KnowledgeError naming the first
    problem; reads, never writes.
    """
    folder = Path(folder)
    if not (folder / MANIFEST_FILE).is_file():
        raise KnowledgeError(f"{folder} is not a Knowledge Portal backup (no {MANIFEST_FILE}).")
    top = _entries(folder)
    unexpected = sorted(set(top) - {MANIFEST_FILE, DATA_FILE, MEDIA_FOLDER, INDEX_FOLDER})
    if unexpected:
        raise KnowledgeError(f"The backup holds unexpected entries: {', '.join(map(repr, unexpected))}.")
    _expect(top, MANIFEST_FILE, stat.S_ISREG)
    _expect(top, DATA_FILE, stat.S_ISREG)

    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise KnowledgeError(f"The backup's {MANIFEST_FILE} cannot be read ({exc}).") from exc
    if not isinstance(manifest, dict) or manifest.get("format") not in (1, FORMAT):
        format_ = manifest.get("format") if isinstance(manifest, dict) else None
        raise KnowledgeError(f"Unsupported backup format {format_}.")

    media_files: list[PurePosixPath] = []
    if MEDIA_FOLDER in top:
        _expect(top, MEDIA_FOLDER, stat.S_ISDIR)
        media_files = _media_files(folder / MEDIA_FOLDER, PurePosixPath())
    # a format-1 backup's index/ (a FAISS version of the old layout) is never read: the store is rebuilt
    has_parts = INDEX_FOLDER in top and manifest["format"] == FORMAT
    index_parts, index_identity = _index_parts(folder / INDEX_FOLDER) if has_parts else ([], None)
    data = _rows(folder / DATA_FILE)
    return CheckedBackup(
        manifest=manifest, data=data, media_files=media_files, index_parts=index_parts, index_identity=index_identity
    )


def _entries(folder: Path) -> dict[str, int]:
    """The names in ``folder`` with their modes, links not followed."""
    return {entry.name: entry.stat(follow_symlinks=False).st_mode for entry in os.scandir(folder)}


def _expect(entries: dict[str, int], name: str, kind: Any, where: str = "") -> None:
    if name not in entries:
        raise KnowledgeError(f"The backup has no {where}{name}.")
    if not kind(entries[name]):
        what = "a link" if stat.S_ISLNK(entries[name]) else "not a plain file or folder"
        raise KnowledgeError(f"The backup's {where}{name} is {what}: refused.")


def _media_files(folder: Path, relative: PurePosixPath) -> list[PurePosixPath]:
    files: list[PurePosixPath] = []
    for name, mode in sorted(_entries(folder).items()):
        path = relative / name
        if stat.S_ISDIR(mode):
            files.extend(_media_files(folder / name, path))
        elif stat.S_ISREG(mode):
            files.append(path)
        else:
            what = "a link" if stat.S_ISLNK(mode) else "not a plain file or folder"
            raise KnowledgeError(f"The backup's media/{path} is {what}: refused.")
    return files


def _index_parts(index: Path) -> tuple[list[str], StoreIdentity]:
    """The parts of the backup's ``index/`` (plain files named as a backup names them) and its identity."""
    from ingestion.store import StoreIdentity

    entries = _entries(index)
    _expect(entries, IDENTITY_FILE, stat.S_ISREG, "index/")
    unexpected = sorted(name for name in entries if name != IDENTITY_FILE and not _PART_NAME.fullmatch(name))
    if unexpected:
        raise KnowledgeError(f"The backup's index/ holds unexpected entries: {', '.join(map(repr, unexpected[:5]))}.")
    parts = sorted(name for name in entries if name != IDENTITY_FILE)
    for name in parts:
        _expect(entries, name, stat.S_ISREG, "index/")
    try:
        identity = StoreIdentity(**json.loads((index / IDENTITY_FILE).read_text(encoding="utf-8")))
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise KnowledgeError(f"The backup's index/{IDENTITY_FILE} cannot be read ({exc}).") from exc
    for name in parts:  # read once here, so that a bad part is refused before anything is written
        _read_part(index / name, identity)
    return parts, identity


def _rows(path: Path) -> str:
    """The backed-up rows, checked: the models a backup holds, stored file names inside the media folder."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            data = handle.read()
        rows = json.loads(data)
    except (OSError, EOFError, ValueError) as exc:
        raise KnowledgeError(f"The backup's {DATA_FILE} cannot be read ({exc}).") from exc
    if not isinstance(rows, list):
        raise KnowledgeError(f"The backup's {DATA_FILE} is not a list of rows.")
    allowed = set(MODELS)
    for row in rows:
        model = row.get("model") if isinstance(row, dict) else None
        if model not in allowed:
            raise KnowledgeError(f"The backup's {DATA_FILE} holds rows of {model!r}, which a backup never has.")
        if model in {"knowledge.document", "knowledge.documentversion"}:
            name = (row.get("fields") or {}).get("file") or ""
            if name and not _safe_relative_name(name):
                raise KnowledgeError(f"The backup names a stored file {name[:80]!r} outside the media folder.")
    return data


def _safe_relative_name(name: object) -> bool:
    """A stored file name that stays inside its folder: relative, no ``..``, no backslash or NUL."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        return False
    path = PurePosixPath(name)
    return not path.is_absolute() and all(part not in ("", ".", "..") for part in name.split("/"))
