"""What only the postgres store promises: transactions, other processes, the database's own deletes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, connections

from ingestion.errors import IndexMismatchError
from ingestion.language import PassageTerms, TextAnalyzer, bm25_idf, bm25_term_weight, passage_terms
from ingestion.store import PassageEmbeddings, StoreIdentity

from .conftest import IDENTITY, corpus, database_url, load, postgres_problem, unit, writing
from .test_contract import common_and_rare_terms

pytestmark = pytest.mark.stores

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def pg(db: Any) -> None:
    if problem := postgres_problem():
        pytest.skip(problem)


def store(identity: StoreIdentity = IDENTITY, **options: Any) -> Any:
    from knowledge.search.postgres import PostgresStore

    return PostgresStore(identity, **options)


def rows(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {table}")
        return int(cursor.fetchone()[0])


def statistics() -> tuple[dict[str, int], dict[str, tuple[int, int]]]:
    """The term and language statistics and the postings as kept, and as recounted from the chunks (they must
    agree)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT term, df FROM search_term_now WHERE df > 0")
        kept_terms = dict(cursor.fetchall())
        cursor.execute(
            "SELECT t.term, count(*) FROM search_chunk c, unnest(c.term_ids) AS u(id) "
            "JOIN search_term t ON t.id = u.id GROUP BY t.term"
        )
        counted_terms = dict(cursor.fetchall())
        cursor.execute(
            "SELECT (SELECT count(*) FROM search_posting) + (SELECT count(*) FROM search_posting_recent), "
            "(SELECT coalesce(sum(cardinality(term_ids)), 0) FROM search_chunk)"
        )
        postings, expected_postings = cursor.fetchone()
        cursor.execute("SELECT language, chunks, length FROM search_language_now")
        kept_languages = {r[0]: (r[1], r[2]) for r in cursor.fetchall()}
        cursor.execute("SELECT language, count(*), sum(length) FROM search_chunk GROUP BY language")
        counted_languages = {r[0]: (r[1], r[2]) for r in cursor.fetchall()}
    assert kept_terms == counted_terms
    assert postings == expected_postings
    assert kept_languages == counted_languages
    return kept_terms, kept_languages


def test_term_statistics_stay_exact_through_adds_replaces_and_removes(pg: None) -> None:
    s = store()
    docs = corpus(12, 5, seed=20)
    load(s, docs)
    statistics()
    with writing(s) as writer:
        writer.remove_document(docs[0].document_id)
        writer.remove_ids(docs[1].chunk_ids[:2])
        doc = docs[2]
        writer.add(doc.chunk_ids, doc.embeddings, document_id=doc.document_id, collection_id=9, texts=["a b c"] * 5)
    _, languages = statistics()
    assert sum(n for n, _ in languages.values()) == len(s.view()) == 60 - 5 - 2
    with writing(s) as writer:
        writer.clear()
    assert statistics() == ({}, {})


def test_deleting_knowledge_chunks_removes_their_search_rows(pg: None) -> None:
    from knowledge.models import Chunk, Collection, Document

    collection = Collection.objects.create(slug="birds", name="Birds")
    documents = [
        Document.objects.create(collection=collection, title=f"d{i}", sha256=f"{i}", status=Document.Status.READY)
        for i in range(2)
    ]
    chunks = [
        Chunk.objects.create(document=document, ordinal=o, text=f"the kestrel {document.pk} hovers {o}")
        for document in documents
        for o in range(3)
    ]
    s = store()
    with writing(s) as writer:
        for document in documents:
            mine = [c for c in chunks if c.document.pk == document.pk]
            writer.add(
                [c.pk for c in mine],
                PassageEmbeddings(unit(np.ones((3, 16)))),
                document_id=document.pk,
                collection_id=collection.pk,
                texts=[c.text for c in mine],
            )
    assert len(s.view()) == 6
    documents[0].delete()  # Django deletes its chunks: the database removes their search rows
    assert sorted(s.ids().tolist()) == sorted(c.pk for c in chunks if c.document.pk == documents[1].pk)
    Chunk.objects.filter(pk=chunks[3].pk).delete()
    assert len(s.view()) == 2
    assert rows(f"search_vectors_{s.state()['space']}") == 2
    statistics()


def test_an_empty_store_takes_on_the_configured_identity(pg: None) -> None:
    load(store(IDENTITY), corpus(1, 2))
    other = StoreIdentity("another-embedder", 12)
    with pytest.raises(IndexMismatchError):
        store(other).view()
    with writing(store(IDENTITY)) as writer:
        writer.clear()
    assert len(store(other).view()) == 0  # an empty store answers nothing, whoever asks
    with writing(store(other)) as writer:
        writer.add([1], PassageEmbeddings(unit(np.ones((1, 12)))), document_id=1, collection_id=1, texts=["x"])
    assert store(other).state()["embedder"] == "another-embedder"
    with pytest.raises(IndexMismatchError, match="another-embedder"):
        store(IDENTITY).view()


