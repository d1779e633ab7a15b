"""A website crawled from a start page or a sitemap: its HTML pages and the documents they link to."""

from __future__ import annotations

import email.message
import gzip
import hashlib
import re
import time
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import BinaryIO
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit
from urllib.robotparser import RobotFileParser

import httpx

from ingestion.sources.base import DEFAULT_MAX_BYTES, Failure, Item, Source
from ingestion.sources.errors import ItemTooLarge, ItemUnavailable, SourceConfigError, SourceUnreachable

USER_AGENT = "KnowledgePortal/1.0"
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
#: extensions of the documents a crawl lists when pages link to them, with the type each stands for
DOCUMENT_EXTENSIONS: dict[str, str] = {
    ".pdf": "application/pdf",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ".doc": "application/msword",
    ".ppt": "application/vnd.ms-powerpoint",
    ".xls": "application/vnd.ms-excel",
    ".odt": "application/vnd.oasis.opendocument.text",
    ".odp": "application/vnd.oasis.opendocument.presentation",
    ".ods": "application/vnd.oasis.opendocument.spreadsheet",
    ".rtf": "application/rtf",
    ".csv": "text/csv",
    ".md": "text/markdown",
    ".txt": "text/plain",
}
# what servers send for a file they know nothing about: the link's extension decides then
_GENERIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream", "application/force-download"})
_TYPE_ALIASES = {"application/x-pdf": "application/pdf", "text/rtf": "application/rtf"}
_SITEMAP_TAGS = frozenset({"urlset", "sitemapindex"})
_PAGE_SUFFIXES = frozenset({".html", ".htm", ".xhtml", ".shtml", ".php", ".asp", ".aspx", ".jsp", ".cfm"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_MAX_REDIRECTS = 5
_MAX_SITEMAP_BYTES = 50 * 1024 * 1024  # the sitemaps protocol's own limit, uncompressed
_MAX_SITEMAP_NESTING = 3
_MAX_ROBOTS_BYTES = 512 * 1024  # RFC 9309 lets a crawler stop reading there
_UNSAFE_NAME = re.compile(r'[\x00-\x1f<>:"/\\|?*]+')


class _Broken(Exception):
    """A URL could not be read; ``detail`` completes a sentence that starts with the URL."""

    def __init__(self, detail: str, *, transient: bool) -> None:
        super().__init__(detail)
        self.detail = detail
        self.transient = transient


class _Skipped(Exception):
    """A URL leads where the crawl may not go (robots.txt); not an error."""


@dataclass
class _Visit:
    item: Item | None = None
    links: list[str] = field(default_factory=list)
    sitemap: bool = False


class WebsiteSource(Source):
    """The pages of one site (scheme, host and port of ``start_url``) and the documents they link to.

    ``start_url`` is a page or a sitemap (a ``urlset`` or a sitemap index, gzipped or not); the ``Sitemap:``
    lines of robots.txt add their pages too unless ``robots_sitemaps`` is off. Links of HTML pages (``<a>``
    and ``<area>``, ``<base>`` honoured, ``rel="nofollow"`` and robots meta tags too) are followed up to
    ``max_depth`` links away from the start page or the sitemap's pages; at most ``max_pages`` URLs are
    visited. robots.txt is honoured for ``user_agent``, its crawl delay too, up to ``max_crawl_delay``
    seconds. Redirects are followed only within the site.

    Keys and ``url`` are canonical URLs (fragment dropped, scheme and host in lower case, default port and
    no user name, characters a URL may not hold escaped; the query is kept as is). Pages are listed with
    the hash of their body as ``version`` and a name ending with ``.html``; documents (by Content-Type, or
    by extension when the server says nothing useful; see ``DOCUMENT_EXTENSIONS``) with their ETag, else
    their Last-Modified, else "" as ``version``. A start page that cannot be read (network, 4xx, 5xx, or
    robots.txt forbids it) or a robots.txt that answers 5xx raises :class:`SourceUnreachable`. Any other URL
    that cannot be read is a :class:`~ingestion.sources.Failure`: permanent for 4xx and off-site redirects,
    transient for timeouts, network errors, 429 and 5xx. :meth:`fetch` downloads the URL again.
    """

    kind = "website"

    def __init__(
        self,
        start_url: str,
        *,
        max_depth: int = 3,
        max_pages: int = 500,
        timeout: float = 15.0,
        max_crawl_delay: float = 10.0,
        max_page_bytes: int = 5 * 1024 * 1024,
        robots_sitemaps: bool = True,
        document_extensions: Iterable[str] | None = None,
        user_agent: str = USER_AGENT,
        client: httpx.Client | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        super().__init__(max_bytes=max_bytes)
        start = canonical_url(start_url) if isinstance(start_url, str) else None
        if start is None:
            raise SourceConfigError(f"{start_url!r} is not an http or https URL")
        _check_count(max_depth, "max_depth", minimum=0)
        _check_count(max_pages, "max_pages", minimum=1)
        _check_count(max_page_bytes, "max_page_bytes", minimum=1)
        for value, name in ((timeout, "timeout"), (max_crawl_delay, "max_crawl_delay")):
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise SourceConfigError(f"{name} must be a number of seconds")
        if document_extensions is None:
            self.documents = dict(DOCUMENT_EXTENSIONS)
        else:
            wanted = {
                suffix.lower() if suffix.startswith(".") else f".{suffix.lower()}" for suffix in document_extensions
            }
            unknown = wanted - DOCUMENT_EXTENSIONS.keys()
            if unknown:
                raise SourceConfigError(f"Unknown document extensions: {', '.join(sorted(unknown))}")
            self.documents = {suffix: DOCUMENT_EXTENSIONS[suffix] for suffix in wanted}
        self.start_url = start
        self.origin = _origin(start)
        self.max_depth = max_depth
        self.max_pages = max_pages
        self.timeout = float(timeout)
        self.max_crawl_delay = float(max_crawl_delay)
        self.max_page_bytes = max_page_bytes
        self.robots_sitemaps = robots_sitemaps
        self.user_agent = user_agent
        self._client = client
        self._owns_client = client is None
        self._robots: RobotFileParser | None = None
        self._delay = 0.0
        self._last_request = 0.0

    def __repr__(self) -> str:
        return f"WebsiteSource({self.start_url!r})"

    def items(self) -> Iterator[Item]:
        """Crawl the site (see the class's docstring)."""
        self.failures = []
        self._robots = None
        robots = self._load_robots()
        if not self._allowed(self.start_url):
            raise SourceUnreachable(f"The robots.txt of {_site(self.origin)} forbids reading {self.start_url}")
        try:
            first = self._visit(self.start_url, 0, first=True)
        except _Broken as broken:
            raise SourceUnreachable(f"The start page {self.start_url} {broken.detail}") from None
        except _Skipped:
            raise SourceUnreachable(f"The start page {self.start_url} redirects to a forbidden page") from None
        queue: deque[tuple[str, int]] = deque()
        queued = {self.start_url}
        listed: set[str] = set()
        seeds = list(first.links) if first.sitemap else []
        if self.robots_sitemaps:
            for sitemap in robots.site_maps() or []:
                url = canonical_url(sitemap)
                if url is not None and _origin(url) == self.origin and url != self.start_url:
                    seeds.extend(self._sitemap_pages(url))
        for url in seeds:
            if url not in queued:
                queued.add(url)
                queue.append((url, 0))
        if not first.sitemap:
            for url in first.links:
                if url not in queued and self.max_depth >= 1:
                    queued.add(url)
                    queue.append((url, 1))
        visits = 0 if first.sitemap else 1
        if first.item is not None:
            listed.add(first.item.key)
            yield first.item
        while queue and visits < self.max_pages:
            url, depth = queue.popleft()
            if not self._allowed(url):
                continue
            visits += 1
            try:
                visit = self._visit(url, depth, first=False)
            except _Broken as broken:
                self.failures.append(Failure(url, f"{url} {broken.detail}", transient=broken.transient))
                continue
            except _Skipped:
                continue
            if depth < self.max_depth:
                for link in visit.links:
                    if link not in queued:
                        queued.add(link)
                        queue.append((link, depth + 1))
            if visit.item is not None and visit.item.key not in listed:
                listed.add(visit.item.key)
                yield visit.item

    def _download(self, item: Item, out: BinaryIO) -> None:
        if self._robots is None:
            try:
                self._load_robots()
            except SourceUnreachable as error:
                raise ItemUnavailable(error.message) from error
        if not self._allowed(item.url):
            raise ItemUnavailable(f"The robots.txt of {_site(self.origin)} now forbids {item.url}", transient=False)
        try:
            url, response = self._open("GET", item.url)
        except _Broken as broken:
            raise ItemUnavailable(f"{item.url} {broken.detail}", transient=broken.transient) from None
        except _Skipped:
            raise ItemUnavailable(f"{item.url} now redirects to a forbidden page", transient=False) from None
        with closing(response):
            if response.status_code != 200:
                answer = _status(response)
                raise ItemUnavailable(f"{url} {answer.detail}", transient=answer.transient)
            length = response.headers.get("content-length", "")
            if length.isdigit() and int(length) > self.max_bytes:
                raise ItemTooLarge(f"{item.name} is larger than the download limit")
            try:
                self._copy(response.iter_bytes(), out, item)
            except httpx.HTTPError as error:
                raise ItemUnavailable(f"{url} {_network(error, self.timeout).detail}") from error

    def close(self) -> None:
        """Close the HTTP connections (a client passed in is left to its owner)."""
        if self._client is not None and self._owns_client:
            self._client.close()
            self._client = None

    # -- one URL -------------------------------------------------------------------------------------------

    def _visit(self, url: str, depth: int, *, first: bool) -> _Visit:
        suffix = PurePosixPath(urlsplit(url).path).suffix.lower()
        method = "HEAD" if suffix in self.documents and not first else "GET"
        final, response = self._open(method, url)
        if method == "HEAD" and response.status_code in (405, 501):
            response.close()
            final, response = self._open("GET", url)
        with closing(response):
            if response.status_code != 200:
                raise _status(response)
            mime = _mime(response)
            if first and _looks_like_sitemap(final, mime):
                return _Visit(links=self._sitemap_links(self._read(response, _MAX_SITEMAP_BYTES), 0), sitemap=True)
            if mime in HTML_TYPES:
                return self._page(final, response, depth)
            name = _disposition_name(response.headers.get("content-disposition", "")) or _url_name(final)
            document_type = self._document_type(mime, PurePosixPath(name).suffix.lower())
            if document_type is None:
                return _Visit()
            return _Visit(item=self._document(final, response, name or "document", document_type))

    def _page(self, url: str, response: httpx.Response, depth: int) -> _Visit:
        from bs4 import BeautifulSoup

        body = self._read(response, self.max_page_bytes)
        soup = BeautifulSoup(body, "lxml", from_encoding=response.charset_encoding)
        rules = {response.headers.get("x-robots-tag", "").lower()}
        for meta in soup.find_all("meta", attrs={"name": re.compile(r"^(robots|knowledgeportal)$", re.I)}):
            rules.add(str(meta.get("content", "")).lower())
        directives = {part.strip() for rule in rules for part in rule.split(",")}
        links: list[str] = []
        if depth < self.max_depth and not directives & {"nofollow", "none"}:
            base = url
            tag = soup.find("base", href=True)
            if tag is not None:
                base = urljoin(url, str(tag.get("href")))
            for anchor in soup.find_all(["a", "area"], href=True):
                if "nofollow" in (anchor.get_attribute_list("rel") or []):
                    continue
                link = canonical_url(str(anchor.get("href")), base)
                if link is not None and _origin(link) == self.origin and link not in links:
                    links.append(link)
        if directives & {"noindex", "none"}:
            return _Visit(links=links)
        item = Item(
            key=url,
            name=_page_name(url),
            url=url,
            size=len(body),
            version="sha256:" + hashlib.sha256(body).hexdigest(),
            mime_type="text/html",
        )
        return _Visit(item=item, links=links)

    def _document(self, url: str, response: httpx.Response, name: str, mime: str) -> Item:
        if DOCUMENT_EXTENSIONS.get(PurePosixPath(name).suffix.lower()) != mime:
            name += next((suffix for suffix, known in DOCUMENT_EXTENSIONS.items() if known == mime), "")
        length = response.headers.get("content-length", "")
        version = response.headers.get("etag") or response.headers.get("last-modified") or ""
        return Item(
            key=url,
            name=name,
            url=url,
            size=int(length) if length.isdigit() else None,
            version=version,
            mime_type=mime,
        )

    def _document_type(self, mime: str, suffix: str) -> str | None:
        mime = _TYPE_ALIASES.get(mime, mime)
        if mime in self.documents.values():
            return mime
        if suffix in self.documents and (mime in _GENERIC_TYPES or mime == "text/plain"):
            return self.documents[suffix]
        return None

    # -- sitemaps --------------------------------------------------------------------------------------------

    def _sitemap_pages(self, url: str) -> list[str]:
        """The same-site pages of the sitemap at ``url``; what cannot be read becomes a failure."""
        if not self._allowed(url):
            return []
        try:
            _, response = self._open("GET", url)
            with closing(response):
                if response.status_code != 200:
                    raise _status(response)
                body = self._read(response, _MAX_SITEMAP_BYTES)
            return self._sitemap_links(body, 0)
        except _Broken as broken:
            self.failures.append(Failure(url, f"The sitemap {url} {broken.detail}", transient=broken.transient))
        except _Skipped:
            pass
        return []

    def _sitemap_links(self, body: bytes, nesting: int) -> list[str]:
        from lxml import etree

        if body[:2] == b"\x1f\x8b":
            body = _gunzip(body, _MAX_SITEMAP_BYTES)
        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
        try:
            root = etree.fromstring(body, parser=parser)
        except etree.XMLSyntaxError as error:
            raise _Broken(f"is not a readable sitemap ({error})", transient=False) from None
        kind = etree.QName(root).localname
        if kind not in _SITEMAP_TAGS:
            raise _Broken("is not a sitemap", transient=False)
        urls: list[str] = []
        for loc in root.iter("{*}loc"):
            url = canonical_url((loc.text or "").strip())
            if url is not None and _origin(url) == self.origin:
                urls.append(url)
        if kind == "urlset":
            return urls
        pages: list[str] = []
        for url in urls:
            if nesting + 1 >= _MAX_SITEMAP_NESTING:
                break
            if not self._allowed(url):
                continue
            try:
                _, response = self._open("GET", url)
                with closing(response):
                    if response.status_code != 200:
                        raise _status(response)
                    pages.extend(self._sitemap_links(self._read(response, _MAX_SITEMAP_BYTES), nesting + 1))
            except _Broken as broken:
                self.failures.append(Failure(url, f"The sitemap {url} {broken.detail}", transient=broken.transient))
            except _Skipped:
                continue
        return pages

    # -- HTTP ------------------------------------------------------------------------------------------------

    def _http(self) -> httpx.Client:
        if self._client is None:
            # the environment's proxies are not read: the engines take their whole configuration as arguments
            self._client = httpx.Client(
                timeout=self.timeout, headers={"User-Agent": self.user_agent}, follow_redirects=False, trust_env=False
            )
        return self._client

    def _open(self, method: str, url: str) -> tuple[str, httpx.Response]:
        """Send ``method`` to ``url``, following redirects within the site; the caller closes the response."""
        client = self._http()
        current = url
        for _ in range(_MAX_REDIRECTS + 1):
            self._wait()
            try:
                response = client.send(client.build_request(method, current), stream=True)
            except httpx.HTTPError as error:
                raise _network(error, self.timeout) from None
            if not (response.is_redirect and response.headers.get("location")):
                return current, response
            response.close()
            target = canonical_url(response.headers["location"], current)
            if target is None or _origin(target) != self.origin:
                raise _Broken(f"redirects to another site ({target or response.headers['location']})", transient=False)
            if not self._allowed(target):
                raise _Skipped
            current = target
        raise _Broken("redirects too many times", transient=False)

    def _read(self, response: httpx.Response, limit: int) -> bytes:
        body = bytearray()
        try:
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > limit:
                    raise _Broken(f"is larger than {limit // 1024} KB", transient=False)
        except httpx.HTTPError as error:
            raise _network(error, self.timeout) from None
        return bytes(body)

    def _wait(self) -> None:
        if self._delay:
            pause = self._last_request + self._delay - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        self._last_request = time.monotonic()

    # -- robots.txt ------------------------------------------------------------------------------------------

    def _load_robots(self) -> RobotFileParser:
        robots = RobotFileParser()
        url = _site(self.origin) + "/robots.txt"
        self._delay = 0.0
        try:
            _, response = self._open("GET", url)
            with closing(response):
                if response.status_code >= 500:
                    raise SourceUnreachable(
                        f"The robots.txt of {_site(self.origin)} answered {response.status_code}; "
                        "the site may not be crawled until it answers"
                    )
                if response.status_code == 200:
                    text = self._read(response, _MAX_ROBOTS_BYTES).decode("utf-8", "replace")
                    robots.parse(text.splitlines())
                else:  # RFC 9309: an unavailable robots.txt (4xx) allows everything
                    robots.parse([])
        except _Broken as broken:
            if broken.transient:
                raise SourceUnreachable(f"The site {_site(self.origin)} {broken.detail}") from None
            robots.parse([])  # too large or redirected away: treated as unavailable
        except _Skipped:
            robots.parse([])
        delay = robots.crawl_delay(self.user_agent)
        rate = robots.request_rate(self.user_agent)
        seconds = float(delay) if delay is not None else 0.0
        if delay is None and rate is not None and rate.requests:
            seconds = rate.seconds / rate.requests
        self._delay = min(seconds, self.max_crawl_delay)
        self._robots = robots
        return robots

    def _allowed(self, url: str) -> bool:
        return self._robots is None or self._robots.can_fetch(self.user_agent, url)


def canonical_url(url: str, base: str | None = None) -> str | None:
    """``url`` (resolved against ``base``) in the form the crawl uses as a key, or None if not http(s)."""
    try:
        parts = urlsplit(urljoin(base, url.strip()) if base else url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        netloc += f":{port}"
    path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    query = quote(parts.query, safe="/?%:@!$&'()*+,;=-._~")
    return urlunsplit((scheme, netloc, path, query, ""))


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname or "", parts.port


def _site(origin: tuple[str, str, int | None]) -> str:
    scheme, host, port = origin
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" + (f":{port}" if port is not None else "")


def _mime(response: httpx.Response) -> str:
    return str(response.headers.get("content-type", "")).split(";")[0].strip().lower()


def _looks_like_sitemap(url: str, mime: str) -> bool:
    path = urlsplit(url).path.lower()
    return mime in ("application/xml", "text/xml", "application/gzip", "application/x-gzip") or path.endswith(
        (".xml", ".xml.gz")
    )


def _status(response: httpx.Response) -> _Broken:
    code = response.status_code
    text = f"answered {code} {response.reason_phrase}".rstrip()
    return _Broken(text, transient=code == 429 or code >= 500)


def _network(error: httpx.HTTPError, timeout: float) -> _Broken:
    if isinstance(error, httpx.TimeoutException):
        return _Broken(f"did not answer within {timeout:g} s", transient=True)
    return _Broken(f"cannot be reached ({str(error) or type(error).__name__})", transient=True)


def _gunzip(body: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except (zlib.error, gzip.BadGzipFile) as error:
        raise _Broken(f"is not a readable gzip file ({error})", transient=False) from None
    if len(out) > limit:
        raise _Broken(f"is larger than {limit // 1024} KB once unpacked", transient=False)
    return out


def _url_name(url: str) -> str:
    segments = [part for part in urlsplit(url).path.split("/") if part]
    return _UNSAFE_NAME.sub("_", unquote(segments[-1])).strip(" .") if segments else ""


def _page_name(url: str) -> str:
    name = _url_name(url)
    stem = PurePosixPath(name)
    if stem.suffix.lower() in _PAGE_SUFFIXES:
        name = stem.stem
    return (name or "index") + ".html"


def _disposition_name(header: str) -> str:
    if "filename" not in header.lower():
        return ""
    message = email.message.Message()
    message["content-disposition"] = header
    name = str(message.get_filename() or "")
    return _UNSAFE_NAME.sub("_", PurePosixPath(name.replace("\\", "/")).name).strip(" .")


def _check_count(value: object, name: str, *, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise SourceConfigError(f"{name} must be a whole number of at least {minimum}")
