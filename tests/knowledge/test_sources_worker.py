"""A worker killed in the middle of a sync leaves no half-brought item, and the next run completes the sync."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from knowledge import task_dispatch
from knowledge.models import Collection, Document, DocumentVersion, Source, SourceItem, SourceRun
from knowledge.services import sources
from tests.ingestion.sources_servers import Page, Site, serve

pytestmark = [pytest.mark.worker, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PAGES = {
    "/a.html": "Page A: the ferry to Geiranger leaves at nine.",
    "/b.html": "Page B: the Trolltunga hike takes ten hours.",
    "/c.html": "Page C: the Preikestolen trail is closed in winter.",
}


class _Stalling(dict[str, Page]):
    """The site's pages; the sync's download of /c.html (its second request: the crawl made the first) hangs
    until ``release`` is set, so the test can kill the worker right there."""

    def __init__(self) -> None:
        super().__init__()
        self.reached = threading.Event()
        self.release = threading.Event()
        self.asked: dict[str, int] = {}

    def get(self, path: str, default: Any = None) -> Any:
        self.asked[path] = self.asked.get(path, 0) + 1
        if path == "/c.html" and self.asked[path] == 2:
            self.reached.set()
            self.release.wait(60)
        return super().get(path, default)


@pytest.fixture
def site() -> Iterator[Site]:
    pages = _Stalling()
    with serve(Site(pages=pages)) as site:
        links = " ".join(f'<a href="{path}">{path}</a>' for path in PAGES)
        site.html("/", f"<h1>Norway trips</h1><p>All our guides.</p>{links}")
        for path, text in PAGES.items():
            site.html(path, f"<html><body><p>{text}</p></body></html>")
        yield site
        pages.release.set()


def test_a_worker_killed_mid_sync_leaves_no_partial_item_and_the_next_run_completes_it(
    celery_worker_factory: Any, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    pages: _Stalling = site.pages  # type: ignore[assignment]
    collection = Collection.objects.create(slug="trips", name="Trips", is_public=True)
    source = Source.objects.create(name="trips", collection=collection, kind=Source.Kind.WEBSITE, location=site.base)
    worker = celery_worker_factory()
    task_dispatch.source_sync(source_id=source.pk, trigger="api")
    assert pages.reached.wait(120), "the worker never reached the third page"
    worker.kill()

    # what the killed run brought is whole: each item a document with its version and its record; nothing else
    run = SourceRun.objects.get(source=source)
    assert run.status == SourceRun.Status.RUNNING  # nobody closed it
    brought = set(SourceItem.objects.filter(source=source).values_list("key", flat=True))
    assert brought == {site.base + "/", site.base + "/a.html", site.base + "/b.html"}
    assert Document.objects.filter(collection=collection).count() == 3
    assert DocumentVersion.objects.filter(document__collection=collection).count() == 3
    assert not Document.objects.filter(collection=collection, source_item__isnull=True).exists()

    pages.release.set()
    monkeypatch.setattr(sources, "RUN_STALE_S", 0)  # as if the dead run's heartbeat had long stopped
    second = sources.source_sync(source, trigger="command")
    assert second.status == SourceRun.Status.SUCCEEDED, second.error
    assert (second.added, second.updated, second.removed, second.failed) == (1, 0, 0, 0)
    run.refresh_from_db()
    assert run.status == SourceRun.Status.FAILED and "Interrupted" in run.error
    assert SourceItem.objects.filter(source=source).count() == 4
