"""Liveness and readiness probes for orchestrators and compose health checks."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from knowledge.selectors import readiness


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """The process is alive and serving requests."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Database, broker, index and model are usable: 200, else 503 with what is wrong.

    Each check catches its own errors, so an unreachable database is a 503 with the reason, not a
    500. The model check never loads the model (see ``selectors._check_model``).
    """
    checks = readiness()
    ready = all(check["ok"] for check in checks.values())
    return JsonResponse({"status": "ready" if ready else "not ready", "checks": checks}, status=200 if ready else 503)
