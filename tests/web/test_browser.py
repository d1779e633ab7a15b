"""The pages in a real browser (Chromium through Playwright) against a live server.

Documents are really ingested: by a real Celery worker for the upload scenario, in this process
for the chat scenarios. Set KP_SCREENSHOTS_DIR to also save screenshots of the main pages.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission

from knowledge.models import Collection, Conversation, Document, Message
from tests.conftest import wait_for
from tests.web.support import STRICT_POLICY, screenshot, sign_in

pytestmark = [pytest.mark.slow]

expect: Any = pytest.importorskip("playwright.sync_api", reason="playwright is not installed").expect

#: reports every Content-Security-Policy violation of a document to the test (installed before its scripts run)
_REPORT_CSP_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => window.kpCspViolation(
  `${event.violatedDirective} refused ${event.blockedURI || "inline"} on ${document.location.pathname}`
  + ` (${event.sourceFile}:${event.lineNumber})`));
"""


@pytest.fixture
def csp_violations() -> list[str]:
    """What the Content-Security-Policy refused on the pages of this test (each test checks it is empty)."""
    return []


@pytest.fixture
def new_page(new_page: Callable[..., Any], csp_violations: list[str]) -> Iterator[Callable[..., Any]]:
    """The pages of these tests report what the Content-Security-Policy refuses, by event and in the console."""

    def open_page(**kwargs: Any) -> Any:
        page = new_page(**kwargs)
        page.expose_function("kpCspViolation", lambda text: csp_violations.append(text))
        page.add_init_script(_REPORT_CSP_VIOLATIONS)
        page.on(
            "console",
            lambda message: "Content Security Policy" in message.text and csp_violations.append(message.text),
        )
        return page

    yield open_page
    assert csp_violations == [], "the Content-Security-Policy refused parts of the pages"


@pytest.mark.worker
def test_staff_uploads_files_and_watches_them_become_ready_or_fail_with_a_reason(
    celery_worker: Any, new_page: Callable[..., Any], make_user: Callable[..., Any], corpus_dir: Path
) -> None:
    curator = make_user("curator", staff=True)
    curator.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_document", "add_document", "change_document", "delete_document"])
    )
    page = new_page()
    sign_in(page, "curator", next_url="/documents/")
    files = ["pdf_reliance_3p.pdf", "txt_utf8_french_moliere.txt", "pdf_encrypted_password.pdf"]
    page.set_input_files("#id_file", [str(corpus_dir / name) for name in files])

    # Each file goes up on its own, with its own progress bar and verdict.
    expect(page.locator(".upload-item progress")).to_have_count(3)
    expect(page.locator('.upload-item[data-state="done"]')).to_have_count(3)

    # The list refreshes itself until every document is ready or failed, with the reason shown.
    expect(page.locator('tr.doc-row[data-status="ready"]')).to_have_count(2, timeout=150_000)
    failed = page.locator('tr.doc-row[data-status="failed"]')
    expect(failed).to_have_count(1, timeout=30_000)
    expect(failed).to_contain_text("pdf_encrypted_password.pdf")
    expect(failed.locator(".reason")).to_contain_text("password-protected")
    expect(page.locator("#document-list")).to_have_attribute("data-polling", "false")
    screenshot(page, "documents", full_page=True)

    # The same file again is refused for that file alone.
    page.set_input_files("#id_file", str(corpus_dir / "pdf_reliance_3p.pdf"))
    refused = page.locator('.upload-item[data-state="error"]')
    expect(refused).to_contain_text("Already in this collection")
    assert Document.objects.count() == 3

    # One document's page: status, pages and its chunks with their page numbers.
    page.click("a.doc-title:text('pdf_reliance_3p.pdf')")
    expect(page.locator("h1")).to_have_text("pdf_reliance_3p.pdf")
    expect(page.locator(".doc-status-line .badge")).to_have_text("Ready")
    expect(page.locator(".facts")).to_contain_text("3")
    expect(page.locator(".chunk").first).to_be_visible()
    expect(page.locator(".chunk-page").first).to_have_text(re.compile(r"page \d"))
    screenshot(page, "document")


