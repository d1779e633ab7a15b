"""Helpers of the browser tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
PASSWORD = "pw-Reader-123"
#: set to a folder to save screenshots of the main pages there (see scripts/screenshots.py)
SCREENSHOTS_ENV = "KP_SCREENSHOTS_DIR"


def sign_in(page: Any, username: str, password: str = PASSWORD, *, next_url: str = "/") -> None:
    """Sign in through the login page, as a person would (the anonymous visitor is sent there first)."""
    page.goto(next_url)
    page.wait_for_url("**/accounts/login/**")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("form.stack button[type=submit]")
    page.wait_for_url(lambda url: "/accounts/login/" not in url)


def screenshot(page: Any, name: str, *, full_page: bool = False, phone: bool = False, top: Any = None) -> None:
    """Save a PNG of the page when KP_SCREENSHOTS_DIR is set (documentation), else do nothing.

    ``phone`` takes it at a phone's width (390 px) and puts the desktop size back afterwards;
    ``top`` (a locator) is scrolled to the top of the window first.
    """
    folder = os.environ.get(SCREENSHOTS_ENV)
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    if phone:
        page.set_viewport_size({"width": 390, "height": 844})
    if top is not None:
        top.evaluate("element => element.scrollIntoView({block: 'start'})")
    page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=full_page)
    if phone:
        page.set_viewport_size(size)


#: the directives every page's Content-Security-Policy must carry (the API viewers relax only style and workers)
STRICT_POLICY = [
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
]


def policy_directives(response: Any) -> list[str]:
    """The directives of a response's Content-Security-Policy, each as written ("form-action 'self'"), in the
    header's order (django-csp gives them in no fixed order)."""
    return [part.strip() for part in response["Content-Security-Policy"].split(";") if part.strip()]
