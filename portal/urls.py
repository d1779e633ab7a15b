"""Top-level URL configuration."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from knowledge.api import urls as api_urls
from knowledge.observability import views as observability
from knowledge.web import health
from knowledge.web.sign_in import AdminSignInForm, SignInForm, sign_in_limited

admin.site.site_header = "Knowledge Portal"
admin.site.site_title = "Knowledge Portal"
admin.site.login_form = AdminSignInForm

urlpatterns = [
    # Both sign-in pages are limited per account and per address (LOGIN_RATE_LIMIT, LOGIN_RATE_LIMIT_IP).
    path("admin/login/", sign_in_limited(admin.site.login)),
    path("admin/", admin.site.urls),
    path(
        "accounts/login/",
        sign_in_limited(auth_views.LoginView.as_view(authentication_form=SignInForm)),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/v1/", include(api_urls.v1)),
    path("api/", include(api_urls.aliases)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("swagger/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", observability.metrics, name="metrics"),
    path("i18n/", include("django.conf.urls.i18n")),
    path("", include("knowledge.web.urls")),
]