def bm25_reference(
    analyses: Sequence[PassageTerms], chunk_ids: Sequence[int], terms: Sequence[str], *, k1: float = 0.9, b: float = 0.4
) -> list[tuple[int, float]]:
    """Exact BM25 over every passage, best first (ties: the smaller id), as ingestion.language scores."""
    n = len(analyses)
    average = sum(a.length for a in analyses) / n
    unique = list(dict.fromkeys(terms))
    df = {t: sum(1 for a in analyses if t in a.counts) for t in unique}
    scored = []
    for chunk, analysis in zip(chunk_ids, analyses, strict=True):
        score = sum(
            bm25_idf(df[t], n) * bm25_term_weight(analysis.counts[t], analysis.length, average, k1, b)
            for t in unique
            if t in analysis.counts
        )
        if score > 0:
            scored.append((chunk, score))
    return sorted(scored, key=lambda hit: (-hit[1], hit[0]))


def test_best_postings_rank_as_exact_bm25_when_the_depth_covers_them(pg: None) -> None:
    docs = corpus(30, 6, seed=11)
    analyses = [a for doc in docs for a in passage_terms(TextAnalyzer(), doc.texts)]
    chunk_ids = [i for doc in docs for i in doc.chunk_ids]
    load(store(), docs)
    common, rare = common_and_rare_terms(docs)
    deepest = max(sum(1 for a in analyses if t in a.counts) for t in common + rare)
    view = store(lexical_depth=deepest).view()  # every posting of every term is read: no partial score
    for terms in ([common[0]], common + rare, [rare[0], common[1]]):
        for collections, allowed in (
            (None, set(chunk_ids)),
            ({2}, {i for d in docs if d.collection_id == 2 for i in d.chunk_ids}),
        ):
            expected = [(c, s) for c, s in bm25_reference(analyses, chunk_ids, terms) if c in allowed]
            hits = view.lexical(terms, 1000, collections=collections, documents=None, k1=0.9, b=0.4)
            assert [c for c, _ in hits] == [c for c, _ in expected], (terms, collections)
            np.testing.assert_allclose([s for _, s in hits], [s for _, s in expected], rtol=1e-9)
        top = view.lexical(terms, 5, collections=None, documents=None, k1=0.9, b=0.4)
        assert [c for c, _ in top] == [c for c, _ in bm25_reference(analyses, chunk_ids, terms)[:5]]
    # a few documents are scored exactly over their chunks, whatever the depth
    hits = (
        store(lexical_depth=1)
        .view()
        .lexical(
            common + rare, 1000, collections=None, documents={docs[3].document_id, docs[7].document_id}, k1=0.9, b=0.4
        )
    )
    allowed = set(docs[3].chunk_ids + docs[7].chunk_ids)
    expected = [(c, s) for c, s in bm25_reference(analyses, chunk_ids, common + rare) if c in allowed]
    assert [c for c, _ in hits] == [c for c, _ in expected]
    # more documents than exact_limit allows: their filter applies inside the postings' scans
    documents = {docs[3].document_id, docs[7].document_id}
    view = store(lexical_depth=deepest, exact_limit=0).view()
    same = view.lexical(common + rare, 1000, collections=None, documents=documents, k1=0.9, b=0.4)
    assert [c for c, _ in same] == [c for c, _ in expected]
    # many allowed collections (each read on its own rather than merged): the same answer
    many = view.lexical(common + rare, 1000, collections=set(range(1, 41)), documents=None, k1=0.9, b=0.4)
    everything = view.lexical(common + rare, 1000, collections=None, documents=None, k1=0.9, b=0.4)
    assert [c for c, _ in many] == [c for c, _ in everything]


