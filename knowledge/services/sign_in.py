"""Sign-in attempts: failures counted per account and per address (django-ratelimit); past either limit, sign-in waits.

``LOGIN_RATE_LIMIT`` (per account, the username as typed, normalised) and ``LOGIN_RATE_LIMIT_IP`` (per
address; an IPv6 /64 counts as one) are rates like ``5/15m``: that many failures in a window of that length.
Only failures count. Attempts still in flight when the limit is reached are checked, then counted, so a burst
of parallel guesses gets at most the web server's concurrency past the limit. The counters live in the cache
(``CACHE_URL``).
"""

from __future__ import annotations

import unicodedata
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django_ratelimit.core import get_usage

from knowledge.errors import RateLimitedError


def _account(username: str) -> str:
    # "Boss", "boss " and the full-width "ｂｏｓｓ" are one account to an attacker, so one count.
    return unicodedata.normalize("NFKC", username).strip().casefold()


def _usages(request: HttpRequest, username: str, *, increment: bool) -> list[dict[str, Any]]:
    limits = (
        ("sign-in-account", lambda group, req: _account(username), settings.LOGIN_RATE_LIMIT),
        ("sign-in-address", "ip", settings.LOGIN_RATE_LIMIT_IP),
    )
    usages = [get_usage(request, group=group, key=key, rate=rate, increment=increment) for group, key, rate in limits]
    return [usage for usage in usages if usage is not None]


def signin_check(*, request: HttpRequest, username: str) -> None:
    """Raise ``RateLimitedError`` (with the seconds to wait) when the account or the address has had its
    failures for this window; then the password must not be checked."""
    spent = [usage for usage in _usages(request, username, increment=False) if usage["count"] >= usage["limit"]]
    if spent:
        wait = max(1, max(usage["time_left"] for usage in spent))
        raise RateLimitedError(f"Too many sign-in attempts. Try again in {wait} s.", retry_after=wait)


def signin_failed(*, request: HttpRequest, username: str) -> None:
    """Count a failed sign-in against the account and the address."""
    _usages(request, username, increment=True)
