"""Read one metadata value from a GGUF file's header, with the standard library only.

``gguf.GGUFReader`` maps and parses every tensor (seconds); the context length sits in the first
few kilobytes.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

_MAGIC = b"GGUF"
_STRING, _ARRAY = 8, 9
# struct format of each fixed-size value type of the GGUF spec
_SCALARS: dict[int, str] = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d",
}  # fmt: skip


def read_context_length(path: str | Path) -> int | None:
    """The ``<architecture>.context_length`` of a GGUF file, or None when absent or unreadable."""
    try:
        with open(path, "rb") as f:
            values = _read_metadata(f, wanted_suffix=".context_length")
    except (OSError, ValueError, struct.error, UnicodeDecodeError):
        return None
    arch = values.get("general.architecture")
    value = values.get(f"{arch}.context_length") if isinstance(arch, str) else None
    return value if isinstance(value, int) and value > 0 else None


def _read_metadata(f: BinaryIO, *, wanted_suffix: str) -> dict[str, object]:
    if f.read(4) != _MAGIC:
        raise ValueError("not a GGUF file")
    (version,) = struct.unpack("<I", f.read(4))
    if version < 2:
        raise ValueError("GGUF version 1 is not supported")
    _tensors, count = struct.unpack("<QQ", f.read(16))
    values: dict[str, object] = {}
    for _ in range(count):
        key = _read_string(f)
        (kind,) = struct.unpack("<I", f.read(4))
        if key == "general.architecture" or key.endswith(wanted_suffix):
            values[key] = _read_value(f, kind)
            if "general.architecture" in values and any(k.endswith(wanted_suffix) for k in values):
                break
        else:
            _skip_value(f, kind)
    return values


def _read_string(f: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", f.read(8))
    return f.read(length).decode("utf-8")


def _read_value(f: BinaryIO, kind: int) -> object:
    if kind == _STRING:
        return _read_string(f)
    fmt = _SCALARS.get(kind)
    if fmt is None:
        _skip_value(f, kind)
        return None
    return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


def _skip_value(f: BinaryIO, kind: int) -> None:
    if kind == _STRING:
        (length,) = struct.unpack("<Q", f.read(8))
        f.seek(length, 1)
    elif kind == _ARRAY:
        item_kind, n = struct.unpack("<IQ", f.read(12))
        if item_kind in _SCALARS:
            f.seek(n * struct.calcsize(_SCALARS[item_kind]), 1)
        else:
            for _ in range(n):
                _skip_value(f, item_kind)
    elif kind in _SCALARS:
        f.seek(struct.calcsize(_SCALARS[kind]), 1)
    else:
        raise ValueError(f"unknown GGUF value type {kind}")
