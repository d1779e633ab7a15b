"""Sources that sync (issue 22, item 2): a real folder changed between syncs, a real website on 127.0.0.1, moto's
S3 server; new items ingested, changed ones new versions, renamed ones kept, vanished ones removed from answers,
and an unreachable source that removes nothing."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from knowledge.errors import SourceBusyError
from knowledge.models import Collection, Document, Source, SourceItem, SourceRun
from knowledge.services import answering, sources
from knowledge.services import documents as document_services
from tests.ingestion.sources_servers import Site, moto_s3, serve

pytestmark = pytest.mark.django_db

ALPHA = "The alpha report says the Geiranger ferry leaves at nine every morning."
ALPHA_EDITED = "The alpha report now says the Geiranger ferry leaves at eleven on Sundays."
BRAVO = "Bravo notes: the Trolltunga hike takes ten hours there and back."
CHARLIE = "Charlie memo: the Preikestolen trail is closed in winter."


def _write(path: Path, text: str, mtime: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def _process_queued() -> None:
    """What the workers do with the documents a sync queued (the tests run without one)."""
    for document_id in Document.objects.filter(status=Document.Status.QUEUED).values_list("pk", flat=True):
        document_services.document_process(document_id=document_id)


def _found(question: str, collection: Collection) -> set[str]:
    """The titles of the documents whose passages a question retrieves."""
    found = answering.sources_retrieve(question=question, collection_ids=[collection.pk], top_k=10)
    return {Document.objects.get(pk=source.document_id).title for source in found}


def _sync(source: Source) -> SourceRun:
    run = sources.source_sync(source, trigger="command")
    _process_queued()
    return run


def _source(kind: str, location: str) -> Source:
    collection = Collection.objects.create(slug=kind, name=f"From a {kind}", is_public=True)
    return Source.objects.create(name=f"my-{kind}", collection=collection, kind=kind, location=location)


def _counts(run: SourceRun) -> tuple[int, int, int, int]:
    return run.added, run.updated, run.removed, run.failed


@pytest.fixture
def share(tmp_path: Path) -> Path:
    root = tmp_path / "share"
    _write(root / "alpha.txt", ALPHA, 1_700_000_000)
    _write(root / "bravo.md", BRAVO, 1_700_000_000)
    _write(root / "team" / "charlie.txt", CHARLIE, 1_700_000_000)
    _write(root / "~$alpha.txt", "an editor's lock file", 1_700_000_000)
    return root


@pytest.fixture
def folder_source(share: Path) -> Source:
    collection = Collection.objects.create(slug="shared", name="Shared drive", is_public=True)
    return Source.objects.create(name="share", collection=collection, kind=Source.Kind.FOLDER, location=str(share))


def test_a_folder_is_kept_in_step_with_its_collection(share: Path, folder_source: Source) -> None:
    collection = folder_source.collection
    first = _sync(folder_source)
    assert first.status == SourceRun.Status.SUCCEEDED, first.error
    assert (first.found, *_counts(first)) == (3, 3, 0, 0, 0)
    assert set(collection.documents.values_list("title", flat=True)) == {"alpha.txt", "bravo.md", "charlie.txt"}
    assert set(collection.documents.values_list("status", flat=True)) == {"ready"}
    assert "alpha.txt" in _found("When does the Geiranger ferry leave?", collection)

    # unchanged: nothing is brought again
    assert _counts(_sync(folder_source)) == (0, 0, 0, 0)

    # edited: the same document's next version, and only the new text answers
    alpha = Document.objects.get(collection=collection, title="alpha.txt")
    _write(share / "alpha.txt", ALPHA_EDITED, 1_700_000_100)
    assert _counts(_sync(folder_source)) == (0, 1, 0, 0)
    alpha.refresh_from_db()
    assert (alpha.version, alpha.status) == (2, "ready")
    texts = " ".join(alpha.chunks.values_list("text", flat=True))
    assert "eleven on Sundays" in texts and "nine every morning" not in texts

    # renamed: the same document under its new name; deleted: removed from answers
    charlie = Document.objects.get(collection=collection, title="charlie.txt")
    (share / "team" / "charlie.txt").rename(share / "team" / "charlie-2024.txt")
    (share / "bravo.md").unlink()
    run = _sync(folder_source)
    assert _counts(run) == (0, 1, 1, 0)
    assert set(collection.documents.values_list("title", flat=True)) == {"alpha.txt", "charlie-2024.txt"}
    assert Document.objects.get(pk=charlie.pk).title == "charlie-2024.txt"
    assert SourceItem.objects.get(document=charlie).key == "team/charlie-2024.txt"
    assert "bravo.md" not in _found("How long is the Trolltunga hike?", collection)

    # added again
    _write(share / "bravo.md", BRAVO)
    assert _counts(_sync(folder_source)) == (1, 0, 0, 0)


def test_an_unreachable_or_empty_folder_fails_the_run_and_removes_nothing(share: Path, folder_source: Source) -> None:
    _sync(folder_source)
    for path in sorted(share.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    empty = _sync(folder_source)  # an unmounted share looks like this
    assert empty.status == SourceRun.Status.FAILED
    assert "may not be mounted" in empty.error or "nothing" in empty.error
    share.rmdir()
    gone = _sync(folder_source)
    assert gone.status == SourceRun.Status.FAILED and gone.error
    assert folder_source.collection.documents.count() == 3


def test_an_item_that_cannot_be_ingested_is_reported_and_the_rest_goes_on(share: Path, folder_source: Source) -> None:
    (share / "tool.exe").write_bytes(b"MZ\x90\x00" + bytes(200))
    run = _sync(folder_source)
    assert run.status == SourceRun.Status.SUCCEEDED
    assert _counts(run) == (3, 0, 0, 1)
    [failure] = run.failures
    assert failure["key"] == "tool.exe" and failure["reason"]


def test_a_live_run_is_not_doubled_and_a_dead_one_is_taken_over(folder_source: Source) -> None:
    live = SourceRun.objects.create(source=folder_source, trigger="schedule")
    with pytest.raises(SourceBusyError, match="already running"):
        sources.source_sync(folder_source)
    SourceRun.objects.filter(pk=live.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=sources.RUN_STALE_S + 1)
    )
    run = _sync(folder_source)
    assert run.status == SourceRun.Status.SUCCEEDED and run.added == 3
    live.refresh_from_db()
    assert live.status == SourceRun.Status.FAILED and "Interrupted" in live.error


def test_the_schedule_says_which_sources_are_due(folder_source: Source) -> None:
    assert sources.sources_due() == [folder_source.pk]  # never run
    _sync(folder_source)
    folder_source.refresh_from_db()
    assert folder_source.next_run_at is not None
    assert sources.sources_due() == []
    assert sources.sources_due(now=folder_source.next_run_at + timedelta(seconds=1)) == [folder_source.pk]
    Source.objects.filter(pk=folder_source.pk).update(every_minutes=0)
    assert sources.sources_due(now=timezone.now() + timedelta(days=1)) == []


def test_the_sync_command_reports_each_source(folder_source: Source, capsys: pytest.CaptureFixture[str]) -> None:
    call_command("sync", "share")
    out = capsys.readouterr().out
    assert "share: 3 found, 3 added, 0 updated, 0 removed, 0 failed." in out
    with pytest.raises(CommandError, match="No such source: nope"):
        call_command("sync", "nope")
    Source.objects.filter(pk=folder_source.pk).update(location="/no/such/folder")
    with pytest.raises(CommandError, match="1 of 1 sources could not be synced"):
        call_command("sync")


# --- a website ----------------------------------------------------------------------------------------------


def _pdf(text: str) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    pdf.multi_cell(0, 8, text)
    return bytes(pdf.output())


@pytest.fixture
def site() -> Iterator[Site]:
    with serve(Site()) as site:
        site.html("/robots.txt", "User-agent: *\nDisallow: /private/\n", **{"Content-Type": "text/plain"})
        links = '<a href="/ferry.html">F</a> <a href="/guide.pdf">P</a> <a href="/private/secret.html">S</a>'
        site.html("/", f'<h1>Fjords</h1><p>Guides.</p>{links} <a href="https://example.org/">elsewhere</a>')
        site.html("/ferry.html", f"<html><head><title>Ferry times</title></head><body><p>{ALPHA}</p></body></html>")
        site.html("/private/secret.html", "<p>Never crawled.</p>")
        site.pages["/guide.pdf"] = type(site.pages["/"])(_pdf(BRAVO), headers={"Content-Type": "application/pdf"})
        yield site


def test_a_website_is_crawled_within_its_rules_and_its_pages_link_home(site: Site) -> None:
    collection = Collection.objects.create(slug="web", name="Web", is_public=True)
    source = Source.objects.create(
        name="fjords", collection=collection, kind=Source.Kind.WEBSITE, location=site.base + "/"
    )
    run = _sync(source)
    assert run.status == SourceRun.Status.SUCCEEDED, run.error
    assert run.added == 3  # the start page, the ferry page and the PDF; not the page robots.txt forbids
    assert not site.requested("/private/secret.html")
    origins = set(collection.documents.values_list("origin_url", flat=True))
    assert origins == {site.base + "/", site.base + "/ferry.html", site.base + "/guide.pdf"}
    assert set(collection.documents.values_list("status", flat=True)) == {"ready"}

    del site.pages["/ferry.html"]  # the page is gone (404): removed from answers
    run = _sync(source)
    assert (run.removed, run.status) == (1, SourceRun.Status.SUCCEEDED)
    assert site.base + "/ferry.html" not in set(collection.documents.values_list("origin_url", flat=True))


def test_a_website_is_synced_from_its_sitemap(site: Site) -> None:
    urls = "".join(f"<url><loc>{site.base}{path}</loc></url>" for path in ("/ferry.html", "/guide.pdf"))
    sitemap = f'<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{urls}</urlset>'
    site.pages["/sitemap.xml"] = type(site.pages["/"])(sitemap.encode(), headers={"Content-Type": "application/xml"})
    source = _source(Source.Kind.WEBSITE, site.base + "/sitemap.xml")
    run = _sync(source)
    assert (run.status, run.added) == (SourceRun.Status.SUCCEEDED, 2), run.error
    origins = set(source.collection.documents.values_list("origin_url", flat=True))
    assert origins == {site.base + "/ferry.html", site.base + "/guide.pdf"}


def test_a_website_that_is_down_fails_the_run_and_removes_nothing(site: Site) -> None:
    collection = Collection.objects.create(slug="web", name="Web", is_public=True)
    source = Source.objects.create(
        name="fjords", collection=collection, kind=Source.Kind.WEBSITE, location=site.base + "/"
    )
    _sync(source)
    site.pages["/"].status = 503
    run = _sync(source)
    assert run.status == SourceRun.Status.FAILED and run.error
    assert collection.documents.count() == 3


# --- an S3 bucket -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_s3() as endpoint:
        yield endpoint


@pytest.fixture
def bucket(s3_endpoint: str, settings: Any) -> Any:
    import boto3

    settings.S3_ENDPOINT_URL, settings.S3_REGION = s3_endpoint, "us-east-1"
    settings.S3_ACCESS_KEY_ID, settings.S3_SECRET_ACCESS_KEY = "testing", "testing"
    client = boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="x"
    )
    name = f"kp-sync-{time.monotonic_ns()}"
    client.create_bucket(Bucket=name)
    client.put_object(Bucket=name, Key="handbook/alpha.txt", Body=ALPHA.encode())
    client.put_object(Bucket=name, Key="handbook/team/charlie.txt", Body=CHARLIE.encode())
    client.put_object(Bucket=name, Key="elsewhere/bravo.txt", Body=BRAVO.encode())
    return client, name


def test_a_bucket_prefix_is_kept_in_step(bucket: Any, s3_endpoint: str) -> None:
    client, name = bucket
    collection = Collection.objects.create(slug="s3", name="Bucket", is_public=True)
    source = Source.objects.create(
        name="handbook", collection=collection, kind=Source.Kind.S3, location=f"{name}/handbook/"
    )
    assert _counts(_sync(source)) == (2, 0, 0, 0)
    # each document links home: the object on the bucket's server
    origins = set(collection.documents.values_list("origin_url", flat=True))
    assert origins == {f"{s3_endpoint}/{name}/handbook/alpha.txt", f"{s3_endpoint}/{name}/handbook/team/charlie.txt"}
    client.put_object(Bucket=name, Key="handbook/alpha.txt", Body=ALPHA_EDITED.encode())
    client.delete_object(Bucket=name, Key="handbook/team/charlie.txt")
    assert _counts(_sync(source)) == (0, 1, 1, 0)
    assert Document.objects.get(collection=collection, title="alpha.txt").version == 2

    Source.objects.filter(pk=source.pk).update(location="no-such-bucket-kp")
    source.refresh_from_db()
    run = _sync(source)
    assert run.status == SourceRun.Status.FAILED and "no-such-bucket-kp" in run.error
    assert collection.documents.count() == 1


# --- the admin ----------------------------------------------------------------------------------------------


def test_the_admin_checks_a_source_shows_its_runs_and_syncs_it_now(
    admin_client: Any, folder_source: Source, eager_celery: None
) -> None:
    refused = admin_client.post(
        "/admin/knowledge/source/add/",
        {"name": "rel", "collection": folder_source.collection.pk, "kind": "folder", "location": "relative/path",
         "include": "", "exclude": "", "max_depth": 3, "max_pages": 500, "every_minutes": 60, "enabled": "on"},
    )  # fmt: skip
    assert refused.status_code == 200
    assert "must be given as an absolute path" in refused.content.decode()
    assert not Source.objects.filter(name="rel").exists()

    action = {"action": "sync_now", "_selected_action": [folder_source.pk]}
    response = admin_client.post("/admin/knowledge/source/", action, follow=True)
    assert "Sync of share queued." in response.content.decode()
    run = folder_source.runs.get()
    assert (run.trigger, run.status, run.added) == ("admin", SourceRun.Status.SUCCEEDED, 3)

    listing = admin_client.get("/admin/knowledge/source/").content.decode()
    assert "3 added, 0 updated, 0 removed, 0 failed" in listing
    page = admin_client.get(f"/admin/knowledge/source/{folder_source.pk}/change/").content.decode()
    assert "3 / 3 / 0 / 0 / 0" in page

    SourceRun.objects.create(source=folder_source, trigger="schedule")  # a live run
    response = admin_client.post("/admin/knowledge/source/", action, follow=True)
    assert "already running" in response.content.decode()


# --- the API and citations ----------------------------------------------------------------------------------


def test_the_api_lists_sources_and_syncs_one_on_a_worker(
    folder_source: Source, eager_celery: None, django_user_model: Any, settings: Any
) -> None:
    from django.contrib.auth.models import Permission
    from rest_framework.test import APIClient

    settings.API_RATE_LIMIT = "10000/m"
    reader = django_user_model.objects.create_user(username="reader")
    manager = django_user_model.objects.create_user(username="manager")
    manager.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="knowledge", codename__in=["view_source", "change_source"])
    )
    client = APIClient()
    client.force_authenticate(reader)
    assert client.get("/api/v1/sources/").status_code == 403
    client.force_authenticate(manager)
    [listed] = client.get("/api/v1/sources/").json()
    assert (listed["name"], listed["kind"], listed["collection"], listed["last_run"]) == (
        "share",
        "folder",
        "shared",
        None,
    )

    accepted = client.post(f"/api/v1/sources/{folder_source.pk}/sync/")
    assert (accepted.status_code, accepted.json()) == (202, {"source": "share", "status": "queued"})
    [listed] = client.get("/api/v1/sources/").json()
    assert listed["last_run"]["status"] == "succeeded" and listed["last_run"]["added"] == 3
    assert client.post("/api/v1/sources/999/sync/").status_code == 404
    SourceRun.objects.create(source=folder_source, trigger="schedule")  # a live run
    busy = client.post(f"/api/v1/sources/{folder_source.pk}/sync/")
    assert (busy.status_code, busy.json()["code"]) == (409, "sync_running")


def test_a_cited_page_of_a_synced_website_links_home(site: Site, settings: Any) -> None:
    from rest_framework.test import APIClient

    settings.API_RATE_LIMIT = "10000/m"
    source = _source(Source.Kind.WEBSITE, site.base + "/")
    _sync(source)
    client = APIClient()
    client.force_authenticate(_any_user())
    body = client.post(
        "/api/v1/rag/", {"prompt": "When does the Geiranger ferry leave?", "mode": "extractive"}, format="json"
    ).json()
    cited = body["sources"][0]
    assert cited["origin_url"] == site.base + "/ferry.html"
    assert cited["url"].startswith(f"/documents/{cited['document_id']}/view/")  # the stored copy too
    document = client.get(f"/api/v1/documents/{cited['document_id']}/").json()
    assert document["origin_url"] == site.base + "/ferry.html"


def _any_user() -> Any:
    from django.contrib.auth.models import User

    return User.objects.create_user(username="visitor")


def test_a_change_that_finds_the_previous_version_still_processing_waits_for_the_next_run(
    share: Path, folder_source: Source
) -> None:
    _sync(folder_source)
    _write(share / "alpha.txt", ALPHA_EDITED, 1_700_000_100)
    sources.source_sync(folder_source)  # version 2 queued, not processed yet
    _write(share / "alpha.txt", ALPHA + " Third edition.", 1_700_000_200)
    waiting = sources.source_sync(folder_source)
    assert (waiting.status, *_counts(waiting)) == (SourceRun.Status.SUCCEEDED, 0, 0, 0, 0)
    _process_queued()
    assert _counts(_sync(folder_source)) == (0, 1, 0, 0)
    alpha = Document.objects.get(collection=folder_source.collection, title="alpha.txt")
    assert alpha.version == 3 and "Third edition" in " ".join(alpha.chunks.values_list("text", flat=True))


def test_a_bucket_object_on_aws_links_to_its_virtual_hosted_address(settings: Any, tmp_path: Path) -> None:
    from ingestion.sources import Item

    settings.S3_ENDPOINT_URL, settings.S3_REGION = "", "eu-west-3"
    bucket = Source(name="aws", kind=Source.Kind.S3, location="acme/docs/")
    item = Item(key="docs/a b.pdf", name="a b.pdf", url="s3://acme/docs/a b.pdf", size=1, version="e", mime_type=None)
    assert sources.source_engine(bucket).link(item) == "https://acme.s3.eu-west-3.amazonaws.com/docs/a%20b.pdf"
    folder = Source(name="share", kind=Source.Kind.FOLDER, location=str(tmp_path))
    item = Item(key="a.txt", name="a.txt", url=str(tmp_path / "a.txt"), size=1, version="v", mime_type=None)
    assert sources.source_engine(folder).link(item) == ""
