"""The faiss store survives a writer or a merge killed (SIGKILL) at any point of a publication.

Each test prepares a store, starts a child process that writes (or merges) and stops itself at a chosen point,
kills it there with SIGKILL, then checks that the previous generation is still the current one, readable and
consistent (``FaissStore.verify``), that a reader open meanwhile still answers, and that the next writer removes
what the killed one left.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ingestion.index import FaissStore, IndexConfig, generation_files, layout, read_saved_state
from ingestion.index import store as store_module
from ingestion.index import writer as writer_module
from ingestion.index.manifest import _read_manifest
from ingestion.store import PassageEmbeddings, StoreIdentity

DIMENSION = 16
IDENTITY = StoreIdentity("test:random", DIMENSION)
TEXTS = ["the fox jumps", "a lazy dog sleeps", "electricity prices", "quick brown fox", "gas and power"]


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, DIMENSION)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def open_store(directory: Path) -> FaissStore:
    return FaissStore(IndexConfig(directory, background_merge=False, lock_timeout=30.0), IDENTITY)


def add_document(store: FaissStore, document: int, size: int = 5) -> None:
    ids = [document * 100 + i for i in range(size)]
    with store.writer() as writer:
        writer.add(
            ids,
            PassageEmbeddings(unit_vectors(size, seed=document)),
            document_id=document,
            collection_id=document % 2,
            texts=[TEXTS[(document + i) % len(TEXTS)] for i in range(size)],
        )


def _stop_here(marker: str) -> None:
    """Tell the test this point is reached, then wait to be killed."""
    Path(marker).write_text("reached")
    time.sleep(600)


def crash_child(directory: str, scenario: str, marker: str) -> None:
    """Run in a spawned process: start a publication and stop at ``scenario``'s point (the test kills it)."""
    # each replaced where it is looked up: a writer's segment in ingestion.index.writer, a merged one and the
    # switch of CURRENT in ingestion.index.store
    writer_side: Any = writer_module
    store_side: Any = store_module
    store = open_store(Path(directory))
    real_write_segment = store_side._write_segment
    real_clean_up = FaissStore._clean_up
    if scenario == "mid-segment":

        def half_written(folder: Path, *args: Any) -> str:
            with open(folder / layout.DATA_FILE, "wb") as file:
                file.write(b"\0" * 1000)
            _stop_here(marker)
            return ""

        writer_side._write_segment = half_written
    elif scenario in ("before-switch", "merge-before-switch"):
        store_side._switch_current = lambda directory, name: _stop_here(marker)
    elif scenario == "mid-merge":

        def then_stop(folder: Path, *args: Any) -> str:
            kind: str = real_write_segment(folder, *args)
            if folder.name.startswith(layout._MERGE_TEMP_PREFIX):
                _stop_here(marker)
            return kind

        store_side._write_segment = then_stop
    elif scenario == "after-switch":

        def stop_before_cleaning(self: FaissStore, view: Any) -> None:
            if view.generation > 4:  # the cleanup after publishing, not the one before writing
                _stop_here(marker)
            real_clean_up(self, view)

        store_side.FaissStore._clean_up = stop_before_cleaning
    if "merge" in scenario:
        store.merge(force=True)
    else:
        with store.writer() as writer:
            writer.remove_document(1)  # a whole segment: dropped
            writer.remove_ids([0])  # a tombstone file
            writer.add(
                [1_000, 1_001],
                PassageEmbeddings(unit_vectors(2, seed=9)),
                document_id=10,
                collection_id=0,
                texts=["new fox", "new dog"],
            )
    _stop_here(marker)  # not reached when the scenario's point is


def _prepare(directory: Path) -> FaissStore:
    store = open_store(directory)
    for document in range(3):
        add_document(store, document)
    with store.writer() as writer:  # a tombstone
        writer.remove_ids([201])
    return store  # generation 4, three segments


