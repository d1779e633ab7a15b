"""Opening a cited source in its original: the PDF page drawn with the passage marked, or the passage in context.

Real documents: PDFs made here with fpdf2 and text files, ingested in this process.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.files.base import ContentFile
from django.test import Client
from django.urls import reverse
from PIL import Image

from knowledge.models import Chunk, Collection, Document, Message
from knowledge.services import conversations
from knowledge.services.originals import _fold, _matched_runs

pytestmark = pytest.mark.django_db

LIGHTHOUSE = (
    "The Zephyr Point lighthouse was built in 1872 by the engineer Margaret Ellery on the northern cliffs. "
    "Its lamp burned whale oil until 1904, when it was converted to kerosene, and electricity came in 1931. "
    "The keepers lived in a stone cottage beside the tower with their families and a small vegetable garden. "
    "Storms in the winter of 1899 broke the lantern glass twice, and the lamp was kept lit with a spare burner. "
    "Today the tower is a museum, open from April to October, and the lamp still turns every night at dusk."
)
HARBOUR = (
    "The harbour of Greyhaven sheltered forty fishing boats in its best years, most of them catching herring. "
    "A breakwater of granite blocks, finished in 1888, protects the inner basin from the westerly gales. "
    "The fish market opened at five every morning and closed when the last crate of the day was sold. "
    "Ship owners met in the customs house, a brick building whose clock was set by the harbour master. "
    "In 1952 the herring left the bay, and the fleet turned to crab and lobster pots along the coast."
)


def _client_for(user: Any) -> Client:
    client = Client(HTTP_ACCEPT_LANGUAGE="en")
    client.force_login(user)
    return client


def _pdf(path: Path, pages: list[str], *, user_password: str = "") -> Path:
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(auto=False)
    for text in pages:
        pdf.add_page()
        pdf.set_font("Helvetica", size=12)
        pdf.multi_cell(0, 7, text)
    if user_password:
        pdf.set_encryption(owner_password="owner-secret", user_password=user_password)
    pdf.output(str(path))
    return path


def _png(content: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(content))
    image.load()
    return image.convert("RGB")


def _yellow_pixels(image: Image.Image) -> int:
    """Pixels of the highlight's colour (yellow over white paper), not found on a plain black-on-white page."""
    data = image.tobytes()
    pixels = zip(data[0::3], data[1::3], data[2::3], strict=True)
    return sum(1 for r, g, b in pixels if r > 230 and 200 < g < 245 and b < 180)


@pytest.fixture
def reader(make_user: Callable[..., Any]) -> Any:
    return make_user("reader")


@pytest.fixture
def guide(tmp_path: Path, ingest: Callable[..., Any]) -> Document:
    document: Document = ingest(_pdf(tmp_path / "guide.pdf", [HARBOUR, LIGHTHOUSE]))
    assert document.status == Document.Status.READY, document.error
    return document


def _chunk_on(document: Document, page: int) -> Chunk:
    chunk = Chunk.objects.filter(document=document, page=page).first()
    assert chunk is not None, list(Chunk.objects.filter(document=document).values("page", "text"))
    return chunk


def test_a_reader_opens_the_cited_pdf_page_with_its_image(reader: Any, guide: Document) -> None:
    chunk = _chunk_on(guide, 2)
    url = reverse("document-original", args=[guide.pk]) + f"?chunk={chunk.pk}"
    assert url == f"/documents/{guide.pk}/view/?chunk={chunk.pk}"
    response = _client_for(reader).get(url)
    assert response.status_code == 200
    page = response.content.decode()
    image_url = reverse("document-original-page", args=[guide.pk, 2]) + f"?chunk={chunk.pk}"
    assert f'src="{image_url}"' in page
    assert "guide.pdf" in page and "Page 2 of 2" in page
    assert f"/documents/{guide.pk}/view/?chunk={chunk.pk}&amp;page=1" in page  # the previous page
    assert f'href="{reverse("document-detail", args=[guide.pk])}"' not in page  # a reader has no document pages


def test_the_page_image_marks_the_passage(reader: Any, guide: Document) -> None:
    chunk = _chunk_on(guide, 2)
    client = _client_for(reader)
    marked = client.get(reverse("document-original-page", args=[guide.pk, 2]) + f"?chunk={chunk.pk}")
    plain = client.get(reverse("document-original-page", args=[guide.pk, 2]))
    assert marked.status_code == plain.status_code == 200
    assert marked["Content-Type"] == "image/png" and marked.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert "private" in marked["Cache-Control"]
    marked_image, plain_image = _png(marked.content), _png(plain.content)
    # A4 (595 x 842 points) at 1.5 pixels a point
    assert marked_image.size == plain_image.size and 880 <= marked_image.size[0] <= 900
    assert marked_image.tobytes() != plain_image.tobytes()
    assert _yellow_pixels(plain_image) == 0
    assert _yellow_pixels(marked_image) > 5000  # five lines of text under the highlight


