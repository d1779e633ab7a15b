"""Sources that sync: a real folder changed between enumerations, a real website on 127.0.0.1 and moto's
S3 server. No database, no Django."""

from __future__ import annotations

import gzip
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingestion.sources import (
    Failure,
    Item,
    ItemTooLarge,
    ItemUnavailable,
    Listing,
    SourceConfigError,
    SourceUnreachable,
    source_from,
)
from ingestion.sources import folder as folder_module
from ingestion.sources.folder import FolderSource
from ingestion.sources.patterns import PathFilter
from ingestion.sources.s3 import S3Source
from ingestion.sources.website import WebsiteSource, canonical_url
from tests.ingestion.sources_servers import Page, Site, closed_port, moto_s3, serve

PDF = "application/pdf"


def by_key(listing: Listing) -> dict[str, Item]:
    return {item.key: item for item in listing.items}


def tiny_pdf(text: str) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.cell(text=text)
    return bytes(pdf.output())


# -- patterns -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("include", "exclude", "path", "wanted"),
    [
        ((), (), "a/b/report.pdf", True),
        (("**/*.pdf",), (), "report.pdf", True),
        (("**/*.pdf",), (), "a/b/report.pdf", True),
        (("**/*.pdf",), (), "a/b/report.docx", False),
        (("*.pdf",), (), "a/b/report.pdf", True),
        (("reports/*.pdf",), (), "reports/x/report.pdf", False),
        (("reports/**",), (), "reports/x/report.pdf", True),
        ((), ("archive/",), "archive/2020/old.pdf", False),
        ((), ("archive/",), "docs/archive/old.pdf", False),
        ((), ("/archive/**",), "docs/archive/old.pdf", True),
        ((), ("draft-[0-9]*",), "x/draft-2.md", False),
        ((), ("draft-[!0-9]*",), "x/draft-2.md", True),
        ((), (), ".git/config", False),
        ((), (), "docs/.hidden.pdf", False),
        ((), (), "docs/~$report.docx", False),
        ((), (), "docs/.~lock.report.odt#", False),
        ((), (), "docs/notes.txt~", False),
    ],
)
def test_patterns_match_relative_posix_paths(
    include: tuple[str, ...], exclude: tuple[str, ...], path: str, wanted: bool
):
    assert PathFilter(include, exclude).wants(path) is wanted


def test_a_single_pattern_string_is_one_pattern_and_an_empty_one_is_refused():
    assert PathFilter("*.pdf").wants("a/x.pdf")
    assert not PathFilter("*.pdf").wants("a/x.txt")
    with pytest.raises(SourceConfigError):
        PathFilter([""])


# -- folder ---------------------------------------------------------------------------------------------------


