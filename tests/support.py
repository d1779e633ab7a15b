"""Helpers the tests of several packages share; fixtures live in conftest.py."""

from __future__ import annotations

import json
from typing import Any


def sse_events(response: Any) -> list[tuple[str, dict[str, Any]]]:
    """The server-sent events of a streamed response, in order: (event name, its decoded data)."""
    body = b"".join(response.streaming_content).decode()
    events = []
    for block in body.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events
