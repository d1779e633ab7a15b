"""``GET /metrics``: Prometheus's text format, for the addresses of ``METRICS_ALLOWED_IPS``."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import lru_cache

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from knowledge.observability import metrics as portal_metrics


@lru_cache(maxsize=8)
def _networks(allowed: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(item, strict=False) for item in allowed)


def address_allowed(address: str, allowed: Sequence[str]) -> bool:
    """Whether ``address`` is in one of the ``allowed`` networks; an empty list allows nobody."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in _networks(tuple(allowed)))


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """The portal's metrics. The caller is the connection's address (REMOTE_ADDR), never a forwarded one."""
    if not address_allowed(request.META.get("REMOTE_ADDR", ""), settings.METRICS_ALLOWED_IPS):
        return HttpResponseForbidden("Metrics are not available from this address.\n", content_type="text/plain")
    body, content_type = portal_metrics.render()
    return HttpResponse(body, content_type=content_type)
