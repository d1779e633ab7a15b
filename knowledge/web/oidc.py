"""OpenID Connect sign-in pages: /oidc/authenticate/ sends the person to the provider, /oidc/callback/ (the redirect
URI registered at the provider) signs them in; and the login page, which offers "Sign in with <provider>".

Both answer 404 while ``OIDC_ISSUER_URL`` is empty. A sign-in that fails (the provider down or refusing, the
person cancelling, an answer this browser did not ask for) ends on the login page with a sentence saying why,
and is recorded once as a failed sign-in (``user_login_failed``); the details go to the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace as dataclass_replace
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from csp.middleware import CSPMiddleware, PolicyParts
from django.conf import settings
from django.contrib import auth, messages
from django.contrib.auth import BACKEND_SESSION_KEY
from django.contrib.auth.signals import user_login_failed
from django.contrib.auth.views import LoginView, LogoutView
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase, HttpResponseRedirect
from django.shortcuts import resolve_url
from django.urls import path, reverse
from django.utils.translation import gettext as _
from django.views.generic import View
from mozilla_django_oidc.views import OIDCAuthenticationRequestView

from knowledge.services.directory_oidc import (
    OIDCSignInError,
    oidc_provider,
    oidc_setting,
    oidc_sign_out_origin,
    oidc_sign_out_url,
)

log = logging.getLogger(__name__)


def _reason_message(reason: str) -> str:
    provider = settings.OIDC_PROVIDER_NAME
    messages_by_reason = {
        "unavailable": _("Sign-in with %(provider)s is not available right now. Try again in a few minutes."),
        "cancelled": _("The sign-in with %(provider)s was cancelled or refused."),
        "expired": _("This sign-in took too long or was started in another browser. Try again."),
        "inactive": _("Your account is disabled. Ask an administrator."),
    }
    default = _("The sign-in with %(provider)s did not succeed. Try again, or ask an administrator.")
    return messages_by_reason.get(reason, default) % {"provider": provider}


def _back_to_login(request: HttpRequest, next_url: str | None) -> HttpResponse:
    query = f"?{urlencode({'next': next_url})}" if next_url else ""
    return HttpResponseRedirect(f"{reverse('login')}{query}")


def _failed(request: HttpRequest, exc: OIDCSignInError, next_url: str | None) -> HttpResponse:
    log.warning("OpenID sign-in failed (%s): %s", exc.reason, exc.message)
    user_login_failed.send(sender=__name__, credentials={"username": exc.username}, request=request)
    messages.error(request, _reason_message(exc.reason))
    return _back_to_login(request, next_url)


def _oidc_on() -> None:
    if not settings.OIDC_ISSUER_URL:
        raise Http404("OpenID Connect sign-in is not configured")


class OIDCSignInView(OIDCAuthenticationRequestView):
    """Send the person to the provider's authorization endpoint (state, nonce and PKCE kept in the session)."""

    get_settings = staticmethod(oidc_setting)

    def __init__(self, **kwargs: Any) -> None:
        # the library reads the endpoint here; it is found by discovery in get(), where a failure can be shown
        View.__init__(self, **kwargs)

    def get(self, request: HttpRequest) -> HttpResponse:
        _oidc_on()
        try:
            provider = oidc_provider()
        except OIDCSignInError as exc:
            log.error("OpenID sign-in cannot start: %s", exc.message)
            messages.error(request, _reason_message(exc.reason))
            return _back_to_login(request, request.GET.get("next"))
        self.OIDC_OP_AUTH_ENDPOINT = provider.authorization_endpoint
        self.OIDC_RP_CLIENT_ID = settings.OIDC_CLIENT_ID
        response: HttpResponse = super().get(request)
        return response


