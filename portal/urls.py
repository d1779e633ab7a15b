"""Top-level URL configuration."""

from __future__ import annotations

from csp.decorators import csp_update
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerSplitView

from knowledge.api import urls as api_urls
from knowledge.observability import views as observability
from knowledge.web import health, oidc
from knowledge.web.sign_in import AdminSignInForm, SignInForm, sign_in_limited

# The API viewers set inline styles (Swagger UI's React, ReDoc's styled-components) and ReDoc searches in a
# worker made from a blob: the Content-Security-Policy allows that on these two pages only. Their scripts stay
# 'self' (the split Swagger view serves its start-up script as a file).
_api_viewer_policy = csp_update({"style-src": ["'unsafe-inline'"], "worker-src": ["'self'", "blob:"]})

admin.site.site_header = "Knowledge Portal"
admin.site.site_title = "Knowledge Portal"
admin.site.login_form = AdminSignInForm

# a path under /api/ that no route matches is answered in JSON like every other API error
handler404 = "knowledge.api.errors.page_not_found"

urlpatterns = [
    # Both sign-in pages are limited per account and per address (LOGIN_RATE_LIMIT, LOGIN_RATE_LIMIT_IP).
    path("admin/login/", oidc.admin_sign_in(sign_in_limited(admin.site.login))),
    path("admin/", admin.site.urls),
    path(
        "accounts/login/",
        sign_in_limited(oidc.SignInView.as_view(authentication_form=SignInForm)),
        name="login",
    ),
    path("accounts/logout/", oidc.SignOutView.as_view(), name="logout"),
    # OpenID Connect sign-in (404 while OIDC_ISSUER_URL is empty); /oidc/callback/ is the redirect URI
    path("oidc/", include(oidc.urlpatterns)),
    path("api/v1/", include(api_urls.v1)),
    path("api/", include(api_urls.aliases)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("swagger/", _api_viewer_policy(SpectacularSwaggerSplitView.as_view(url_name="schema")), name="swagger-ui"),
    path("redoc/", _api_viewer_policy(SpectacularRedocView.as_view(url_name="schema")), name="redoc"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", observability.metrics, name="metrics"),
    path("i18n/", include("django.conf.urls.i18n")),
    path("", include("knowledge.web.urls")),
]
