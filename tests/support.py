"""Helpers the tests of several packages share; fixtures live in conftest.py."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any


def sse_events(response: Any) -> list[tuple[str, dict[str, Any]]]:
    """The server-sent events of a streamed response, in order: (event name, its decoded data)."""
    body = b"".join(response.streaming_content).decode()
    events = []
    for block in body.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def process_stop(
    process: subprocess.Popen[Any], *, timeout: float = 10, kill: Callable[[], None] | None = None
) -> None:
    """Ask a server the tests started to stop and wait for it; past ``timeout`` kill it (``kill``: how, such as
    its whole process group; default: the process alone)."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        (kill or process.kill)()
        process.wait()
