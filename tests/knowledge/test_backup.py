"""A backup restored on a fresh instance answers the same questions with the same sources."""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError

from knowledge.models import ApiKey, Chunk, Collection, Conversation, Document, Message, UsageRecord
from knowledge.services import answering
from knowledge.services import documents as document_services

# the postgres pass (-m stores) runs them on a pgvector server too
pytestmark = [pytest.mark.django_db, pytest.mark.stores]

QUESTIONS = ["Where do puffins nest?", "How is cider made?"]


def _answers() -> list[list[tuple[int, int]]]:
    ids = list(Collection.objects.values_list("pk", flat=True))
    return [
        [(s.id, s.document_id) for s in answering.sources_retrieve(question=q, collection_ids=ids, top_k=3)]
        for q in QUESTIONS
    ]


def _wipe() -> None:
    for model in (Message, Conversation, UsageRecord, ApiKey, Chunk, Document, Collection, User):
        model.objects.all().delete()


@pytest.mark.parametrize("rebuild", [False, True], ids=["index-copied", "index-rebuilt"])
def test_backup_and_restore_on_a_fresh_instance(
    portal_dirs: dict[str, Path], settings: Any, tmp_path: Path, rebuild: bool
) -> None:
    User.objects.create_user(username="keeper")
    for name, text in [
        ("birds.txt", "Puffins nest in burrows on grassy sea cliffs of the North Atlantic."),
        ("drinks.txt", "Cider is made by crushing apples and fermenting the juice with yeast."),
    ]:
        document = document_services.document_create(file=io.BytesIO(text.encode()), filename=name, dispatch=False)
        document_services.document_process(document_id=document.pk)
    before = _answers()
    assert all(before)

    backup = tmp_path / "backup"
    call_command("backup", str(backup), stdout=io.StringIO())
    assert (backup / "data.json.gz").exists() and (backup / "index" / "identity.json").exists()
    with pytest.raises(CommandError, match="not empty"):
        call_command("backup", str(backup), stdout=io.StringIO())

    # A fresh instance: empty tables, other media and index folders.
    _wipe()
    settings.MEDIA_ROOT = tmp_path / "fresh-media"
    settings.INDEX_DIR = tmp_path / "fresh-index"
    Collection.objects.create(slug="default", name="Default")  # what the migration creates

    args = ["restore", str(backup)] + (["--rebuild-index"] if rebuild else [])
    call_command(*args, stdout=io.StringIO())

    assert _answers() == before
    assert User.objects.filter(username="keeper").exists()
    for document in Document.objects.all():
        assert Path(document.file.path).is_file()
        assert str(settings.MEDIA_ROOT) in document.file.path
    with pytest.raises(CommandError, match="already has documents"):
        call_command("restore", str(backup), stdout=io.StringIO())


def test_a_backup_is_readable_by_its_owner_only_even_under_a_permissive_umask(
    portal_dirs: dict[str, Path], tmp_path: Path
) -> None:
    document = document_services.document_create(
        file=io.BytesIO(b"Puffins nest in burrows on grassy sea cliffs."), filename="birds.txt", dispatch=False
    )
    document_services.document_process(document_id=document.pk)
    backup = tmp_path / "backup"
    previous = os.umask(0)
    try:
        call_command("backup", str(backup), stdout=io.StringIO())
    finally:
        os.umask(previous)

    entries = [backup, *backup.rglob("*")]
    assert {p.relative_to(backup).parts[0] for p in entries[1:]} == {"manifest.json", "data.json.gz", "media", "index"}
    assert any(p.suffix == ".txt" for p in entries) and any(p.suffix == ".npz" for p in entries)
    modes = {str(p.relative_to(backup)): stat.S_IMODE(p.stat().st_mode) for p in entries}
    assert {name: mode for name, mode in modes.items() if (backup / name).is_dir() and mode != 0o700} == {}
    assert {name: mode for name, mode in modes.items() if (backup / name).is_file() and mode != 0o600} == {}


@pytest.fixture
def var_with_secret(settings: Any, tmp_path: Path) -> Iterator[Path]:
    """A VAR_DIR holding the secret key, with the media and index folders inside it (the defaults' layout)."""
    var = tmp_path / "var"
    var.mkdir()
    (var / "secret_key").write_text("the-real-secret")
    settings.VAR_DIR = var
    settings.MEDIA_ROOT = var / "media"
    settings.INDEX_DIR = var / "index"
    yield var


