"""``manage.py move_index --to postgres``: the faiss store's chunks copied into PostgreSQL, counts checked."""

from __future__ import annotations

from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from ingestion.language import TextAnalyzer
from ingestion.store import PassageEmbeddings, SearchStore

from .conftest import COMPANION_IDENTITY, open_backend, postgres_problem, unit, writing

pytestmark = pytest.mark.stores


@pytest.fixture
def ready_documents(db: Any) -> list[Any]:
    """Three ready documents of four chunks each, in two collections."""
    from knowledge.models import Chunk, Collection, Document

    collections = [Collection.objects.create(slug=f"c{i}", name=f"C{i}") for i in range(2)]
    words = ["puffin", "guillemot", "razorbill", "fulmar", "shag", "eider"]
    chunks = []
    for d in range(3):
        document = Document.objects.create(
            collection=collections[d % 2], title=f"seabirds {d}", sha256=str(d), status=Document.Status.READY
        )
        for o in range(4):
            text = f"the {words[(d + o) % len(words)]} nests on the {words[(d * o) % len(words)]} cliff {d}{o}"
            chunks.append(Chunk.objects.create(document=document, ordinal=o, text=text))
    return chunks


def faiss_store_of(chunks: list[Any], folder: Path) -> SearchStore:
    store = open_backend("faiss", COMPANION_IDENTITY, folder)
    rng = np.random.default_rng(30)
    with writing(store) as writer:
        for document_id in sorted({c.document_id for c in chunks}):
            mine = [c for c in chunks if c.document_id == document_id]
            companion = unit(rng.normal(size=(len(mine), COMPANION_IDENTITY.companion_dimension)))
            writer.add(
                [c.pk for c in mine],
                PassageEmbeddings(unit(rng.normal(size=(len(mine), COMPANION_IDENTITY.dimension))), companion),
                document_id=document_id,
                collection_id=mine[0].document.collection_id,
                texts=[c.text for c in mine],
            )
    return store


@pytest.fixture
def configured(settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from knowledge.services import engines

    settings.INDEX_DIR = tmp_path / "index"
    monkeypatch.setattr(engines, "store_identity", lambda: COMPANION_IDENTITY)
    return Path(settings.INDEX_DIR)


def test_move_index_copies_the_faiss_store_into_postgres(ready_documents: list[Any], configured: Path) -> None:
    if problem := postgres_problem():
        pytest.skip(problem)
    from knowledge.search.postgres import PostgresStore

    source = faiss_store_of(ready_documents, configured)
    out = StringIO()
    call_command("move_index", "--to", "postgres", "--batch-size", "5", stdout=out, stderr=StringIO())
    assert "Moved: the postgres store holds the same 12 chunks." in out.getvalue()
    target = PostgresStore(COMPANION_IDENTITY)
    assert sorted(target.ids().tolist()) == sorted(c.pk for c in ready_documents)
    terms = TextAnalyzer().query_tokens("puffin fulmar cliff")
    for collections in (None, {ready_documents[0].document.collection_id}):
        expected, moved = (
            s.view().lexical(terms, 20, collections=collections, documents=None, k1=0.9, b=0.4)
            for s in (source, target)
        )
        assert [c for c, _ in moved] == [c for c, _ in expected]
        np.testing.assert_allclose([s for _, s in moved], [s for _, s in expected], rtol=1e-5)
    facts = target.view().facts([ready_documents[5].pk])[ready_documents[5].pk]
    assert facts.text == ready_documents[5].text
    np.testing.assert_allclose(facts.dense, source.view().facts([ready_documents[5].pk])[ready_documents[5].pk].dense)


def test_move_index_fails_when_a_ready_chunk_is_missing(ready_documents: list[Any], configured: Path) -> None:
    if problem := postgres_problem():
        pytest.skip(problem)
    faiss_store_of(ready_documents[:-1], configured)  # the last chunk never made it into the faiss store
    with pytest.raises(CommandError, match="1 chunk"):
        call_command("move_index", "--to", "postgres", stdout=StringIO(), stderr=StringIO())


def test_move_index_refuses_a_database_without_pgvector(
    ready_documents: list[Any], configured: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from knowledge.search import checks

    monkeypatch.setattr(checks, "postgres_store_problem", lambda using="default": "no pgvector here")
    with pytest.raises(CommandError, match="no pgvector here"):
        call_command("move_index", "--to", "postgres", stdout=StringIO(), stderr=StringIO())
