"""What refuses a configuration that cannot hold the ``postgres`` search store, with a message saying what to do.

- ``postgres_store_problem(using)``: the reason the database cannot hold it, or None (reads the catalogue).
- ``require_postgres_store(using)``: the same, raised as ``ImproperlyConfigured``.
- ``check_search_store``: a Django system check (tag ``database``: ``manage.py check --database default`` and
  ``migrate`` run it) that reports the problem when ``RAG_SEARCH_BACKEND=postgres``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.core.checks import CheckMessage, Error
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections

from . import schema

__all__ = ["PGVECTOR_IMAGE", "check_search_store", "postgres_store_problem", "require_postgres_store"]

#: the container image docker-compose.yml runs: PostgreSQL 16 with pgvector
PGVECTOR_IMAGE = "pgvector/pgvector:pg16"


def postgres_store_problem(using: str = "default") -> str | None:
    """Why the database ``using`` cannot hold the ``postgres`` search store, or None when it can."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return (
            f"RAG_SEARCH_BACKEND=postgres keeps the search store in the PostgreSQL database that DATABASE_URL names, "
            f"but DATABASE_URL is {connection.vendor}: set DATABASE_URL=postgres://... (a server with the pgvector "
            f"extension, e.g. the {PGVECTOR_IMAGE} image) or RAG_SEARCH_BACKEND=faiss"
        )
    try:
        available = schema.pgvector_available(connection)
    except DatabaseError as exc:
        return f"RAG_SEARCH_BACKEND=postgres: the database of DATABASE_URL cannot be read ({exc})"
    if not available:
        return (
            "RAG_SEARCH_BACKEND=postgres needs the pgvector extension, and the PostgreSQL server of DATABASE_URL "
            f"does not have it: run a server with pgvector (the {PGVECTOR_IMAGE} image, or the postgresql-NN-pgvector "
            "package), or set RAG_SEARCH_BACKEND=faiss"
        )
    return None


def require_postgres_store(using: str = "default") -> None:
    """Raise ``ImproperlyConfigured`` when the database ``using`` cannot hold the ``postgres`` search store."""
    problem = postgres_store_problem(using)
    if problem:
        raise ImproperlyConfigured(problem)


def check_search_store(
    app_configs: Sequence[Any] | None = None, databases: Sequence[str] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """System check: with ``RAG_SEARCH_BACKEND=postgres``, the default database can hold the search store.

    Register it with the ``database`` tag (it reads the database, so only when a command asks for that)."""
    from django.conf import settings

    if getattr(settings, "RAG_SEARCH_BACKEND", "faiss") != "postgres" or "default" not in (databases or ()):
        return []
    problem = postgres_store_problem("default")
    return [Error(problem, id="knowledge.E001")] if problem else []
