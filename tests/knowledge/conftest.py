from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from knowledge.models import Collection, Document
from knowledge.services import documents as document_services


@pytest.fixture(autouse=True)
def _isolated(portal_dirs: dict[str, Path]) -> dict[str, Path]:
    return portal_dirs


@pytest.fixture
def ingest() -> Callable[..., Document]:
    """Store a file as a document and ingest it in this process (no worker)."""

    def run(path: Path, *, collection: Collection | None = None, name: str | None = None) -> Document:
        with path.open("rb") as handle:
            document = document_services.document_create(
                file=handle, filename=name or path.name, collection=collection, dispatch=False
            )
        document_services.document_process(document_id=document.pk)
        document.refresh_from_db()
        return document

    return run


@pytest.fixture
def text_file(tmp_path: Path) -> Callable[[str, str], Path]:
    def make(name: str, content: str) -> Path:
        path = tmp_path / name
        path.write_text(content, encoding="utf-8")
        return path

    return make


@pytest.fixture
def other_collection(db: Any) -> Collection:
    return Collection.objects.create(slug="restricted", name="Restricted", is_public=False)
