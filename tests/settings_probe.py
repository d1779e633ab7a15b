"""Read the settings as a fresh process started with a given environment would see them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: the variables a probe does not inherit from the test run, so that only the defaults and ``extra`` count
CLEARED_PREFIXES = (
    "DJANGO_",
    "DATABASE_",
    "CELERY_",
    "RAG_",
    "MAX_",
    "INDEX_",
    "LLM_",
    "MEDIA_",
    "METRICS_",
    "LOG_",
    "OTEL_",
    "PROMETHEUS_",
    "TRACES_",
)


def settings_probe(tmp_path: Path, extra: Mapping[str, str], code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (with ``os`` and the settings as ``s``) in a new process whose environment adds ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(CLEARED_PREFIXES)}
    env.update({"VAR_DIR": str(tmp_path / "var"), "DJANGO_SETTINGS_MODULE": "portal.settings", **extra})
    return subprocess.run(
        [sys.executable, "-c", f"import os, django; django.setup(); from django.conf import settings as s; {code}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