def test_a_shallow_depth_reads_the_best_postings_and_scores_its_candidates_exactly(pg: None) -> None:
    # every chunk holds "gull" (once to four times); a few hold "skua"
    texts = [f"{' '.join(['gull'] * (1 + i % 4))} {'skua' if i % 10 == 0 else 'tern'} number{i}" for i in range(40)]
    chunk_ids = list(range(1, 41))
    s = store()
    with writing(s) as writer:
        writer.add(chunk_ids, PassageEmbeddings(unit(np.ones((40, 16)))), document_id=1, collection_id=1, texts=texts)
    analyses = passage_terms(TextAnalyzer(), texts)
    analyzer = TextAnalyzer()
    gull, skua = analyzer.query_tokens("gull")[0], analyzer.query_tokens("skua")[0]
    view = store(lexical_depth=5, candidate_rescore=8).view()
    # a common term alone: its best postings (the most "gull"s), which are the exact top
    exact = bm25_reference(analyses, chunk_ids, [gull])
    top = view.lexical([gull], 5, collections=None, documents=None, k1=0.9, b=0.4)
    assert [c for c, _ in top] == [c for c, _ in exact[:5]]
    # the rare term's postings are all read; the common term adds to their scores: exact scores for them
    exact = bm25_reference(analyses, chunk_ids, [gull, skua])
    both = view.lexical([gull, skua], 4, collections=None, documents=None, k1=0.9, b=0.4)
    assert sorted(c for c, _ in both) == [1, 11, 21, 31]
    assert [c for c, _ in both] == [c for c, _ in exact[:4]]
    np.testing.assert_allclose([s for _, s in both], [s for _, s in exact[:4]], rtol=1e-9)
    # at most candidate_rescore candidates (or k) come back, best first, each with its exact score
    many = view.lexical([gull, skua], 100, collections=None, documents=None, k1=0.9, b=0.4)
    assert len(many) <= 100 and [s for _, s in many] == sorted((s for _, s in many), reverse=True)
    assert all(score == pytest.approx(dict(exact)[chunk], rel=1e-9) for chunk, score in many)
    assert len(store().view().lexical([gull], 100, collections=None, documents=None, k1=0.9, b=0.4)) == 40


def lexical_everywhere(s: Any, docs: Sequence[Any]) -> list[list[tuple[int, float]]]:
    """Each document's first three words asked of every collection, and of one, with a shallow depth."""
    analyzer = TextAnalyzer()
    view = s.view()
    answers = []
    for doc in docs:
        terms = analyzer.query_tokens(" ".join(doc.texts[0].split()[:3]))
        for collections in (None, [doc.collection_id]):
            answers.append(view.lexical(terms, 10, collections=collections, documents=None, k1=0.9, b=0.4))
    return answers


def test_new_postings_wait_in_a_small_table_and_merging_them_changes_no_answer(pg: None) -> None:
    s = store(lexical_depth=5, candidate_rescore=8, merge_batch=97)
    docs = corpus(9, 6, seed=30)
    load(s, docs[:6])
    assert rows("search_posting") == 0 and rows("search_posting_recent") > 0  # an add touches the small table
    before = lexical_everywhere(s, docs[:6])
    moved = s.merge()
    assert moved > 97  # several batches
    assert rows("search_posting_recent") == 0 and rows("search_posting") == moved
    assert lexical_everywhere(s, docs[:6]) == before
    statistics()
    # postings in both tables: a removal finds each where it is, and the answers read both
    load(s, docs[6:])
    with writing(s) as writer:
        writer.remove_document(docs[0].document_id)  # merged postings
        writer.remove_document(docs[7].document_id)  # recent ones
    statistics()
    kept = [doc for doc in docs if doc.document_id not in (docs[0].document_id, docs[7].document_id)]
    mixed = lexical_everywhere(s, kept)
    s.merge()
    assert lexical_everywhere(s, kept) == mixed
    statistics()


def test_a_commit_past_the_threshold_merges_in_the_background(postgres_db: None) -> None:
    s = store(merge_after=50)
    docs = corpus(2, 4, seed=31)
    load(s, docs[:1])
    s.wait_for_merge(30)
    assert rows("search_posting_recent") == 0 and rows("search_posting") > 0
    # a rebuild writes its postings straight into the big table
    load(s, docs, reset=True)
    assert rows("search_posting_recent") == 0
    statistics()


def test_a_rolled_back_transaction_leaves_no_search_rows(postgres_db: None) -> None:
    s = store()
    load(s, corpus(1, 3, seed=21))  # the space and a first document, committed
    space = s.state()["space"]
    before = statistics()
    doc = corpus(1, 4, seed=22, first_chunk_id=100, first_document_id=2)[0]
    with pytest.raises(RuntimeError), writing(s) as writer:
        writer.remove_document(1)
        writer.add(doc.chunk_ids, doc.embeddings, document_id=2, collection_id=1, texts=doc.texts)
        raise RuntimeError("the document's status update failed")
    assert sorted(s.ids().tolist()) == [1, 2, 3]
    assert rows(f"search_vectors_{space}") == 3
    assert statistics() == before
    # what a commit left: its statistics added in, nothing pending
    assert rows("search_pending_term") == rows("search_pending_language") == rows("search_pending_commit") == 0
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM search_term WHERE df > 0")
        assert cursor.fetchone()[0] == len(before[0])


