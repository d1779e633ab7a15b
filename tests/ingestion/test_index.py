"""The faiss search store: segments, tombstones, filters, BM25, companions, merges, concurrent readers and writers."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from filelock import FileLock

from ingestion.errors import IndexBusyError, IndexCorruptError, IndexMismatchError
from ingestion.index import (
    FaissStore,
    IndexConfig,
    generation_files,
    is_version_name,
    merge_plan,
    read_saved_state,
)
from ingestion.index.merge import _merged_data
from ingestion.index.segment import _Segment
from ingestion.language import PassageTerms, bm25_term_weight
from ingestion.store import PassageEmbeddings, StoreIdentity

# the engine tests' fake embedder (tests/ingestion/fixtures_engine.py), without importing the models' module
DIMENSION = 16
FAKE_EMBEDDER = "test:random"
IDENTITY = StoreIdentity(FAKE_EMBEDDER, DIMENSION)
COMPANION = StoreIdentity(FAKE_EMBEDDER, DIMENSION, companion="test:companion", companion_dimension=4)


def unit_vectors(n: int, dimension: int = DIMENSION, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dimension)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def open_store(directory: Path, identity: StoreIdentity = IDENTITY, **config: Any) -> FaissStore:
    """A store of random test vectors; background merges off unless asked (tests merge explicitly)."""
    config.setdefault("background_merge", False)
    return FaissStore(IndexConfig(Path(directory), **config), identity)


def fill(
    store: FaissStore,
    ids: list[int],
    *,
    document_id: int = 1,
    collection_id: int = 1,
    seed: int = 0,
    texts: list[str] | None = None,
) -> np.ndarray:
    vectors = unit_vectors(len(ids), seed=seed)
    with store.writer() as writer:
        writer.add(
            ids,
            PassageEmbeddings(vectors),
            document_id=document_id,
            collection_id=collection_id,
            texts=texts or [f"chunk {i}" for i in ids],
        )
    return vectors


def lexical(store: FaissStore, terms: list[str], k: int = 10, **filters: Any) -> list[tuple[int, float]]:
    filters.setdefault("collections", None)
    filters.setdefault("documents", None)
    return store.view().lexical(terms, k, k1=0.9, b=0.4, **filters)


def dense(store: FaissStore, vector: np.ndarray, k: int, **filters: Any) -> list[tuple[int, float]]:
    filters.setdefault("collections", None)
    filters.setdefault("documents", None)
    return store.view().dense(vector, k, **filters)


def files_of(directory: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under ``directory`` with its inode, size and modification time."""
    out = {}
    for path in directory.rglob("*"):
        if path.is_file():
            stat = path.stat()
            out[str(path.relative_to(directory))] = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    return out


# ---- searching -----------------------------------------------------------------------------------


