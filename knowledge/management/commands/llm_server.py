"""Run the machine's model process in the foreground (docker-compose's ``llm`` service; ``make run`` needs no command:
the first web process or worker that needs the model starts it)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.core.management.base import BaseCommand, CommandError

from knowledge.services import engines


class Command(BaseCommand):
    help = (
        "Serve the local model (RAG_LLM_* settings) to every web process and worker that uses "
        "RAG_LLM_PROCESS=shared, on the port of RAG_LLM_SERVER."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="address to listen on (a container: 0.0.0.0)")
        parser.add_argument("--port", type=int, default=None, help="port (default: the one of RAG_LLM_SERVER)")

    def handle(self, *args: Any, host: str, port: int | None, **options: Any) -> None:
        from llm.server import DEFAULT_PORT, serve

        config = engines.llm_config()
        if config.backend != "local":
            raise CommandError("RAG_LLM_BACKEND is not local: the model is served elsewhere (RAG_LLM_BASE_URL).")
        serve(config, host=host, port=port or urlsplit(config.server_url).port or DEFAULT_PORT)
