#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from django.core.management import execute_from_command_line

    _trace_commands()
    execute_from_command_line(sys.argv)


def _trace_commands() -> None:
    """With a trace exporter configured, trace what a command does (runserver, ingest --sync)."""
    if os.environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower() in ("", "none"):
        return  # the default: Django is set up by the command itself, nothing is traced
    try:
        import django

        django.setup()
    except Exception:
        return  # execute_from_command_line reports the problem
    from knowledge.observability.startup import command_started

    command_started()


if __name__ == "__main__":
    main()
