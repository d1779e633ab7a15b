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

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError

from knowledge.models import ApiKey, Chunk, Collection, Conversation, Document, Message, UsageRecord
from knowledge.services import answering, engines
from knowledge.services import documents as document_services

pytestmark = pytest.mark.django_db

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
    assert (backup / "data.json.gz").exists() and (backup / "index" / "CURRENT").exists()
    with pytest.raises(CommandError, match="not empty"):
        call_command("backup", str(backup), stdout=io.StringIO())

    # A fresh instance: empty tables, other media and index folders.
    _wipe()
    settings.MEDIA_ROOT = tmp_path / "fresh-media"
    settings.INDEX_DIR = tmp_path / "fresh-index"
    engines.reset()
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
    assert any(p.suffix == ".txt" for p in entries) and any(p.name == "index.faiss" for p in entries)
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
    engines.reset()
    yield var
    engines.reset()


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
    assert not (var / "index" / "CURRENT").exists()


def test_a_restore_refuses_an_index_pointer_that_is_a_path_and_writes_nothing(
    var_with_secret: Path, tmp_path: Path
) -> None:
    backup = _small_backup(tmp_path / "backup")
    # The pointer names the backup's own root, which copied "as the index version" lands on VAR_DIR.
    (backup / "index" / "v000000000001").mkdir(parents=True)
    (backup / "index" / "v000000000001" / "manifest.json").write_text("{}")
    (backup / "index" / "CURRENT").write_text("..\n")
    (backup / "secret_key").write_text("the-attacker's-secret")
    with pytest.raises(CommandError, match="unexpected entries: 'secret_key'"):
        call_command("restore", str(backup), stdout=io.StringIO())
    _assert_nothing_restored(var_with_secret)

    (backup / "secret_key").unlink()
    for pointer in ("..", "../../secret_key", "/etc", "v000000000001/../..", "v1"):
        (backup / "index" / "CURRENT").write_text(pointer + "\n")
        with pytest.raises(CommandError, match=r"index/CURRENT names .*not an index version"):
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