def _ask(page: Any, question: str) -> Any:
    """Type a question, press Enter and wait for the streamed answer to settle; return its message."""
    count = page.locator("#messages article.message:not(.pending)").count()
    page.fill("#id_question", question)
    page.press("#id_question", "Enter")
    answered = page.locator("#messages article.message:not(.pending)")
    expect(answered).to_have_count(count + 1, timeout=60_000)
    return answered.nth(count)


def test_a_user_asks_and_gets_an_answer_citing_the_right_document_and_page(
    new_page: Callable[..., Any], make_user: Callable[..., Any], ingest: Callable[..., Any], corpus_dir: Path
) -> None:
    ingest(corpus_dir / "pdf_reliance_3p.pdf")
    ingest(corpus_dir / "txt_utf8_french_moliere.txt")
    make_user("reader")
    page = new_page()
    sign_in(page, "reader")

    # The first question starts a conversation; its page asks it and the answer streams in.
    page.fill("#id_question", "What is the market capitalisation of Reliance Industries?")
    page.click("button.ask-button")
    page.wait_for_url(re.compile(r"/chat/\d+/$"))
    message = page.locator("#messages article.message:not(.pending)").first
    expect(message.locator(".answer-text a.cite").first).to_be_visible(timeout=60_000)
    expect(page.locator("#conversation-title")).to_have_text(
        "What is the market capitalisation of Reliance Industries?"
    )

    # [1] leads to its source: the document, its page and the quoted passage.
    citation = message.locator(".answer-text a.cite").first
    target = citation.get_attribute("href")
    citation.click()
    source = page.locator(target)
    expect(source).to_be_focused()
    expect(source.locator(".source-title")).to_have_text("pdf_reliance_3p.pdf")
    expect(source.locator(".source-page")).to_have_text(re.compile(r"page [23]"))
    expect(source.locator(".source-quote")).to_contain_text(re.compile("capitalisation", re.IGNORECASE))
    source.locator("summary").click()
    expect(source.locator("details.passage mark")).to_be_visible()

    # A follow-up question in the same conversation, then a thumbs up stored on the message.
    follow_up = _ask(page, "Who is the founder chairman?")
    expect(follow_up.locator(".answer-text")).to_contain_text("Ambani")
    screenshot(page, "chat", top=follow_up)
    screenshot(page, "chat-phone", phone=True, top=follow_up)
    follow_up.locator("button.thumb.up").click()
    expect(follow_up.locator("button.thumb.up")).to_have_attribute("aria-pressed", "true")
    stored = list(Message.objects.order_by("created_at"))
    assert [m.question for m in stored] == [
        "What is the market capitalisation of Reliance Industries?",
        "Who is the founder chairman?",
    ]
    assert stored[0].sources[0]["title"] == "pdf_reliance_3p.pdf" and stored[0].sources[0]["page"] in (2, 3)
    assert stored[0].cited_chunks.exists() and stored[0].mode == "extractive"
    wait_for(lambda: Message.objects.get(pk=stored[1].pk).feedback == 1, timeout=10)

    # Reloading shows the conversation as stored; it is listed on the side.
    page.reload()
    expect(page.locator("#messages article.message")).to_have_count(2)
    expect(page.locator("#conversation-list a[aria-current=page]")).to_contain_text("market capitalisation")


