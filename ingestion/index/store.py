"""The store of one directory as this process sees it (:class:`FaissStore`): its snapshot and how it is
refreshed, the writers' lock and publication, merges in the background."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from filelock import Timeout as LockTimeout

from ..background import BackgroundRun
from ..errors import IndexBusyError, IndexCorruptError
from ..store import ExportBatch, StoreIdentity
from .check import verify_generation
from .export import export_batches
from .layout import (
    _MERGE_TEMP_PREFIX,
    _OLD_VERSION,
    _TEMP_PREFIX,
    CURRENT_FILE,
    FORMAT,
    LOCK_FILE,
    MERGE_LOCK_FILE,
    IndexConfig,
    _current_generation,
    _dead_name,
    _fsync_path,
    _generation_name,
    _number,
    _read_pointer,
    _rebuild_message,
    _remove,
    _replace_file,
    _save_dead,
    _segment_name,
    _switch_current,
    is_segment_name,
    is_version_name,
)
from .manifest import _identity_dict, _read_manifest, remove_unreferenced
from .merge import _merged_data, merge_plan
from .segment import _Part, _Segment, _write_segment
from .view import FaissView, _open_view
from .writer import FaissWriter, _Planned

logger = logging.getLogger(__name__)


class FaissStore:
    """The ``faiss`` search store of one directory, as seen by this process (see the package docstring).

    Opening a store saved with another identity raises IndexMismatchError; pass ``load=False`` to open it
    empty anyway and rebuild it with ``writer(reset=True)``.
    """

    backend = "faiss"

    def __init__(self, config: IndexConfig, identity: StoreIdentity, *, load: bool = True) -> None:
        self.config = replace(config, directory=Path(config.directory))
        self.directory = self.config.directory
        self.identity = identity
        self._snapshot = FaissView.empty(identity, self.config)
        self._install_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._merge_lock = threading.Lock()
        self._refresher = BackgroundRun("faiss-refresh")
        self._merger = BackgroundRun("faiss-merge")
        #: the stat of CURRENT the snapshot reflects; a changed one starts a background refresh
        self._seen: tuple[int, int, int] | None = None
        self._failed: tuple[tuple[int, int, int] | None, float] | None = None
        self._auto_refresh = load
        #: the error of the last background refresh or merge (None after a successful one)
        self.background_error: BaseException | None = None
        #: segments opened from disk by this instance (tests and benchmarks check it stays incremental)
        self.segments_opened = 0
        if load:
            self.refresh()

    # ---- reading ------------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        """The generation in memory (0 before the first publication)."""
        return self._snapshot.generation

    @property
    def kind(self) -> str:
        return self._snapshot.kind

    def __len__(self) -> int:
        return len(self._snapshot)

    def view(self) -> FaissView:
        """The snapshot in memory, after loading a newer saved generation when it is small (else that load runs
        in the background and the snapshot in memory answers meanwhile)."""
        if self._auto_refresh:
            self._maybe_refresh()
        return self._snapshot

    def ids(self) -> np.ndarray:
        return self.view().ids()

    def _pointer_stat(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(self.directory / CURRENT_FILE)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def _maybe_refresh(self) -> None:
        """Load a changed ``CURRENT``: at once when its new segments are small, else in the background."""
        token = self._pointer_stat()
        if token == self._seen:
            return
        failed = self._failed
        if failed is not None and failed[0] == token and time.monotonic() - failed[1] < 10.0:
            return
        if self._refresher.running():
            return  # a big load is in progress: the snapshot in memory answers until it ends
        if self._new_chunks() > self.config.sync_refresh_chunks:
            self._refresher.start(self._refresh_quietly)
            return
        self._refresh_quietly()  # a small change: loaded in this thread, before the question is answered

    def _new_chunks(self) -> int:
        """How many chunks the saved generation's segments hold beyond the snapshot's (its manifest only)."""
        try:
            name = _current_generation(self.directory)
            if name is None:
                return 0
            manifest = _read_manifest(self.directory, name)
        except (OSError, IndexCorruptError, ValueError, KeyError, TypeError):
            return 0  # loading it will say what is wrong (or find the generation replaced meanwhile)
        held = {part.name for part in self._snapshot.parts}
        return sum(int(entry["count"]) for entry in manifest["segments"] if entry["name"] not in held)

    def _refresh_quietly(self) -> None:
        """Load what is saved; a failure is logged and kept in ``background_error``, the snapshot stays."""
        token = self._pointer_stat()
        try:
            self.refresh()
        except Exception as exc:
            self.background_error = exc
            self._failed = (token, time.monotonic())
            logger.exception("The search index could not be reloaded; questions are answered from the loaded one")

    def refresh(self, *, wait: bool = True) -> bool:
        """Load the saved generation if it differs from the one in memory; True when the snapshot changed.

        ``wait=False`` does what :meth:`view` does (a big load goes to the background) and returns. With
        ``wait=True`` it waits for a background load in progress, and raises what loading raises.
        """
        if not wait:
            self._maybe_refresh()
            return False
        with self._refresh_lock:
            for attempt in range(8):
                token = self._pointer_stat()
                current = self._snapshot
                name = _current_generation(self.directory)
                if _number(name) == current.generation:
                    self._seen = token
                    self._failed = None
                    return False
                try:
                    if name is None:
                        view = FaissView.empty(self.identity, self.config)
                    else:
                        view, opened = _open_view(self.directory, name, self.identity, self.config, current)
                        self.segments_opened += opened
                except FileNotFoundError as exc:
                    if attempt == 7:  # not generations replaced faster than they can be read: files are missing
                        raise IndexCorruptError(
                            _rebuild_message(self.directory, f"misses {exc.filename} of generation {name}")
                        ) from exc
                    time.sleep(0.01 * (attempt + 1))
                    continue
                self._failed = None
                self.background_error = None
                return self._install(view, token, expected=current)
        return False  # pragma: no cover

    def _install(self, view: FaissView, token: tuple[int, int, int] | None, *, expected: FaissView | None) -> bool:
        """Make ``view`` the snapshot; a reader's load (``expected``: the snapshot it started from) is
        dropped when a writer of this process installed a newer one meanwhile."""
        with self._install_lock:
            current = self._snapshot
            if expected is not None and current is not expected and current.generation >= view.generation:
                return False
            self._snapshot = view
            self._seen = token
            return current is not view

    def wait_for_background(self, timeout: float | None = None) -> None:
        """Wait for this instance's background refresh and merge, if any (tests, benchmarks, shutdown)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for run in (self._refresher, self._merger):
            run.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    # ---- writing ------------------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The writers' lock, across threads and processes; IndexBusyError after ``lock_timeout``."""
        with self._write_lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(self.directory / LOCK_FILE), timeout=self.config.lock_timeout, thread_local=False)
            try:
                lock.acquire()
            except LockTimeout as exc:
                raise IndexBusyError(
                    f"The index is busy: another process has been writing it for over {self.config.lock_timeout:g} s"
                ) from exc
            try:
                yield
            finally:
                lock.release()

    def _catch_up(self) -> FaissView:
        """Under the lock: the current generation in memory (loaded synchronously when it moved on)."""
        token = self._pointer_stat()
        name = _current_generation(self.directory)
        current = self._snapshot
        if name is None:
            if current.parts or current.generation:
                self._install(FaissView.empty(self.identity, self.config), token, expected=None)
            return self._snapshot
        if _number(name) != current.generation:
            view, opened = _open_view(self.directory, name, self.identity, self.config, current)
            self.segments_opened += opened
            self._install(view, token, expected=None)
        return self._snapshot

    def _reset_base(self) -> FaissView:
        """Under the lock: an empty base numbered after whatever is on disk (any format, any identity)."""
        generation, previous, next_segment = 0, None, 1
        with contextlib.suppress(IndexCorruptError, OSError, ValueError):
            name = _read_pointer(self.directory)
            if name and (is_version_name(name) or _OLD_VERSION.fullmatch(name)):
                generation = _number(name)
            if name and is_version_name(name):
                manifest = _read_manifest(self.directory, name)
                previous = manifest.get("previous")
                next_segment = int(manifest["next_segment"])
        numbers = [_number(p.name) for p in self.directory.iterdir() if is_segment_name(p.name)]
        view = FaissView.empty(
            self.identity, self.config, generation, next_segment=max(next_segment, max(numbers, default=0) + 1)
        )
        # the cleanup before the rebuild keeps the current generation (readers use it until the switch)
        view.previous = previous
        return view

    @contextmanager
    def writer(self, *, reset: bool = False) -> Iterator[FaissWriter]:
        """Change the store: takes the writers' lock, starts from the newest saved generation, yields.

        When the block ends normally the changes are published atomically as the next generation and
        are this instance's snapshot; when it raises, they are discarded. ``reset=True`` starts from an
        empty store and ignores the saved one (even one of another identity or format). Raises
        IndexBusyError when the lock is not free within ``lock_timeout`` seconds.
        """
        published = False
        with self._locked():
            base = self._reset_base() if reset else self._catch_up()
            self._clean_up(base)
            session = FaissWriter(self, base, reset=reset)
            try:
                yield session
            except BaseException:
                session.discard()
                raise
            if session.changed:
                session.publish()
                published = True
        if published:
            self._auto_refresh = True
            self._maybe_merge()

    def _publish(self, base: FaissView, planned: Sequence[_Planned], *, replaced: Collection[str] = ()) -> FaissView:
        """Under the lock: write the tombstones and the manifest of the next generation, switch CURRENT,
        install its view and remove what is no longer referenced."""
        generation = base.generation + 1
        on_disk = [_number(p.name) for p in self.directory.iterdir() if is_segment_name(p.name)]
        next_segment = max([base.next_segment, *(n + 1 for n in on_disk)])
        companion = bool(self.identity.companion)
        parts: list[_Part] = []
        entries: list[dict[str, Any]] = []
        try:
            for plan in planned:
                if plan.part is not None:
                    part = plan.part
                    if plan.dead is not None:
                        deletes = _dead_name(generation)
                        _save_dead(self.directory / part.name / deletes, np.flatnonzero(plan.dead))
                        part = part.with_dead(plan.dead, deletes, companion=companion)
                else:
                    assert plan.folder is not None
                    name = _segment_name(next_segment)
                    next_segment += 1
                    final = self.directory / name
                    os.rename(plan.folder, final)
                    _fsync_path(self.directory)
                    plan.folder = final
                    segment = _Segment(name, final, self.identity)
                    self.segments_opened += 1
                    deletes = None
                    if plan.dead is not None:
                        deletes = _dead_name(generation)
                        _save_dead(final / deletes, np.flatnonzero(plan.dead))
                    part = _Part(segment, plan.dead, deletes, companion=companion)
                parts.append(part)
                entries.append(
                    {
                        "name": part.name,
                        "uid": part.segment.uid,
                        "count": part.segment.count,
                        "dead": part.dead_count,
                        "deletes": part.deletes,
                        "kind": part.segment.kind,
                    }
                )
            view = FaissView(
                identity=self.identity,
                config=self.config,
                generation=generation,
                parts=parts,
                next_segment=next_segment,
                saved_at=time.time(),
                previous=base.name,
            )
            manifest = {
                "format": FORMAT,
                "generation": generation,
                "previous": base.name,
                "identity": _identity_dict(self.identity),
                "next_segment": next_segment,
                "chunks": len(view),
                "chunks_without_companion": view.chunks_without_companion(),
                "kind": view.kind,
                "saved_at": view.saved_at,
                "replaced": sorted(replaced),
                "segments": entries,
            }
            _replace_file(self.directory / f"{view.name}.json", json.dumps(manifest, indent=1).encode("utf-8"))
            _switch_current(self.directory, _generation_name(generation))
        except BaseException:
            # never published: the next writer removes what was renamed into place
            for plan in planned:
                if plan.folder is not None and plan.folder.name.startswith(_TEMP_PREFIX):
                    _remove(plan.folder)
            raise
        self._install(view, self._pointer_stat(), expected=None)
        self._clean_up(view)
        return view

    def _clean_up(self, view: FaissView) -> None:
        """Under the lock: remove what neither ``view``'s generation nor the previous one references, and
        what killed writers left (a merge's work only when no merge is running)."""
        remove_unreferenced(self.directory, (view.name, view.previous))

    # ---- merging ------------------------------------------------------------------------------------
    def _maybe_merge(self) -> None:
        if not self.config.background_merge or merge_plan(self._snapshot, self.config) is None:
            return
        self._merger.start(self._background_merge)

    def _background_merge(self) -> None:
        try:
            self.merge()
        except IndexBusyError as exc:
            logger.warning("A segment merge was put off: %s", exc)
        except Exception as exc:
            self.background_error = exc
            logger.exception("A segment merge failed; the segments stay as they are")

    def merge(self, *, force: bool = False) -> int:
        """Run the merges the policy asks for (``force``: merge every segment into one); returns how many
        were published. Returns 0 at once when another thread or process is merging."""
        if not self._merge_lock.acquire(blocking=False):
            return 0
        try:
            if not self.directory.is_dir():
                return 0
            lock = FileLock(str(self.directory / MERGE_LOCK_FILE), timeout=0, thread_local=False)
            try:
                lock.acquire()
            except LockTimeout:
                return 0
            try:
                merged = 0
                while True:
                    self.refresh()
                    view = self._snapshot
                    plan = merge_plan(view, self.config, force=force)
                    if plan is None or not self._merge_once(view, plan):
                        return merged
                    merged += 1
                    force = False
            finally:
                lock.release()
        finally:
            self._merge_lock.release()

    def _merge_once(self, view: FaissView, names: Sequence[str]) -> bool:
        """Build the merge of ``names`` (as ``view`` sees them) outside the lock, publish it under it."""
        sources = [p for p in view.parts if p.name in set(names)]
        folder = self.directory / f"{_MERGE_TEMP_PREFIX}{secrets.token_hex(4)}"
        folder.mkdir()
        try:
            data = _merged_data(sources, self.identity)
            renumber = {}
            start = 0
            for part in sources:
                live = part.live_positions()
                mapping = np.full(part.segment.count, -1, dtype=np.int64)
                mapping[live] = np.arange(start, start + len(live))
                renumber[part.name] = mapping
                start += len(live)
            _write_segment(folder, data, self.identity, self.config)
            del data
            with self._locked():
                base = self._catch_up()
                held = {p.name: p for p in base.parts}
                if any(p.name not in held or held[p.name].segment.uid != p.segment.uid for p in sources):
                    return False  # a writer replaced them meanwhile (a rebuild): start again
                dead = np.zeros(start, dtype=bool)
                for part in sources:
                    now = held[part.name].dead
                    if now is not None:
                        dead[renumber[part.name][now & (renumber[part.name] >= 0)]] = True
                planned: list[_Planned] = []
                placed = False
                for part in base.parts:
                    if part.name in renumber:
                        if not placed and not dead.all():
                            planned.append(_Planned(folder=folder, dead=dead if dead.any() else None))
                        placed = True
                        continue
                    planned.append(_Planned(part=part))
                self._publish(base, planned, replaced=list(renumber))
                return True
        finally:
            if folder.exists():
                _remove(folder)

    # ---- bulk ---------------------------------------------------------------------------------------
    def export(self, batch_size: int = 1024) -> Iterator[ExportBatch]:
        """Every live chunk with its embeddings and terms, in batches of about ``batch_size`` chunks (a
        document's chunks always in one batch, a larger document alone), by document id."""
        yield from export_batches(self.view(), self.identity, batch_size)

    def state(self) -> dict[str, Any]:
        """What a status page shows of the store in memory."""
        view = self.view()
        return {
            "backend": self.backend,
            "chunks": len(view),
            "embedder": self.identity.embedder,
            "dimension": self.identity.dimension,
            "companion": self.identity.companion,
            "companion_dimension": self.identity.companion_dimension,
            "version": view.generation,
            "kind": view.kind,
            "segments": view.segments,
            "deleted": view.deleted,
            "chunks_without_companion": view.chunks_without_companion(),
            "saved_at": view.saved_at,
            "directory": str(self.directory),
        }

    def verify(self) -> dict[str, Any]:
        """Open the current generation afresh from disk and check that its files agree with each other
        (shapes, postings, tombstones, one live place per chunk id); IndexCorruptError when not.
        Returns the counts it found. Reads every segment: for ``check_index``, not for every question."""
        return verify_generation(self.directory, self.identity, self.config)