def write(path: Path, text: str, mtime: float | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "share"
    write(root / "a.txt", "alpha", 1_700_000_000)
    write(root / "sub" / "b.md", "# beta", 1_700_000_000)
    write(root / "sub" / "deep" / "c.pdf", "%PDF-1.4 gamma", 1_700_000_000)
    write(root / ".hidden", "no")
    write(root / ".git" / "config", "no")
    write(root / "sub" / "~$b.docx", "office lock")
    write(root / "sub" / ".~lock.b.odt#", "libreoffice lock")
    return root


def test_folder_changes_between_syncs_show_in_keys_and_versions(tree: Path):
    source = FolderSource(tree)
    before = by_key(source.listing())
    assert set(before) == {"a.txt", "sub/b.md", "sub/deep/c.pdf"}
    assert before["sub/deep/c.pdf"] == Item(
        key="sub/deep/c.pdf",
        name="c.pdf",
        url="",
        size=len("%PDF-1.4 gamma"),
        version=f"{1_700_000_000 * 10**9}-{len('%PDF-1.4 gamma')}",
        mime_type=PDF,
    )
    assert before["sub/b.md"].mime_type == "text/markdown"

    write(tree / "a.txt", "alpha, edited", 1_700_000_100)  # edit
    (tree / "sub" / "b.md").unlink()  # delete
    (tree / "sub" / "deep" / "c.pdf").rename(tree / "sub" / "deep" / "renamed.pdf")  # rename
    write(tree / "new" / "d.csv", "x,y\n1,2\n")  # add
    listing = source.listing()
    after = by_key(listing)

    assert set(after) == {"a.txt", "sub/deep/renamed.pdf", "new/d.csv"}
    assert after["a.txt"].version != before["a.txt"].version
    assert after["a.txt"].size == len("alpha, edited")
    # a rename keeps the content, its time and size: the service can tell by the hash that nothing changed
    assert after["sub/deep/renamed.pdf"].version == before["sub/deep/c.pdf"].version
    assert listing.failures == ()
    assert not listing.keeps("sub/b.md")


def test_folder_include_and_exclude_patterns(tree: Path):
    only_pdf = FolderSource(tree, include=["**/*.pdf", "*.txt"], exclude=["sub/deep/"])
    assert {item.key for item in only_pdf.items()} == {"a.txt"}
    with_hidden = FolderSource(tree, default_exclude=False, exclude=[".git/"])
    assert {item.key for item in with_hidden.items()} == {
        "a.txt",
        ".hidden",
        "sub/b.md",
        "sub/deep/c.pdf",
        "sub/~$b.docx",
        "sub/.~lock.b.odt#",
    }


def test_unreadable_sub_folder_is_a_failure_and_the_walk_goes_on(tree: Path, monkeypatch: pytest.MonkeyPatch):
    write(tree / "zzz" / "e.txt", "after the locked folder")
    locked = tree / "sub"
    real_scandir = os.scandir

    def scandir(path: str | os.PathLike[str]) -> Iterator[os.DirEntry[str]]:
        if Path(path) == locked:  # the tests run as root, for whom chmod 000 locks nothing
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(folder_module.os, "scandir", scandir)
    listing = FolderSource(tree).listing()
    assert {item.key for item in listing.items} == {"a.txt", "zzz/e.txt"}
    assert listing.failures == (Failure("sub/", "The folder sub cannot be read: permission denied", subtree=True),)
    assert listing.keeps("sub/deep/c.pdf")
    assert not listing.keeps("subway.txt")


def test_symlinks_are_followed_inside_the_folder_only(tree: Path, tmp_path: Path):
    outside = tmp_path / "outside"
    write(outside / "secret.txt", "not shared")
    (tree / "leak").symlink_to(outside)
    (tree / "leak.txt").symlink_to(outside / "secret.txt")
    (tree / "alias").symlink_to(tree / "sub" / "deep")
    (tree / "sub" / "deep" / "loop").symlink_to(tree / "sub")
    listing = FolderSource(tree).listing()
    keys = {item.key for item in listing.items}
    assert not any("secret" in key for key in keys)
    assert "alias/c.pdf" in keys  # a folder linked from inside, listed once
    assert sum(key.endswith("c.pdf") for key in keys) == 1
    assert {failure.key for failure in listing.failures} == {"leak", "leak.txt"}
    assert not any(failure.transient for failure in listing.failures)


def test_missing_empty_or_wrong_root_is_unreachable(tmp_path: Path):
    with pytest.raises(SourceUnreachable, match="does not exist or is not mounted"):
        FolderSource(tmp_path / "nowhere").listing()
    (tmp_path / "file").write_text("x")
    with pytest.raises(SourceUnreachable, match="is not a folder"):
        FolderSource(tmp_path / "file").listing()
    (tmp_path / "mnt").mkdir()
    with pytest.raises(SourceUnreachable, match="may not be mounted"):
        FolderSource(tmp_path / "mnt").listing()
    assert FolderSource(tmp_path / "mnt", allow_empty=True).listing() == Listing((), ())
    with pytest.raises(SourceConfigError):
        FolderSource("relative/path")


def test_folder_fetch_copies_under_a_size_cap(tree: Path, tmp_path: Path):
    work = tmp_path / "work"
    work.mkdir()
    source = FolderSource(tree, max_bytes=10)
    items = by_key(source.listing())
    with source.fetched(items["a.txt"], work) as path:
        assert path.read_text() == "alpha"
        assert path.suffix == ".txt"
    assert list(work.iterdir()) == []
    with pytest.raises(ItemTooLarge):
        source.fetch(items["sub/deep/c.pdf"], work)
    assert list(work.iterdir()) == []
    (tree / "a.txt").unlink()
    with pytest.raises(ItemUnavailable) as gone:
        source.fetch(items["a.txt"], work)
    assert gone.value.transient is False
    escape = Item(key="../outside.txt", name="outside.txt", url="", size=1, version="", mime_type=None)
    with pytest.raises(ItemUnavailable, match="not inside"):
        source.fetch(escape, work)


# -- website --------------------------------------------------------------------------------------------------


def page(title: str, *links: str) -> str:
    anchors = "".join(f'<a href="{link}">{link}</a>' for link in links)
    return f"<html><head><title>{title}</title></head><body><h1>{title}</h1>{anchors}</body></html>"


@pytest.fixture
def site() -> Iterator[Site]:
    with serve(Site()) as site:
        base = site.base
        site.pages["/robots.txt"] = Page(
            f"User-agent: *\nDisallow: /private/\n\nSitemap: {base}/sitemap.xml\n".encode(),
            headers={"Content-Type": "text/plain"},
        )
        site.html(
            "/",
            page(
                "Home",
                "/about.html#team",
                "docs/guide/",
                "/files/report.pdf",
                "/private/secret.html",
                "https://example.org/elsewhere.html",
                "/missing.html",
                "/away",
                "mailto:someone@example.org",
                "/logo.png",
            ),
        )
        site.html("/about.html", page("About", "/", "/deep/level2.html", "/flaky.html", f"{base}:80/x"))
        site.html("/docs/guide/", page("Guide", "/download?id=7", "/about.html"))
        site.html("/deep/level2.html", page("Level 2", "/deep/level3.html"))
        site.html("/deep/level3.html", page("Level 3"))
        site.html("/orphan.html", page("Only in the sitemap"))
        site.html("/private/secret.html", page("Secret"))
        site.pages["/flaky.html"] = Page(b"busy", 503, {"Content-Type": "text/plain"})
        site.pages["/away"] = Page(b"", 302, {"Location": "https://example.org/"})
        site.pages["/logo.png"] = Page(b"\x89PNG\r\n", headers={"Content-Type": "image/png"})
        site.pages["/files/report.pdf"] = Page(tiny_pdf("Annual report"), headers={"Content-Type": PDF, "ETag": '"r1"'})
        site.pages["/download?id=7"] = Page(
            tiny_pdf("Manual"),
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Disposition": 'attachment; filename="manual.pdf"',
            },
        )
        site.pages["/sitemap.xml"] = Page(
            (
                '<?xml version="1.0" encoding="UTF-8"?>'
                '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
                f"<url><loc>{base}/orphan.html</loc></url><url><loc>{base}/about.html</loc></url>"
                "<url><loc>https://example.org/not-ours.html</loc></url></urlset>"
            ).encode(),
            headers={"Content-Type": "application/xml"},
        )
        yield site


