"""OpenID Connect sign-in (Keycloak, Entra ID, Google Workspace, Okta, Authentik...) through mozilla-django-oidc.

The provider is found by discovery (``<OIDC_ISSUER_URL>/.well-known/openid-configuration``), fetched on first use
and kept an hour per process; nothing is asked of it when Django loads the backend for a password sign-in. The
code flow uses PKCE (S256) and a nonce; the id token must be signed RS256 by a key of the provider's JWKS, name
the provider as issuer and this portal as audience.

A person is found by their ``sub`` (``DirectoryAccount(source="oidc", subject=sub)``), never by email, so a
changed address or username keeps the same portal account. A new person gets the username ``preferred_username``
(else their email, else the ``sub``), with ``-2``, ``-3``... when a local account already has it: a provider is
never trusted to take over a local account. Their groups (the ``OIDC_GROUPS_CLAIM`` claim of the userinfo answer
or of the id token) are mirrored by ``directory_sync`` at every sign-in, and the refresh token is kept so that
``oidc_groups_read`` can read them again when one of their API keys is used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import jwt
import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.cache import cache
from django.core.exceptions import SuspiciousOperation
from django.db import IntegrityError, transaction
from django.urls import reverse
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.utils import import_from_settings

from knowledge.errors import KnowledgeError
from knowledge.models import DirectoryAccount
from knowledge.services.directory import DirectoryUnavailable, directory_sync

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser
    from django.http import HttpRequest

log = logging.getLogger(__name__)

DISCOVERY_TTL_S = 3600
REFRESH_LOCK_S = 60
#: mozilla-django-oidc's names for what the portal's own variables hold (read when used, so tests may change them)
_PORTAL_NAMES = {
    "OIDC_RP_CLIENT_ID": "OIDC_CLIENT_ID",
    "OIDC_RP_CLIENT_SECRET": "OIDC_CLIENT_SECRET",
    "OIDC_RP_SCOPES": "OIDC_SCOPES",
}


class OIDCSignInError(KnowledgeError):
    """An OpenID sign-in that did not happen; ``reason`` says why, for the person (the message is for the log).

    ``unavailable``: the provider cannot be reached or is not set up as configured; ``cancelled``: the person
    (or the provider's policy) said no; ``expired``: the answer matches no sign-in this browser started;
    ``refused``: the provider's answer is not acceptable (a code or token refused, a bad signature...);
    ``inactive``: the portal account is disabled.
    """

    code = "oidc_sign_in_failed"
    http_status = 401

    def __init__(self, reason: str, message: str, *, username: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.username = username


@dataclass(frozen=True)
class OIDCProvider:
    """The provider's endpoints, from its discovery document."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str = ""
    end_session_endpoint: str = ""


_discovered: dict[str, tuple[float, OIDCProvider]] = {}


def oidc_setting(name: str, *default: Any) -> Any:
    """A mozilla-django-oidc setting: the portal's variable where it has one, else the library's own setting."""
    return import_from_settings(_PORTAL_NAMES.get(name, name), *default)


def oidc_provider() -> OIDCProvider:
    """The provider of ``OIDC_ISSUER_URL``, by discovery (kept ``DISCOVERY_TTL_S`` per process).

    Raises ``OIDCSignInError("unavailable")`` when it cannot be fetched or names another issuer.
    """
    issuer = settings.OIDC_ISSUER_URL
    cached = _discovered.get(issuer)
    if cached is not None and time.monotonic() - cached[0] < DISCOVERY_TTL_S:
        return cached[1]
    url = f"{issuer}/.well-known/openid-configuration"
    with _asking("discovery"):
        response = requests.get(
            url, timeout=oidc_setting("OIDC_TIMEOUT", 10), verify=oidc_setting("OIDC_VERIFY_SSL", True)
        )
        response.raise_for_status()
        document = response.json()
    if not isinstance(document, dict):
        raise OIDCSignInError("unavailable", f"{url} is not a discovery document")
    # The issuer must be the one configured (a trailing "/" aside: OIDC_ISSUER_URL is kept without it).
    if str(document.get("issuer", "")).rstrip("/") != issuer:
        raise OIDCSignInError(
            "unavailable", f"{url} names the issuer {document.get('issuer')!r}, not OIDC_ISSUER_URL {issuer!r}"
        )
    missing = [key for key in ("authorization_endpoint", "token_endpoint", "jwks_uri") if not document.get(key)]
    if missing:
        raise OIDCSignInError("unavailable", f"{url} gives no {', '.join(missing)}")
    provider = OIDCProvider(
        issuer=document["issuer"],
        authorization_endpoint=document["authorization_endpoint"],
        token_endpoint=document["token_endpoint"],
        jwks_uri=document["jwks_uri"],
        userinfo_endpoint=document.get("userinfo_endpoint") or "",
        end_session_endpoint=document.get("end_session_endpoint") or "",
    )
    _discovered[issuer] = (time.monotonic(), provider)
    return provider


def oidc_sign_out_url(*, user_backend: str, return_to: str) -> str:
    """Where a browser goes after the portal's own sign-out so that the provider's session ends too
    (RP-initiated logout): the provider's ``end_session_endpoint`` with the client id and ``return_to`` (which the
    provider must know as a post-logout redirect URI). "" when the person did not sign in through the provider
    (``user_backend``: the session's authentication backend), ``OIDC_SIGN_OUT`` is off, or the provider has no
    such endpoint or cannot be reached (the portal's sign-out stands alone then)."""
    if not oidc_sign_out_origin() or not user_backend.endswith(".PortalOIDCBackend"):
        return ""
    try:
        endpoint = oidc_provider().end_session_endpoint
    except OIDCSignInError as exc:
        log.warning("Signed out of the portal only: the provider's sign-out is unknown (%s)", exc)
        return ""
    if not endpoint:
        return ""
    query = urlencode({"client_id": settings.OIDC_CLIENT_ID, "post_logout_redirect_uri": return_to})
    return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"


def oidc_sign_out_origin() -> str:
    """The origin a sign-out form's answer may send the browser on to (the provider's, where its
    ``end_session_endpoint`` is), or "" when the portal's sign-out stands alone. Browsers hold that redirect to the
    page's Content-Security-Policy ``form-action``, which must name it."""
    if not settings.OIDC_ISSUER_URL or not settings.OIDC_SIGN_OUT:
        return ""
    issuer = urlsplit(settings.OIDC_ISSUER_URL)
    return f"{issuer.scheme}://{issuer.netloc}"


@contextmanager
def _asking(what: str) -> Iterator[None]:
    """Turn what asking the provider can raise into ``OIDCSignInError``: unreachable or failing (5xx) is
    ``unavailable``, an answer that says no (4xx) or cannot be read is ``refused``."""
    try:
        yield
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        reason = "unavailable" if what == "discovery" or status >= 500 or status == 429 else "refused"
        raise OIDCSignInError(reason, f"{what}: {exc}") from exc
    except requests.RequestException as exc:
        raise OIDCSignInError("unavailable", f"{what}: {exc}") from exc
    except (ValueError, KeyError, TypeError) as exc:  # JSON that is not what the protocol says
        raise OIDCSignInError("refused" if what != "discovery" else "unavailable", f"{what}: {exc!r}") from exc
    except (SuspiciousOperation, jwt.PyJWTError) as exc:  # a bad signature, an expired token, an unusable key
        raise OIDCSignInError("refused", f"{what}: {exc}") from exc


def oidc_groups_of(claims: Mapping[str, Any]) -> list[str]:
    """The groups in ``OIDC_GROUPS_CLAIM`` (a list or one name; a dotted name such as ``realm_access.roles``
    reads a nested claim when there is no claim of that exact name)."""
    name = settings.OIDC_GROUPS_CLAIM
    value: Any = claims.get(name)
    if value is None and "." in name:
        value = claims
        for part in name.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        return []
    return [str(group) for group in value if isinstance(group, str | int) and str(group).strip()]


def _username_for(claims: Mapping[str, Any]) -> str:
    user_model = get_user_model()
    base = str(claims.get("preferred_username") or claims.get("email") or claims["sub"]).strip()[:150]
    username, n = base, 1
    while user_model.objects.filter(username__iexact=username).exists():
        n += 1
        username = f"{base[: 150 - len(str(n)) - 1]}-{n}"
    return username


def _profile(claims: Mapping[str, Any]) -> dict[str, str]:
    return {
        "email": str(claims.get("email") or "")[:254],
        "first_name": str(claims.get("given_name") or "")[:150],
        "last_name": str(claims.get("family_name") or "")[:150],
    }


def oidc_user_sync(*, claims: Mapping[str, Any], refresh_token: str | None) -> AbstractBaseUser:
    """The portal user of the person ``claims`` describe (created at their first sign-in), their name and email
    brought up to date and their groups mirrored; ``OIDCSignInError("inactive")`` when the account is disabled."""
    subject = str(claims.get("sub") or "")
    if not subject:
        raise OIDCSignInError("refused", "the provider gave no subject (sub)")
    for attempt in (1, 2):  # two first sign-ins of one person at once: the second finds the first's account
        try:
            with transaction.atomic():
                return _user_sync(subject, claims, refresh_token)
        except IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _user_sync(subject: str, claims: Mapping[str, Any], refresh_token: str | None) -> AbstractBaseUser:
    account = (
        DirectoryAccount.objects.select_related("user")
        .filter(source=DirectoryAccount.Source.OIDC, subject=subject)
        .first()
    )
    profile = _profile(claims)
    if account is None:
        user = get_user_model().objects.create_user(username=_username_for(claims), **profile)
        log.info("OpenID sign-in: new user %s for subject %s", user, subject)
    else:
        user = account.user
        changed = [field for field, value in profile.items() if value and getattr(user, field) != value]
        for field in changed:
            setattr(user, field, profile[field])
        if changed:
            user.save(update_fields=changed)
    if not user.is_active:
        raise OIDCSignInError("inactive", f"the account {user} is disabled", username=user.get_username())
    directory_sync(
        user,
        source=DirectoryAccount.Source.OIDC,
        subject=subject,
        groups=oidc_groups_of(claims),
        refresh_token=refresh_token,
    )
    return user


class PortalOIDCBackend(OIDCAuthenticationBackend):
    """Signs in the person an OpenID provider vouches for (the callback's code, its PKCE verifier and nonce).

    Any other sign-in (a password) is not its business: it answers None. A failed OpenID sign-in raises
    ``OIDCSignInError``, which the callback view shows and records.
    """

    OIDC_RP_SIGN_ALGO = "RS256"
    OIDC_RP_IDP_SIGN_KEY = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Django loads every backend for every sign-in: the provider is only asked when an OpenID one comes.
        self.UserModel = get_user_model()

    get_settings = staticmethod(oidc_setting)

    @property
    def provider(self) -> OIDCProvider:
        return oidc_provider()

    # the endpoints mozilla-django-oidc reads from its settings, from the provider's discovery document instead
    OIDC_OP_TOKEN_ENDPOINT = property(lambda self: self.provider.token_endpoint)
    OIDC_OP_USER_ENDPOINT = property(lambda self: self.provider.userinfo_endpoint)
    OIDC_OP_JWKS_ENDPOINT = property(lambda self: self.provider.jwks_uri)

    @property
    def OIDC_RP_CLIENT_ID(self) -> str:
        return str(settings.OIDC_CLIENT_ID)

    @property
    def OIDC_RP_CLIENT_SECRET(self) -> str:
        return str(settings.OIDC_CLIENT_SECRET)

    def get_user(self, user_id: Any) -> Any:
        # Django's check (a disabled user's session ends), which the library's get_user leaves out
        return ModelBackend.get_user(self, user_id)

    def authenticate(  # type: ignore[override]
        self,
        request: HttpRequest | None,
        oidc_nonce: str | None = None,
        oidc_code_verifier: str | None = None,
        **kwargs: Any,
    ) -> AbstractBaseUser | None:
        code = request.GET.get("code") if request is not None else None
        if request is None or oidc_nonce is None or not code:
            return None
        self.request = request
        with _asking("token"):
            tokens = self.get_token(
                {
                    "client_id": self.OIDC_RP_CLIENT_ID,
                    "client_secret": self.OIDC_RP_CLIENT_SECRET,
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": request.build_absolute_uri(
                        reverse(self.get_settings("OIDC_AUTHENTICATION_CALLBACK_URL"))
                    ),
                    **({"code_verifier": oidc_code_verifier} if oidc_code_verifier else {}),
                }
            )
        if not tokens.get("id_token"):
            raise OIDCSignInError("refused", "the token answer has no id_token")
        claims = self.claims_read(tokens, nonce=oidc_nonce)
        return oidc_user_sync(claims=claims, refresh_token=tokens.get("refresh_token") or None)

    def claims_read(self, tokens: Mapping[str, Any], *, nonce: str | None = None) -> dict[str, Any]:
        """What the provider says of the person: the verified id token's claims (when the answer has one),
        updated with the userinfo answer (when the provider has the endpoint). ``nonce`` is checked when given
        (a sign-in); a refresh's id token need not repeat it."""
        claims: dict[str, Any] = {}
        if tokens.get("id_token"):
            claims.update(self.id_token_verify(tokens["id_token"], nonce=nonce))
        if self.OIDC_OP_USER_ENDPOINT and tokens.get("access_token"):
            with _asking("userinfo"):
                userinfo = self.get_userinfo(tokens["access_token"], tokens.get("id_token"), claims)
            if not isinstance(userinfo, dict) or (claims and userinfo.get("sub") != claims.get("sub")):
                raise OIDCSignInError("refused", "the userinfo answer is about another subject")
            claims.update(userinfo)
        if not claims:
            raise OIDCSignInError("refused", "the provider said nothing of the person (no id token, no userinfo)")
        return claims

    def id_token_verify(self, token: str, *, nonce: str | None) -> dict[str, Any]:
        """The claims of an id token signed (RS256) by a key of the provider's JWKS, issued by the provider to
        this portal; raises ``OIDCSignInError("refused")`` otherwise."""
        with _asking("id token"):
            payload = self._verify_jws(token, self.retrieve_matching_jwk(token))
        audience = payload.get("aud")
        audiences = [audience] if isinstance(audience, str) else list(audience or [])
        if payload.get("iss") != self.provider.issuer:
            raise OIDCSignInError("refused", f"the id token's issuer is {payload.get('iss')!r}")
        if self.OIDC_RP_CLIENT_ID not in audiences or (
            len(audiences) > 1 and payload.get("azp", self.OIDC_RP_CLIENT_ID) != self.OIDC_RP_CLIENT_ID
        ):
            raise OIDCSignInError("refused", f"the id token is for {audience!r}, not this portal")
        if nonce is not None and payload.get("nonce") != nonce:
            raise OIDCSignInError("refused", "the id token's nonce is not this sign-in's")
        return dict(payload)