def test_a_rebuild_is_invisible_until_it_commits(postgres_db: None) -> None:
    s = store()
    load(s, corpus(2, 3, seed=23))
    analyzer = TextAnalyzer()
    seen: list[tuple[int, list[Any]]] = []

    def read_elsewhere() -> None:  # another thread: another database connection
        try:
            view = store().view()
            seen.append(
                (
                    len(view),
                    view.lexical(
                        analyzer.query_tokens("albatross"), 5, collections=None, documents=None, k1=0.9, b=0.4
                    ),
                )
            )
        finally:
            connections.close_all()

    with s.writer(reset=True) as writer:
        writer.clear()
        writer.add(
            [50], PassageEmbeddings(unit(np.ones((1, 16)))), document_id=9, collection_id=1, texts=["an albatross"]
        )
        reader = threading.Thread(target=read_elsewhere)
        reader.start()
        reader.join()
    assert seen == [(6, [])]  # the old contents, while the rebuild ran
    view = s.view()
    assert len(view) == 1 and s.ids().tolist() == [50]
    assert [
        c
        for c, _ in view.lexical(analyzer.query_tokens("albatross"), 5, collections=None, documents=None, k1=0.9, b=0.4)
    ] == [50]

    with pytest.raises(RuntimeError), s.writer(reset=True) as writer:
        writer.clear()
        raise RuntimeError("the embedder crashed")
    assert s.ids().tolist() == [50]  # a failed rebuild changes nothing


SEARCHER = """
import sys, time
import django
django.setup()
from ingestion.store import StoreIdentity
from knowledge.search.postgres import PostgresStore

store = PostgresStore(StoreIdentity("test-embedder", 16))
chunk, term = int(sys.argv[1]), sys.argv[2]

def sees():
    view = store.view()
    found = view.lexical([term], 5, collections=None, documents=None, k1=0.9, b=0.4)
    return chunk in view.facts([chunk]) and [c for c, _ in found] == [chunk]

print("ready", sees(), flush=True)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    if sees():
        print("seen", flush=True)
        sys.exit(0)
    time.sleep(0.02)
print("never", flush=True)
sys.exit(1)
"""


def test_two_processes_see_a_document_written_by_a_third_without_reloading(postgres_db: None) -> None:
    s = store()
    load(s, corpus(3, 4, seed=24))
    term = TextAnalyzer().query_tokens("pelican")[0]
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "PYTHONPATH": str(REPO),
    }
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", SEARCHER, "999", term], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    try:
        for reader in readers:
            assert reader.stdout is not None
            assert reader.stdout.readline().split() == ["ready", "False"]
        doc = corpus(1, 2, seed=25, first_chunk_id=998, first_document_id=77)[0]
        with writing(s) as writer:
            writer.add(doc.chunk_ids, doc.embeddings, document_id=77, collection_id=1, texts=["a gannet", "a pelican"])
        committed = time.monotonic()
        for reader in readers:
            assert reader.stdout is not None
            assert reader.stdout.readline().strip() == "seen"
            assert reader.wait(timeout=30) == 0
        assert time.monotonic() - committed < 10
    finally:
        for reader in readers:
            if reader.poll() is None:
                reader.kill()
                reader.wait()


def test_a_database_that_cannot_hold_the_store_is_refused_clearly(db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from knowledge.search import checks, schema
    from knowledge.search.postgres import PostgresStore

    monkeypatch.setattr(connections["default"], "vendor", "sqlite")
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL is sqlite"):
        PostgresStore(IDENTITY)
    monkeypatch.setattr(connections["default"], "vendor", "postgresql")
    monkeypatch.setattr(schema, "pgvector_available", lambda _: False)
    monkeypatch.setattr(schema, "installed", lambda _: False)
    with pytest.raises(ImproperlyConfigured, match="pgvector/pgvector:pg16"):
        PostgresStore(IDENTITY).view()
    assert "pgvector/pgvector:pg16" in (checks.postgres_store_problem() or "")


def test_the_system_check_reports_a_database_without_pgvector(
    db: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from knowledge.search import checks, schema

    settings.RAG_SEARCH_BACKEND = "faiss"
    assert checks.check_search_store(databases=["default"]) == []
    settings.RAG_SEARCH_BACKEND = "postgres"
    assert checks.check_search_store(databases=None) == []  # it reads the database only when asked to
    monkeypatch.setattr(connections["default"], "vendor", "postgresql")
    monkeypatch.setattr(schema, "pgvector_available", lambda _: False)
    [error] = checks.check_search_store(databases=["default"])
    assert error.id == "knowledge.E001" and "pgvector" in error.msg


def test_without_pgvector_the_migration_creates_nothing(db: Any) -> None:
    from knowledge.search import schema

    if not postgres_problem():
        assert schema.installed(connection)
        pytest.skip("this database has pgvector: the migration created the tables")
    assert not schema.installed(connection)
