"""Liveness and readiness probes for orchestrators and compose health checks."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from knowledge.observability.networks import address_allowed
from knowledge.selectors import readiness
from knowledge.services import warmup


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """The process is alive and serving requests."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Database, broker, index and model are usable and this process's warm-up is not running: 200, else 503.

    The status alone for anonymous callers; what each check found (and what is wrong) for staff
    sessions and the addresses of ``READYZ_DETAIL_IPS``. Each check catches its own errors, so an
    unreachable database is a 503 with the reason, not a 500. The model check never loads the model
    (see ``selectors._check_model``).
    """
    checks = {**readiness(), "warmup": warmup.readiness_check()}
    ready = all(check["ok"] for check in checks.values())
    body: dict[str, Any] = {"status": "ready" if ready else "not ready"}
    if _may_see_details(request):
        body["checks"] = checks
    return JsonResponse(body, status=200 if ready else 503)


def _may_see_details(request: HttpRequest) -> bool:
    if address_allowed(request.META.get("REMOTE_ADDR", ""), settings.READYZ_DETAIL_IPS):
        return True
    try:  # the session lives in the database, which may be the thing that is down
        return bool(request.user.is_authenticated and request.user.is_staff)
    except Exception:
        return False
