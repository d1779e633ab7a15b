"""The type sniffed at upload is passed on: the inspection and the parse do not sniff the file again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import ingestion.parsing
from knowledge.models import Document
from knowledge.services import documents as document_services


@pytest.mark.parametrize(
    ("name", "mime"),
    [("txt_utf8_french_moliere.txt", "text/plain"), ("pdf_reliance_3p.pdf", "application/pdf")],
)
def test_the_type_sniffed_at_upload_is_not_sniffed_again(
    db: Any, corpus_dir: Path, monkeypatch: pytest.MonkeyPatch, name: str, mime: str
) -> None:
    with (corpus_dir / name).open("rb") as handle:
        document = document_services.document_create(file=handle, filename=name, dispatch=False, check_type=True)
    assert document.mime_type == mime

    def sniffed_again(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("the file was sniffed again")

    # the inspection and the parse run in forked children, which inherit the patched module
    monkeypatch.setattr(ingestion.parsing, "sniff_mime", sniffed_again)
    document_services.document_process(document_id=document.pk)
    document.refresh_from_db()
    assert document.status == Document.Status.READY, document.error
    assert document.mime_type == mime and document.chunk_count > 0
