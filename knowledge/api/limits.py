"""Per-caller rate limits on the API and the web chat's questions (django-ratelimit), set by ``API_RATE_LIMIT``
or, for one user, in the admin (``UserLimits``)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django_ratelimit.core import get_usage
from rest_framework.request import Request
from rest_framework.views import APIView

from knowledge.errors import RateLimitedError
from knowledge.models import ApiKey
from knowledge.services.usage import user_rate_limit


def _caller(group: str, request: Any) -> str:
    # Per key for programs, per user for sessions, per address for anonymous callers.
    auth = getattr(request, "auth", None)
    if isinstance(auth, ApiKey):
        return f"key:{auth.pk}"
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return f"user:{user.pk}"
    return f"ip:{request.META.get('REMOTE_ADDR', '')}"


def _owner(request: Any) -> int | None:
    auth = getattr(request, "auth", None)
    if isinstance(auth, ApiKey):
        return auth.user_id
    user = getattr(request, "user", None)
    return user.pk if user is not None and user.is_authenticated else None


def rate_limit_check(request: Request | HttpRequest) -> None:
    """Count this request against its caller; ``RateLimitedError`` (429, Retry-After) over the limit.

    API calls and the web chat's questions (a page's ``HttpRequest``) share one budget per user. The rate is
    the user's own when the admin set one (for each of their keys and their session), else ``API_RATE_LIMIT``.
    """
    django_request = request._request if isinstance(request, Request) else request
    owner = _owner(request)
    rate = user_rate_limit(owner) if owner is not None else settings.API_RATE_LIMIT
    usage = get_usage(
        django_request, group="api", key=lambda g, r: _caller(g, request), rate=lambda g, r: rate, increment=True
    )
    if usage is not None and usage["should_limit"]:
        wait = max(1, usage["time_left"])
        raise RateLimitedError(f"Too many requests: the limit is {rate}. Try again in {wait} s.", retry_after=wait)


class LimitedApiView(APIView):
    """An API view whose calls count against the caller's rate limit (after authentication)."""

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        rate_limit_check(request)