class OIDCCallbackView(View):
    """The provider's answer: the code exchanged (with the PKCE verifier), the person signed in."""

    http_method_names = ["get"]

    def get(self, request: HttpRequest) -> HttpResponse:
        _oidc_on()
        next_url = request.session.get("oidc_login_next")
        state = request.GET.get("state", "")
        # each state is used once, whatever the answer
        states = request.session.get("oidc_states") or {}
        started = states.pop(state, None) if state else None
        if started is not None:
            request.session["oidc_states"] = states
        try:
            if error := request.GET.get("error"):
                detail = request.GET.get("error_description", "")
                reason = "cancelled" if error == "access_denied" else "refused"
                raise OIDCSignInError(reason, f"the provider answered {error}: {detail}")
            if started is None:
                raise OIDCSignInError("expired", "the answer's state is not one this browser's session started")
            issuer = request.GET.get("iss")
            if issuer is not None and issuer != oidc_provider().issuer:  # RFC 9207: an answer of another provider
                raise OIDCSignInError("refused", f"the answer comes from the issuer {issuer!r}")
            user = auth.authenticate(
                request, oidc_nonce=started.get("nonce"), oidc_code_verifier=started.get("code_verifier")
            )
        except OIDCSignInError as exc:
            return _failed(request, exc, next_url)
        if user is None:  # no backend took it (the OpenID backend is not among them): Django has recorded it
            log.warning("OpenID sign-in: no authentication backend accepted the answer")
            messages.error(request, _reason_message("refused"))
            return _back_to_login(request, next_url)
        request.session.pop("oidc_login_next", None)
        auth.login(request, user)
        return HttpResponseRedirect(next_url or resolve_url(settings.LOGIN_REDIRECT_URL))


def _password_sign_in() -> bool:
    return bool(settings.AUTH_LOCAL_LOGIN or settings.LDAP_SERVER_URI)


def admin_sign_in(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """The admin's login page, or the portal's when no password can sign in there (the provider's button is on
    the portal's page only)."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if settings.OIDC_ISSUER_URL and not _password_sign_in():
            return _back_to_login(request, request.GET.get("next") or reverse("admin:index"))
        return view(request, *args, **kwargs)

    return wrapper


class SignInView(LoginView):
    """Django's login page, told which ways of signing in there are: the provider's button (OpenID Connect on)
    and the username and password form (local accounts on, or LDAP)."""

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context: dict[str, Any] = super().get_context_data(**kwargs)
        context["oidc_provider_name"] = settings.OIDC_PROVIDER_NAME if settings.OIDC_ISSUER_URL else ""
        context["password_sign_in"] = _password_sign_in()
        return context


class SignOutView(LogoutView):
    """Django's sign-out; a person who signed in through the provider is then sent to the provider's own sign-out
    (``directory_oidc.oidc_sign_out_url``), which sends them back to the login page."""

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        provider_url = oidc_sign_out_url(
            user_backend=request.session.get(BACKEND_SESSION_KEY, ""),
            return_to=request.build_absolute_uri(resolve_url(settings.LOGOUT_REDIRECT_URL)),
        )
        response: HttpResponse = super().post(request, *args, **kwargs)
        return HttpResponseRedirect(provider_url) if provider_url else response


class PortalCSPMiddleware(CSPMiddleware):
    """django-csp's middleware (``CONTENT_SECURITY_POLICY``), whose ``form-action`` also names the OpenID provider
    while signing out goes on to it: a browser refuses a form's redirect to an origin that directive does not
    name, and the "Sign out" button is a form on every page."""

    def get_policy_parts(
        self, request: HttpRequest, response: HttpResponseBase, report_only: bool = False
    ) -> PolicyParts:
        parts = super().get_policy_parts(request, response, report_only)
        origin = oidc_sign_out_origin()
        if origin:
            update = dict(parts.update or {})
            update["form-action"] = [*_as_list(update.get("form-action")), origin]
            parts = dataclass_replace(parts, update=update)
        return parts


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple | set) else [value]


urlpatterns = [
    path("authenticate/", OIDCSignInView.as_view(), name="oidc-sign-in"),
    path("callback/", OIDCCallbackView.as_view(), name="oidc-callback"),
]