def _small_backup(folder: Path) -> Path:
    """A real backup (one user, one document row naming documents/x.txt, no index) to be tampered with."""
    User.objects.create_user(username="intruder-check")
    collection = Collection.objects.get_or_create(slug="default", defaults={"name": "Default"})[0]
    Document.objects.create(collection=collection, title="x.txt", file="documents/x.txt", sha256="b" * 64)
    call_command("backup", str(folder), "--no-index", stdout=io.StringIO())
    _wipe()
    Collection.objects.create(slug="default", name="Default")  # what the migration creates
    return folder


def _rename_stored_file(folder: Path, file_name: str) -> None:
    """Make the backed-up document row name ``file_name``."""
    with gzip.open(folder / "data.json.gz", "rt", encoding="utf-8") as handle:
        rows = json.load(handle)
    for row in rows:
        if row["model"] == "knowledge.document":
            row["fields"]["file"] = file_name
    with gzip.open(folder / "data.json.gz", "wt", encoding="utf-8") as handle:
        json.dump(rows, handle)


def _assert_nothing_restored(var: Path) -> None:
    assert (var / "secret_key").read_text() == "the-real-secret"
    assert not User.objects.filter(username="intruder-check").exists()
    assert not Document.objects.exists()
    assert not (var / "media").exists() or not any((var / "media").rglob("*"))
    assert not (var / "index").exists() or not any((var / "index").rglob("*"))


def test_a_restore_refuses_unexpected_or_unreadable_index_parts_and_writes_nothing(
    var_with_secret: Path, tmp_path: Path
) -> None:
    backup = _small_backup(tmp_path / "backup")
    (backup / "index").mkdir()
    (backup / "index" / "identity.json").write_text('{"embedder": "e5", "dimension": 4}')
    (backup / "secret_key").write_text("the-attacker's-secret")
    with pytest.raises(CommandError, match="unexpected entries: 'secret_key'"):
        call_command("restore", str(backup), stdout=io.StringIO())
    _assert_nothing_restored(var_with_secret)

    (backup / "secret_key").unlink()
    (backup / "index" / "x.npz").write_bytes(b"")
    with pytest.raises(CommandError, match=r"index/ holds unexpected entries: 'x.npz'"):
        call_command("restore", str(backup), stdout=io.StringIO())
    (backup / "index" / "x.npz").unlink()

    # a pickled object array is never loaded; arrays of the wrong widths are refused
    objects = np.array([{"a": 1}], dtype=object)
    with open(backup / "index" / "part-000001.npz", "wb") as handle:
        np.savez(handle, chunk_ids=objects, document_ids=objects, collection_ids=objects, dense=objects)
    with pytest.raises(CommandError, match=r"index/part-000001.npz cannot be read"):
        call_command("restore", str(backup), stdout=io.StringIO())
    _assert_nothing_restored(var_with_secret)
    one = np.ones(1, dtype=np.int64)
    with open(backup / "index" / "part-000001.npz", "wb") as handle:
        np.savez(handle, chunk_ids=one, document_ids=one, collection_ids=one, dense=np.ones((1, 3), np.float32))
    with pytest.raises(CommandError, match=r"index/part-000001.npz does not hold what a backup writes"):
        call_command("restore", str(backup), stdout=io.StringIO())
    _assert_nothing_restored(var_with_secret)


def test_a_restore_refuses_links_and_file_names_outside_the_media_folder(var_with_secret: Path, tmp_path: Path) -> None:
    backup = _small_backup(tmp_path / "backup")
    (backup / "media" / "documents").mkdir(parents=True)
    # A member that leads out of the backup: restoring it would copy the secret key into the media folder.
    (backup / "media" / "documents" / "x.txt").symlink_to(var_with_secret / "secret_key")
    with pytest.raises(CommandError, match=r"media/documents/x.txt is a link: refused"):
        call_command("restore", str(backup), stdout=io.StringIO())
    _assert_nothing_restored(var_with_secret)

    (backup / "media" / "documents" / "x.txt").unlink()
    (backup / "media" / "documents" / "x.txt").write_text("a plain file")
    _rename_stored_file(backup, "../secret_key")
    with pytest.raises(CommandError, match=r"stored file '../secret_key' outside the media folder"):
        call_command("restore", str(backup), stdout=io.StringIO())
    _assert_nothing_restored(var_with_secret)