def _answers(store: FaissStore) -> list[Any]:
    view = store.view()
    out: list[Any] = [sorted(view.ids().tolist())]
    for seed in range(3):
        out.append(view.dense(unit_vectors(1, seed=seed)[0], 6, collections=None, documents=None))
    for terms in (["fox"], ["dog", "electr"]):
        out.append(view.lexical(terms, 6, collections=None, documents=None, k1=0.9, b=0.4))
    return out


def _kill_at(directory: Path, scenario: str, tmp_path: Path) -> None:
    marker = tmp_path / f"{scenario}.reached"
    context = multiprocessing.get_context("spawn")
    process = context.Process(target=crash_child, args=(str(directory), scenario, str(marker)))
    process.start()
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert process.is_alive(), f"the child ended (exit code {process.exitcode}) before the point"
            assert time.monotonic() < deadline, "the child never reached the point"
            time.sleep(0.01)
        assert process.pid is not None
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.join(30)
    assert process.exitcode == -signal.SIGKILL


def _referenced(directory: Path) -> set[str]:
    """Every file the current and previous generations reference, with the pointer and the lock files."""
    current = generation_files(directory)
    assert current is not None
    names = set(current[1])
    previous = _read_manifest(directory, current[0])["previous"]
    if previous:
        for entry in _read_manifest(directory, previous)["segments"]:
            for file in (layout.SEGMENT_FILE, layout.DATA_FILE, layout.DENSE_FILE, entry["deletes"]):
                if file:
                    names.add(f"{entry['name']}/{file}")
        names.add(f"{previous}.json")
    return names | {"CURRENT", "writer.lock", "merge.lock"}


def _files(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("scenario", "left"),
    [
        ("mid-segment", {".tmp-segment-"}),  # a half-written segment in its temporary folder
        ("before-switch", {"s000000000004/", "s000000000001/dead-000000000005.npy", "g000000000005.json"}),
        ("mid-merge", {".tmp-merge-"}),  # the merged segment, complete but unpublished
        ("merge-before-switch", {"s000000000004/", "g000000000005.json"}),
    ],
)
def test_a_publication_killed_midway_leaves_the_previous_state_current(
    tmp_path: Path, scenario: str, left: set[str]
) -> None:
    directory = tmp_path / "index"
    store = _prepare(directory)
    before = _answers(store)
    reader = open_store(directory)  # another process's reader, open while the writer dies
    files_before = _files(directory)

    _kill_at(directory, scenario, tmp_path)

    leftovers = _files(directory) - files_before
    assert all(any(name.startswith(prefix) for name in leftovers) for prefix in left), leftovers
    assert read_saved_state(directory)["version"] == 4  # type: ignore[index]
    fresh = open_store(directory)
    assert _answers(fresh) == before
    assert fresh.verify() == {"version": 4, "segments": 3, "chunks": 14}
    assert reader.refresh() is False and _answers(reader) == before
    assert reader.background_error is None

    # the lock died with the process: the next writer proceeds, and removes what was left
    add_document(fresh, 7)
    assert fresh.version == 5 and len(fresh.view()) == 19
    assert not _files(directory) & leftovers - _referenced(directory)
    assert _files(directory) <= _referenced(directory)
    assert not [p for p in directory.rglob(".tmp*")]
    assert open_store(directory).verify()["chunks"] == 19
    assert reader.refresh() is True and len(reader.view()) == 19


def test_a_writer_killed_after_the_switch_has_published(tmp_path: Path) -> None:
    directory = tmp_path / "index"
    store = _prepare(directory)
    reader = open_store(directory)

    _kill_at(directory, "after-switch", tmp_path)

    fresh = open_store(directory)
    assert fresh.version == 5
    expected = sorted({*store.ids().tolist(), 1_000, 1_001} - {0, 100, 101, 102, 103, 104})
    assert sorted(fresh.ids().tolist()) == expected
    assert fresh.verify()["chunks"] == len(expected)
    assert reader.refresh() is True and sorted(reader.ids().tolist()) == expected
    add_document(fresh, 8)
    assert _files(directory) <= _referenced(directory)