def test_website_lists_its_pages_and_linked_documents(site: Site):
    base = site.base
    with WebsiteSource(base + "/") as source:
        listing = source.listing()
    items = by_key(listing)
    assert set(items) == {
        f"{base}/",
        f"{base}/about.html",
        f"{base}/docs/guide/",
        f"{base}/files/report.pdf",
        f"{base}/download?id=7",
        f"{base}/deep/level2.html",
        f"{base}/deep/level3.html",
        f"{base}/orphan.html",  # from robots.txt's sitemap
    }
    report = items[f"{base}/files/report.pdf"]
    assert (report.name, report.url, report.version, report.mime_type) == ("report.pdf", report.key, '"r1"', PDF)
    assert report.size == len(site.pages["/files/report.pdf"].body)
    manual = items[f"{base}/download?id=7"]
    assert (manual.name, manual.mime_type, manual.version) == ("manual.pdf", PDF, "")
    home = items[f"{base}/"]
    assert (home.name, home.mime_type) == ("index.html", "text/html")
    assert home.version.startswith("sha256:")
    assert items[f"{base}/docs/guide/"].name == "guide.html"
    assert items[f"{base}/about.html"].name == "about.html"

    failures = {failure.key: failure for failure in listing.failures}
    assert set(failures) == {f"{base}/missing.html", f"{base}/away", f"{base}/flaky.html"}
    assert failures[f"{base}/missing.html"].reason == f"{base}/missing.html answered 404 Not Found"
    assert not failures[f"{base}/missing.html"].transient
    assert "redirects to another site" in failures[f"{base}/away"].reason
    assert failures[f"{base}/flaky.html"].transient
    assert listing.keeps(f"{base}/flaky.html")
    assert not listing.keeps(f"{base}/missing.html")

    # robots.txt honoured, documents looked at with HEAD only, nothing fetched twice, our user agent
    assert site.requested("/private/secret.html") == []
    assert site.requested("/files/report.pdf") == ["HEAD"]
    assert site.requested("/about.html") == ["GET"]
    assert {agent for _, _, agent in site.requests} == {"KnowledgePortal/1.0"}