def oidc_groups_read(account: DirectoryAccount) -> list[str] | None:
    """A known person's groups read again without them, with their refresh token (``directory_refresh_due``).

    None when the provider refuses the refresh (revoked, expired, the person gone) or there is no refresh token:
    the portal then keeps no group from the directory. A refresh token the provider rotates is kept at once.
    Raises ``DirectoryUnavailable`` when the provider cannot be asked.
    """
    if not account.refresh_token:
        log.warning("OpenID groups of %s not read again: no refresh token (see OIDC_SCOPES)", account.user_id)
        return None
    # One refresh at a time per person: a provider that rotates refresh tokens may take a second use of the same
    # one for a theft and revoke them all. Requests that come meanwhile keep the groups as they are.
    lock = f"oidc-refresh:{account.pk}"
    if not cache.add(lock, True, timeout=REFRESH_LOCK_S):
        raise DirectoryUnavailable("another request is reading them")
    try:
        current = DirectoryAccount.objects.filter(pk=account.pk).values("refresh_token", "synced_at").first()
        if current != {"refresh_token": account.refresh_token, "synced_at": account.synced_at}:
            raise DirectoryUnavailable("another request has just read them")
        return _groups_refreshed(account)
    finally:
        cache.delete(lock)


def _groups_refreshed(account: DirectoryAccount) -> list[str] | None:
    backend = PortalOIDCBackend()
    try:
        with _asking("refresh"):
            tokens = backend.get_token(
                {
                    "client_id": backend.OIDC_RP_CLIENT_ID,
                    "client_secret": backend.OIDC_RP_CLIENT_SECRET,
                    "grant_type": "refresh_token",
                    "refresh_token": account.refresh_token,
                }
            )
        if tokens.get("refresh_token") and tokens["refresh_token"] != account.refresh_token:
            DirectoryAccount.objects.filter(pk=account.pk).update(refresh_token=tokens["refresh_token"])
            account.refresh_token = tokens["refresh_token"]
        claims = backend.claims_read(tokens)
    except OIDCSignInError as exc:
        if exc.reason == "unavailable":
            raise DirectoryUnavailable(exc.message) from exc
        log.info("OpenID groups of %s not read again: %s", account.user_id, exc.message)
        return None
    if claims.get("sub") != account.subject:
        log.warning("OpenID refresh of %s answered for another subject", account.user_id)
        return None
    return oidc_groups_of(claims)
