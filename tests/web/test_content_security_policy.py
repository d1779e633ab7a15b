"""Every page carries a strict Content-Security-Policy; only the API viewers relax it, on their own pages.

The browser tests (test_browser.py) check that the pages, htmx, the admin and the viewers run under it.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.web.support import STRICT_POLICY as STRICT
from tests.web.support import policy_directives

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("path", ["/accounts/login/", "/", "/documents/", "/admin/", "/admin/knowledge/document/"])
def test_pages_carry_a_strict_policy(admin_user_logged_in: Any, path: str) -> None:
    response = admin_user_logged_in.get(path)
    assert response.status_code == 200
    directives = policy_directives(response)
    assert all(directive in directives for directive in STRICT), directives
    assert "unsafe" not in response["Content-Security-Policy"]


@pytest.mark.parametrize("path", ["/swagger/", "/redoc/"])
def test_the_api_viewers_allow_inline_styles_and_nothing_else_more(client: Any, path: str) -> None:
    response = client.get(path)
    assert "fonts.googleapis.com" not in response.content.decode()  # nothing loaded from elsewhere
    directives = policy_directives(response)
    assert "style-src 'self' 'unsafe-inline'" in directives
    assert "script-src 'self'" in directives
    assert "worker-src 'self' blob:" in directives
    assert set(STRICT) - set(directives) == {"style-src 'self'"}


def test_the_swagger_page_loads_its_start_up_script_as_a_file(client: Any) -> None:
    html = client.get("/swagger/").content.decode()
    assert "<script>" not in html and 'src="/swagger/?script="' in html
    script = client.get("/swagger/?script=")
    assert script.status_code == 200 and script["Content-Type"].startswith("application/javascript")
    assert "SwaggerUIBundle(" in script.content.decode()
