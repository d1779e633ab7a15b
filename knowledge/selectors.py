"""Reads of the knowledge domain (permission filters and status)."""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import connection


def _check_database() -> dict[str, Any]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return {"ok": True}
    except Exception as exc:  # any driver error means "not ready"
        return {"ok": False, "error": str(exc).strip()[:200]}


def _check_broker() -> dict[str, Any]:
    from celery import current_app

    try:
        with current_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return {"ok": True, "url": conn.as_uri()}
    except Exception as exc:
        return {"ok": False, "error": str(exc).strip()[:200]}


def _check_index() -> dict[str, Any]:
    from ingestion.index import read_saved_state

    try:
        state = read_saved_state(settings.INDEX_DIR)
    except Exception as exc:
        return {"ok": False, "error": str(exc).strip()[:200]}
    if state is None:
        return {"ok": True, "vectors": 0, "version": 0, "note": "empty index (no document ingested yet)"}
    return {"ok": True, **state}


def readiness() -> dict[str, dict[str, Any]]:
    """What the readiness probe reports: each dependency with ``ok`` and details."""
    return {"database": _check_database(), "broker": _check_broker(), "index": _check_index()}
