"""A generation's manifest: its identity check, what a status page and a backup read of it, and the removal of
every file neither the current nor the previous generation references."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from filelock import FileLock
from filelock import Timeout as LockTimeout

from ..errors import REBUILD_HINT, IndexCorruptError, IndexMismatchError
from ..store import StoreIdentity
from .layout import (
    _DEAD,
    _MANIFEST,
    _MERGE_TEMP_PREFIX,
    _OLD_VERSION,
    _TEMP_PREFIX,
    DATA_FILE,
    DENSE_FILE,
    FORMAT,
    MERGE_LOCK_FILE,
    SEGMENT_FILE,
    _current_generation,
    _number,
    _read_pointer,
    _rebuild_message,
    _remove,
    is_segment_name,
    is_version_name,
)


def _identity_dict(identity: StoreIdentity) -> dict[str, Any]:
    return {
        "embedder": identity.embedder,
        "dimension": identity.dimension,
        "companion": identity.companion,
        "companion_dimension": identity.companion_dimension,
    }


def _describe(identity: dict[str, Any]) -> str:
    text = f"{identity.get('embedder')} (dim {identity.get('dimension')})"
    if identity.get("companion"):
        text += f" with the companion {identity.get('companion')} (dim {identity.get('companion_dimension')})"
    return text


def _check_identity(saved: dict[str, Any], identity: StoreIdentity) -> None:
    expected = _identity_dict(identity)
    if any(saved.get(key) != value for key, value in expected.items()):
        raise IndexMismatchError(
            f"The index was built with {_describe(saved)} but the configured embedder is {_describe(expected)}: "
            f"{REBUILD_HINT}"
        )


def _read_manifest(directory: Path, name: str) -> dict[str, Any]:
    """The manifest of generation ``name``, checked (names are plain names: never followed out of the folder)."""
    try:
        with open(directory / f"{name}.json", encoding="utf-8") as file:
            manifest = json.load(file)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexCorruptError(_rebuild_message(directory, f"has an unreadable manifest {name}.json")) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise IndexCorruptError(
            _rebuild_message(directory, f"has format {found} in {name}.json where this release reads {FORMAT}")
        )
    try:
        ok = manifest["generation"] == _number(name) and isinstance(manifest["identity"], dict)
        for entry in manifest["segments"]:
            ok = ok and is_segment_name(entry["name"]) and int(entry["count"]) > int(entry["dead"]) >= 0
            ok = ok and isinstance(entry["uid"], str)
            deletes = entry["deletes"]
            ok = ok and (
                deletes is None if entry["dead"] == 0 else isinstance(deletes, str) and bool(_DEAD.fullmatch(deletes))
            )
        previous = manifest.get("previous")
        ok = ok and (previous is None or (isinstance(previous, str) and is_version_name(previous)))
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise IndexCorruptError(_rebuild_message(directory, f"has a malformed manifest {name}.json"))
    return manifest


def read_saved_state(directory: Path) -> dict[str, Any] | None:
    """What a status page shows of the saved store: version (the generation), chunks (also as ``vectors``),
    embedder, dimension, companion, kind, segments, deleted, chunks_without_companion, saved_at.

    None when nothing was saved yet. Cheap: reads the pointer and one manifest. A store in the format of an
    earlier release gives ``{"version": ..., "format": 1, "needs_rebuild": True}``.
    """
    directory = Path(directory)
    for _ in range(5):
        name = _read_pointer(directory)
        if name is None:
            return None
        if _OLD_VERSION.fullmatch(name):
            return {"version": _number(name), "format": 1, "needs_rebuild": True}
        name = _current_generation(directory)
        if name is None:
            return None
        try:
            manifest = _read_manifest(directory, name)
        except FileNotFoundError:
            continue  # a writer replaced that generation meanwhile
        identity = manifest["identity"]
        return {
            "version": manifest["generation"],
            "format": FORMAT,
            "chunks": manifest["chunks"],
            "vectors": manifest["chunks"],
            "embedder": identity["embedder"],
            "dimension": identity["dimension"],
            "companion": identity["companion"],
            "companion_dimension": identity["companion_dimension"],
            "kind": manifest["kind"],
            "segments": len(manifest["segments"]),
            "deleted": sum(int(entry["dead"]) for entry in manifest["segments"]),
            "chunks_without_companion": manifest["chunks_without_companion"],
            "saved_at": manifest["saved_at"],
        }
    return None


def generation_files(directory: Path) -> tuple[str, list[str]] | None:
    """The current generation's name and every file it needs, relative to ``directory`` (its manifest, its
    segments' files, their tombstone files): what a backup copies, under the writers' lock. None when empty."""
    directory = Path(directory)
    name = _current_generation(directory)
    if name is None:
        return None
    manifest = _read_manifest(directory, name)
    files = [f"{name}.json"]
    for entry in manifest["segments"]:
        files += [f"{entry['name']}/{SEGMENT_FILE}", f"{entry['name']}/{DATA_FILE}", f"{entry['name']}/{DENSE_FILE}"]
        if entry["deletes"]:
            files.append(f"{entry['name']}/{entry['deletes']}")
    return name, files


def remove_unreferenced(directory: Path, generations: Iterable[str | None]) -> None:
    """Under the writers' lock: remove what neither of ``generations`` (the current one and the one before)
    references, and what killed writers left (a merge's work only when no merge is running)."""
    keep_manifests: set[str] = set()
    keep_files: dict[str, set[str]] = {}
    for name in generations:
        if name is None:
            continue
        try:
            manifest = _read_manifest(directory, name)
        except (FileNotFoundError, IndexCorruptError):
            continue
        keep_manifests.add(f"{name}.json")
        for entry in manifest["segments"]:
            keep_files.setdefault(entry["name"], set()).add(entry["deletes"])
    merge_lock = FileLock(str(directory / MERGE_LOCK_FILE), timeout=0, thread_local=False)
    try:
        merge_lock.acquire()
        merging = False
    except LockTimeout:
        merging = True
    try:
        for entry in directory.iterdir():
            name = entry.name
            if name.startswith(_MERGE_TEMP_PREFIX):
                if not merging:
                    _remove(entry)
            elif name.startswith(_TEMP_PREFIX):
                _remove(entry)
            elif _MANIFEST.fullmatch(name):
                if name not in keep_manifests:
                    _remove(entry)
            elif is_segment_name(name):
                kept = keep_files.get(name)
                if kept is None:
                    _remove(entry)
                    continue
                for inner in entry.iterdir():
                    stale_dead = _DEAD.fullmatch(inner.name) and inner.name not in kept
                    if stale_dead or inner.name.startswith(_TEMP_PREFIX):
                        _remove(inner)
            elif _OLD_VERSION.fullmatch(name):
                _remove(entry)  # the single-version format of earlier releases
    finally:
        if not merging:
            merge_lock.release()
