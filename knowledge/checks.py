"""A database left part-way through the migrations that ``0001_schema`` replaces is refused, with what to do.

``knowledge/migrations/0001_schema.py`` replaces 0001_initial to 0011_search_recent_postings, whose files are
gone. Django then treats a database that applied some of them but not all as having no ``knowledge``
migration at all, and would leave it as it is, missing tables and columns. This system check (tag
``database``: ``migrate`` and ``manage.py check --database default`` run it) stops such a ``migrate`` first.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from django.core.checks import CheckMessage, Error
from django.db import DatabaseError, connections

__all__ = ["LAST_RELEASE_WITH_STEPS", "check_migration_history", "replaced"]

#: the last commit whose migrations are the replaced ones, file by file
LAST_RELEASE_WITH_STEPS = "6424d03"


def replaced() -> list[str]:
    """The migrations ``0001_schema`` replaces, in order (read from its ``replaces``)."""
    schema = importlib.import_module("knowledge.migrations.0001_schema")
    return [name for _, name in schema.Migration.replaces]


def check_migration_history(databases: Sequence[str] | None = None, **kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    for alias in databases or ():
        applied = _applied(alias)
        if applied is None or "0001_schema" in applied:
            continue
        steps = replaced()
        done = [name for name in steps if name in applied]
        if done and len(done) < len(steps):
            errors.append(
                Error(
                    f"The database '{alias}' stopped part-way through the knowledge migrations (its last one is "
                    f"{done[-1]}); this release has them as one migration, 0001_schema, which cannot finish them.",
                    hint=(
                        f"Migrate it with the release before (git checkout {LAST_RELEASE_WITH_STEPS}; "
                        f"manage.py migrate), then come back to this one: its migrate then has nothing to do."
                    ),
                    id="knowledge.E002",
                )
            )
    return errors


def _applied(alias: str) -> set[str] | None:
    """The knowledge migrations recorded as applied, or None when the database has no record yet."""
    connection = connections[alias]
    try:
        if "django_migrations" not in connection.introspection.table_names():
            return None
        with connection.cursor() as cursor:
            cursor.execute("SELECT name FROM django_migrations WHERE app = %s", ["knowledge"])
            return {name for (name,) in cursor.fetchall()}
    except DatabaseError:  # the database cannot be read: migrate says so itself
        return None