def test_a_user_without_access_never_sees_a_restricted_collection(
    new_page: Callable[..., Any], make_user: Callable[..., Any], ingest: Callable[..., Any], corpus_dir: Path
) -> None:
    hr = Group.objects.create(name="hr")
    restricted = Collection.objects.create(slug="hr-files", name="HR files", is_public=False)
    restricted.groups.add(hr)
    ingest(corpus_dir / "txt_utf8_french_moliere.txt", collection=restricted)
    ingest(corpus_dir / "md_codeblock.md")
    make_user("outsider")

    page = new_page()
    sign_in(page, "outsider")
    options = page.locator("#id_collection option").all_inner_texts()
    assert "HR files" not in options and "All my collections" in options

    page.fill("#id_question", "Qui était Molière ?")
    page.press("#id_question", "Enter")
    page.wait_for_url(re.compile(r"/chat/\d+/$"))
    answer = page.locator("#messages article.message:not(.pending)").first
    expect(answer.locator(".answer-text")).not_to_be_empty(timeout=60_000)
    expect(answer).not_to_contain_text("txt_utf8_french_moliere.txt")
    expect(page.locator("#id_collection option", has_text="HR files")).to_have_count(0)
    message = Message.objects.get()
    assert all(source["title"] != "txt_utf8_french_moliere.txt" for source in message.sources)
    assert not message.cited_chunks.filter(document__collection=restricted).exists()


def test_the_french_interface_follows_the_browser_and_the_switch(
    new_page: Callable[..., Any], make_user: Callable[..., Any]
) -> None:
    reader = make_user("lecteur")
    # Rows written directly: this test is about the interface's language, not about ingestion.
    collection = Collection.objects.get_or_create(slug="default", defaults={"name": "Default"})[0]
    Document.objects.create(
        collection=collection, title="guide.pdf", file="documents/x/guide.pdf", sha256="a" * 64, status="ready"
    )
    Conversation.objects.create(user=reader, title="Qui a fondé Reliance ?")
    page = new_page(locale="fr-FR")
    page.goto("/")
    expect(page.locator("h1")).to_have_text("Se connecter")
    sign_in(page, "lecteur")
    expect(page.locator("html")).to_have_attribute("lang", "fr")
    expect(page.locator("h1")).to_have_text("Interrogez vos documents")
    expect(page.locator(".welcome")).to_contain_text("1 document est prêt à répondre à vos questions.")
    expect(page.locator("#conversation-list")).to_contain_text("Qui a fondé Reliance ?")
    expect(page.locator("button.ask-button")).to_contain_text("Demander")
    expect(page.get_by_label("Citer les sources")).to_be_checked()
    screenshot(page, "home-fr")

    page.click(".langpick button[value=en]")
    expect(page.locator("h1")).to_have_text("Ask your documents")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    page.click(".langpick button[value=fr]")
    expect(page.locator("h1")).to_have_text("Interrogez vos documents")


