"""Fixtures of the web tests: users, documents ingested in this process, and a real Chromium."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.web.support import CHROMIUM, CHROMIUM_ARGS, PASSWORD

# Playwright's sync API runs an event loop in the test thread; Django would then refuse database
# calls from that thread, although nothing here is asynchronous.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture(autouse=True)
def _isolated(portal_dirs: dict[str, Path]) -> dict[str, Path]:
    return portal_dirs


@pytest.fixture
def make_user(django_user_model: Any) -> Callable[..., Any]:
    def make(username: str, *, staff: bool = False, groups: tuple[Any, ...] = ()) -> Any:
        user = django_user_model.objects.create_user(username=username, password=PASSWORD, is_staff=staff)
        if groups:
            user.groups.add(*groups)
        return user

    return make


@pytest.fixture
def ingest() -> Callable[..., Any]:
    """Store a file as a document and ingest it in this process (no worker)."""
    from knowledge.services import documents as document_services

    def run(path: Path, *, collection: Any = None) -> Any:
        with path.open("rb") as handle:
            document = document_services.document_create(
                file=handle, filename=path.name, collection=collection, dispatch=False
            )
        document_services.document_process(document_id=document.pk)
        document.refresh_from_db()
        return document

    return run


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def new_page(browser: Any, live_server: Any) -> Iterator[Callable[..., Any]]:
    """Open a page in a fresh browser context (own cookies) on the live server."""
    contexts: list[Any] = []

    def open_page(*, locale: str = "en-GB", viewport: dict[str, int] | None = None) -> Any:
        context = browser.new_context(
            base_url=live_server.url, locale=locale, viewport=viewport or {"width": 1280, "height": 860}
        )
        context.set_default_timeout(20_000)
        contexts.append(context)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()
