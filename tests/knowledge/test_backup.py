"""A backup restored on a fresh instance answers the same questions with the same sources."""

from __future__ import annotations

import io
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