def test_a_generated_answer_streams_in_piece_by_piece(
    new_page: Callable[..., Any], make_user: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The packaged model needs about a minute per answer on a shared CPU: a slow fake stream stands
    # in for it, so what is tested is the page reading the stream as it comes.
    from knowledge.models import Chunk
    from knowledge.services import answering
    from llm.errors import ModelUnavailableError

    collection = Collection.objects.get_or_create(slug="default", defaults={"name": "Default"})[0]
    document = Document.objects.create(
        collection=collection, title="guide.pdf", file="documents/x/guide.pdf", sha256="a" * 64, status="ready"
    )
    chunk = Chunk.objects.create(document=document, ordinal=0, text="Reliance was founded by Dhirubhai Ambani.", page=4)
    source = answering.Source(
        id=chunk.pk,
        document_id=document.pk,
        title="guide.pdf",
        page=4,
        score=0.9,
        text=chunk.text,
        highlight="founded by Dhirubhai Ambani",
    )

    def stream(**kwargs: Any) -> Any:
        if kwargs["question"].startswith("Break"):
            yield answering.StreamPiece("Half an ans")
            raise ModelUnavailableError("the model server is down")
        for piece in ("Reliance ", "was founded ", "by Dhirubhai ", "Ambani [1]."):
            time.sleep(0.4)
            yield answering.StreamPiece(piece)
        yield answering.Answer(
            output="Reliance was founded by Dhirubhai Ambani [1].",
            sources=[source],
            prompt_tokens=30,
            completion_tokens=9,
            seconds=1.6,
            model="fake-model",
            mode=kwargs["mode"],
        )

    monkeypatch.setattr(answering, "answer_question_stream", stream)
    make_user("reader")
    page = new_page()
    sign_in(page, "reader")
    page.check("input[name=mode][value=generative]")
    page.fill("#id_question", "Who founded Reliance?")
    page.press("#id_question", "Enter")
    page.wait_for_url(re.compile(r"/chat/\d+/$"))

    # Part of the answer is on the page while the rest is still being generated.
    streaming = page.locator("article.message.pending .answer-text")
    expect(streaming).to_contain_text("Reliance was founded")
    assert "Ambani [1]" not in streaming.inner_text()
    answer = page.locator("#messages article.message:not(.pending)")
    expect(answer.locator("a.cite")).to_have_text("[1]")
    expect(answer.locator(".mode-tag")).to_have_text("Written by fake-model")
    expect(answer.locator(".source-page")).to_have_text("page 4")
    assert Message.objects.get().mode == "generative"

    # A failure after the stream has started is shown in place, and the question is given back.
    page.fill("#id_question", "Break the model")
    page.press("#id_question", "Enter")
    expect(page.locator("article.message.failed [role=alert]")).to_contain_text("language model is unavailable")
    expect(page.locator("#id_question")).to_have_value("Break the model")
    assert Message.objects.count() == 1


def test_the_pages_admin_and_api_viewers_work_under_the_content_security_policy(
    new_page: Callable[..., Any], make_user: Callable[..., Any], csp_violations: list[str]
) -> None:
    boss = make_user("boss", staff=True)
    boss.is_superuser = True
    boss.save()
    collection = Collection.objects.get_or_create(slug="default", defaults={"name": "Default"})[0]
    Document.objects.create(
        collection=collection, title="guide.pdf", file="documents/x/guide.pdf", sha256="a" * 64, status="failed"
    )
    page = new_page()
    login = page.goto("/accounts/login/")
    policy = login.headers["content-security-policy"]
    for directive in STRICT_POLICY:
        assert directive in policy.split("; ")
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    sign_in(page, "boss")
    assert "script-src 'self'" in page.goto("/").headers["content-security-policy"]

    # An admin change page with its widgets (the two-box group picker, the slug filled in from the name).
    page.goto(f"/admin/knowledge/collection/{collection.pk}/change/")
    expect(page.locator("#id_groups_from")).to_be_visible()
    page.fill("#id_name", "Default renamed")
    page.click("input[name=_save]")
    expect(page.locator(".messagelist .success")).to_contain_text("Default renamed")
    page.goto("/admin/knowledge/collection/add/")
    page.locator("#id_name").press_sequentially("Team notes")
    expect(page.locator("#id_slug")).to_have_value("team-notes")
    # The document list's status badges are styled from the stylesheet.
    page.goto("/admin/knowledge/document/")
    badge = page.locator(".kp-badge").first
    expect(badge).to_have_text("Failed")
    assert badge.evaluate("element => getComputedStyle(element).backgroundColor") == "rgb(185, 28, 28)"

    # The API viewers, with their relaxed style policy on their own pages only.
    swagger = page.goto("/swagger/")
    assert "'unsafe-inline'" in swagger.headers["content-security-policy"]
    assert "script-src 'self';" in swagger.headers["content-security-policy"] + ";"
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Knowledge Portal API", timeout=30_000)
    page.goto("/redoc/")
    expect(page.locator("h1", has_text="Knowledge Portal API")).to_be_visible(timeout=30_000)
    # The one refusal wanted: ReDoc's menu shows its maker's logo from their CDN (nothing leaves the portal).
    expect(page.get_by_role("link", name="API docs by Redocly")).to_be_attached()
    for _ in range(100):  # the browser's reports come in as Playwright's calls run
        if any("logo-mini.svg" in v for v in csp_violations):
            break
        page.wait_for_timeout(100)
    expected = [v for v in csp_violations if "cdn.redoc.ly/redoc/logo-mini.svg" in v]
    assert expected and all("img-src" in v for v in expected)
    csp_violations[:] = [v for v in csp_violations if v not in expected]
