"""Sign-in forms of the portal and the admin, limited per account and per address (``LOGIN_RATE_LIMIT*``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.utils.translation import ngettext

from knowledge.errors import RateLimitedError
from knowledge.services import sign_in

View = Callable[..., HttpResponse]


class LimitedSignInMixin:
    """Checks the limits before the password: over them the password is not looked at, the form says
    how long to wait (``retry_after``, seconds) and ``sign_in_limited`` answers 429."""

    request: HttpRequest | None
    cleaned_data: dict[str, Any]
    retry_after: int | None = None

    def clean(self) -> dict[str, Any]:
        username, password = self.cleaned_data.get("username"), self.cleaned_data.get("password")
        if not username or not password or self.request is None:  # nothing is checked without both
            return super().clean()  # type: ignore[misc]
        try:
            sign_in.signin_check(request=self.request, username=username)
        except RateLimitedError as exc:
            self.retry_after = exc.retry_after
            minutes = math.ceil(exc.retry_after / 60)
            raise ValidationError(
                ngettext(
                    "Too many sign-in attempts. Try again in %(minutes)d minute.",
                    "Too many sign-in attempts. Try again in %(minutes)d minutes.",
                    minutes,
                ),
                code="too_many_attempts",
                params={"minutes": minutes},
            ) from exc
        try:
            cleaned: dict[str, Any] = super().clean()  # type: ignore[misc]
        except ValidationError:
            sign_in.signin_failed(request=self.request, username=username)
            raise
        return cleaned


class SignInForm(LimitedSignInMixin, AuthenticationForm):
    """The portal's sign-in form."""


class AdminSignInForm(LimitedSignInMixin, AdminAuthenticationForm):
    """The admin's sign-in form."""


def sign_in_limited(view: View) -> View:
    """A refused sign-in (over the limits) is answered 429 with ``Retry-After``, the form showing why."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = view(request, *args, **kwargs)
        form = (getattr(response, "context_data", None) or {}).get("form")
        retry_after = getattr(form, "retry_after", None)
        if retry_after:
            response.status_code = 429
            response["Retry-After"] = str(retry_after)
        return response

    return wrapper
