"""The document pages: upload, the live list, one document with its chunks.

Each page asks for Django's model permission on documents (view, add, change, delete); which
documents it shows follows the collections' groups, for everyone but superusers.

Thin views: reads through ``knowledge.selectors``, writes through ``knowledge.services.documents``.
The list polls itself (htmx, every 2 s) only while a document it shows is still queued or processing.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.contrib import messages as flash
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from knowledge.errors import (
    DuplicateDocumentError,
    KnowledgeError,
    UnsupportedUploadError,
    UploadTooLargeError,
    http_error,
)
from knowledge.models import Document
from knowledge.selectors import (
    DOCUMENT_ACTIVE_STATUSES,
    document_chunks,
    documents_search,
    documents_visible_to,
)
from knowledge.services import audit
from knowledge.services import documents as document_services
from knowledge.web.decorators import permission_required, wants_json
from knowledge.web.forms import DocumentFilterForm, UploadForm

DOCUMENTS_PER_PAGE = 20
CHUNKS_PER_PAGE = 50
#: the htmx event that makes the document list and a document's page refresh themselves
CHANGED_EVENT = "documents-changed"


def _partial_requested(request: HttpRequest) -> bool:
    # A history restore (back button after htmx pushed a URL) needs the whole page.
    return bool(request.htmx) and not request.htmx.history_restore_request


@permission_required("knowledge.view_document")
@require_GET
def document_list(request: HttpRequest) -> HttpResponse:
    """Upload zone and the document list (search, filters, pages); htmx asks for the list alone."""
    filters = DocumentFilterForm(request.GET, user=request.user)
    filters.is_valid()  # an invalid filter is ignored, the valid ones still apply
    chosen: dict[str, Any] = getattr(filters, "cleaned_data", {})
    collection = chosen.get("collection")
    documents = documents_search(
        documents=documents_visible_to(user=request.user),
        query=chosen.get("q") or "",
        status=chosen.get("status") or "",
        collection_id=collection.pk if collection else None,
    )
    page = Paginator(documents, DOCUMENTS_PER_PAGE).get_page(request.GET.get("page"))
    rows = list(page.object_list)
    context: dict[str, Any] = {
        "page": page,
        "documents": rows,
        "filters": filters,
        "filtered": any(chosen.get(name) for name in ("q", "status", "collection")),
        "polling": any(document.status in DOCUMENT_ACTIVE_STATUSES for document in rows),
    }
    if _partial_requested(request):
        return render(request, "partials/_document_list.html", context)
    context.update(
        upload_form=UploadForm(user=request.user),
        max_upload_mb=settings.MAX_UPLOAD_MB,
        max_upload_bytes=settings.MAX_UPLOAD_MB * 1024 * 1024,
    )
    return render(request, "documents/list.html", context)


def _upload_refusal(exc: KnowledgeError) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the body (a sentence in the user's language) for a refused upload."""
    refusal = http_error(exc)
    body: dict[str, Any] = {"ok": False, "code": refusal.code}
    if isinstance(exc, DuplicateDocumentError):
        body["error"] = _("Already in this collection as “%(title)s”.") % {"title": exc.existing.title}
        body["url"] = reverse("document-detail", kwargs={"document_id": exc.existing.pk})
    elif isinstance(exc, UploadTooLargeError):
        body["error"] = _("Too large: the upload limit is %(mb)d MB.") % {"mb": settings.MAX_UPLOAD_MB}
    elif isinstance(exc, UnsupportedUploadError):
        body["error"] = _("Unsupported file type. Accepted: %(types)s.") % {"types": ", ".join(exc.accepted)}
        body["accepted"] = exc.accepted
    else:
        body["error"] = refusal.message
    return refusal.status, body


