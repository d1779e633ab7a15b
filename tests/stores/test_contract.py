"""The search store contract (ingestion/store.py), the same tests on both stores."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ingestion.errors import IndexMismatchError
from ingestion.language import PassageTerms, TextAnalyzer, bm25_idf, passage_terms
from ingestion.store import PassageEmbeddings, SearchStore, StoreIdentity

from .conftest import COMPANION_IDENTITY, IDENTITY, Doc, corpus, load, open_backend, postgres_problem, unit, writing

pytestmark = pytest.mark.stores

K1, B = 0.9, 0.4


def exact_top(docs: list[Doc], query: np.ndarray, k: int, allowed: Callable[[Doc], bool]) -> list[int]:
    ids = [i for doc in docs if allowed(doc) for i in doc.chunk_ids]
    if not ids:
        return []
    vectors = np.concatenate([doc.embeddings.dense for doc in docs if allowed(doc)])
    scores = vectors @ query
    order = np.argsort(-scores, kind="stable")[:k]
    return [ids[i] for i in order]


def lexical(store: SearchStore, terms: list[str], k: int = 1000, **filters: Any) -> list[tuple[int, float]]:
    filters.setdefault("collections", None)
    filters.setdefault("documents", None)
    return store.view().lexical(terms, k, k1=K1, b=B, **filters)


def common_and_rare_terms(docs: list[Doc]) -> tuple[list[str], list[str]]:
    analyses = [a for doc in docs for a in passage_terms(TextAnalyzer(), doc.texts)]
    df: dict[str, int] = {}
    for analysis in analyses:
        for term in analysis.counts:
            df[term] = df.get(term, 0) + 1
    ranked = sorted(df, key=lambda t: (-df[t], t))
    return ranked[:3], [t for t in ranked if df[t] <= 3][:3]


def test_dense_search_returns_the_k_nearest_allowed_chunks_even_through_a_selective_filter(
    open_store: Callable[..., SearchStore],
) -> None:
    # 100 documents of 20 chunks; collection 2 holds one document (1% of the chunks), collection 1 the rest
    docs = corpus(100, 20, collection_of=lambda d: 2 if d == 99 else 1, seed=1)
    store = open_store(approximate=True)
    load(store, docs)
    view = store.view()
    assert len(view) == 2000
    rng = np.random.default_rng(5)
    for query in unit(rng.normal(size=(5, IDENTITY.dimension))):
        for collections, documents in [({2}, None), (None, {3, 50}), ({1, 2}, {100}), ({1}, {100}), (set(), None)]:
            hits = view.dense(query, 10, collections=collections, documents=documents)

            def allowed(doc: Doc, c: Any = collections, d: Any = documents) -> bool:
                return (c is None or doc.collection_id in c) and (d is None or doc.document_id in d)

            expected = exact_top(docs, query, 10, allowed)
            assert [chunk for chunk, _ in hits] == expected, (collections, documents)
            for (chunk, score), chunk_id in zip(hits, expected, strict=True):
                vector = next(
                    doc.embeddings.dense[doc.chunk_ids.index(chunk)] for doc in docs if chunk in doc.chunk_ids
                )
                assert score == pytest.approx(float(vector @ query), abs=1e-5), chunk_id
        unfiltered = view.dense(query, 10, collections=None, documents=None)
        assert len(unfiltered) == 10
        recall = len({c for c, _ in unfiltered} & set(exact_top(docs, query, 10, lambda d: True))) / 10
        assert recall >= 0.8


def test_filters_never_let_a_forbidden_chunk_through(open_store: Callable[..., SearchStore]) -> None:
    docs = corpus(30, 6, collection_of=lambda d: 1 + d % 4, seed=2)
    store = open_store(approximate=True)
    load(store, docs)
    collection_of = {i: doc.collection_id for doc in docs for i in doc.chunk_ids}
    document_of = {i: doc.document_id for doc in docs for i in doc.chunk_ids}
    common, rare = common_and_rare_terms(docs)
    rng = np.random.default_rng(3)
    view = store.view()
    for _ in range(25):
        collections = (
            None if rng.random() < 0.3 else {int(c) for c in rng.choice([1, 2, 3, 4, 9], size=rng.integers(0, 3))}
        )
        documents = None if rng.random() < 0.5 else {int(d) for d in rng.choice(range(1, 35), size=rng.integers(0, 5))}
        query = unit(rng.normal(size=IDENTITY.dimension))
        dense = view.dense(query, 50, collections=collections, documents=documents)
        words = view.lexical(common + rare, 50, collections=collections, documents=documents, k1=K1, b=B)
        allowed_ids = [
            i
            for i in collection_of
            if (collections is None or collection_of[i] in collections)
            and (documents is None or document_of[i] in documents)
        ]
        assert len(dense) == min(50, len(allowed_ids))
        for chunk, _ in dense + words:
            assert collections is None or collection_of[chunk] in collections
            assert documents is None or document_of[chunk] in documents


def test_add_replace_and_remove(open_store: Callable[..., SearchStore]) -> None:
    store = open_store()
    vectors = unit(np.random.default_rng(4).normal(size=(5, IDENTITY.dimension)))
    with writing(store) as writer:
        writer.add(
            [1, 2, 3],
            PassageEmbeddings(vectors[:3]),
            document_id=10,
            collection_id=1,
            texts=["the walrus sings", "the otter dances", "the heron waits"],
        )
        writer.add(
            [4, 5], PassageEmbeddings(vectors[3:]), document_id=11, collection_id=2, texts=["a walrus", "a heron"]
        )
    view = store.view()
    assert len(view) == 5
    assert sorted(store.ids().tolist()) == [1, 2, 3, 4, 5]
    assert {c for c, _ in lexical(store, ["walrus"])} == {1, 4}
    assert view.languages() == frozenset({"en"})
    facts = view.facts([2, 5, 99])
    assert set(facts) == {2, 5}
    assert facts[2].document_id == 10 and facts[2].text == "the otter dances"
    np.testing.assert_allclose(facts[5].dense, vectors[4], atol=1e-6)

    # replacing a document's chunks: the old texts are gone from the lexical side, the new ones there
    with writing(store) as writer:
        writer.remove_document(10)
        writer.add(
            [1, 6], PassageEmbeddings(vectors[:2]), document_id=10, collection_id=1, texts=["a puffin", "walrus"]
        )
    assert sorted(store.ids().tolist()) == [1, 4, 5, 6]
    assert {c for c, _ in lexical(store, ["walrus"])} == {4, 6}
    assert lexical(store, ["otter"]) == []
    assert store.view().facts([1])[1].text == "a puffin"

    # add replaces chunks it is given again
    with writing(store) as writer:
        writer.add([4], PassageEmbeddings(vectors[:1]), document_id=11, collection_id=2, texts=["a gannet"])
    assert {c for c, _ in lexical(store, ["walrus"])} == {6}
    np.testing.assert_allclose(store.view().facts([4])[4].dense, vectors[0], atol=1e-6)

    with writing(store) as writer:
        writer.remove_ids([5, 6, 404])
    assert sorted(store.ids().tolist()) == [1, 4]
    assert len(store.view()) == 2
    with writing(store) as writer:
        writer.clear()
    assert len(store.view()) == 0
    assert store.ids().tolist() == []
    assert lexical(store, ["puffin"]) == []
    assert store.view().dense(vectors[0], 5, collections=None, documents=None) == []


def _bm25s_scores(analyses: list[PassageTerms], terms: list[str]) -> np.ndarray:
    import bm25s

    vocabulary: dict[str, int] = {}
    ids = [[vocabulary.setdefault(t, len(vocabulary)) for t, n in a.counts.items() for _ in range(n)] for a in analyses]
    model = bm25s.BM25(k1=K1, b=B)
    model.index((ids, vocabulary), create_empty_token=False, show_progress=False)
    return np.asarray(model.get_scores([vocabulary[t] for t in terms if t in vocabulary]), dtype=np.float64)


def test_bm25_scores_are_those_of_bm25s_over_the_whole_store(open_store: Callable[..., SearchStore]) -> None:
    docs = corpus(40, 8, seed=6)
    store = open_store()
    load(store, docs)
    analyses = [a for doc in docs for a in passage_terms(TextAnalyzer(), doc.texts)]
    chunk_ids = [i for doc in docs for i in doc.chunk_ids]
    common, rare = common_and_rare_terms(docs)
    for terms in ([common[0]], rare[:1], [common[1], rare[0]], common + rare, ["nowhere", rare[1]]):
        expected = _bm25s_scores(analyses, terms)  # bm25s's Lucene variant, as ingestion.language scores
        hits = lexical(store, terms)
        assert {c for c, _ in hits} == {chunk_ids[i] for i in np.flatnonzero(expected > 0)}
        for chunk, score in hits:
            assert score == pytest.approx(expected[chunk_ids.index(chunk)], rel=1e-5), (terms, chunk)
        assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
        # a filter chooses which chunks come back, not the statistics they are scored with
        filtered = lexical(store, terms, collections={2})
        allowed = {i for doc in docs if doc.collection_id == 2 for i in doc.chunk_ids}
        kept = [(c, s) for c, s in hits if c in allowed]
        assert [c for c, _ in filtered] == [c for c, _ in kept]
        np.testing.assert_allclose([s for _, s in filtered], [s for _, s in kept], rtol=1e-9)
    top = lexical(store, common + rare, k=5)
    assert top == lexical(store, common + rare)[:5]


def test_idfs_are_those_bm25_scores_with(open_store: Callable[..., SearchStore]) -> None:
    docs = corpus(30, 6, seed=11)
    store = open_store()
    load(store, docs)
    analyses = [a for doc in docs for a in passage_terms(TextAnalyzer(), doc.texts)]
    common, rare = common_and_rare_terms(docs)
    idfs = store.view().idfs([*common, *rare, "nowhere", common[0]])

    assert list(idfs) == [*common, *rare, "nowhere"]  # each term once, in the order asked
    for term in [*common, *rare, "nowhere"]:
        df = sum(term in analysis.counts for analysis in analyses)
        assert idfs[term] == pytest.approx(bm25_idf(df, len(analyses)), rel=1e-9), term
    assert idfs["nowhere"] > max(idfs[t] for t in rare) > max(idfs[t] for t in common)
    assert store.view().idfs([]) == {}


def test_bm25_and_dense_agree_across_the_two_stores(db: Any, tmp_path: Path) -> None:
    if problem := postgres_problem():
        pytest.skip(problem)
    docs = corpus(25, 6, seed=8)
    stores = [open_backend(backend, IDENTITY, tmp_path / "index") for backend in ("faiss", "postgres")]
    for store in stores:
        load(store, docs)
    common, rare = common_and_rare_terms(docs)
    query = unit(np.random.default_rng(9).normal(size=IDENTITY.dimension))
    for terms in ([common[0]], common + rare, [rare[0], common[2]]):
        faiss_hits, postgres_hits = (lexical(store, terms, k=20, collections={1, 3}) for store in stores)
        assert [c for c, _ in faiss_hits] == [c for c, _ in postgres_hits]
        np.testing.assert_allclose([s for _, s in faiss_hits], [s for _, s in postgres_hits], rtol=1e-5)
    faiss_dense, postgres_dense = (s.view().dense(query, 10, collections={2}, documents=None) for s in stores)
    assert [c for c, _ in faiss_dense] == [c for c, _ in postgres_dense]
    np.testing.assert_allclose([s for _, s in faiss_dense], [s for _, s in postgres_dense], atol=1e-5)
    assert stores[0].view().languages() == stores[1].view().languages() == frozenset({"en", "fr"})
    assert stores[0].view().idfs(common + rare) == pytest.approx(stores[1].view().idfs(common + rare), rel=1e-9)


def test_companion_vectors_are_scored_apart(open_store: Callable[..., SearchStore]) -> None:
    store = open_store(COMPANION_IDENTITY)
    rng = np.random.default_rng(10)
    dense = unit(rng.normal(size=(4, COMPANION_IDENTITY.dimension)))
    companion = unit(rng.normal(size=(4, COMPANION_IDENTITY.companion_dimension)))
    companion[2] = 0  # a passage the companion was not given (another language)
    with writing(store) as writer:
        writer.add(
            [1, 2, 3, 4],
            PassageEmbeddings(dense, companion),
            document_id=1,
            collection_id=1,
            texts=["a", "b", "c", "d"],
        )
    query = unit(rng.normal(size=COMPANION_IDENTITY.companion_dimension))
    scores = store.view().companion_scores([1, 2, 3, 4], query)
    assert set(scores) == {1, 2, 3, 4}
    for i, chunk in enumerate([1, 2, 3, 4]):
        # (a store may keep the companion's vectors in half precision)
        assert scores[chunk] == pytest.approx(float(companion[i] @ query), abs=2e-3)
    assert scores[3] == 0
    assert store.view().chunks_without_companion() == 0
    # the dense side does not see the companion's vectors
    assert store.view().dense(dense[1], 1, collections=None, documents=None)[0][0] == 2


def test_a_store_without_companion_has_no_companion_scores(open_store: Callable[..., SearchStore]) -> None:
    store = open_store()
    load(store, corpus(1, 3))
    assert store.view().companion_scores([1, 2], unit(np.ones(8))) == {}
    assert store.view().chunks_without_companion() == 0


def test_a_store_built_by_another_embedder_is_refused_until_rebuilt(open_store: Callable[..., SearchStore]) -> None:
    load(open_store(IDENTITY), corpus(2, 3))
    other = StoreIdentity("another-embedder", 12)
    with pytest.raises(IndexMismatchError, match="rebuild_index"):
        open_store(other).view()
    with pytest.raises(IndexMismatchError, match="rebuild_index"), open_store(other).writer() as writer:
        writer.clear()
    with pytest.raises(IndexMismatchError):
        open_store(COMPANION_IDENTITY).view()  # a companion changes the identity too
    rebuilt = open_store(other, load=False)
    with rebuilt.writer(reset=True) as writer:
        writer.add(
            [7], PassageEmbeddings(unit(np.ones((1, 12)))), document_id=1, collection_id=1, texts=["a cormorant"]
        )
    assert rebuilt.ids().tolist() == [7]
    assert [c for c, _ in lexical(rebuilt, TextAnalyzer().query_tokens("cormorant"))] == [7]
    with pytest.raises(IndexMismatchError):
        open_store(IDENTITY).view()


def test_bad_shapes_are_refused_with_a_clear_error(open_store: Callable[..., SearchStore]) -> None:
    store = open_store(COMPANION_IDENTITY)
    good = unit(np.ones((2, 16)))
    with pytest.raises(ValueError, match=r"dimension|shape"), writing(store) as writer:
        writer.add([1, 2], PassageEmbeddings(unit(np.ones((2, 15)))), document_id=1, collection_id=1, texts=["a", "b"])
    with pytest.raises(ValueError, match=r"dimension|shape"), writing(store) as writer:
        writer.add(
            [1, 2],
            PassageEmbeddings(good, unit(np.ones((2, 9)))),
            document_id=1,
            collection_id=1,
            texts=["a", "b"],
        )
    with pytest.raises(ValueError), writing(store) as writer:
        writer.add([1, 2], PassageEmbeddings(good), document_id=1, collection_id=1, texts=["a"])
    assert store.ids().tolist() == []
    load(store, corpus(1, 2, identity=COMPANION_IDENTITY))
    with pytest.raises(ValueError, match=r"dimension|shape"):
        store.view().dense(unit(np.ones(15)), 3, collections=None, documents=None)


def test_export_gives_back_everything_a_document_at_a_time(open_store: Callable[..., SearchStore]) -> None:
    docs = corpus(9, 4, identity=COMPANION_IDENTITY, seed=11) + corpus(
        1, 12, identity=COMPANION_IDENTITY, seed=12, first_chunk_id=500, first_document_id=50
    )
    store = open_store(COMPANION_IDENTITY)
    load(store, docs)
    common, rare = common_and_rare_terms(docs)
    before = lexical(store, common + rare)
    batches = list(store.export(batch_size=7))
    seen_documents: set[int] = set()
    for batch in batches:
        documents = set(batch.document_ids.tolist())
        assert not documents & seen_documents, "a document split over two batches"
        seen_documents |= documents
        assert len(batch.texts) == len(batch.chunk_ids) == len(batch.terms) == len(batch.embeddings)
    assert seen_documents == {doc.document_id for doc in docs}
    exported = {int(c): (b, i) for b in batches for i, c in enumerate(b.chunk_ids)}
    for doc in docs:
        analyses = passage_terms(TextAnalyzer(), doc.texts)
        for i, chunk in enumerate(doc.chunk_ids):
            batch, row = exported[chunk]
            assert batch.texts[row] == doc.texts[i]
            assert batch.document_ids[row] == doc.document_id and batch.collection_ids[row] == doc.collection_id
            assert batch.terms[row] == analyses[i]
            np.testing.assert_allclose(batch.embeddings.dense[row], doc.embeddings.dense[i], atol=1e-6)
            assert batch.embeddings.companion is not None and doc.embeddings.companion is not None
            np.testing.assert_allclose(batch.embeddings.companion[row], doc.embeddings.companion[i], atol=2e-3)

    # what export gives is what add takes: a rebuild from it changes nothing
    with store.writer(reset=True) as writer:
        for batch in batches:
            for document in sorted(set(batch.document_ids.tolist())):
                rows = np.flatnonzero(batch.document_ids == document)
                writer.add(
                    batch.chunk_ids[rows].tolist(),
                    batch.embeddings.take(rows),
                    document_id=document,
                    collection_id=int(batch.collection_ids[rows[0]]),
                    texts=[batch.texts[r] for r in rows],
                    terms=[batch.terms[r] for r in rows],
                )
    assert sorted(store.ids().tolist()) == sorted(exported)
    after = lexical(store, common + rare)
    assert [c for c, _ in after] == [c for c, _ in before]
    np.testing.assert_allclose([s for _, s in after], [s for _, s in before], rtol=1e-6)


def test_state_says_what_the_store_holds(open_store: Callable[..., SearchStore], backend: str) -> None:
    store = open_store(COMPANION_IDENTITY)
    load(store, corpus(3, 4, identity=COMPANION_IDENTITY))
    state = store.state()
    assert state["backend"] == backend
    assert state["chunks"] == 12
    assert (state["embedder"], state["dimension"]) == (COMPANION_IDENTITY.embedder, COMPANION_IDENTITY.dimension)
    assert (state["companion"], state["companion_dimension"]) == ("test-companion", 8)
