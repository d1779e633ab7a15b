"""Server-rendered pages (htmx). Thin: read through selectors, write through services."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from knowledge.models import Collection, Document


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """The portal's home: the collections and how many documents are ready in each."""
    collections = Collection.objects.order_by("name")
    counts = {status: Document.objects.filter(status=status).count() for status, _label in Document.Status.choices}
    return render(request, "knowledge/home.html", {"collections": collections, "counts": counts})
