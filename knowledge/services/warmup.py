"""Warm-up: load the models and run each answer path once, before the process takes traffic.

Without it the first extractive answer of a fresh process waits for the embedder and the search store
(seconds), the first generated one for the language model as well (tens of seconds). ``portal/wsgi.py``,
``portal/asgi.py`` and each Celery pool process (``worker_process_init``) call :func:`start_in_background`;
``/readyz`` answers 503 while it runs (:func:`readiness_check`). A warm-up that fails is logged and counts
as done: every engine still loads on first use, so the process must not stay out of service for it.

States: ``off`` (never started: tests, management commands, runserver, ``RAG_WARMUP=false``) → ``warming``
→ ``ready`` or ``failed``. A forked child starts ``off`` again (its parent's engines are not its own,
see :mod:`knowledge.services.engines`). Importing this module loads nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)

OFF = "off"
WARMING = "warming"
READY = "ready"
FAILED = "failed"

#: what the warm-up asks: any question runs the whole path (an empty store, or no collection, too)
_QUESTION = "What do the documents say?"
_PROMPT = "Hello"

#: a named step of the warm-up: what it loads or runs (its result is not used)
Step = tuple[str, Callable[[], object]]


@dataclass(frozen=True)
class _Progress:
    state: str = OFF
    started: float = 0.0
    seconds: float = 0.0
    error: str = ""


_lock = threading.Lock()
_progress = _Progress()
_started = False
#: bumped by :func:`reset`: a warm-up of an earlier generation no longer writes its result
_generation = 0


def _forget_in_child() -> None:
    global _lock, _progress, _started, _generation
    _lock = threading.Lock()  # the parent's may have been held by its warm-up thread, which is not here
    _progress = _Progress()
    _started = False
    _generation += 1


# a forked child (a Celery pool process, the parsing sandbox) has not warmed up: its engines start empty
os.register_at_fork(after_in_child=_forget_in_child)


# --- the steps ---------------------------------------------------------------------------------------


def _build_searcher() -> None:
    from knowledge.services import engines

    engines.get_searcher()


def _answer_extractive() -> None:
    """An extractive answer over every collection, as the API runs it; it writes nothing to the database."""
    from knowledge.models import Collection
    from knowledge.services import answering, engines

    collection_ids = list(Collection.objects.values_list("pk", flat=True))
    answering.answer_question(
        question=_QUESTION, collection_ids=collection_ids, top_k=settings.RAG_TOP_K, mode=answering.EXTRACTIVE
    )
    # an empty store (or no collection) searches nothing: embedding the question loads the model all the same
    engines.get_searcher().embedder.embed_query(_QUESTION)


def _load_companions() -> None:
    """Each companion model reads a question: the extractive step asks an English one, which loads the model
    of English only, and a French question would otherwise wait for its own model on first use."""
    from ingestion.embedding import CompanionEmbedder
    from knowledge.services import engines

    embedder = engines.get_searcher().embedder
    if isinstance(embedder, CompanionEmbedder):
        for index in range(len(embedder.models)):
            embedder.companion_model(index).embed_query(_QUESTION)


def _load_llm() -> None:
    from knowledge.services import engines

    engines.get_llm().load()


def _generate() -> None:
    from knowledge.services import engines

    engines.get_llm().generate(_PROMPT, max_tokens=1, temperature=0)


def default_steps() -> list[Step]:
    """The searcher, an extractive answer, each companion model, then the language model and one generated token.

    The model is always warmed: ``mode: "generative"`` and ``/api/v1/generate/`` are accepted whatever
    ``RAG_ANSWER_MODE`` says.
    """
    return [
        ("searcher", _build_searcher),
        ("extractive", _answer_extractive),
        ("companions", _load_companions),
        ("llm", _load_llm),
        ("generate", _generate),
    ]


# --- running it --------------------------------------------------------------------------------------


def _shown(exc: Exception) -> str:
    """What /readyz may show of ``exc``: a domain error's words; of any other, its type alone (its text may
    hold a URL with its credentials)."""
    from ingestion.errors import IngestionError
    from knowledge.errors import KnowledgeError
    from llm.errors import LLMError

    if isinstance(exc, LLMError | IngestionError | KnowledgeError):
        return str(exc).strip() or type(exc).__name__
    return type(exc).__name__


def run(*, steps: Sequence[Step] | None = None) -> bool:
    """Warm up now, in this thread: each step in turn (``steps``; None: :func:`default_steps`), timed, then
    one log line with the seconds of each.

    True when every step ran; at the first failure the state becomes ``failed`` with the reason (a warning)
    and the later steps are left to load on first use. Either way the process counts as ready.
    """
    global _progress
    with _lock:
        generation = _generation
        _progress = _Progress(state=WARMING, started=time.monotonic())
    started = time.monotonic()
    timings: list[str] = []
    error = ""
    for name, step in default_steps() if steps is None else steps:
        step_started = time.monotonic()
        try:
            step()
        except Exception as exc:
            error = f"{name}: {_shown(exc)}"[:200]
            logger.warning(
                "warm-up failed after %.1f s (%s; %s); what is left loads on first use",
                time.monotonic() - started,
                ", ".join(timings) or "no step done",
                error,
                exc_info=_shown(exc) == type(exc).__name__,
            )
            break
        timings.append(f"{name} {time.monotonic() - step_started:.1f} s")
    seconds = time.monotonic() - started
    with _lock:
        if generation == _generation:
            _progress = replace(_progress, state=FAILED if error else READY, seconds=seconds, error=error)
    if not error:
        logger.info("warm-up done in %.1f s (%s)", seconds, ", ".join(timings) or "no step")
    return not error


def _runserver() -> bool:
    # runserver imports the WSGI module too (WSGI_APPLICATION) and restarts at each change of the code
    return sys.argv[1:2] == ["runserver"]


def start_in_background(*, steps: Sequence[Step] | None = None) -> bool:
    """Start the warm-up in a daemon thread, once per process, when ``RAG_WARMUP`` is on (not under runserver).

    True when this call started it. ``steps``: see :func:`run`.
    """
    global _started, _progress
    if not settings.RAG_WARMUP or _runserver():
        return False
    with _lock:
        if _started:
            return False
        _started = True
        # warming from now on, not from when the thread first runs: /readyz must not say "off" in between
        _progress = _Progress(state=WARMING, started=time.monotonic())
    threading.Thread(target=_run_in_thread, args=(steps,), name="warmup", daemon=True).start()
    return True


def _run_in_thread(steps: Sequence[Step] | None) -> None:
    from django.db import connections

    try:
        run(steps=steps)
    finally:
        connections.close_all()  # this thread's own connections


def readiness_check() -> dict[str, Any]:
    """The warm-up as ``/readyz`` shows it: not ok only while it runs."""
    with _lock:
        progress = _progress
    if progress.state == OFF:
        return {"ok": True, "state": OFF}
    if progress.state == WARMING:
        return {"ok": False, "state": WARMING, "seconds": round(time.monotonic() - progress.started, 1)}
    check: dict[str, Any] = {"ok": True, "state": progress.state, "seconds": round(progress.seconds, 1)}
    if progress.error:
        check["error"] = progress.error
    return check


def reset() -> None:
    """Back to ``off``, as if never started (tests); a warm-up still running no longer records its result."""
    global _progress, _started, _generation
    with _lock:
        _progress = _Progress()
        _started = False
        _generation += 1
