"""``GET /metrics``: Prometheus's text format, for the addresses of ``METRICS_ALLOWED_IPS``."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from knowledge.observability import metrics as portal_metrics
from knowledge.observability.networks import address_allowed


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """The portal's metrics. The caller is the connection's address (REMOTE_ADDR), never a forwarded one."""
    if not address_allowed(request.META.get("REMOTE_ADDR", ""), settings.METRICS_ALLOWED_IPS):
        return HttpResponseForbidden("Metrics are not available from this address.\n", content_type="text/plain")
    body, content_type = portal_metrics.render()
    return HttpResponse(body, content_type=content_type)
