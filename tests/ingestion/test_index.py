"""The FAISS vector index: ids, filters, versions, atomic saves, concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock

from ingestion import index as index_module
from ingestion.errors import IndexBusyError, IndexCorruptError, IndexMismatchError
from ingestion.index import IndexConfig, VectorIndex, read_manifest, read_saved_state
from tests.ingestion.fixtures_engine import DIMENSION, FAKE_EMBEDDER, open_index, unit_vectors, write_many


def fill(
    index: VectorIndex, ids: list[int], *, document_id: int = 1, collection_id: int = 1, seed: int = 0
) -> np.ndarray:
    vectors = unit_vectors(len(ids), seed=seed)
    with index.writer() as writer:
        writer.add(
            ids, vectors, document_id=document_id, collection_id=collection_id, texts=[f"chunk {i}" for i in ids]
        )
    return vectors


def test_search_returns_chunk_ids_with_cosine_scores_best_first(tmp_path: Path) -> None:
    index = open_index(tmp_path)
    vectors = fill(index, [101, 205, 307, 409])

    results = index.search(vectors[2], 4)

    assert results[0][0] == 307
    assert results[0][1] == pytest.approx(1.0, abs=1e-5)
    assert sorted(chunk_id for chunk_id, _ in results) == [101, 205, 307, 409]
    scores = [score for _, score in results]
    assert scores == sorted(scores, reverse=True)
    assert sorted(index.ids().tolist()) == [101, 205, 307, 409]
    assert len(index) == index.count == 4
    assert index.version == 1


def test_an_empty_index_finds_nothing(tmp_path: Path) -> None:
    index = open_index(tmp_path / "missing")

    assert index.version == 0 and len(index) == 0
    assert index.search(unit_vectors(1)[0], 5) == []
    assert not (tmp_path / "missing").exists()  # readers create nothing


def test_the_collection_filter_is_applied_inside_the_search(tmp_path: Path) -> None:
    index = open_index(tmp_path)
    query = unit_vectors(1, seed=99)[0]
    # 2000 other-collection vectors, all closer to the query than the one allowed chunk
    near = query + 0.05 * unit_vectors(2000, seed=1)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    far = -query
    with index.writer() as writer:
        writer.add(list(range(1, 2001)), near, document_id=1, collection_id=1, texts=["x"] * 2000)
        writer.add([5000], far[None, :], document_id=2, collection_id=2, texts=["allowed"])

    assert index.search(query, 1, collections=[2]) == [(5000, pytest.approx(-1.0, abs=1e-5))]
    assert index.search(query, 1, documents={2}) == [(5000, pytest.approx(-1.0, abs=1e-5))]
    assert index.search(query, 3, collections=[2, 3]) == [(5000, pytest.approx(-1.0, abs=1e-5))]
    assert index.search(query, 1, collections=[]) == []
    assert index.search(query, 1, collections=[1], documents=[2]) == []
    assert len(index.search(query, 10, collections=[1])) == 10


def test_adding_the_same_ids_again_replaces_them(tmp_path: Path) -> None:
    index = open_index(tmp_path)
    fill(index, [1, 2, 3], seed=0)
    replacement = fill(index, [1, 2, 3], seed=7)

    assert len(index) == 3
    assert index.search(replacement[1], 1) == [(2, pytest.approx(1.0, abs=1e-5))]
    assert index.snapshot().texts[index.snapshot().position(2)] == "chunk 2"  # type: ignore[index]


def test_remove_ids_document_and_clear(tmp_path: Path) -> None:
    index = open_index(tmp_path)
    fill(index, [1, 2, 3], document_id=10)
    fill(index, [4, 5], document_id=20, seed=1)

    with index.writer() as writer:
        assert writer.remove_document(10) == 3
        assert writer.remove_document(10) == 0
        assert writer.remove_ids([5, 999]) == 1
        assert writer.count == 1
    assert index.ids().tolist() == [4]
    assert all(chunk_id == 4 for chunk_id, _ in index.search(unit_vectors(1)[0], 5))

    with index.writer() as writer:
        writer.clear()
    assert len(index) == 0


def test_a_failed_writer_block_changes_nothing(tmp_path: Path) -> None:
    index = open_index(tmp_path)
    fill(index, [1, 2])

    with pytest.raises(RuntimeError, match="boom"), index.writer() as writer:
        writer.remove_document(1)
        writer.add([3], unit_vectors(1), document_id=2, collection_id=1, texts=["c"])
        raise RuntimeError("boom")

    assert index.version == 1 and sorted(index.ids().tolist()) == [1, 2]
    assert open_index(tmp_path).version == 1


def test_a_crash_before_the_switch_leaves_the_old_version_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = open_index(tmp_path)
    fill(index, [1, 2])

    def crash(directory: Path, name: str) -> None:
        raise OSError("killed while saving")

    monkeypatch.setattr(index_module, "_switch_current", crash)
    with pytest.raises(OSError, match="killed"):
        fill(index, [3, 4], seed=1)
    monkeypatch.undo()

    # the new version's files were written, but the old version is still the one in use
    assert (tmp_path / "v000000000002").is_dir()
    assert (tmp_path / "CURRENT").read_text().strip() == "v000000000001"
    assert index.version == 1 and sorted(index.ids().tolist()) == [1, 2]
    reopened = open_index(tmp_path)
    assert reopened.version == 1 and sorted(reopened.ids().tolist()) == [1, 2]
    # the next save takes the version number over and cleans up
    fill(index, [5], seed=2)
    assert index.version == 2 and sorted(index.ids().tolist()) == [1, 2, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CURRENT", "v000000000001", "v000000000002", "writer.lock"]


def test_a_crash_while_writing_files_leaves_no_version_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index = open_index(tmp_path)
    fill(index, [1])

    def crash(folder: Path, snapshot: object) -> None:
        (folder / "index.faiss").write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(index_module, "_write_version", crash)
    with pytest.raises(OSError, match="disk full"):
        fill(index, [2])

    assert sorted(p.name for p in tmp_path.iterdir()) == ["CURRENT", "v000000000001", "writer.lock"]
    assert open_index(tmp_path).ids().tolist() == [1]


def test_another_process_sees_the_new_version_after_reload_if_stale(tmp_path: Path) -> None:
    writer_side = open_index(tmp_path)
    reader_side = open_index(tmp_path)
    fill(writer_side, [1, 2])

    assert reader_side.version == 0
    assert reader_side.reload_if_stale() is True
    assert reader_side.version == 1 and sorted(reader_side.ids().tolist()) == [1, 2]
    assert reader_side.reload_if_stale() is False

    # a writer always starts from the newest saved version, not from its own stale copy
    fill(reader_side, [3], seed=3)
    fill(writer_side, [4], seed=4)
    assert writer_side.version == 3 and sorted(writer_side.ids().tolist()) == [1, 2, 3, 4]


def test_only_the_current_and_previous_versions_are_kept(tmp_path: Path) -> None:
    index = open_index(tmp_path)
    for i in range(5):
        fill(index, [i], seed=i)

    versions = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("v"))
    assert versions == ["v000000000004", "v000000000005"]
    manifest = read_manifest(tmp_path)
    assert manifest is not None
    assert manifest["version"] == 5 and manifest["count"] == 5
    assert manifest["embedder"] == FAKE_EMBEDDER and manifest["dimension"] == DIMENSION
    assert json.loads((tmp_path / "v000000000005" / "manifest.json").read_text())["kind"] == "flat"
    state = read_saved_state(tmp_path)
    assert state is not None
    assert (state["version"], state["vectors"], state["embedder"], state["kind"]) == (5, 5, FAKE_EMBEDDER, "flat")
    assert read_saved_state(tmp_path / "nothing") is None


def test_opening_an_index_of_another_embedder_or_dimension_fails(tmp_path: Path) -> None:
    fill(open_index(tmp_path), [1])

    with pytest.raises(IndexMismatchError, match=r"built with test:random \(dim 16\).*other \(dim 32\).*rebuild_index"):
        VectorIndex(IndexConfig(tmp_path), embedder_name="other", dimension=32)
    with pytest.raises(IndexMismatchError):
        VectorIndex(IndexConfig(tmp_path), embedder_name=FAKE_EMBEDDER, dimension=32)

    # a rebuild opens it without loading, and starts over
    rebuilt = VectorIndex(IndexConfig(tmp_path), embedder_name="other", dimension=32, load=False)
    with rebuilt.writer(reset=True) as writer:
        writer.add([7], unit_vectors(1, dimension=32), document_id=1, collection_id=1, texts=["new"])
    assert rebuilt.version == 2 and rebuilt.ids().tolist() == [7]
    assert VectorIndex(IndexConfig(tmp_path), embedder_name="other", dimension=32).ids().tolist() == [7]


def test_a_busy_index_gives_up_after_the_lock_timeout(tmp_path: Path) -> None:
    index = open_index(tmp_path, lock_timeout=0.2)
    fill(index, [1])
    other_process = FileLock(str(tmp_path / "writer.lock"), thread_local=False)
    other_process.acquire()
    try:
        with pytest.raises(IndexBusyError), index.writer():
            pass
    finally:
        other_process.release()


def test_two_processes_writing_at_once_end_consistent(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=write_many, args=(str(tmp_path), w, 8, 5)) for w in (1, 2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0]

    index = open_index(tmp_path)
    expected = sorted(w * 1_000_000 + i for w in (1, 2) for i in range(40))
    assert index.version == 16
    assert sorted(index.ids().tolist()) == expected
    snapshot = index.snapshot()
    assert all(snapshot.texts[snapshot.position(i)] == f"worker {i // 1_000_000} chunk {i}" for i in expected)  # type: ignore[index]


def test_above_the_threshold_the_index_turns_approximate_and_back(tmp_path: Path) -> None:
    index = open_index(tmp_path, approx_threshold=50)
    vectors = fill(index, list(range(40)))
    assert index.kind == "flat"

    more = fill(index, list(range(40, 80)), collection_id=2, seed=1)
    assert index.kind == "hnsw" and len(index) == 80
    assert index.search(more[5], 1) == [(45, pytest.approx(1.0, abs=1e-5))]
    assert index.search(vectors[3], 1, collections=[2])[0][0] >= 40  # the filter holds in HNSW too
    rare = fill(index, [500], collection_id=3, seed=5)  # added to the graph as it is
    assert index.kind == "hnsw" and len(index) == 81
    assert index.search(-rare[0], 1, collections=[3]) == [(500, pytest.approx(-1.0, abs=1e-5))]
    with index.writer() as writer:
        writer.remove_ids([500])

    with index.writer() as writer:  # HNSW cannot remove: removed chunks must still never come back
        writer.remove_ids([45])
    assert 45 not in [c for c, _ in index.search(more[5], 80)]
    assert len(index.search(more[5], 100)) == 79
    assert open_index(tmp_path, approx_threshold=50).kind == "hnsw"

    with index.writer() as writer:  # just below the threshold: stays approximate (no flip-flop)
        writer.remove_ids(range(70, 80))
    assert index.kind == "hnsw" and len(index) == 69
    with index.writer() as writer:  # well below it: exact again
        writer.remove_ids(range(20, 80))
    assert index.kind == "flat" and len(index) == 20
    assert index.search(vectors[3], 1) == [(3, pytest.approx(1.0, abs=1e-5))]


def test_wrong_vectors_are_refused(tmp_path: Path) -> None:
    index = open_index(tmp_path)
    with index.writer() as writer:
        with pytest.raises(ValueError, match="shape"):
            writer.add([1, 2], unit_vectors(1), document_id=1, collection_id=1, texts=["a", "b"])
        with pytest.raises(ValueError, match="texts"):
            writer.add([1], unit_vectors(1), document_id=1, collection_id=1, texts=[])
        with pytest.raises(ValueError, match="finite"):
            writer.add([1], np.full((1, DIMENSION), np.nan), document_id=1, collection_id=1, texts=["a"])
    assert index.version == 0


def _rows(vectors: np.ndarray, ids: list[list[int]], weights: list[list[float]]) -> np.ndarray:
    """Passage rows: the vectors, then the latent term ids, then their weights."""
    return np.hstack([vectors, np.asarray(ids, dtype=np.float32), np.asarray(weights, dtype=np.float32)])


def test_latent_terms_are_kept_saved_and_scored(tmp_path: Path) -> None:
    index = open_index(tmp_path)
    rows = _rows(unit_vectors(2), [[5, 9], [9, 0]], [[2.0, 1.0], [0.5, 0.0]])
    with index.writer() as writer:
        writer.add([1, 2], rows, document_id=1, collection_id=1, texts=["a", "b"])

    reopened = open_index(tmp_path)  # read back from the saved files
    snapshot = reopened.snapshot()
    assert snapshot.term_ids.shape == snapshot.term_weights.shape == (2, 2)
    assert snapshot.term_ids.dtype == np.uint16 and snapshot.term_weights.dtype == np.float16  # 4 bytes a term
    assert snapshot.chunks_without_terms == 0
    query = np.zeros(10, dtype=np.float32)
    query[[5, 9]] = [1.0, 3.0]
    # chunk 1: 2*1 + 1*3; chunk 2: 0.5*3 (its second term has weight 0); an unknown chunk scores 0
    np.testing.assert_allclose(snapshot.term_scores([1, 2, 77], query), [5.0, 1.5, 0.0])
    # term ids beyond the query's features count nothing
    np.testing.assert_allclose(snapshot.term_scores([1], np.ones(6, dtype=np.float32)), [2.0])


def test_chunks_without_terms_mix_with_chunks_that_have_them(tmp_path: Path) -> None:
    index = open_index(tmp_path)
    fill(index, [1, 2])  # vectors alone, as an index saved before latent terms existed
    assert index.snapshot().term_ids.shape == (2, 0)
    with index.writer() as writer:
        writer.add(
            [3],
            _rows(unit_vectors(1, seed=3), [[4, 2, 1]], [[1.0, 1.0, 1.0]]),
            document_id=2,
            collection_id=1,
            texts=["c"],
        )
        writer.remove_ids([1])

    snapshot = open_index(tmp_path).snapshot()
    assert snapshot.term_ids.shape == (2, 3)
    assert snapshot.chunks_without_terms == 1  # chunk 2 (the searcher leaves the side off until a rebuild)
    assert read_saved_state(tmp_path)["chunks_without_terms"] == 1  # status pages read it from the manifest
    query = np.ones(5, dtype=np.float32)
    np.testing.assert_allclose(snapshot.term_scores([2, 3], query), [0.0, 3.0])


def test_term_ids_out_of_their_range_are_refused(tmp_path: Path) -> None:
    index = open_index(tmp_path)
    for bad in (70_000, -1):
        with index.writer() as writer, pytest.raises(ValueError, match="term ids"):
            rows = _rows(unit_vectors(1), [[bad]], [[1.0]])
            writer.add([1], rows, document_id=1, collection_id=1, texts=["a"])


def test_rows_of_an_odd_width_are_refused(tmp_path: Path) -> None:
    index = open_index(tmp_path)
    with index.writer() as writer, pytest.raises(ValueError, match="terms"):
        writer.add([1], np.hstack([unit_vectors(1), np.ones((1, 3))]), document_id=1, collection_id=1, texts=["a"])


@pytest.mark.parametrize("pointer", ["..", "../../secret_key", "/etc", "v000000000001/../..", "v1"])
def test_an_index_pointer_that_names_no_version_is_refused_not_followed(tmp_path: Path, pointer: str) -> None:
    fill(open_index(tmp_path), [1, 2])
    (tmp_path / "CURRENT").write_text(pointer + "\n")

    with pytest.raises(IndexCorruptError, match="not a version"):
        read_manifest(tmp_path)
    with pytest.raises(IndexCorruptError, match="not a version"):
        open_index(tmp_path)
    assert index_module.is_version_name("v000000000001") and not index_module.is_version_name(pointer)