@permission_required("knowledge.add_document")
@require_POST
def document_upload(request: HttpRequest) -> HttpResponse:
    """Store uploaded files and queue them (one file per request from the page's script, any number without it).

    Answers JSON when asked (``{"ok", "document": {...}}`` or ``{"ok": false, "code", "error"}``
    with 409, 413, 415), else flashes a message per file and shows the list again.
    """
    form = UploadForm(request.POST, user=request.user)
    files = request.FILES.getlist("file")
    if not form.is_valid() or not files:
        text = _("Choose at least one file to upload.") if not files else _("Choose a collection you may use.")
        if wants_json(request):
            return JsonResponse({"ok": False, "code": "invalid", "error": text}, status=400)
        flash.error(request, text)
        return redirect("document-list")

    results: list[tuple[int, dict[str, Any]]] = []
    for upload in files:
        try:
            document = document_services.document_create(
                file=upload,
                filename=upload.name or "upload",
                collection=form.cleaned_data["collection"],
                uploaded_by=request.user,
                check_type=True,
                ip_address=audit.client_ip(request),
            )
        except KnowledgeError as exc:
            status, body = _upload_refusal(exc)
            results.append((status, {**body, "name": upload.name}))
            continue
        url = reverse("document-detail", kwargs={"document_id": document.pk})
        body = {
            "ok": True,
            "name": upload.name,
            "document": {"id": document.pk, "title": document.title, "status": document.status, "url": url},
        }
        results.append((201, body))

    if wants_json(request):
        status, body = results[0] if len(results) == 1 else (207, {"ok": True, "files": [b for _s, b in results]})
        return JsonResponse(body, status=status)
    for _status, body in results:
        if body["ok"]:
            flash.success(request, _("%(name)s is uploaded and queued.") % {"name": body["name"]})
        else:
            flash.error(request, f"{body['name']}: {body['error']}")
    return redirect("document-list")


def _document_or_404(request: HttpRequest, document_id: int) -> Document:
    return get_object_or_404(documents_visible_to(user=request.user).select_related("collection"), pk=document_id)


@permission_required("knowledge.view_document")
@require_GET
def document_detail(request: HttpRequest, document_id: int) -> HttpResponse:
    """One document: status, stage, reason, warnings, pages, and its chunks (page, heading, text)."""
    document = get_object_or_404(
        documents_visible_to(user=request.user).select_related("collection", "uploaded_by"), pk=document_id
    )
    chunks = Paginator(document_chunks(document=document), CHUNKS_PER_PAGE).get_page(request.GET.get("page"))
    context = {
        "document": document,
        "chunks": chunks,
        "polling": document.status in DOCUMENT_ACTIVE_STATUSES,
    }
    if _partial_requested(request):
        return render(request, "partials/_document_detail.html", context)
    return render(request, "documents/detail.html", context)


def _next_url(request: HttpRequest) -> str | None:
    url = request.POST.get("next", "")
    if url and url_has_allowed_host_and_scheme(url, allowed_hosts={request.get_host()}):
        return url
    return None


def _after_action(request: HttpRequest, notice: str, next_url: str | None, *, leave: bool = False) -> HttpResponse:
    """htmx: refresh the list in place (or, ``leave``, go to ``next_url``); without it: back to a page."""
    if request.htmx and not (leave and next_url):
        response = HttpResponse(status=204)
        response["HX-Trigger"] = json.dumps({CHANGED_EVENT: None, "portal:notice": {"value": notice}})
        return response
    flash.success(request, notice)
    if request.htmx:
        response = HttpResponse(status=204)
        response["HX-Location"] = next_url
        return response
    return redirect(next_url or "document-list")


@permission_required("knowledge.change_document")
@require_POST
def document_reingest(request: HttpRequest, document_id: int) -> HttpResponse:
    document = _document_or_404(request, document_id)
    document_services.document_reingest(document=document)
    return _after_action(request, _("“%(title)s” is queued again.") % {"title": document.title}, _next_url(request))


@permission_required("knowledge.delete_document")
@require_POST
def document_delete(request: HttpRequest, document_id: int) -> HttpResponse:
    """Delete a document with its chunks, vectors and file."""
    document = _document_or_404(request, document_id)
    title = document.title
    document_services.document_delete(document=document, actor=request.user, ip_address=audit.client_ip(request))
    return _after_action(request, _("“%(title)s” is deleted.") % {"title": title}, _next_url(request), leave=True)
