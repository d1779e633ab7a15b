"""A store's background work (a refresh, a merge): one run at a time, in a daemon thread of its own."""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["BackgroundRun"]


class BackgroundRun:
    """Starts a function in a daemon thread unless the previous run is still going; ``join`` waits for it.

    The function is given at each start, so that the object holds no reference to its owner between runs.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def running(self) -> bool:
        """Whether a run is going on."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self, target: Callable[[], object]) -> None:
        """Run ``target`` in a new thread, unless a run is going on (then nothing happens)."""
        with self._lock:
            if self.running():
                return
            self._thread = threading.Thread(target=target, name=self.name, daemon=True)
            self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        """Wait at most ``timeout`` seconds (None: as long as it takes) for the run going on, if any."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
