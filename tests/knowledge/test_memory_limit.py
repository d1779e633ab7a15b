"""A document whose parsing needs more memory than RAG_INGEST_MEMORY_MB fails with the reason; nothing else moves."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ingestion.sandbox import memory_limit_supported
from knowledge.models import Document
from knowledge.services import engines
from knowledge.services import index as index_services
from tests.settings_probe import settings_probe

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(not memory_limit_supported(), reason="the memory limit needs Linux (fork, RLIMIT_AS)"),
]


def test_a_document_past_the_memory_limit_fails_with_the_reason_and_leaves_the_index_untouched(
    ingest: Callable[..., Document], text_file: Callable[[str, str], Path], settings: Any
) -> None:
    good = ingest(text_file("harbour.txt", "Kept safe: the archive of the Bergen harbour authority."))
    assert good.status == "ready"
    before = set(engines.get_index().ids().tolist())

    # a legitimate but big text file (24 MB) with a limit far below what reading it takes
    paragraph = "The minutes of the harbour board record every ship that entered the port that year. "
    big = text_file("minutes.txt", "\n\n".join([paragraph * 8] * 36_000))
    assert big.stat().st_size > 24_000_000
    settings.RAG_INGEST_MEMORY_MB = 16
    document = ingest(big)

    assert document.status == "failed"
    assert document.error == "Reading this document needed more than 16 MB of memory; it was not read"
    assert document.chunks.count() == 0 and document.chunk_count == 0
    assert set(engines.get_index().ids().tolist()) == before
    assert index_services.index_check().consistent
    good.refresh_from_db()
    assert good.status == "ready"

    # the process that ingested it carries on with the next document
    settings.RAG_INGEST_MEMORY_MB = 2048
    after = ingest(text_file("tides.txt", "The tide tables of the harbour for the spring of that year."))
    assert after.status == "ready" and after.chunks.count() > 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", "2048 2048"), ("0", "0 0"), ("512", "512 512"), ("10", "at least 64"), ("lots", "must be an integer")],
)
def test_the_memory_limit_setting_reaches_the_pipeline_or_stops_the_start(
    tmp_path: Path, value: str, expected: str
) -> None:
    extra = {"RAG_INGEST_MEMORY_MB": value} if value else {}
    code = (
        "from knowledge.services import engines; "
        "print(s.RAG_INGEST_MEMORY_MB, engines.pipeline_options().max_memory_mb)"
    )
    result = settings_probe(tmp_path, extra, code)
    if expected[0].isdigit():
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == expected.split()
    else:
        assert result.returncode != 0
        assert "RAG_INGEST_MEMORY_MB" in result.stderr and expected in result.stderr
