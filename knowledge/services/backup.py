"""Backup and restore of a whole portal: database rows, stored files and the index.

A backup folder holds ``data.json.gz`` (Django's serialized rows of the portal, the users and
groups, keeping primary keys so chunk ids still match the index), ``media/`` (the uploaded files)
and ``index/`` (the saved FAISS version, optional: it can always be rebuilt from the database).
Works on SQLite and PostgreSQL alike; for large PostgreSQL databases ``pg_dump`` is the faster
alternative for the rows (see the README).

A backup holds password hashes and every document: its folders are written 0700 and its files 0600,
whatever the umask. A restore trusts nothing in it: every entry, the index pointer and the stored file
names are checked before anything is written (:func:`backup_validate`).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from django.conf import settings
from django.core import management
from django.db import transaction

from ingestion.index import CURRENT_FILE, is_version_name
from knowledge.errors import KnowledgeError
from knowledge.models import Document
from knowledge.services import engines

FORMAT = 1
MANIFEST_FILE = "manifest.json"
DATA_FILE = "data.json.gz"
MEDIA_FOLDER = "media"
INDEX_FOLDER = "index"
#: what a backup holds, in an order that loads (users and groups before what refers to them)
MODELS = [
    "auth.group",
    "auth.user",
    "knowledge.collection",
    "knowledge.document",
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
    index_version: int | None


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
        files = list(Document.objects.exclude(file="").values_list("file", flat=True))
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

    version = None
    if include_index:
        version = _copy_index(Path(settings.INDEX_DIR), folder)
    with _private_file(folder / MANIFEST_FILE) as handle:
        handle.write(
            json.dumps({"format": FORMAT, "documents": documents, "files": copied, "index_version": version}).encode()
        )
    return BackupReport(folder=folder, documents=documents, files=copied, index_version=version)


def _copy_index(source: Path, folder: Path) -> int | None:
    """Copy the current saved index version (under the writers' lock, so it is a complete one)."""
    index = engines.get_index()
    with index.writer():  # nothing is changed: the lock alone keeps writers out while copying
        current = (source / CURRENT_FILE).read_text().strip() if (source / CURRENT_FILE).exists() else ""
        if not current:
            return None
        if not is_version_name(current):
            raise KnowledgeError(f"The index pointer {source / CURRENT_FILE} names {current!r}, not a version.")
        for entry in sorted((source / current).iterdir()):
            _private_copy(entry, folder, Path(INDEX_FOLDER) / current / entry.name)
        with _private_file(folder / INDEX_FOLDER / CURRENT_FILE) as handle:
            handle.write(current.encode("ascii"))
        return index.version


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
    index_dir = Path(settings.INDEX_DIR)
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
            if checked.index_version_name and not rebuild_index:
                _restore_index(folder / INDEX_FOLDER, index_dir, checked.index_version_name)

    if checked.index_version_name and not rebuild_index:
        engines.reset()
        version = engines.get_index().version
    else:
        from knowledge.services.index import index_rebuild

        version = index_rebuild().version
    return BackupReport(
        folder=folder, documents=Document.objects.count(), files=checked.manifest.get("files", 0), index_version=version
    )


def _restore_index(source: Path, index_dir: Path, name: str) -> None:
    """Copy the backed-up version ``name`` into the index folder, then point CURRENT at it (renamed into place)."""
    index_dir.mkdir(parents=True, exist_ok=True)
    target = index_dir / name
    target.mkdir(exist_ok=True)
    for entry in (source / name).iterdir():
        shutil.copyfile(entry, target / entry.name)
    pointer = index_dir / f".tmp-{CURRENT_FILE}-restore"
    pointer.write_text(f"{name}\n", encoding="ascii")
    os.replace(pointer, index_dir / CURRENT_FILE)


@dataclass(frozen=True)
class CheckedBackup:
    """What :func:`backup_validate` found in a backup that may be restored."""

    manifest: dict[str, Any]
    #: the rows, as loaddata reads them (JSON)
    data: str
    #: the stored files, relative to ``media/``
    media_files: list[PurePosixPath]
    #: the index version the backup holds ("v000000000042"), None without an index
    index_version_name: str | None


def backup_validate(*, folder: Path) -> CheckedBackup:
    """Check that ``folder`` is a backup as :func:`portal_backup` writes it, and nothing else.

    Only the expected entries (``manifest.json``, ``data.json.gz``, ``media/``, ``index/``), only
    regular files and folders (no link, device or pipe), an index pointer that names the one version
    folder beside it, rows of the backed-up models only, and stored file names that stay inside the
    media folder. Raises KnowledgeError naming the first problem; reads, never writes.
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
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        format_ = manifest.get("format") if isinstance(manifest, dict) else None
        raise KnowledgeError(f"Unsupported backup format {format_}.")

    media_files: list[PurePosixPath] = []
    if MEDIA_FOLDER in top:
        _expect(top, MEDIA_FOLDER, stat.S_ISDIR)
        media_files = _media_files(folder / MEDIA_FOLDER, PurePosixPath())
    index_version_name = _index_version(folder / INDEX_FOLDER) if INDEX_FOLDER in top else None
    data = _rows(folder / DATA_FILE)
    return CheckedBackup(manifest=manifest, data=data, media_files=media_files, index_version_name=index_version_name)


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


def _index_version(index: Path) -> str:
    """The version named by the backup's ``index/CURRENT``, checked to be the one plain folder beside it."""
    entries = _entries(index)
    _expect(entries, CURRENT_FILE, stat.S_ISREG, "index/")
    name = (index / CURRENT_FILE).read_bytes().decode("ascii", errors="replace").strip()
    if not is_version_name(name):
        raise KnowledgeError(
            f"The backup's index/{CURRENT_FILE} names {name[:80]!r}, not an index version (like v000000000042)."
        )
    unexpected = sorted(set(entries) - {CURRENT_FILE, name})
    if unexpected:
        raise KnowledgeError(f"The backup's index/ holds unexpected entries: {', '.join(map(repr, unexpected))}.")
    _expect(entries, name, stat.S_ISDIR, "index/")
    for entry, mode in _entries(index / name).items():
        if not stat.S_ISREG(mode):
            what = "a link" if stat.S_ISLNK(mode) else "not a plain file"
            raise KnowledgeError(f"The backup's index/{name}/{entry} is {what}: refused.")
    return name


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
        if model == "knowledge.document":
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
