"""A cited source in its original: the PDF page with the passage marked, or the passage in its context.

Every reader of the document's collection may open it; for anyone else the document does not exist (404).
Thin views: the drawing and the context are made by ``knowledge.services.originals``.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils.cache import patch_cache_control
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET

from knowledge.models import AuditEvent, Chunk, Document
from knowledge.selectors import document_chunks, documents_visible_to
from knowledge.services.audit import audit_document, client_ip
from knowledge.services.originals import (
    OriginalUnavailableError,
    chunk_context,
    document_is_pdf,
    pdf_page_count,
    pdf_page_png,
)

#: how long a reader's browser keeps a drawn page (a new version of the file is seen after that)
PAGE_IMAGE_MAX_AGE = 600


def _document_or_404(request: HttpRequest, document_id: int) -> Document:
    return get_object_or_404(documents_visible_to(user=request.user).select_related("collection"), pk=document_id)


def _number(value: str | None) -> int | None:
    """A positive whole number from the query string, None when absent; anything else is a 404."""
    if value is None or value == "":
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 18 or int(value) < 1:
        raise Http404
    return int(value)


def _chunk_or_404(request: HttpRequest, document: Document) -> Chunk | None:
    chunk_id = _number(request.GET.get("chunk"))
    if chunk_id is None:
        return None
    chunk = document_chunks(document=document).filter(pk=chunk_id).first()
    if chunk is None:  # unknown, or a chunk of another document
        raise Http404
    return chunk


def _with_query(url: str, **values: int | None) -> str:
    query = "&".join(f"{name}={value}" for name, value in values.items() if value is not None)
    return f"{url}?{query}" if query else url


def _page_url(document: Document, chunk: Chunk | None, page: int) -> str:
    url = reverse("document-original", args=[document.pk])
    return _with_query(url, chunk=chunk.pk if chunk is not None else None, page=page)


def _image_url(document: Document, chunk: Chunk | None, page: int) -> str:
    url = reverse("document-original-page", args=[document.pk, page])
    return _with_query(url, chunk=chunk.pk if chunk is not None else None)


def _unavailable_text(exc: OriginalUnavailableError) -> str:
    if exc.reason == "encrypted":
        return _("This PDF is password-protected: its pages cannot be shown.")
    if exc.reason == "missing":
        return _("The document's file is missing: its pages cannot be shown.")
    return _("This PDF is damaged: its pages cannot be shown.")


@login_required
@require_GET
def document_original(request: HttpRequest, document_id: int) -> HttpResponse:
    """The original around a cited chunk (``?chunk=``): its PDF page (or ``?page=``), else its text in context."""
    document = _document_or_404(request, document_id)
    chunk = _chunk_or_404(request, document)
    audit_document(
        action=AuditEvent.Action.DOCUMENT_OPEN, document=document, user=request.user, ip_address=client_ip(request)
    )
    context: dict[str, Any] = {"document": document, "chunk": chunk, "is_pdf": document_is_pdf(document=document)}
    if not context["is_pdf"]:
        context["pieces"] = chunk_context(document=document, chunk=chunk)
        return render(request, "documents/original.html", context)
    try:
        page_count = pdf_page_count(document=document)
    except OriginalUnavailableError as exc:
        context["unavailable"] = _unavailable_text(exc)
        return render(request, "documents/original.html", context, status=exc.http_status)
    page = _number(request.GET.get("page")) or (chunk.page if chunk is not None and chunk.page else 1)
    if page > page_count:
        raise Http404
    context.update(
        page=page,
        page_count=page_count,
        image_url=_image_url(document, chunk, page),
        previous_url=_page_url(document, chunk, page - 1) if page > 1 else "",
        next_url=_page_url(document, chunk, page + 1) if page < page_count else "",
    )
    return render(request, "documents/original.html", context)


@login_required
@require_GET
def document_original_page(request: HttpRequest, document_id: int, page: int) -> HttpResponse:
    """Page ``page`` of a PDF document as a PNG, the cited chunk's text (``?chunk=``) marked on it."""
    document = _document_or_404(request, document_id)
    chunk = _chunk_or_404(request, document)
    if not document_is_pdf(document=document):
        raise Http404
    try:
        png = pdf_page_png(document=document, page=page, passage=chunk.text if chunk is not None else "")
    except OriginalUnavailableError as exc:
        if exc.reason == "page":
            raise Http404 from exc
        return HttpResponse(_unavailable_text(exc), status=exc.http_status, content_type="text/plain; charset=utf-8")
    response = HttpResponse(png, content_type="image/png")
    patch_cache_control(response, private=True, max_age=PAGE_IMAGE_MAX_AGE)
    return response
