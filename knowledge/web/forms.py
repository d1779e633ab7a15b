"""Forms of the pages: they validate input and offer only what the user may choose."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms
from django.conf import settings
from django.utils.translation import gettext_lazy as _

from knowledge.limits import QUESTION_MAX_CHARS
from knowledge.models import DEFAULT_COLLECTION_SLUG, Collection, Document
from knowledge.selectors import collections_readable_by
from knowledge.services.answering import EXTRACTIVE, GENERATIVE

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

MODE_CHOICES = [(EXTRACTIVE, _("Quote the sources")), (GENERATIVE, _("Write an answer"))]


class QuestionForm(forms.Form):
    question = forms.CharField(
        label=_("Your question"),
        max_length=QUESTION_MAX_CHARS,
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": _("Ask a question about your documents…")}),
    )
    collection = forms.ModelChoiceField(
        label=_("Search in"),
        queryset=Collection.objects.none(),
        required=False,
        to_field_name="slug",
        empty_label=_("All my collections"),
    )
    mode = forms.ChoiceField(label=_("Answer"), choices=MODE_CHOICES, widget=forms.RadioSelect)

    def __init__(self, *args: Any, user: AbstractBaseUser | AnonymousUser, **kwargs: Any) -> None:
        kwargs.setdefault("initial", {})
        kwargs["initial"].setdefault("mode", settings.RAG_ANSWER_MODE)
        super().__init__(*args, **kwargs)
        # Only readable collections are offered, so a restricted one is never even named.
        self.fields["collection"].queryset = collections_readable_by(user=user).order_by("name")


class DocumentFilterForm(forms.Form):
    q = forms.CharField(label=_("Search"), required=False, max_length=200)
    status = forms.ChoiceField(
        label=_("Status"), required=False, choices=[("", _("Any status")), *Document.Status.choices]
    )
    collection = forms.ModelChoiceField(
        label=_("Collection"), queryset=Collection.objects.none(), required=False, empty_label=_("All collections")
    )

    def __init__(self, *args: Any, user: AbstractBaseUser | AnonymousUser, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["q"].widget.attrs.update({"type": "search", "placeholder": _("Title or file name")})
        self.fields["collection"].queryset = collections_readable_by(user=user).order_by("name")


#: what an upload does when the collection has a document of the same name: ask, make a new version, keep both
SAME_NAME_ASK, SAME_NAME_VERSION, SAME_NAME_KEEP = "ask", "version", "keep"
SAME_NAME_CHOICES = [
    (SAME_NAME_ASK, _("Ask me")),
    (SAME_NAME_VERSION, _("Replace it (new version)")),
    (SAME_NAME_KEEP, _("Keep both")),
]


class UploadForm(forms.Form):
    collection = forms.ModelChoiceField(
        label=_("Collection"), queryset=Collection.objects.none(), required=False, empty_label=None
    )
    same_name = forms.ChoiceField(
        label=_("When a document of the collection has the same name"),
        choices=SAME_NAME_CHOICES,
        required=False,
        initial=SAME_NAME_ASK,
        widget=forms.RadioSelect,
    )

    def __init__(self, *args: Any, user: AbstractBaseUser | AnonymousUser, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        readable = collections_readable_by(user=user).order_by("name")
        self.fields["collection"].queryset = readable
        default = readable.filter(slug=DEFAULT_COLLECTION_SLUG).first()
        if default is not None:
            self.fields["collection"].initial = default.pk
