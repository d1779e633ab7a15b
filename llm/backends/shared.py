"""The local model in one process per machine (:mod:`llm.server`), used over HTTP by every process that answers.

With ``LLMConfig.process = "shared"`` a web process or worker loads no model and no tokenizer: it counts tokens and
generates through the model process at ``server_url``. When nothing answers there and the URL is on this machine,
the first caller starts the process (one caller at a time, under a file lock in ``server_dir``, which also holds
the process's pid file and log) and waits until it has loaded the model; a process that died is started again
the same way by the next caller. A model process serving another configuration (another model or limits) that
this machine started is stopped and replaced; one elsewhere is an error. Generation itself goes through
:class:`~llm.backends.openai_compat.OpenAICompatBackend`, so answers, stop strings and errors behave as with
any OpenAI-compatible server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from llm.backends.local import LocalBackend
from llm.backends.openai_compat import OpenAICompatBackend
from llm.config import LLMConfig
from llm.errors import GenerationError, InvalidRequestError, ModelUnavailableError, PromptTooLongError
from llm.types import Generation, GenerationParams, Message, StreamIterator

T = TypeVar("T")

#: the repository root: the model process runs ``python -m llm.server`` from there
_ROOT = Path(__file__).resolve().parents[2]
#: seconds between two looks at a model process that is loading
_POLL_S = 0.2
#: token counts kept per process (the system prompt and frequent texts are counted again and again)
_COUNT_CACHE_SIZE = 4096


class SharedBackend:
    """Generates with the machine's model process, starting it when needed; thread-safe."""

    def __init__(self, config: LLMConfig) -> None:
        self.config = config
        self.url = config.server_url.rstrip("/")
        # the model's name and context window are read from its files: nothing is loaded here
        self._files = LocalBackend(config)
        remote = dataclasses.replace(config, backend="openai", base_url=f"{self.url}/v1", model=self.model_name())
        self._remote = OpenAICompatBackend(remote)
        self._ready = False
        self._counts: dict[str, int] = {}
        self._started: subprocess.Popen[bytes] | None = None
        self._start_lock = threading.Lock()

    # -- what and where ------------------------------------------------------------------------

    @property
    def context_window(self) -> int:
        return self._files.context_window

    def model_name(self) -> str:
        return self._files.model_name()

    @property
    def folder(self) -> Path:
        """Where the model process's pid file, lock and log are (``server_dir``)."""
        return Path(self.config.server_dir or Path(tempfile.gettempdir()) / "knowledge-portal-llm")

    @property
    def local(self) -> bool:
        """Whether ``server_url`` is on this machine, so that this process may start the model process."""
        host = urlsplit(self.url).hostname or ""
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def is_loaded(self) -> bool:
        """Whether the model process has answered ready (to this process)."""
        return self._ready

    def load(self) -> None:
        """Make sure the model process runs and has loaded the model; raises ``ModelUnavailableError``."""
        self._ready = False
        health = self.health()
        if health is not None and health.get("status") == "ready" and self._serves_us(health):
            self._ready = True
            return
        if not self.local:
            self._wait_ready(None)
            return
        _ = self._files.location  # a missing model is said now, not by a process that fails to start
        from filelock import FileLock, Timeout

        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            with self._start_lock, FileLock(str(self.folder / "llm-server.lock"), timeout=self.config.timeout):
                health = self.health()
                started = None
                if health is None or (health.get("status") == "failed" or not self._serves_us(health)):
                    if health is not None:
                        self._stop_previous(health)
                    started = self._start()
                self._wait_ready(started)
        except Timeout as exc:
            raise ModelUnavailableError(
                f"The model process did not start within {self.config.timeout:g} s (another process holds "
                f"{self.folder / 'llm-server.lock'})."
            ) from exc

    def health(self) -> dict[str, Any] | None:
        """What ``GET /health`` says, or None when nothing answers at ``server_url``."""
        try:
            response = httpx.get(f"{self.url}/health", timeout=5.0)
        except httpx.HTTPError:
            return None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or "status" not in body:
            raise ModelUnavailableError(f"{self.config.server_url} answers, but it is not a model process.")
        return body

    def _serves_us(self, health: dict[str, Any]) -> bool:
        if health.get("fingerprint") == self.config.server_fingerprint():
            return True
        if not self.local:
            raise ModelUnavailableError(
                f"The model process at {self.config.server_url} serves another model or other limits "
                f"({health.get('model')}); give it the same RAG_LLM_* settings as this process."
            )
        return False

    # -- starting and stopping the model process -----------------------------------------------

    def _start(self) -> subprocess.Popen[bytes]:
        pid_file = self.folder / "llm-server.pid"
        with contextlib.suppress(OSError, ValueError):
            if not _running(int(pid_file.read_text().strip())):
                pid_file.unlink()  # left by a model process that crashed: gunicorn would refuse to start
        parts = urlsplit(self.url)
        served = dataclasses.asdict(dataclasses.replace(self.config, process="own"))
        command = [
            sys.executable,
            "-m",
            "llm.server",
            "--host",
            parts.hostname or "127.0.0.1",
            "--port",
            str(parts.port or 80),
            "--config",
            json.dumps(served),
            "--pid-file",
            str(pid_file),
        ]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")]))}
        with (self.folder / "llm-server.log").open("ab") as log:
            # its own session: it serves every process of the machine and outlives the one that started it
            self._started = subprocess.Popen(
                command, cwd=_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        return self._started

    def _stop_previous(self, health: dict[str, Any]) -> None:
        """Stop the model process this machine started with another configuration (its pid file names it)."""
        try:
            pid = int((self.folder / "llm-server.pid").read_text().strip())
        except (OSError, ValueError) as exc:
            raise ModelUnavailableError(
                f"The model process at {self.config.server_url} serves another model or other limits "
                f"({health.get('model')}) and was not started from {self.folder}: stop it or choose another port."
            ) from exc
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _running(pid) and time.monotonic() < deadline:
            if self._started is not None:
                self._started.poll()  # reaped when this process started it
            time.sleep(_POLL_S)

    def _wait_ready(self, started: subprocess.Popen[bytes] | None) -> None:
        deadline = time.monotonic() + self.config.timeout
        health = None
        while time.monotonic() < deadline:
            health = self.health()
            if health is not None and health.get("status") == "ready" and self._serves_us(health):
                self._ready = True
                return
            if health is not None and health.get("status") == "failed":
                raise ModelUnavailableError(f"The model process could not load the model: {health.get('error')}")
            if started is not None and started.poll() is not None and health is None:
                raise ModelUnavailableError(
                    f"The model process exited ({started.returncode}) before it was ready: {self._log_tail()}"
                )
            time.sleep(_POLL_S)
        state = "nothing answers" if health is None else f"it is {health.get('status')}"
        raise ModelUnavailableError(
            f"The model process at {self.config.server_url} was not ready within {self.config.timeout:g} s ({state})."
        )

    def _log_tail(self) -> str:
        try:
            lines = (self.folder / "llm-server.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " / ".join(lines[-3:])[-600:] or "(empty log)"

    # -- tokens --------------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` by the model's tokenizer, counted in the model process."""
        count = self._counts.get(text)
        if count is None:
            count = self._tokenize({"text": text})
            if len(self._counts) >= _COUNT_CACHE_SIZE:
                self._counts.clear()
            self._counts[text] = count
        return count

    def count_message_tokens(self, messages: Sequence[Message]) -> int:
        """Prompt tokens of ``messages`` with the chat template, counted in the model process."""
        return self._tokenize({"messages": list(messages)})

    def _tokenize(self, body: dict[str, Any]) -> int:
        def post() -> int:
            try:
                response = self._remote.client.post("tokenize", json=body)
            except httpx.HTTPError as exc:
                reason = f"The model process at {self.config.server_url} cannot be used: {exc}"
                raise ModelUnavailableError(reason) from exc
            if response.status_code != 200:
                raise ModelUnavailableError(f"The model process answered {response.status_code}: {response.text[:300]}")
            return int(response.json()["count"])

        return self._again_if_gone(post)

    # -- generation ----------------------------------------------------------------------------

    def generate(self, messages: list[Message], params: GenerationParams) -> Generation:
        return self._again_if_gone(lambda: _translated(self._remote.generate, messages, params))

    def stream(self, messages: list[Message], params: GenerationParams) -> StreamIterator:
        """The model process's stream; started again once if the process is gone before the first piece."""
        yielded = False
        for attempt in (1, 2):
            try:
                for item in self._remote.stream(messages, params):
                    yielded = True
                    yield item
                return
            except ModelUnavailableError:
                if yielded or attempt == 2 or not self._gone():
                    raise
                self.load()
            except GenerationError as exc:
                raise _client_error(exc) from exc

    def _again_if_gone(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except ModelUnavailableError:
            if not self._gone():
                raise
            self.load()  # the model process died (or was stopped): start it again, then once more
            return call()

    def _gone(self) -> bool:
        """Whether nothing answers at ``server_url`` any more (rather than a busy model process)."""
        if self.health() is not None:
            return False
        self._ready = False
        return True


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs (one that has exited but is not reaped yet does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _translated(call: Callable[[list[Message], GenerationParams], T], *args: Any) -> T:
    try:
        return call(*args)
    except GenerationError as exc:
        raise _client_error(exc) from exc


def _client_error(exc: GenerationError) -> Exception:
    """A 400 of the model process is the caller's error, as with a model of this process."""
    if exc.status != 400:
        return exc
    message = exc.message.split(": ", 1)[-1]
    return PromptTooLongError(message) if "context window" in message else InvalidRequestError(message)
