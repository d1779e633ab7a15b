"""How answers and sources look: citations as links, passages with their highlight marked.

Plain functions returning safe HTML, so the templates stay simple and every piece of text from a
document or a model is escaped exactly once, here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext as _

from knowledge.models import Message

_CITATION = re.compile(r"\[(\d{1,3})\]")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class SourceView:
    number: int
    anchor: str
    document_id: int
    #: the passage's chunk (0 when unknown), for the link to the original
    chunk_id: int
    title: str
    page: int | None
    heading: str
    score: float
    highlight: str
    passage: SafeString
    cited: bool
    #: where the document lives outside the portal (a synced web page or file); "" for an upload
    origin_url: str = ""


@dataclass(frozen=True)
class MessageView:
    message: Message
    anchor: str
    answer: SafeString
    sources: list[SourceView]
    #: the closest passages to a question none of them answers (then ``sources`` is empty)
    related: list[SourceView]

    @property
    def pk(self) -> int:
        return self.message.pk

    @property
    def seconds(self) -> float:
        return (self.message.latency_ms or 0) / 1000

    @property
    def shown_sources(self) -> list[SourceView]:
        """The sources the answer cites (all of them when it cites none), shown first."""
        cited = [source for source in self.sources if source.cited]
        return cited or self.sources

    @property
    def other_sources(self) -> list[SourceView]:
        """Passages that were retrieved but not cited: folded away, still one click from the reader."""
        shown = {source.number for source in self.shown_sources}
        return [source for source in self.sources if source.number not in shown]


def source_anchor(message_anchor: str, number: int) -> str:
    return f"{message_anchor}-s{number}"


def answer_html(text: str, *, sources: list[dict[str, Any]], anchor: str) -> SafeString:
    """The answer escaped, in paragraphs, each ``[n]`` a link to source n (when there is such a source)."""

    def cite(match: re.Match[str]) -> str:
        number = int(match.group(1))
        if not 1 <= number <= len(sources):
            return match.group(0)
        source = sources[number - 1]
        label = _("Source %(number)d: %(title)s") % {"number": number, "title": source.get("title", "")}
        if source.get("page"):
            label += ", " + _("page %(page)s") % {"page": source["page"]}
        return format_html(
            '<a class="cite" href="#{}" aria-label="{}">[{}]</a>', source_anchor(anchor, number), label, number
        )

    paragraphs = [p.strip() for p in _PARAGRAPH_BREAK.split(text.strip()) if p.strip()]
    parts = []
    for paragraph in paragraphs:
        linked = _CITATION.sub(cite, str(escape(paragraph)))
        parts.append("<p>" + linked.replace("\n", "<br>") + "</p>")
    # Every piece above is escaped or built by format_html.
    return mark_safe("".join(parts))


def passage_html(text: str, highlight: str) -> SafeString:
    """The passage escaped, with its highlight (the sentences that answer) wrapped in ``<mark>``."""
    needle = highlight.strip().rstrip("…").strip()
    start = text.find(needle) if needle else -1
    if start < 0:
        return escape(text)
    end = start + len(needle)
    return format_html("{}<mark>{}</mark>{}", text[:start], text[start:end], text[end:])


def _source_view(anchor: str, number: int, source: dict[str, Any], cited: bool) -> SourceView:
    return SourceView(
        number=number,
        anchor=source_anchor(anchor, number),
        document_id=int(source.get("document_id") or 0),
        chunk_id=int(source.get("id") or 0),
        title=str(source.get("title", "")),
        page=source.get("page"),
        heading=str(source.get("heading", "")),
        score=float(source.get("score") or 0.0),
        highlight=str(source.get("highlight", "")),
        passage=passage_html(str(source.get("text", "")), str(source.get("highlight", ""))),
        cited=cited,
        origin_url=_web_link(str(source.get("origin_url") or "")),
    )


def _web_link(url: str) -> str:
    # only a web address becomes a link (never javascript: or a server path)
    return url if url.startswith(("https://", "http://")) else ""


def message_view(message: Message) -> MessageView:
    anchor = f"m{message.pk}"
    stored = list(message.sources or [])
    # a question no passage answers keeps its closest passages, marked as such (see message_create)
    sources = [source for source in stored if not source.get("related")]
    related = [source for source in stored if source.get("related")]
    cited = {int(n) for n in _CITATION.findall(message.answer)}
    return MessageView(
        message=message,
        anchor=anchor,
        answer=answer_html(message.answer, sources=sources, anchor=anchor),
        sources=[_source_view(anchor, n, source, n in cited) for n, source in enumerate(sources, start=1)],
        related=[_source_view(f"{anchor}-r", n, source, False) for n, source in enumerate(related, start=1)],
    )
