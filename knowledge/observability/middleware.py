"""Request ids, access lines for the API, and /metrics served before host validation."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase
from django.utils.functional import SimpleLazyObject, empty

from knowledge.observability.context import request_facts_var, request_id_var
from knowledge.observability.logging import current_trace_ids

access_logger = logging.getLogger("knowledge.access")

REQUEST_ID_HEADER = "X-Request-ID"
#: an incoming id is kept when it looks like one (uuid, hex, ULID, …); anything else is replaced
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_PROMPT_LOG_CHARS = 2000


class RequestContextMiddleware:
    """Gives each request an id (``X-Request-ID`` when the caller sent a sane one, else a new one),
    puts it in every log line of the request and in the response header, and writes one access
    line per API call (under /api/): endpoint, status, latency, tokens and the caller's ids.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        request.request_id = request_id  # type: ignore[attr-defined]
        facts: dict[str, Any] | None = {} if request.path_info.startswith("/api/") else None
        id_token = request_id_var.set(request_id)
        facts_token = request_facts_var.set(facts)
        started = time.perf_counter()
        try:
            response = self.get_response(request)
            response[REQUEST_ID_HEADER] = request_id
            if facts is not None:
                if response.streaming:
                    # the answer is still to be written: its line comes when the stream ends
                    response.streaming_content = _logged_stream(  # type: ignore[attr-defined]
                        response.streaming_content,  # type: ignore[attr-defined]
                        request,
                        response,
                        started,
                        facts,
                        request_id,
                        current_trace_ids(),
                    )
                else:
                    _access_line(request, response, started, facts)
            return response
        finally:
            request_facts_var.reset(facts_token)
            request_id_var.reset(id_token)


def _logged_stream(
    content: Iterable[bytes],
    request: HttpRequest,
    response: HttpResponseBase,
    started: float,
    facts: dict[str, Any],
    request_id: str,
    trace_ids: tuple[str | None, str | None],
) -> Iterator[bytes]:
    chunks = iter(content)
    try:
        while True:
            # the request's context while the view's generator runs (it records the tokens)
            id_token, facts_token = request_id_var.set(request_id), request_facts_var.set(facts)
            try:
                chunk = next(chunks)
            except StopIteration:
                return
            finally:
                request_facts_var.reset(facts_token)
                request_id_var.reset(id_token)
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
        id_token = request_id_var.set(request_id)
        try:
            _access_line(request, response, started, facts, trace_ids=trace_ids)
        finally:
            request_id_var.reset(id_token)


def _caller(request: HttpRequest) -> dict[str, Any]:
    """The caller's user id and key prefix, without loading a session that nothing loaded yet."""
    ids: dict[str, Any] = {}
    user = request.__dict__.get("user")
    if isinstance(user, SimpleLazyObject) and user._wrapped is empty:
        user = None
    if user is not None and getattr(user, "is_authenticated", False):
        ids["user_id"] = user.pk
    prefix = getattr(getattr(request, "auth", None), "prefix", None)
    if isinstance(prefix, str):
        ids["key_prefix"] = prefix
    return ids


def _body(response: HttpResponseBase) -> dict[str, Any]:
    data = getattr(response, "data", None)
    return data if isinstance(data, dict) else {}


def _request_data(response: HttpResponseBase) -> dict[str, Any]:
    drf_request = (getattr(response, "renderer_context", None) or {}).get("request")
    try:
        data = getattr(drf_request, "data", None)
    except Exception:  # unparsable body: the view has answered 400 already
        return {}
    return data if isinstance(data, dict) else {}


def _tokens(body: dict[str, Any], facts: dict[str, Any]) -> int | None:
    meta = body.get("meta") if isinstance(body.get("meta"), dict) else {}
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    for value in (meta.get("tokens_used"), usage.get("total_tokens"), facts.get("tokens")):
        if isinstance(value, int):
            return value
    return None


def _access_line(
    request: HttpRequest,
    response: HttpResponseBase,
    started: float,
    facts: dict[str, Any],
    *,
    trace_ids: tuple[str | None, str | None] | None = None,
) -> None:
    try:
        latency_ms = (time.perf_counter() - started) * 1000
        match = getattr(request, "resolver_match", None)
        data = _request_data(response)
        fields: dict[str, Any] = {
            "event": "api_request",
            "method": request.method,
            "path": request.path,
            "endpoint": match.route if match is not None else None,
            "status": response.status_code,
            "latency_ms": round(latency_ms, 1),
            "tokens": _tokens(_body(response), facts),
            **_caller(request),
            "end_user_id": facts.get("end_user_id") or (str(data["user_id"]) if data.get("user_id") else None),
            "streamed": bool(response.streaming),
        }
        if trace_ids is not None and trace_ids[0]:
            fields["trace_id"], fields["span_id"] = trace_ids
        if settings.LOG_CONTENT and isinstance(data.get("prompt"), str):
            fields["prompt"] = data["prompt"][:_PROMPT_LOG_CHARS]
        fields = {key: value for key, value in fields.items() if value is not None}
        level = logging.WARNING if response.status_code >= 500 else logging.INFO
        access_logger.log(
            level, "%s %s %s %.0fms", request.method, request.path, response.status_code, latency_ms, extra=fields
        )
    except Exception:  # an access line must never break a response
        access_logger.exception("could not write the access line")


class MetricsMiddleware:
    """Answers ``/metrics`` before host validation (CommonMiddleware): Prometheus scrapes a web
    process by its service name or address, which ``ALLOWED_HOSTS`` need not list.
    ``METRICS_ALLOWED_IPS`` decides who may read it.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if request.path_info == "/metrics":
            from knowledge.observability.views import metrics

            return metrics(request)
        return self.get_response(request)