def test_dense_search_returns_chunk_ids_with_cosines_best_first(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    vectors = fill(store, [101, 205, 307, 409])

    results = dense(store, vectors[2], 4)

    assert results[0] == (307, pytest.approx(1.0, abs=1e-5))
    assert sorted(chunk_id for chunk_id, _ in results) == [101, 205, 307, 409]
    scores = [score for _, score in results]
    assert scores == sorted(scores, reverse=True)
    assert sorted(store.ids().tolist()) == [101, 205, 307, 409]
    assert len(store.view()) == 4 and store.version == 1
    assert store.state()["chunks"] == 4 and store.state()["backend"] == "faiss"


def test_an_empty_store_finds_nothing_and_creates_nothing(tmp_path: Path) -> None:
    store = open_store(tmp_path / "missing")

    assert store.version == 0 and len(store.view()) == 0
    assert dense(store, unit_vectors(1)[0], 5) == []
    assert lexical(store, ["anything"]) == []
    assert list(store.export()) == []
    assert not (tmp_path / "missing").exists()  # readers create nothing
    assert read_saved_state(tmp_path / "missing") is None


def test_the_filters_are_applied_inside_the_dense_search(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    query = unit_vectors(1, seed=99)[0]
    # 2000 other-collection vectors, all closer to the query than the allowed chunks
    near = query + 0.05 * unit_vectors(2000, seed=1)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    with store.writer() as writer:
        writer.add(list(range(1, 2001)), PassageEmbeddings(near), document_id=1, collection_id=1, texts=["x"] * 2000)
        writer.add([5000], PassageEmbeddings(-query[None, :]), document_id=2, collection_id=2, texts=["allowed"])
    with store.writer() as writer:  # a second segment
        writer.add([6000], PassageEmbeddings(-query[None, :]), document_id=3, collection_id=3, texts=["other"])

    assert dense(store, query, 1, collections=[2]) == [(5000, pytest.approx(-1.0, abs=1e-5))]
    assert dense(store, query, 1, documents={2}) == [(5000, pytest.approx(-1.0, abs=1e-5))]
    assert [c for c, _ in dense(store, query, 3, collections=[2, 3, 4])] == [5000, 6000]
    assert dense(store, query, 1, collections=[]) == []
    assert dense(store, query, 1, collections=[1], documents=[2]) == []
    assert len(dense(store, query, 10, collections=[1])) == 10
    assert len(dense(store, query, 5000)) == 2002


def test_adding_the_same_ids_again_replaces_them_with_tombstones(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    fill(store, [1, 2, 3], seed=0, texts=["old one", "old two", "old three"])
    first_segment = files_of(tmp_path / "s000000000001")

    replacement = fill(store, [1, 2], seed=7, texts=["new one", "new two"])

    assert len(store.view()) == 3 and sorted(store.ids().tolist()) == [1, 2, 3]
    assert dense(store, replacement[1], 1) == [(2, pytest.approx(1.0, abs=1e-5))]
    facts = store.view().facts([1, 2, 3, 99])
    assert {c: f.text for c, f in facts.items()} == {1: "new one", 2: "new two", 3: "old three"}
    np.testing.assert_allclose(facts[2].dense, replacement[1], atol=1e-6)
    assert lexical(store, ["old"]) == [(3, pytest.approx(lexical(store, ["old"])[0][1]))]
    # the old segment was not rewritten: a tombstone file beside it records the replaced chunks
    after = files_of(tmp_path / "s000000000001")
    assert {name: after[name] for name in first_segment} == first_segment
    assert sorted(set(after) - set(first_segment)) == ["dead-000000000002.npy"]
    assert store.state()["deleted"] == 2 and store.state()["segments"] == 2


def test_remove_ids_document_and_clear(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    fill(store, [1, 2, 3], document_id=10)
    fill(store, [4, 5], document_id=20, seed=1)

    with store.writer() as writer:
        writer.add([6], PassageEmbeddings(unit_vectors(1, seed=2)), document_id=10, collection_id=1, texts=["six"])
        assert writer.remove_document(10) == 4  # three saved, one added in this session
        assert writer.remove_document(10) == 0
        assert writer.remove_ids([5, 999]) == 1
        assert writer.count == 1
    assert store.ids().tolist() == [4]
    assert all(chunk_id == 4 for chunk_id, _ in dense(store, unit_vectors(1)[0], 5))
    assert store.view().segments == 1  # a segment with nothing left is dropped from the generation

    with store.writer() as writer:
        writer.clear()
    assert len(store.view()) == 0 and store.view().segments == 0
    assert open_store(tmp_path).ids().tolist() == []


def test_a_failed_writer_block_changes_nothing(tmp_path: Path) -> None:
    store = open_store(tmp_path, segment_chunks=1)  # the session writes segments before it fails
    fill(store, [1, 2])
    before = sorted(p.name for p in tmp_path.iterdir())

    with pytest.raises(RuntimeError, match="boom"), store.writer() as writer:
        writer.remove_document(1)
        writer.add([3, 4], PassageEmbeddings(unit_vectors(2)), document_id=2, collection_id=1, texts=["c", "d"])
        raise RuntimeError("boom")

    assert store.version == 1 and sorted(store.ids().tolist()) == [1, 2]
    assert open_store(tmp_path).version == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # its unpublished segments are gone


def test_a_writer_session_over_segment_chunks_writes_several_segments(tmp_path: Path) -> None:
    store = open_store(tmp_path, segment_chunks=4)
    with store.writer() as writer:
        for document in range(5):
            ids = list(range(document * 3, document * 3 + 3))
            writer.add(
                ids,
                PassageEmbeddings(unit_vectors(3, seed=document)),
                document_id=document,
                collection_id=1,
                texts=[f"text {i}" for i in ids],
            )
        writer.remove_ids([0, 14])  # one in a written segment, one still buffered
        writer.add([1], PassageEmbeddings(unit_vectors(1, seed=9)), document_id=0, collection_id=1, texts=["again"])

    assert sorted(store.ids().tolist()) == [i for i in range(15) if i not in (0, 14)]
    assert store.view().segments == 3 and store.view().facts([1])[1].text == "again"  # 6 + 6 + 3 chunks
    assert open_store(tmp_path).verify() == {"version": 1, "segments": 3, "chunks": 13}


def test_the_store_persists_across_instances(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    vectors = fill(store, [1, 2, 3], texts=["red apples", "green pears", "red wine"])
    fill(store, [4], document_id=2, seed=4, texts=["apples and pears"])

    reopened = open_store(tmp_path)

    assert reopened.version == 2 and sorted(reopened.ids().tolist()) == [1, 2, 3, 4]
    assert dense(reopened, vectors[0], 4) == dense(store, vectors[0], 4)
    assert lexical(reopened, ["appl", "red"]) == lexical(store, ["appl", "red"])
    assert reopened.view().languages() == frozenset({"en"})
    assert reopened.verify() == {"version": 2, "segments": 2, "chunks": 4}


# ---- readers -------------------------------------------------------------------------------------


def test_a_second_instance_sees_a_write_without_blocking_its_questions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer_side = open_store(tmp_path)
    fill(writer_side, [1, 2], texts=["first text", "second text"])
    reader = open_store(tmp_path, sync_refresh_chunks=0)  # every new segment counts as big: a background load
    assert reader.segments_opened == 1
    vectors = fill(writer_side, [3], seed=3, texts=["third text"])
    assert sorted(writer_side.ids().tolist()) == [1, 2, 3]  # the writer's process sees its write at once

    opening = threading.Event()
    release = threading.Event()
    real_segment = _Segment

    class SlowSegment(real_segment):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            opening.set()
            release.wait(10)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr("ingestion.index.view._Segment", SlowSegment)
    started = time.perf_counter()
    view = reader.view()  # notices the new generation, loads it in the background
    assert opening.wait(5)
    # while the new segment is loading, questions are answered at once from the old snapshot
    assert dense(reader, vectors[0], 3)[0][0] in (1, 2)
    assert sorted(reader.ids().tolist()) == [1, 2] and len(view) == 2
    assert time.perf_counter() - started < 1.0
    release.set()
    reader.refresh()  # waits for the background load
    assert sorted(reader.ids().tolist()) == [1, 2, 3]
    assert dense(reader, vectors[0], 1) == [(3, pytest.approx(1.0, abs=1e-5))]
    assert reader.segments_opened == 2  # only the new segment was opened
    assert reader.background_error is None


def test_the_next_question_after_a_small_write_sees_it(tmp_path: Path) -> None:
    writer_side = open_store(tmp_path)
    fill(writer_side, [1, 2])
    reader = open_store(tmp_path)
    assert sorted(reader.ids().tolist()) == [1, 2]

    fill(writer_side, [3], seed=3)

    # no refresh() called: view() loads a small new generation before it answers (config.sync_refresh_chunks)
    assert sorted(reader.view().ids().tolist()) == [1, 2, 3]


def test_a_reader_loads_only_new_segments_and_never_analyses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer_side = open_store(tmp_path)
    for document in range(3):
        fill(writer_side, [document * 10, document * 10 + 1], document_id=document, seed=document)
    reader = open_store(tmp_path)
    opened: list[str] = []
    real_segment = _Segment

    def counting(name: str, folder: Path, identity: StoreIdentity) -> Any:
        opened.append(name)
        return real_segment(name, folder, identity)

    def no_analysis(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a reader analysed text")

    monkeypatch.setattr("ingestion.index.view._Segment", counting)
    fill(writer_side, [100, 101], document_id=9, seed=9, texts=["new words", "more words"])
    with writer_side.writer() as writer:
        writer.remove_ids([10])  # a tombstone in an old segment: its file only
    opened.clear()
    monkeypatch.setattr("ingestion.index.writer.passage_terms", no_analysis)

    assert reader.refresh() is True

    assert opened == ["s000000000004"]
    assert sorted(reader.ids().tolist()) == [0, 1, 11, 20, 21, 100, 101]
    assert sorted(c for c, _ in lexical(reader, ["word"])) == [100, 101]
    assert reader.refresh() is False


def test_a_failed_background_load_keeps_the_old_snapshot(tmp_path: Path) -> None:
    writer_side = open_store(tmp_path)
    fill(writer_side, [1])
    reader = open_store(tmp_path)
    fill(writer_side, [2], seed=2)
    (tmp_path / "s000000000002" / "segment.json").write_text("{broken")

    reader.view()
    reader.wait_for_background(5)

    assert reader.ids().tolist() == [1]
    assert isinstance(reader.background_error, IndexCorruptError)
    with pytest.raises(IndexCorruptError, match="rebuild_index"):
        reader.refresh()


# ---- identity, format, errors --------------------------------------------------------------------


def test_opening_a_store_of_another_identity_fails_until_rebuilt(tmp_path: Path) -> None:
    fill(open_store(tmp_path), [1])
    other = StoreIdentity("other", 32)

    with pytest.raises(IndexMismatchError, match=r"built with test:random \(dim 16\).*other \(dim 32\).*rebuild_index"):
        FaissStore(IndexConfig(tmp_path), other)
    with pytest.raises(IndexMismatchError, match="companion"):
        FaissStore(IndexConfig(tmp_path), COMPANION)
    blind = FaissStore(IndexConfig(tmp_path), other, load=False)
    with pytest.raises(IndexMismatchError), blind.writer():
        pass

    # a rebuild opens it without loading, and replaces it
    rebuilt = FaissStore(IndexConfig(tmp_path), other, load=False)
    with rebuilt.writer(reset=True) as writer:
        writer.add([7], PassageEmbeddings(unit_vectors(1, dimension=32)), document_id=1, collection_id=1, texts=["x"])
    assert rebuilt.version == 2 and rebuilt.ids().tolist() == [7]
    assert FaissStore(IndexConfig(tmp_path), other).ids().tolist() == [7]
    assert read_saved_state(tmp_path)["embedder"] == "other"  # type: ignore[index]


def test_the_format_of_earlier_releases_is_refused_with_a_rebuild_message(tmp_path: Path) -> None:
    (tmp_path / "v000000000041").mkdir()
    (tmp_path / "v000000000041" / "manifest.json").write_text(json.dumps({"format": 1, "version": 41}))
    (tmp_path / "CURRENT").write_text("v000000000041\n")

    with pytest.raises(IndexMismatchError, match=r"earlier release.*rebuild_index"):
        open_store(tmp_path)
    assert read_saved_state(tmp_path) == {"version": 41, "format": 1, "needs_rebuild": True}

    rebuilt = FaissStore(IndexConfig(tmp_path), IDENTITY, load=False)
    with rebuilt.writer(reset=True) as writer:
        writer.add([1], PassageEmbeddings(unit_vectors(1)), document_id=1, collection_id=1, texts=["a"])
    assert rebuilt.version == 42 and not (tmp_path / "v000000000041").exists()
    assert open_store(tmp_path).ids().tolist() == [1]


@pytest.mark.parametrize("pointer", ["..", "../../secret_key", "/etc", "g000000000001/../..", "g1", "s000000000001"])
def test_a_pointer_that_names_no_generation_is_refused_not_followed(tmp_path: Path, pointer: str) -> None:
    fill(open_store(tmp_path), [1, 2])
    (tmp_path / "CURRENT").write_text(pointer + "\n")

    with pytest.raises(IndexCorruptError, match="not a generation"):
        read_saved_state(tmp_path)
    with pytest.raises(IndexCorruptError, match="not a generation"):
        open_store(tmp_path)
    assert is_version_name("g000000000001") and not is_version_name(pointer)


def test_a_manifest_naming_paths_is_refused(tmp_path: Path) -> None:
    fill(open_store(tmp_path), [1])
    manifest_path = tmp_path / "g000000000001.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["segments"][0]["name"] = "../elsewhere"
    manifest_path.write_text(json.dumps(manifest))

    with pytest.raises(IndexCorruptError, match="malformed manifest"):
        open_store(tmp_path)


@pytest.mark.parametrize("damage", ["truncated data", "garbage index", "missing segment", "bad tombstones"])
def test_damaged_files_are_reported_as_corrupt_with_a_rebuild_message(tmp_path: Path, damage: str) -> None:
    store = open_store(tmp_path)
    fill(store, [1, 2, 3])
    with store.writer() as writer:
        writer.remove_ids([2])
    segment = tmp_path / "s000000000001"
    if damage == "truncated data":
        with open(segment / "data.bin", "r+b") as file:
            file.truncate(100)
    elif damage == "garbage index":
        (segment / "dense.faiss").write_bytes(b"not an index")
    elif damage == "missing segment":
        for path in segment.iterdir():
            path.unlink()
        segment.rmdir()
    else:
        (segment / "dead-000000000002.npy").write_bytes(b"garbage")

    with pytest.raises(IndexCorruptError, match="rebuild_index"):
        open_store(tmp_path)
    with pytest.raises(IndexCorruptError, match="rebuild_index"):
        store.verify()


def test_wrong_shapes_are_refused_with_clear_errors(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    one = PassageEmbeddings(unit_vectors(1))
    with store.writer() as writer:
        with pytest.raises(ValueError, match=r"shape \(2, 16\)"):
            writer.add([1, 2], one, document_id=1, collection_id=1, texts=["a", "b"])
        with pytest.raises(ValueError, match=r"shape \(1, 16\)"):
            writer.add(
                [1], PassageEmbeddings(unit_vectors(1, dimension=8)), document_id=1, collection_id=1, texts=["a"]
            )
        with pytest.raises(ValueError, match="texts"):
            writer.add([1], one, document_id=1, collection_id=1, texts=[])
        with pytest.raises(ValueError, match="terms"):
            writer.add([1], one, document_id=1, collection_id=1, texts=["a"], terms=[])
        with pytest.raises(ValueError, match="finite"):
            writer.add(
                [1],
                PassageEmbeddings(np.full((1, DIMENSION), np.nan, dtype=np.float32)),
                document_id=1,
                collection_id=1,
                texts=["a"],
            )
        with pytest.raises(ValueError, match="negative"):
            writer.add([-1], one, document_id=1, collection_id=1, texts=["a"])
        with pytest.raises(ValueError, match="repeat"):
            writer.add([1, 1], PassageEmbeddings(unit_vectors(2)), document_id=1, collection_id=1, texts=["a", "b"])
        with pytest.raises(ValueError, match="without a companion"):
            writer.add(
                [1], PassageEmbeddings(unit_vectors(1), unit_vectors(1, 4)), document_id=1, collection_id=1, texts=["a"]
            )
        with pytest.raises(TypeError, match="PassageEmbeddings"):
            writer.add([1], unit_vectors(1), document_id=1, collection_id=1, texts=["a"])  # type: ignore[arg-type]
    assert store.version == 0
    with pytest.raises(ValueError, match="dimension 8"):
        dense(store, unit_vectors(1, dimension=8)[0], 1)

    companion_store = open_store(tmp_path / "companion", COMPANION)
    with companion_store.writer() as writer, pytest.raises(ValueError, match=r"companion vectors of shape \(1, 4\)"):
        writer.add(
            [1], PassageEmbeddings(unit_vectors(1), unit_vectors(1, 3)), document_id=1, collection_id=1, texts=["a"]
        )
    with pytest.raises(ValueError, match="companion query has dimension 3"):
        companion_store.view().companion_scores([1], np.ones(3))


def test_a_busy_store_gives_up_after_the_lock_timeout(tmp_path: Path) -> None:
    store = open_store(tmp_path, lock_timeout=0.2)
    fill(store, [1])
    other_process = FileLock(str(tmp_path / "writer.lock"), thread_local=False)
    other_process.acquire()
    try:
        with pytest.raises(IndexBusyError), store.writer():
            pass
    finally:
        other_process.release()


def write_many(directory: str, worker: int, sessions: int, per_session: int) -> None:
    """Run in a spawned process: ``sessions`` writer sessions adding ``per_session`` chunks each."""
    store = open_store(Path(directory), lock_timeout=60.0)
    for session in range(sessions):
        first = worker * 1_000_000 + session * per_session
        ids = list(range(first, first + per_session))
        with store.writer() as writer:
            writer.add(
                ids,
                PassageEmbeddings(unit_vectors(per_session, seed=first)),
                document_id=worker * 1000 + session,
                collection_id=worker,
                texts=[f"worker {worker} chunk {i}" for i in ids],
            )


def test_two_processes_writing_at_once_end_consistent(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=write_many, args=(str(tmp_path), w, 6, 5)) for w in (1, 2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0]

    store = open_store(tmp_path)
    expected = sorted(w * 1_000_000 + i for w in (1, 2) for i in range(30))
    assert store.version == 12 and store.view().segments == 12
    assert sorted(store.ids().tolist()) == expected
    facts = store.view().facts(expected)
    assert all(facts[i].text == f"worker {i // 1_000_000} chunk {i}" for i in expected)
    assert store.verify()["chunks"] == 60


# ---- lexical -------------------------------------------------------------------------------------


CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a fox is a quick animal and a fox hunts",
    "dogs and cats are pets",
    "electricity prices rise in winter",
    "the price of electricity and gas",
    "brown bread and butter",
    "",
    "quick quick quick",
    "lazy afternoons with a dog",
    "winter is coming for the fox",
    "gas prices fall",
    "the brown dog sleeps",
]


def _words(text: str) -> PassageTerms:
    words = text.split()
    return PassageTerms("en", {w: words.count(w) for w in dict.fromkeys(words)})


def test_bm25_scores_equal_bm25s_over_segments_and_tombstones(tmp_path: Path) -> None:
    import bm25s

    store = open_store(tmp_path)
    chunk_ids = list(range(100, 100 + len(CORPUS)))
    # three segments, and a replaced and a removed chunk leaving tombstones
    for start, stop, document in ((0, 4, 1), (4, 9, 2), (9, 12, 3)):
        with store.writer() as writer:
            writer.add(
                chunk_ids[start:stop],
                PassageEmbeddings(unit_vectors(stop - start, seed=start)),
                document_id=document,
                collection_id=document,
                texts=CORPUS[start:stop],
                terms=[_words(t) for t in CORPUS[start:stop]],
            )
    live = {c: t for c, t in zip(chunk_ids, CORPUS, strict=True)}
    with store.writer() as writer:
        writer.remove_ids([101])
        writer.add(
            [103],
            PassageEmbeddings(unit_vectors(1, seed=50)),
            document_id=1,
            collection_id=1,
            texts=["cheap electricity for the fox"],
            terms=[_words("cheap electricity for the fox")],
        )
    del live[101]
    live[103] = "cheap electricity for the fox"

    # bm25s over the live passages, the same terms
    order = sorted(live)
    vocabulary: dict[str, int] = {}
    corpus = [[vocabulary.setdefault(w, len(vocabulary)) for w in live[c].split()] for c in order]
    for k1, b in ((0.9, 0.4), (1.5, 0.75)):
        model = bm25s.BM25(k1=k1, b=b)
        model.index((corpus, dict(vocabulary)), create_empty_token=False, show_progress=False)
        # bm25s 0.3's Lucene term weight is tf / (tf + k1 (...)); ingestion.language may scale it by (k1 + 1)
        # (a constant: the same ranking): compare with that factor, whatever it is
        factor = bm25_term_weight(1.0, 1.0, 1.0, k1, b) * (1.0 + k1)
        for query in (["fox"], ["quick", "fox", "dog"], ["electricity", "price", "prices"], ["missing", "gas"]):
            ids = [vocabulary[w] for w in query if w in vocabulary]
            expected_scores = model.get_scores_from_ids(ids)
            expected = {c: float(s) * factor for c, s in zip(order, expected_scores, strict=True) if s > 0}
            found = store.view().lexical(query, 20, collections=None, documents=None, k1=k1, b=b)
            assert dict(found) == pytest.approx(expected, rel=1e-5)
            assert [s for _, s in found] == sorted((s for _, s in found), reverse=True)
            # filters choose among the same scores, never change them
            filtered = store.view().lexical(query, 20, collections={2, 3}, documents=None, k1=k1, b=b)
            by_collection = {c: s for c, s in expected.items() if c >= 104}
            assert dict(filtered) == pytest.approx(by_collection, rel=1e-5)
    assert lexical(store, ["fox"], k=1) == lexical(store, ["fox"])[:1]
    assert lexical(store, ["fox", "fox"]) == lexical(store, ["fox"])  # a repeated query term counts once
    assert lexical(store, ["fox"], documents=[]) == []


def test_bm25_equals_bm25s_on_a_larger_corpus_with_rare_and_common_terms(tmp_path: Path) -> None:
    import bm25s

    rng = np.random.default_rng(3)
    weights = 1.0 / np.arange(1, 201) ** 1.2
    passages = [
        [f"t{w}" for w in rng.choice(200, size=rng.integers(0, 30), p=weights / weights.sum())] for _ in range(600)
    ]
    store = open_store(tmp_path)
    for start in range(0, 600, 200):  # three segments of 200 passages
        with store.writer() as writer:
            for document in range(start, start + 200, 20):
                rows = range(document, document + 20)
                writer.add(
                    list(rows),
                    PassageEmbeddings(unit_vectors(20, seed=document)),
                    document_id=document,
                    collection_id=document % 3,
                    texts=[""] * 20,
                    terms=[PassageTerms("en", {w: passages[r].count(w) for w in passages[r]}) for r in rows],
                )
    with store.writer() as writer:
        writer.remove_ids(range(0, 600, 7))
    live = [r for r in range(600) if r % 7]
    vocabulary: dict[str, int] = {}
    corpus = [[vocabulary.setdefault(w, len(vocabulary)) for w in passages[r]] for r in live]
    model = bm25s.BM25(k1=0.9, b=0.4)
    model.index((corpus, dict(vocabulary)), create_empty_token=False, show_progress=False)
    factor = bm25_term_weight(1.0, 1.0, 1.0, 0.9, 0.4) * 1.9  # see the test above

    for query in (["t0"], ["t1", "t150"], ["t199", "t120", "t3"]):  # common terms, rare ones, both
        expected_scores = model.get_scores_from_ids([vocabulary[w] for w in query if w in vocabulary])
        expected = {r: float(x) * factor for r, x in zip(live, expected_scores, strict=True) if x > 0}
        assert dict(lexical(store, query, k=1000)) == pytest.approx(expected, rel=1e-5)
        top = lexical(store, query, k=5, collections=[1])
        allowed = sorted((x for r, x in expected.items() if (r // 20 * 20) % 3 == 1), reverse=True)[:5]
        assert [x for _, x in top] == pytest.approx(allowed, rel=1e-5)
        assert all(expected[r] == pytest.approx(x, rel=1e-5) and (r // 20 * 20) % 3 == 1 for r, x in top)


def test_texts_are_analysed_when_no_terms_are_given(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    fill(store, [1, 2], texts=["Les prix de l'électricité augmentent", "The cats are sleeping"])

    assert store.view().languages() == frozenset({"fr", "en"})
    assert [c for c, _ in lexical(store, ["electricit"])] == [1]  # folded and stemmed like the query
    assert [c for c, _ in lexical(store, ["cat"])] == [2]
    batch = next(store.export())
    assert batch.terms[0].language == "fr" and "electricit" in batch.terms[0].counts


# ---- companions ----------------------------------------------------------------------------------


def test_companion_vectors_are_stored_and_scored_by_cosine(tmp_path: Path) -> None:
    store = open_store(tmp_path, COMPANION)
    companion = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [0.6, 0.8, 0, 0]], dtype=np.float32)  # the 2nd: not given
    with store.writer() as writer:
        writer.add(
            [1, 2, 3],
            PassageEmbeddings(unit_vectors(3), companion),
            document_id=1,
            collection_id=1,
            texts=["a", "b", "c"],
        )
    assert store.view().chunks_without_companion() == 0
    with store.writer() as writer:  # embedded without the companion
        writer.add([4], PassageEmbeddings(unit_vectors(1, seed=4)), document_id=2, collection_id=1, texts=["d"])

    scores = open_store(tmp_path, COMPANION).view().companion_scores([1, 2, 3, 4, 99], np.array([2.0, 0, 0, 0]))

    assert scores == {1: pytest.approx(1.0, abs=1e-3), 2: 0.0, 3: pytest.approx(0.6, abs=1e-3), 4: 0.0}
    assert store.view().chunks_without_companion() == 1
    assert read_saved_state(tmp_path)["chunks_without_companion"] == 1  # type: ignore[index]
    assert open_store(tmp_path / "plain").view().companion_scores([1], np.ones(4)) == {}
    store.merge(force=True)
    assert store.view().segments == 1 and store.view().chunks_without_companion() == 1
    assert store.view().companion_scores([3], np.array([0, 1.0, 0, 0])) == {3: pytest.approx(0.8, abs=1e-3)}


# ---- merges --------------------------------------------------------------------------------------


def _build_fragmented(store: FaissStore) -> dict[int, np.ndarray]:
    """Seven segments: six of three documents each, then one replacing and removing chunks."""
    vectors: dict[int, np.ndarray] = {}
    for segment in range(6):
        with store.writer() as writer:
            for document in range(3):
                number = segment * 3 + document
                ids = [number * 10 + i for i in range(4)]
                batch = unit_vectors(4, seed=number)
                vectors.update(zip(ids, batch, strict=True))
                writer.add(
                    ids,
                    PassageEmbeddings(batch),
                    document_id=number,
                    collection_id=number % 3,
                    texts=[CORPUS[(number + i) % len(CORPUS)] for i in range(4)],
                )
    with store.writer() as writer:
        writer.remove_ids([0, 11, 52])
        writer.remove_document(7)
        batch = unit_vectors(2, seed=77)
        writer.add([12, 13], PassageEmbeddings(batch), document_id=1, collection_id=1, texts=["fox again", "dog again"])
        vectors.update({12: batch[0], 13: batch[1]})
    return vectors


def _answers(store: FaissStore, vectors: dict[int, np.ndarray]) -> list[Any]:
    out: list[Any] = [sorted(store.ids().tolist())]
    for chunk_id in (1, 12, 33, 63):
        out.append(dense(store, vectors[chunk_id], 7))
        out.append(dense(store, vectors[chunk_id], 5, collections=[1]))
    for terms in (["fox"], ["quick", "dog"], ["electricity", "gas"]):
        out.append(lexical(store, terms, 8))
        out.append(lexical(store, terms, 8, documents=[1, 2, 3, 4]))
    out.append(sorted(store.view().languages()))
    return out


def _exported(store: FaissStore) -> list[Any]:
    rows = []
    for batch in store.export(batch_size=7):
        for i, chunk_id in enumerate(batch.chunk_ids.tolist()):
            rows.append(
                (
                    chunk_id,
                    int(batch.document_ids[i]),
                    int(batch.collection_ids[i]),
                    batch.texts[i],
                    batch.embeddings.dense[i].tolist(),
                    batch.terms[i],
                )
            )
    return sorted(rows, key=lambda row: row[0])


def test_a_merge_keeps_every_answer_identical(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    vectors = _build_fragmented(store)
    before, exported = _answers(store, vectors), _exported(store)
    assert store.view().segments == 7 and store.view().deleted > 0

    assert store.merge(force=True) == 1

    assert store.view().segments == 1 and store.view().deleted == 0
    assert _answers(store, vectors) == before
    assert _exported(store) == exported
    reader = open_store(tmp_path)
    assert _answers(reader, vectors) == before
    assert reader.verify()["segments"] == 1
    # the merged segments stay one round (readers may still load them), then go
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("s")]) == 8
    fill(store, [999], document_id=99, seed=99)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("s")) == ["s000000000008", "s000000000009"]


def test_the_tiered_policy_merges_similar_segments_in_the_background(tmp_path: Path) -> None:
    store = open_store(tmp_path, merge_floor=4, merge_factor=3, background_merge=True)
    reader = open_store(tmp_path)
    for document in range(2):
        fill(store, [document * 2, document * 2 + 1], document_id=document, seed=document)
    assert merge_plan(store.view(), store.config) is None
    fill(store, [4, 5], document_id=2, seed=2)  # a third small segment: the tier is full
    store.wait_for_background(30)

    assert store.background_error is None
    assert store.view().segments == 1 and sorted(store.ids().tolist()) == [0, 1, 2, 3, 4, 5]
    assert reader.refresh() and reader.view().segments == 1 and len(reader.view()) == 6

    # three segments of the next tier (5 to 11 chunks) merge together; the next one waits beside them
    for document in range(3, 6):
        fill(store, list(range(document * 10, document * 10 + 5)), document_id=document, seed=document)
        store.wait_for_background(30)
    assert [p.segment.count for p in store.view().parts] == [16, 5]
    assert len(store.view()) == 21 and store.background_error is None


def test_the_merge_policy_caps_flat_segments_and_rewrites_tombstoned_ones(tmp_path: Path) -> None:
    store = open_store(tmp_path, merge_floor=2, merge_factor=10, approx_threshold=10)
    fill(store, list(range(6)), document_id=1)
    fill(store, list(range(10, 16)), document_id=2, seed=1)
    assert merge_plan(store.view(), store.config) == ["s000000000001", "s000000000002"]  # 12 exact > 10
    store.merge()
    assert store.view().segments == 1 and store.view().kind == "hnsw"

    with store.writer() as writer:
        writer.remove_ids([0, 1, 2])
    assert merge_plan(store.view(), store.config) == ["s000000000003"]  # 3 of 12 removed
    assert store.merge() == 1
    assert store.view().deleted == 0 and len(store.view()) == 9 and store.view().kind == "flat"


def test_deletions_made_while_a_merge_builds_are_carried_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(tmp_path)
    vectors = _build_fragmented(store)
    other_process = open_store(tmp_path)
    real = _merged_data

    def meanwhile(*args: Any, **kwargs: Any) -> Any:
        data = real(*args, **kwargs)
        with other_process.writer() as writer:  # another writer, while the merged segment is being built
            writer.remove_ids([1, 2])
            writer.add([33], PassageEmbeddings(vectors[33][None, :]), document_id=8, collection_id=2, texts=["new"])
        return data

    monkeypatch.setattr("ingestion.index.store._merged_data", meanwhile)
    assert store.merge(force=True) == 1

    view = store.view()
    assert view.segments == 2  # the merged one (with the tombstones made meanwhile) and the new one
    assert 1 not in store.ids() and 2 not in store.ids() and list(store.ids()).count(33) == 1
    assert view.facts([33])[33].text == "new"
    assert dense(store, vectors[1], 3)[0][0] != 1
    assert store.verify()["chunks"] == len(view)


def test_a_merge_whose_segments_were_replaced_meanwhile_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(tmp_path)
    _build_fragmented(store)
    rebuilder = FaissStore(IndexConfig(tmp_path, background_merge=False), IDENTITY, load=False)
    real = _merged_data

    def meanwhile(*args: Any, **kwargs: Any) -> Any:
        data = real(*args, **kwargs)
        with rebuilder.writer(reset=True) as writer:
            writer.add([1], PassageEmbeddings(unit_vectors(1)), document_id=1, collection_id=1, texts=["only"])
        return data

    monkeypatch.setattr("ingestion.index.store._merged_data", meanwhile)
    assert store.merge(force=True) == 0
    assert store.ids().tolist() == [1]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


# ---- approximate segments ------------------------------------------------------------------------


def test_segments_over_the_threshold_are_approximate_and_filters_still_hold(tmp_path: Path) -> None:
    store = open_store(tmp_path, approx_threshold=50)
    vectors = fill(store, list(range(80)), collection_id=1)
    assert store.kind == "hnsw"
    rare = fill(store, [500], document_id=2, collection_id=3, seed=5)  # a small exact segment beside it
    assert store.view().segments == 2 and store.kind == "hnsw"

    assert dense(store, vectors[45], 1) == [(45, pytest.approx(1.0, abs=1e-5))]
    assert dense(store, -rare[0], 1, collections=[3]) == [(500, pytest.approx(-1.0, abs=1e-5))]
    with store.writer() as writer:  # HNSW cannot remove: removed chunks must still never come back
        writer.remove_ids([45, *range(60, 76)])
    assert 45 not in [c for c, _ in dense(store, vectors[45], 80)]
    assert len(dense(store, vectors[45], 100)) == 64
    # a filter letting through under 5% of the graph is scanned exactly
    assert [c for c, _ in dense(store, vectors[3], 10, documents=[1], collections=[1])][:1] == [3]
    with store.writer() as writer:
        writer.add(
            list(range(1000, 1002)),
            PassageEmbeddings(unit_vectors(2, seed=8)),
            document_id=3,
            collection_id=4,
            texts=["a", "b"],
        )
    found = dense(store, vectors[3], 5, collections=[4])
    assert sorted(c for c, _ in found) == [1000, 1001]
    assert open_store(tmp_path, approx_threshold=50).kind == "hnsw"


# ---- state, export, files ------------------------------------------------------------------------


def test_export_gives_every_chunk_once_and_never_splits_a_document(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    fill(store, [1, 2, 3], document_id=10)
    fill(store, [4, 5], document_id=20, seed=1)
    fill(store, [6], document_id=10, seed=2)  # the same document, in another segment
    fill(store, [7, 8, 9, 10, 11], document_id=30, seed=3)

    batches = list(store.export(batch_size=3))

    assert sorted(int(c) for b in batches for c in b.chunk_ids) == list(range(1, 12))
    documents = [sorted(set(b.document_ids.tolist())) for b in batches]
    assert documents == [[10], [20], [30]]  # 4 chunks of document 10 alone, 5 of document 30 alone
    first = batches[0]
    assert first.embeddings.dense.shape == (4, DIMENSION) and first.embeddings.companion is None
    assert first.texts[0] == "chunk 1" and first.terms[0] == PassageTerms("en", {"chunk": 1, "1": 1})
    assert all(len(b.chunk_ids) == len(b.texts) == len(b.terms) == len(b.embeddings) for b in batches)


def test_only_the_current_and_previous_generations_are_kept(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    for i in range(5):
        fill(store, [i], document_id=i, seed=i)
    with store.writer() as writer:
        writer.remove_ids([0, 1])
    with store.writer() as writer:
        writer.remove_ids([2])

    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "CURRENT",
        "g000000000006.json",
        "g000000000007.json",
        "merge.lock",
        "s000000000003",
        "s000000000004",
        "s000000000005",
        "writer.lock",
    ]
    state = read_saved_state(tmp_path)
    assert state is not None
    assert (state["version"], state["chunks"], state["embedder"], state["kind"], state["segments"]) == (
        7,
        2,
        FAKE_EMBEDDER,
        "flat",
        2,
    )
    current = generation_files(tmp_path)
    assert current is not None and current[0] == "g000000000007"
    assert all((tmp_path / name).is_file() for name in current[1])
    assert "s000000000004/segment.json" in current[1] and not any(n.startswith("s000000000003") for n in current[1])
