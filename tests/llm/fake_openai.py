"""A small OpenAI-compatible server for tests: ``GET /v1/models`` and ``POST /v1/chat/completions``.

It speaks the real protocol (JSON with ``usage``; server-sent events over chunked HTTP/1.1 ending
with ``data: [DONE]``) and records every request it receives.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REPLY_PIECES = ["Hello", " from", " the", " test", " server", "."]
PROMPT_TOKENS = 17


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Behaviour:
    """What the server does; tests change it between calls."""

    pieces: list[str] = field(default_factory=lambda: list(REPLY_PIECES))
    models: list[str] = field(default_factory=lambda: ["test-model"])
    send_usage: bool = True
    honour_stop: bool = True
    #: answer this status with ``error_body`` instead of a completion
    status: int = 200
    error_body: Any = field(default_factory=lambda: {"error": {"message": "max_tokens is too large", "code": 400}})
    delay: float = 0.0
    #: drop the connection after this many streamed pieces, the body unfinished (None: never)
    cut_after: int | None = None


class FakeOpenAIServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[Recorded] = []
        self.behaviour = Behaviour()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def completions(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == "/v1/chat/completions"]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (its timeout, in the tests of slow servers) is expected: no traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeOpenAIServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _record(self, body: Any) -> None:
        self.server.requests.append(Recorded(self.command, self.path, dict(self.headers.items()), body))

    def _json(self, status: int, data: Any) -> None:
        payload = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self._record(None)
        if self.path != "/v1/models":
            self._json(404, {"error": {"message": "not found"}})
            return
        self._json(
            200, {"object": "list", "data": [{"id": m, "object": "model"} for m in self.server.behaviour.models]}
        )

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length))
        self._record(body)
        behaviour = self.server.behaviour
        if behaviour.delay:
            time.sleep(behaviour.delay)
        if self.path != "/v1/chat/completions":
            self._json(404, {"error": {"message": "not found"}})
            return
        if behaviour.status != 200:
            self._json(behaviour.status, behaviour.error_body)
            return
        pieces, finish = self._reply(body, behaviour)
        usage = {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": len(pieces),
            "total_tokens": PROMPT_TOKENS + len(pieces),
        }
        if not body.get("stream"):
            data: dict[str, Any] = {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(pieces)},
                        "finish_reason": finish,
                    }
                ],
            }
            if behaviour.send_usage:
                data["usage"] = usage
            self._json(200, data)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        events = list(self._events(body, pieces, finish, usage, behaviour))
        if behaviour.cut_after is not None:
            # a keep-alive and the role chunk come before the pieces
            for event in events[: 2 + behaviour.cut_after]:
                self._chunk(event.encode())
            self.close_connection = True  # without the last chunk: the client sees a broken body
            return
        for event in events:
            self._chunk(event.encode())
        self._chunk(b"")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    @staticmethod
    def _reply(body: dict[str, Any], behaviour: Behaviour) -> tuple[list[str], str]:
        pieces, finish = list(behaviour.pieces), "stop"
        if len(pieces) > body.get("max_tokens", 10**6):
            pieces, finish = pieces[: body["max_tokens"]], "length"
        if behaviour.honour_stop:
            text = "".join(pieces)
            cuts = [text.find(s) for s in body.get("stop") or [] if s in text]
            if cuts:
                pieces, finish = [text[: min(cuts)]], "stop"
        return pieces, finish

    @staticmethod
    def _events(
        body: dict[str, Any], pieces: list[str], finish: str, usage: dict[str, int], behaviour: Behaviour
    ) -> Iterator[str]:
        base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": body["model"]}

        def event(choices: list[dict[str, Any]], **extra: Any) -> str:
            return f"data: {json.dumps({**base, 'choices': choices, **extra})}\n\n"

        yield ": keep-alive\n\n"
        yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        for piece in pieces:
            yield event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
        yield event([{"index": 0, "delta": {}, "finish_reason": finish}])
        if behaviour.send_usage and (body.get("stream_options") or {}).get("include_usage"):
            yield event([], usage=usage)
        yield "data: [DONE]\n\n"


@contextmanager
def fake_openai_server() -> Iterator[FakeOpenAIServer]:
    """Serve on 127.0.0.1 (a free port) in a thread for the duration of the block."""
    server = FakeOpenAIServer()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="fake-openai", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