def test_a_passage_of_another_page_leaves_the_page_unmarked(reader: Any, guide: Document) -> None:
    chunk = _chunk_on(guide, 2)
    response = _client_for(reader).get(reverse("document-original-page", args=[guide.pk, 1]) + f"?chunk={chunk.pk}")
    assert response.status_code == 200
    assert _yellow_pixels(_png(response.content)) == 0


def test_without_a_chunk_the_page_asked_for_or_the_first_is_shown(reader: Any, guide: Document) -> None:
    client = _client_for(reader)
    first = client.get(reverse("document-original", args=[guide.pk])).content.decode()
    assert reverse("document-original-page", args=[guide.pk, 1]) in first and "Page 1 of 2" in first
    second = client.get(reverse("document-original", args=[guide.pk]) + "?page=2").content.decode()
    assert f'src="{reverse("document-original-page", args=[guide.pk, 2])}"' in second


def test_a_page_out_of_range_is_not_found(reader: Any, guide: Document) -> None:
    client = _client_for(reader)
    assert client.get(reverse("document-original", args=[guide.pk]) + "?page=3").status_code == 404
    assert client.get(reverse("document-original", args=[guide.pk]) + "?page=0").status_code == 404
    assert client.get(reverse("document-original", args=[guide.pk]) + "?page=x").status_code == 404
    assert client.get(reverse("document-original-page", args=[guide.pk, 3])).status_code == 404
    assert client.get(reverse("document-original-page", args=[guide.pk, 0])).status_code == 404


def test_a_chunk_of_another_document_is_not_found(
    reader: Any, guide: Document, tmp_path: Path, ingest: Callable[..., Any]
) -> None:
    other = ingest(_pdf(tmp_path / "other.pdf", [LIGHTHOUSE.replace("Zephyr", "Boreal")]))
    foreign = Chunk.objects.filter(document=other).first()
    assert foreign is not None
    client = _client_for(reader)
    assert client.get(reverse("document-original", args=[guide.pk]) + f"?chunk={foreign.pk}").status_code == 404
    page_url = reverse("document-original-page", args=[guide.pk, 1])
    assert client.get(page_url + f"?chunk={foreign.pk}").status_code == 404
    for junk in ("999999", "abc", "²", "-1", "1" * 30):
        assert client.get(reverse("document-original", args=[guide.pk]), {"chunk": junk}).status_code == 404


def test_a_user_who_may_not_read_the_collection_gets_not_found(
    make_user: Callable[..., Any], tmp_path: Path, ingest: Callable[..., Any]
) -> None:
    crew = Group.objects.create(name="crew")
    restricted = Collection.objects.create(slug="crew", name="Crew only", is_public=False)
    restricted.groups.add(crew)
    document = ingest(_pdf(tmp_path / "logbook.pdf", [LIGHTHOUSE]), collection=restricted)
    chunk = Chunk.objects.filter(document=document).first()
    assert chunk is not None
    page_url = reverse("document-original", args=[document.pk]) + f"?chunk={chunk.pk}"
    image_url = reverse("document-original-page", args=[document.pk, 1]) + f"?chunk={chunk.pk}"
    outsider = _client_for(make_user("outsider"))
    assert outsider.get(page_url).status_code == 404
    assert outsider.get(image_url).status_code == 404
    member = _client_for(make_user("member", groups=(crew,)))
    assert member.get(page_url).status_code == 200
    assert member.get(image_url).status_code == 200


def test_an_anonymous_visitor_is_sent_to_sign_in(guide: Document) -> None:
    for url in (reverse("document-original", args=[guide.pk]), reverse("document-original-page", args=[guide.pk, 1])):
        response = Client().get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_a_holder_of_the_document_permissions_gets_the_detail_link(
    make_user: Callable[..., Any], guide: Document
) -> None:
    from django.contrib.auth.models import Permission

    curator = make_user("curator")
    curator.user_permissions.add(Permission.objects.get(content_type__app_label="knowledge", codename="view_document"))
    page = _client_for(curator).get(reverse("document-original", args=[guide.pk])).content.decode()
    assert f'href="{reverse("document-detail", args=[guide.pk])}"' in page


