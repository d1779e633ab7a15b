"""The document pages: upload, the live list, one document with its versions and chunks.

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
    SameVersionError,
    UnsupportedUploadError,
    UploadTooLargeError,
    VersionPendingError,
    http_error,
)
from knowledge.models import Document
from knowledge.selectors import (
    DOCUMENT_ACTIVE_STATUSES,
    document_chunks,
    document_versions,
    documents_search,
    documents_visible_to,
)
from knowledge.services import audit
from knowledge.services import documents as document_services
from knowledge.web.decorators import permission_required, wants_json
from knowledge.web.forms import (
    SAME_NAME_ASK,
    SAME_NAME_KEEP,
    DocumentFilterForm,
    UploadForm,
)

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
    elif isinstance(exc, SameVersionError):
        body["error"] = _("This file is already the current version.")
    elif isinstance(exc, VersionPendingError):
        body["error"] = _("A new version of this document is still being processed; try again when it is done.")
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

    results = [_upload_one(request, upload, form.cleaned_data) for upload in files]
    if wants_json(request):
        status, body = results[0] if len(results) == 1 else (207, {"ok": True, "files": [b for _s, b in results]})
        return JsonResponse(body, status=status)
    for _status, body in results:
        if body["ok"]:
            flash.success(request, body["notice"])
        elif body["code"] == "same_name":
            # without the page's script nobody can answer the question in place: the form asks it for next time
            hint = _("Choose Replace it (new version) or Keep both above, and upload it again.")
            flash.error(request, f"{body['name']}: {body['error']} {hint}")
        else:
            flash.error(request, f"{body['name']}: {body['error']}")
    return redirect("document-list")


def _upload_one(request: HttpRequest, upload: Any, choices: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Store one uploaded file: a new document, or a new version of the document of the same name when asked
    to; with ``same_name`` "ask", a file named as a document of the collection is refused with the question."""
    collection = choices["collection"] or document_services.collection_get_default()
    name = upload.name or "upload"
    same_name = choices.get("same_name") or SAME_NAME_ASK
    existing = None
    if same_name != SAME_NAME_KEEP:
        existing = document_services.document_same_name(collection=collection, filename=name, file=upload)
    if existing is not None and same_name == SAME_NAME_ASK:
        return 409, {
            "ok": False,
            "code": "same_name",
            "name": name,
            "error": _("“%(title)s” has this name in the collection: replace it (new version) or keep both?")
            % {"title": existing.title},
            "url": reverse("document-detail", kwargs={"document_id": existing.pk}),
            "document": {"id": existing.pk, "title": existing.title},
        }
    if existing is not None and not request.user.has_perm("knowledge.change_document"):
        return 403, {
            "ok": False,
            "code": "permission_denied",
            "name": name,
            "error": _("You may not upload new versions of documents."),
        }
    stored = {"file": upload, "filename": name, "check_type": True, "ip_address": audit.client_ip(request)}
    try:
        if existing is not None:
            document = document_services.document_replace(document=existing, actor=request.user, **stored)
        else:
            document = document_services.document_create(collection=collection, uploaded_by=request.user, **stored)
    except KnowledgeError as exc:
        status, body = _upload_refusal(exc)
        return status, {**body, "name": name}
    url = reverse("document-detail", kwargs={"document_id": document.pk})
    if existing is not None:
        number = document_versions(document=document).values_list("number", flat=True).first()
        notice = _("%(name)s is uploaded as version %(number)s of “%(title)s” and queued.") % {
            "name": name,
            "number": number,
            "title": document.title,
        }
    else:
        notice = _("%(name)s is uploaded and queued.") % {"name": name}
    body = {
        "ok": True,
        "name": name,
        "notice": notice,
        "document": {"id": document.pk, "title": document.title, "status": document.status, "url": url},
    }
    return (202 if existing is not None else 201), body


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
    versions = list(document_versions(document=document))
    newest = versions[0] if versions else None
    context = {
        "document": document,
        "chunks": chunks,
        "versions": versions,
        # a new version being processed, or the reason the newest one failed, while the current one answers
        "new_version": newest if newest is not None and newest.number > document.version else None,
        "version_pending": any(v.status in DOCUMENT_ACTIVE_STATUSES for v in versions if v.number > document.version),
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


def _refused(request: HttpRequest, message: str, next_url: str) -> HttpResponse:
    """A refused action: a notice in place (htmx) or a flashed error on ``next_url``."""
    if request.htmx:
        response = HttpResponse(status=204)
        response["HX-Trigger"] = json.dumps({"portal:notice": {"value": message}})
        return response
    flash.error(request, message)
    return redirect(next_url)


@permission_required("knowledge.change_document")
@require_POST
def document_version_create(request: HttpRequest, document_id: int) -> HttpResponse:
    """Upload a new version of a document from its page; the current version answers until it is ready."""
    document = _document_or_404(request, document_id)
    detail = reverse("document-detail", kwargs={"document_id": document.pk})
    upload = request.FILES.get("file")
    if upload is None:
        return _refused(request, _("Choose a file to upload."), detail)
    try:
        document = document_services.document_replace(
            document=document,
            file=upload,
            filename=upload.name or "upload",
            actor=request.user,
            check_type=True,
            ip_address=audit.client_ip(request),
        )
    except KnowledgeError as exc:
        _status, body = _upload_refusal(exc)
        return _refused(request, body["error"], detail)
    return _after_action(
        request, _("The new version of “%(title)s” is queued.") % {"title": document.title}, detail, leave=True
    )


@permission_required("knowledge.change_document")
@require_POST
def document_version_restore(request: HttpRequest, document_id: int, number: int) -> HttpResponse:
    """Restore an older version: its file becomes the newest version, current once it is ready."""
    document = _document_or_404(request, document_id)
    detail = reverse("document-detail", kwargs={"document_id": document.pk})
    try:
        document_services.document_version_restore(
            document=document, number=number, actor=request.user, ip_address=audit.client_ip(request)
        )
    except KnowledgeError as exc:
        _status, body = _upload_refusal(exc)
        return _refused(request, body["error"], detail)
    notice = _("Version %(number)s of “%(title)s” is restored as a new version and queued.") % {
        "number": number,
        "title": document.title,
    }
    return _after_action(request, notice, detail)