def test_website_fetch_downloads_the_document_and_a_changed_page_has_a_new_version(site: Site, tmp_path: Path):
    base = site.base
    source = WebsiteSource(base + "/", max_bytes=1_000_000)
    before = by_key(source.listing())
    with source.fetched(before[f"{base}/files/report.pdf"], tmp_path) as path:
        assert path.read_bytes() == site.pages["/files/report.pdf"].body
        assert path.read_bytes().startswith(b"%PDF")
    with source.fetched(before[f"{base}/about.html"], tmp_path) as path:
        assert path.read_bytes() == site.pages["/about.html"].body

    site.html("/about.html", page("About us, rewritten", "/", "/deep/level2.html"))
    site.pages["/files/report.pdf"].headers["ETag"] = '"r2"'
    after = by_key(source.listing())
    assert after[f"{base}/about.html"].version != before[f"{base}/about.html"].version
    assert after[f"{base}/files/report.pdf"].version == '"r2"'
    assert after[f"{base}/deep/level2.html"].version == before[f"{base}/deep/level2.html"].version

    del site.pages["/files/report.pdf"]
    with pytest.raises(ItemUnavailable) as gone:
        source.fetch(before[f"{base}/files/report.pdf"], tmp_path)
    assert not gone.value.transient
    source.close()


def test_website_fetch_refuses_what_is_over_the_cap(site: Site, tmp_path: Path):
    source = WebsiteSource(site.base + "/", max_bytes=100)
    report = by_key(source.listing())[f"{site.base}/files/report.pdf"]
    with pytest.raises(ItemTooLarge):
        source.fetch(report, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_website_falls_back_to_get_when_a_server_refuses_head(site: Site):
    site.pages["/files/report.pdf"].head_status = 405
    items = by_key(WebsiteSource(site.base + "/", max_depth=1).listing())
    assert items[f"{site.base}/files/report.pdf"].version == '"r1"'
    assert site.requested("/files/report.pdf") == ["HEAD", "GET"]


def test_website_depth_and_page_limits(site: Site):
    base = site.base

    def keys(**options: object) -> set[str]:
        return {item.key for item in WebsiteSource(base + "/", robots_sitemaps=False, **options).items()}

    assert keys(max_depth=0) == {f"{base}/"}
    assert keys(max_depth=1) == {f"{base}/", f"{base}/about.html", f"{base}/docs/guide/", f"{base}/files/report.pdf"}
    site.requests.clear()
    assert len(keys(max_pages=3)) == 3
    assert len([path for _, path, _ in site.requests if path != "/robots.txt"]) == 3


def test_website_from_a_sitemap_or_a_sitemap_index(site: Site):
    base = site.base
    site.pages["/sitemap-index.xml.gz"] = Page(
        gzip.compress(
            (
                '<?xml version="1.0"?><sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
                f"<sitemap><loc>{base}/sitemap.xml</loc></sitemap></sitemapindex>"
            ).encode()
        ),
        headers={"Content-Type": "application/gzip"},
    )
    for start in ("/sitemap.xml", "/sitemap-index.xml.gz"):
        source = WebsiteSource(base + start, max_depth=0)
        assert {item.key for item in source.items()} == {f"{base}/orphan.html", f"{base}/about.html"}
    deeper = {item.key for item in WebsiteSource(base + "/sitemap.xml", max_depth=1).items()}
    assert f"{base}/deep/level2.html" in deeper
    assert f"{base}/" in deeper


def test_website_honours_robots_meta_tags_and_the_crawl_delay(site: Site):
    base = site.base
    site.pages["/robots.txt"] = Page(b"User-agent: *\nCrawl-delay: 5\n", headers={"Content-Type": "text/plain"})
    site.html(
        "/", '<meta name="robots" content="noindex"><a href="/about.html">about</a><a href="/x" rel=nofollow>x</a>'
    )
    site.html("/about.html", '<meta name="robots" content="nofollow"><a href="/deep/level2.html">2</a>')
    started = time.monotonic()
    keys = {item.key for item in WebsiteSource(base + "/", max_crawl_delay=0.2).items()}
    elapsed = time.monotonic() - started
    assert keys == {f"{base}/about.html"}
    assert site.requested("/x") == []
    assert 0.2 * 2 <= elapsed < 3  # robots.txt, /, /about.html: two waits, each capped to 0.2 s


def test_website_start_page_that_cannot_be_read_is_unreachable(site: Site):
    base = site.base
    with pytest.raises(SourceUnreachable, match=r"cannot be reached"):
        WebsiteSource(f"http://127.0.0.1:{closed_port()}/").listing()
    with pytest.raises(SourceUnreachable, match=r"^The start page .*/missing.html answered 404 Not Found$"):
        WebsiteSource(base + "/missing.html").listing()
    site.pages["/"] = Page(b"down", 503)
    with pytest.raises(SourceUnreachable, match="answered 503"):
        WebsiteSource(base + "/").listing()
    with pytest.raises(SourceUnreachable, match="forbids"):
        WebsiteSource(base + "/private/secret.html").listing()
    site.pages["/robots.txt"] = Page(b"", 500)
    with pytest.raises(SourceUnreachable, match=r"robots\.txt .* answered 500"):
        WebsiteSource(base + "/about.html").listing()


def test_website_start_page_timeout_is_unreachable(site: Site):
    import socket

    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        with pytest.raises(SourceUnreachable, match=r"did not answer within 0\.3 s"):
            WebsiteSource(f"http://127.0.0.1:{port}/", timeout=0.3).listing()


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("HTTP://Example.ORG:80/a/b.html#part", "http://example.org/a/b.html"),
        ("https://example.org:443", "https://example.org/"),
        ("https://user:pw@example.org:8443/x?b=2&a=1", "https://example.org:8443/x?b=2&a=1"),
        ("http://example.org/a file.pdf", "http://example.org/a%20file.pdf"),
        ("http://example.org/caf%C3%A9", "http://example.org/caf%C3%A9"),
        ("mailto:someone@example.org", None),
        ("javascript:alert(1)", None),
        ("http://example.org:99999/", None),
    ],
)
def test_canonical_urls(url: str, canonical: str | None):
    assert canonical_url(url) == canonical