def test_a_text_document_shows_the_passage_marked_in_its_context(
    reader: Any, tmp_path: Path, ingest: Callable[..., Any]
) -> None:
    paragraphs = [f"Chapter {n}. " + (LIGHTHOUSE if n % 2 else HARBOUR) for n in range(1, 9)]
    path = tmp_path / "notes.md"
    path.write_text("# Notes\n\n" + "\n\n".join(paragraphs) + "\n", encoding="utf-8")
    document = ingest(path)
    assert document.status == Document.Status.READY, document.error
    chunks = list(Chunk.objects.filter(document=document).order_by("ordinal"))
    assert len(chunks) >= 3
    cited = chunks[1]
    client = _client_for(reader)
    response = client.get(reverse("document-original", args=[document.pk]) + f"?chunk={cited.pk}")
    assert response.status_code == 200
    page = response.content.decode()
    assert page.count("<mark") == 1
    marked = page.split('<mark id="passage">', 1)[1].split("</mark>", 1)[0]
    assert cited.text.split()[0] in marked and cited.text.split()[-1] in marked
    before, after = page.split('<mark id="passage">', 1)[0], page.split("</mark>", 1)[1]
    assert chunks[0].text.split("\n")[-1].split()[0] in before  # the chunk before, shown before it
    assert chunks[2].text.split()[-1] in after  # the one after, after it
    # the page image of a document without pages does not exist
    assert client.get(reverse("document-original-page", args=[document.pk, 1])).status_code == 404


def test_a_damaged_pdf_says_so_instead_of_failing(reader: Any) -> None:
    collection = Collection.objects.get_or_create(slug="default", defaults={"name": "Default"})[0]
    document = Document.objects.create(
        collection=collection, title="broken.pdf", sha256="d" * 64, mime_type="application/pdf", status="failed"
    )
    document.file.save("broken.pdf", ContentFile(b"%PDF-1.4\nthis is not a PDF at all\n%%EOF\n"))
    client = _client_for(reader)
    response = client.get(reverse("document-original", args=[document.pk]))
    assert response.status_code == 404 and "This PDF is damaged" in response.content.decode()
    assert client.get(reverse("document-original-page", args=[document.pk, 1])).status_code == 404


def test_a_password_protected_pdf_says_so(reader: Any, tmp_path: Path) -> None:
    collection = Collection.objects.get_or_create(slug="default", defaults={"name": "Default"})[0]
    document = Document.objects.create(
        collection=collection, title="locked.pdf", sha256="e" * 64, mime_type="application/pdf", status="failed"
    )
    path = _pdf(tmp_path / "locked.pdf", [LIGHTHOUSE], user_password="open-sesame")
    document.file.save("locked.pdf", ContentFile(path.read_bytes()))
    response = _client_for(reader).get(reverse("document-original", args=[document.pk]))
    assert response.status_code == 404 and "password-protected" in response.content.decode()


def test_the_french_page_is_translated(reader: Any, guide: Document) -> None:
    client = Client(HTTP_ACCEPT_LANGUAGE="fr")
    client.force_login(reader)
    page = client.get(reverse("document-original", args=[guide.pk]) + "?page=2").content.decode()
    assert "Page précédente" in page and "Page 2 sur 2" in page


def test_each_cited_source_links_to_its_original(reader: Any, guide: Document) -> None:
    chunk = _chunk_on(guide, 2)
    conversation = conversations.conversation_create(user=reader)
    Message.objects.create(
        conversation=conversation,
        question="When was the lighthouse built?",
        answer="In 1872 [1].",
        sources=[
            {
                "id": chunk.pk,
                "document_id": guide.pk,
                "title": "guide.pdf",
                "page": 2,
                "score": 0.9,
                "text": chunk.text,
                "highlight": "built in 1872",
                "origin_url": "https://example.org/guide.pdf",
            },
            {"id": 0, "document_id": guide.pk, "title": "x", "page": None, "score": 0.1, "text": "x", "highlight": "",
             "origin_url": "javascript:alert(1)"},
        ],
    )  # fmt: skip
    page = _client_for(reader).get(reverse("conversation-detail", args=[conversation.pk])).content.decode()
    assert "Open the original" in page
    assert f'href="{reverse("document-original", args=[guide.pk])}?page=2&amp;chunk={chunk.pk}"' in page
    # a document synced from a website or bucket also links home; only a web address becomes a link
    assert 'href="https://example.org/guide.pdf"' in page and "View at its origin" in page
    assert "javascript:" not in page


# --- finding a passage on a page's text layer (no database) ----------------------------------------


def test_a_passage_is_found_across_line_breaks_hyphens_and_ligatures() -> None:
    page = _fold("Intro text.\nThe light-\nhouse was built in 1872 by the engi-\nneer Margaret Ellery. Next part.")
    runs = _matched_runs(page, "The lighthouse was built in 1872 by the engineer Margaret Ellery.")
    assert len(runs) == 1
    start, end = runs[0]
    assert page[start:end] == _fold("The lighthouse was built in 1872 by the engineer Margaret Ellery.")
    assert _fold("ﬁnal ﬂow") == "finalflow"


def test_a_passage_partly_on_the_page_marks_the_sentences_it_has() -> None:
    page = _fold("Header. The lamp burned whale oil until 1904. Some other words here. Footer.")
    passage = "The lamp burned whale oil until 1904. The keepers lived in a stone cottage beside the tower."
    runs = _matched_runs(page, passage)
    assert [page[start:end] for start, end in runs] == [_fold("The lamp burned whale oil until 1904.")]
    assert _matched_runs(page, "Nothing of this sentence is written on that page at all.") == []
