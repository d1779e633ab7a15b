"""Who may read a probe: the caller's address against a list of networks (METRICS_ALLOWED_IPS, READYZ_DETAIL_IPS)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import lru_cache


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
