"""Backup and restore of a whole portal: database rows, stored files and the index.

A backup folder holds ``data.json.gz`` (Django's serialized rows of the portal, the users and
groups, keeping primary keys so chunk ids still match the index), ``media/`` (the uploaded files)
and ``index/`` (the saved FAISS version, optional: it can always be rebuilt from the database).
Works on SQLite and PostgreSQL alike; for large PostgreSQL databases ``pg_dump`` is the faster
alternative for the rows (see the README).
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core import management
from django.db import transaction

from knowledge.errors import KnowledgeError
from knowledge.models import Document
from knowledge.services import engines

FORMAT = 1
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
    folder.mkdir(parents=True, exist_ok=True)

    # One transaction: the rows written are a consistent snapshot even while workers ingest.
    with transaction.atomic():
        out = io.StringIO()
        management.call_command("dumpdata", *MODELS, format="json", indent=None, stdout=out)
        files = list(Document.objects.exclude(file="").values_list("file", flat=True))
        documents = Document.objects.count()
    with gzip.open(folder / "data.json.gz", "wt", encoding="utf-8") as handle:
        handle.write(out.getvalue())

    media = Path(settings.MEDIA_ROOT)
    copied = 0
    for name in files:
        source = media / name
        if source.is_file():
            target = folder / "media" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            copied += 1

    version = None
    if include_index:
        version = _copy_index(Path(settings.INDEX_DIR), folder / "index")
    (folder / "manifest.json").write_text(
        json.dumps({"format": FORMAT, "documents": documents, "files": copied, "index_version": version})
    )
    return BackupReport(folder=folder, documents=documents, files=copied, index_version=version)


def _copy_index(source: Path, target: Path) -> int | None:
    """Copy the current saved index version (under the writers' lock, so it is a complete one)."""
    index = engines.get_index()
    with index.writer():  # nothing is changed: the lock alone keeps writers out while copying
        current = (source / "CURRENT").read_text().strip() if (source / "CURRENT").exists() else ""
        if not current:
            return None
        target.mkdir(parents=True)
        shutil.copytree(source / current, target / current)
        (target / "CURRENT").write_text(current)
        return index.version


def portal_restore(*, folder: Path, rebuild_index: bool = False) -> BackupReport:
    """Restore a backup into this (empty) instance; rebuild the index when the backup has none."""
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists():
        raise KnowledgeError(f"{folder} is not a Knowledge Portal backup (no manifest.json).")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT:
        raise KnowledgeError(f"Unsupported backup format {manifest.get('format')}.")
    if Document.objects.exists():
        raise KnowledgeError("This instance already has documents: restore into an empty one.")

    with gzip.open(folder / "data.json.gz", "rt", encoding="utf-8") as handle:
        data = handle.read()
    fixture = folder / ".restore.json"
    fixture.write_text(data)
    try:
        with transaction.atomic():
            # The default collection made by the migration would clash with the backed-up one.
            from knowledge.models import Collection

            Collection.objects.filter(documents__isnull=True).delete()
            management.call_command("loaddata", str(fixture), verbosity=0)
    finally:
        fixture.unlink(missing_ok=True)

    media = Path(settings.MEDIA_ROOT)
    if (folder / "media").is_dir():
        shutil.copytree(folder / "media", media, dirs_exist_ok=True)

    index_dir = Path(settings.INDEX_DIR)
    version = None
    if (folder / "index" / "CURRENT").exists() and not rebuild_index:
        index_dir.mkdir(parents=True, exist_ok=True)
        current = (folder / "index" / "CURRENT").read_text().strip()
        shutil.copytree(folder / "index" / current, index_dir / current, dirs_exist_ok=True)
        (index_dir / "CURRENT").write_text(current)
        engines.reset()
        version = engines.get_index().version
    else:
        from knowledge.services.index import index_rebuild

        version = index_rebuild().version
    return BackupReport(
        folder=folder, documents=Document.objects.count(), files=manifest.get("files", 0), index_version=version
    )
