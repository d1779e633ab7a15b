"""Locust users asking ``POST /api/v1/rag/`` questions; ``bench/load_answers.py`` runs them headless.

It can also be pointed at a running portal (best with the files of ``load_answers.DEFAULT_FILES`` ingested):

    KP_API_KEY=kp_... .venv/bin/locust -f bench/locustfile_answers.py --host http://127.0.0.1:8000

Environment: ``KP_API_KEY`` (required), ``KP_BENCH_MODE`` (``extractive``, the default, or ``generative``),
``KP_BENCH_MAX_TOKENS`` (generative answers, default 32), ``KP_BENCH_OUT`` (a file where every request's
outcome is written as JSON when locust quits: start, seconds, status, and the answer's ``meta``).
Each user sends its next question as soon as the previous answer arrives (no think time).
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any

from load_answers import QUESTIONS  # locust puts this file's folder on sys.path
from locust import HttpUser, constant, events, task

MODE = os.environ.get("KP_BENCH_MODE", "extractive")
MAX_TOKENS = int(os.environ.get("KP_BENCH_MAX_TOKENS", "32"))
RECORDS: list[dict[str, Any]] = []


class AnswerUser(HttpUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        self.client.headers["Authorization"] = f"Token {os.environ['KP_API_KEY']}"

    @task
    def ask(self) -> None:
        body: dict[str, Any] = {"prompt": random.choice(QUESTIONS), "mode": MODE, "top_k": 5, "user_id": "load-test"}
        if MODE == "generative":
            body.update(max_tokens=MAX_TOKENS, temperature=0)
        started = time.time()
        tick = time.perf_counter()
        with self.client.post("/api/v1/rag/", json=body, name=f"rag {MODE}", catch_response=True) as response:
            record: dict[str, Any] = {
                "start": started,
                "seconds": time.perf_counter() - tick,
                "status": response.status_code,
            }
            if response.status_code == 200:
                payload = response.json()
                record["meta"] = payload["meta"]
                record["sources"] = len(payload.get("sources", []))
            else:
                record["error"] = f"{response.status_code}: {(response.text or str(response.error))[:200]}"
                response.failure(record["error"])
        RECORDS.append(record)


@events.quitting.add_listener
def _write_records(**_: Any) -> None:
    path = os.environ.get("KP_BENCH_OUT")
    if path:
        with open(path, "w", encoding="utf-8") as file:
            json.dump(RECORDS, file)
