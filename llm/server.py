"""One model process per machine: the local model behind a small OpenAI-compatible HTTP API.

    python -m llm.server [--host 127.0.0.1] [--port 8011] [--config JSON] [--pid-file PATH]

Every web process and worker of a machine can use this one process (``LLMConfig.process = "shared"``, through
:mod:`llm.backends.shared`, which starts it on first use) instead of loading a copy of the model each. It is a
gunicorn server with one worker process: the worker loads the model and generates one token before
``GET /health`` says ``ready``, and gunicorn starts a new worker when one dies. Endpoints:

- ``GET /health``: ``{"status": "loading" | "ready" | "failed", "model", "fingerprint", "pid"}`` (503 until ready;
  ``error`` when failed; ``fingerprint`` is :meth:`LLMConfig.server_fingerprint` of the configuration served);
- ``GET /v1/models``: the OpenAI model list (one model);
- ``POST /v1/chat/completions``: OpenAI's chat completion, streamed as server-sent events (with
  ``stream_options.include_usage``) or not; ``usage`` holds the model's own token counts;
- ``POST /v1/tokenize``: ``{"text": str}`` or ``{"messages": [...]}`` → ``{"count": int}`` (with the chat template
  and the assistant's turn opened), so that callers count tokens without loading a tokenizer.

Errors are JSON ``{"error": {"message", "type", "code"}}`` with the status of the ``llm`` error (400 for a bad
request, 503 when the model cannot be used, 500 when generation fails).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from llm.backends.base import drain
from llm.config import LLMConfig
from llm.errors import GenerationError, InvalidRequestError, LLMError
from llm.handler import LLMHandler
from llm.types import Generation, Message, StreamIterator

logger = logging.getLogger("llm.server")

DEFAULT_PORT = 8011
#: HTTP threads of the model process: requests beyond the one generating wait for the model (or are health checks)
HTTP_THREADS = 8
#: seconds a process whose model failed to load keeps answering /health with the reason before it exits
FAILED_EXIT_DELAY_S = 5.0

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
_STATUS_TEXT = {200: "200 OK", 400: "400 Bad Request", 404: "404 Not Found", 500: "500 Internal Server Error"}
_STATUS_TEXT[503] = "503 Service Unavailable"


class ModelServer:
    """The WSGI application of the model process: one :class:`LLMHandler` on the local model, loaded at start."""

    def __init__(self, config: LLMConfig) -> None:
        self.config = dataclasses.replace(config, backend="local", process="own")
        self.fingerprint = config.server_fingerprint()
        self.handler = LLMHandler(self.config)
        self.state = "loading"
        self.error = ""
        self.load_seconds: float | None = None

    def start(self, *, exit_on_failure: bool = True) -> None:
        """Load the model and warm it up in a thread (``/health`` says ``loading`` meanwhile)."""
        thread = threading.Thread(target=self._load, args=(exit_on_failure,), name="llm-load", daemon=True)
        thread.start()

    def _load(self, exit_on_failure: bool) -> None:
        started = time.monotonic()
        try:
            self.handler.load()
            # the first pass allocates what every later one reuses: no caller pays for it
            self.handler.generate("Hello", max_tokens=1, temperature=0)
        except Exception as exc:
            self.error, self.state = str(exc), "failed"
            logger.error("The model could not be loaded: %s", exc)
            if exit_on_failure:  # callers read the reason at /health, then start a new process after a fix
                threading.Timer(FAILED_EXIT_DELAY_S, os.kill, (os.getppid(), signal.SIGTERM)).start()
            return
        self.load_seconds = time.monotonic() - started
        self.state = "ready"
        logger.info("Model %s ready in %.1f s", self.handler.model_name(), self.load_seconds)

    # -- WSGI ----------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        route = (environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", ""))
        try:
            if route == ("GET", "/health"):
                return self._health(start_response)
            if route == ("GET", "/v1/models"):
                created = int(time.time())
                model = {"id": self.handler.model_name(), "object": "model", "created": created, "owned_by": "local"}
                return _json(start_response, 200, {"object": "list", "data": [model]})
            if route == ("POST", "/v1/tokenize"):
                return self._tokenize(_body(environ), start_response)
            if route == ("POST", "/v1/chat/completions"):
                return self._chat(_body(environ), start_response)
            return _error(start_response, 404, "not_found", f"There is no {route[0]} {route[1]} here.")
        except LLMError as exc:
            status = 500 if isinstance(exc, GenerationError) else exc.http_status
            return _error(start_response, status, exc.code, exc.message)

    def _health(self, start_response: StartResponse) -> Iterable[bytes]:
        body: dict[str, Any] = {
            "status": self.state,
            "model": self.handler.model_name(),
            "fingerprint": self.fingerprint,
            "pid": os.getpid(),
        }
        if self.error:
            body["error"] = self.error
        if self.load_seconds is not None:
            body["load_seconds"] = round(self.load_seconds, 2)
        return _json(start_response, 200 if self.state == "ready" else 503, body)

    def _tokenize(self, body: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if isinstance(body.get("text"), str):
            count = self.handler.count_tokens(body["text"])
        else:
            count = self.handler.count_message_tokens(_messages(body.get("messages")))
        return _json(start_response, 200, {"count": count})

    def _chat(self, body: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        stop = body.get("stop")
        stream = self.handler.stream(
            _messages(body.get("messages")),
            temperature=_number(body, "temperature", 1.0),
            top_p=_number(body, "top_p", 1.0),
            max_tokens=int(_number(body, "max_tokens", min(256, self.config.max_tokens))),
            stop=[stop] if isinstance(stop, str) else [s for s in stop or () if isinstance(s, str)],
        )
        completion = f"chatcmpl-{uuid.uuid4().hex}"
        if not body.get("stream"):
            try:
                generation = drain(stream)
            finally:
                stream.close()
            message = {"role": "assistant", "content": generation.text}
            choice = {"index": 0, "message": message, "finish_reason": generation.finish_reason}
            answer = {**_completion(completion, "chat.completion", generation.model), "choices": [choice]}
            return _json(start_response, 200, {**answer, "usage": _usage(generation)})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        headers = [("Content-Type", "text/event-stream; charset=utf-8"), ("Cache-Control", "no-cache")]
        start_response(_STATUS_TEXT[200], headers)
        return _events(stream, completion, self.handler.model_name(), include_usage=include_usage)


def _events(stream: StreamIterator, completion: str, model: str, *, include_usage: bool) -> Iterator[bytes]:
    """The chunks of a streamed completion; closing this (the client went away) stops the model."""
    frame = _completion(completion, "chat.completion.chunk", model)
    try:
        yield _event({**frame, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
        for item in stream:
            if isinstance(item, Generation):
                finish = {"index": 0, "delta": {}, "finish_reason": item.finish_reason}
                yield _event({**frame, "choices": [finish]})
                if include_usage:
                    yield _event({**frame, "choices": [], "usage": _usage(item)})
            elif item:
                yield _event({**frame, "choices": [{"index": 0, "delta": {"content": item}, "finish_reason": None}]})
    except LLMError as exc:  # the status line is sent: the error travels as an event
        yield _event({"error": {"message": exc.message, "type": exc.code, "code": exc.code}})
    finally:
        stream.close()
    yield b"data: [DONE]\n\n"


def _completion(completion: str, kind: str, model: str) -> dict[str, Any]:
    return {"id": completion, "object": kind, "created": int(time.time()), "model": model}


def _usage(generation: Generation) -> dict[str, int]:
    return {
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.completion_tokens,
        "total_tokens": generation.tokens_used,
    }


def _event(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _body(environ: dict[str, Any]) -> dict[str, Any]:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = json.loads(environ["wsgi.input"].read(length) or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"The request body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    return body


def _messages(value: Any) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise InvalidRequestError("messages must be a non-empty list of {role, content} objects.")
    messages: list[Message] = []
    for item in value:
        role, content = (item.get("role"), item.get("content")) if isinstance(item, dict) else (None, None)
        if not isinstance(role, str) or not isinstance(content, str):
            raise InvalidRequestError("Each message must have a role and a text content.")
        messages.append({"role": role, "content": content})
    return messages


def _number(body: dict[str, Any], name: str, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequestError(f"{name} must be a number.")
    return float(value)


def _json(start_response: StartResponse, status: int, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body, ensure_ascii=False).encode()
    start_response(_STATUS_TEXT[status], [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def _error(start_response: StartResponse, status: int, code: str, message: str) -> list[bytes]:
    return _json(start_response, status, {"error": {"message": message, "type": code, "code": code}})


def serve(config: LLMConfig, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, pid_file: str = "") -> None:
    """Run the model process in the foreground until SIGTERM or SIGINT (gunicorn: one worker, HTTP threads)."""
    from gunicorn.app.base import BaseApplication

    class _Gunicorn(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            options = {
                "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                "workers": 1,
                "worker_class": "gthread",
                "threads": HTTP_THREADS,
                # a generation runs in a request thread: the worker's heartbeat goes on meanwhile
                "timeout": 60,
                "graceful_timeout": 10,
                "keepalive": 75,
                "proc_name": "knowledge-portal-llm",
                "control_socket_disable": True,  # gunicorn's control socket path is per user: the portal's own
                "pidfile": pid_file or None,
                "loglevel": "info",
                "errorlog": "-",
            }
            for name, value in options.items():
                self.cfg.set(name, value)

        def load(self) -> ModelServer:
            # in the worker process: the master never imports torch, and a new worker loads the model again
            server = ModelServer(config)
            server.start()
            return server

    _Gunicorn().run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llm.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--config", default="{}", help="the LLMConfig fields as a JSON object (default: the default)")
    parser.add_argument("--pid-file", default="", help="write the server's process id there")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    fields = {field.name for field in dataclasses.fields(LLMConfig)}
    values = json.loads(args.config)
    unknown = sorted(set(values) - fields)
    if unknown:
        parser.error(f"unknown configuration fields: {', '.join(unknown)}")
    serve(LLMConfig(**values), host=args.host, port=args.port, pid_file=args.pid_file)


if __name__ == "__main__":
    main()