def test_relative_links_resolve_against_the_page():
    assert canonical_url("../b.html#x", "http://example.org/a/c/d.html") == "http://example.org/a/b.html"


# -- S3 -------------------------------------------------------------------------------------------------------

CREDENTIALS = {"access_key_id": "testing", "secret_access_key": "testing", "region": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_s3() as endpoint:
        yield endpoint


@pytest.fixture
def bucket(s3_endpoint: str, request: pytest.FixtureRequest) -> Iterator[tuple[str, Any]]:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    name = "kp-" + request.node.name.lower().replace("_", "-")[:50]
    client.create_bucket(Bucket=name)
    for key, body in {
        "docs/a.pdf": b"%PDF-1.4 a",
        "docs/sub/b.txt": b"bee",
        "docs/sub/c.md": b"# sea",
        "docs/empty-folder/": b"",
        "docs/.hidden": b"no",
        "docs-old/d.txt": b"not under docs/",
        "other/e.txt": b"elsewhere",
    }.items():
        client.put_object(Bucket=name, Key=key, Body=body)
    yield name, client


def test_s3_lists_the_prefix_page_by_page_and_sees_changes(s3_endpoint: str, bucket: tuple[str, Any]):
    name, client = bucket
    listings: list[int] = []
    client.meta.events.register("before-call.s3.ListObjectsV2", lambda **_: listings.append(1))
    source = S3Source(name, prefix="docs/", page_size=2, client=client)
    before = by_key(source.listing())
    assert set(before) == {"docs/a.pdf", "docs/sub/b.txt", "docs/sub/c.md"}
    assert len(listings) == 3  # five keys under docs/, two a page
    assert before["docs/a.pdf"] == Item(
        key="docs/a.pdf",
        name="a.pdf",
        url=f"s3://{name}/docs/a.pdf",
        size=len(b"%PDF-1.4 a"),
        version=before["docs/a.pdf"].version,
        mime_type=PDF,
    )
    assert len(before["docs/a.pdf"].version) == 32  # the ETag of a single-part upload, quotes removed

    client.put_object(Bucket=name, Key="docs/a.pdf", Body=b"%PDF-1.4 a, edited")
    client.delete_object(Bucket=name, Key="docs/sub/b.txt")
    client.put_object(Bucket=name, Key="docs/new.txt", Body=b"new")
    after = by_key(source.listing())
    assert set(after) == {"docs/a.pdf", "docs/sub/c.md", "docs/new.txt"}
    assert after["docs/a.pdf"].version != before["docs/a.pdf"].version
    assert after["docs/sub/c.md"].version == before["docs/sub/c.md"].version
    source.close()


def test_s3_patterns_are_relative_to_the_prefix(s3_endpoint: str, bucket: tuple[str, Any]):
    name, _ = bucket
    source = S3Source(name, prefix="docs/", endpoint_url=s3_endpoint, include=["sub/*.md", "*.pdf"], **CREDENTIALS)
    assert {item.key for item in source.items()} == {"docs/a.pdf", "docs/sub/c.md"}
    # a prefix is a prefix of keys, not a folder: "docs" also holds "docs-old/", and the patterns start at the root
    source = S3Source(name, prefix="docs", endpoint_url=s3_endpoint, include=["docs*/*.txt"], **CREDENTIALS)
    assert {item.key for item in source.items()} == {"docs-old/d.txt"}


def test_s3_fetch_streams_the_object(s3_endpoint: str, bucket: tuple[str, Any], tmp_path: Path):
    name, client = bucket
    source = S3Source(name, prefix="docs/", endpoint_url=s3_endpoint, max_bytes=12, **CREDENTIALS)
    items = by_key(source.listing())
    with source.fetched(items["docs/sub/c.md"], tmp_path) as path:
        assert path.read_bytes() == b"# sea"
        assert path.suffix == ".md"
    client.put_object(Bucket=name, Key="docs/a.pdf", Body=b"x" * 100)
    with pytest.raises(ItemTooLarge):
        source.fetch(items["docs/a.pdf"], tmp_path)
    client.delete_object(Bucket=name, Key="docs/sub/b.txt")
    with pytest.raises(ItemUnavailable, match="deleted") as gone:
        source.fetch(items["docs/sub/b.txt"], tmp_path)
    assert not gone.value.transient
    assert list(tmp_path.iterdir()) == []


def test_s3_missing_bucket_or_endpoint_is_unreachable(s3_endpoint: str):
    with pytest.raises(SourceUnreachable, match="The bucket no-such-bucket does not exist"):
        S3Source("no-such-bucket", endpoint_url=s3_endpoint, **CREDENTIALS).listing()
    down = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(SourceUnreachable, match=f"The S3 endpoint {down} cannot be reached"):
        S3Source("any", endpoint_url=down, max_attempts=1, timeout=2, **CREDENTIALS).listing()


# -- the factory ----------------------------------------------------------------------------------------------


def test_source_from_builds_each_kind_and_refuses_bad_options(tmp_path: Path):
    folder = source_from("folder", str(tmp_path), {"include": ["*.pdf"]})
    assert isinstance(folder, FolderSource)
    site = source_from("website", "https://example.org/docs/", {"max_depth": 1})
    assert isinstance(site, WebsiteSource)
    assert site.origin == ("https", "example.org", None)
    bucket = source_from("s3", "s3://reports/2024/", {"endpoint_url": "http://minio:9000"})
    assert isinstance(bucket, S3Source)
    assert (bucket.bucket, bucket.prefix) == ("reports", "2024/")
    with pytest.raises(SourceConfigError, match="Unknown source kind"):
        source_from("ftp", "ftp://example.org", {})
    with pytest.raises(SourceConfigError, match="Invalid options"):
        source_from("folder", str(tmp_path), {"depth": 3})
    with pytest.raises(SourceConfigError, match="max_depth"):
        source_from("website", "https://example.org/", {"max_depth": -1})
    with pytest.raises(SourceConfigError, match="not an http"):
        source_from("website", "file:///etc/passwd", {})
    with pytest.raises(SourceConfigError, match="access key"):
        source_from("s3", "reports", {"access_key_id": "only-half"})
