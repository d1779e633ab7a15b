"""Django admin: staff upload and manage documents; actions call the services."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db.models import QuerySet
from django.forms.models import construct_instance
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.defaultfilters import truncatechars
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _

from ingestion.sources import SourceConfigError
from knowledge.errors import KnowledgeError
from knowledge.models import (
    ApiKey,
    AuditEvent,
    Chunk,
    Collection,
    Conversation,
    Document,
    DocumentVersion,
    Message,
    SearchRebuild,
    Source,
    SourceRun,
    UsageRecord,
    UserLimits,
)
from knowledge.selectors import collections_readable_by, usage_daily_totals
from knowledge.services import apikeys as apikey_services
from knowledge.services import audit as audit_services
from knowledge.services import bulk as bulk_services
from knowledge.services import documents as document_services
from knowledge.services import sources as source_services

#: the admin's own styles (status badges, the usage totals): a stylesheet, as the Content-Security-Policy
#: refuses inline style attributes
_ADMIN_CSS = {"all": ["portal/admin.css"]}


class _RecordAdmin(admin.ModelAdmin):
    """Rows the portal writes itself: shown, never added or changed here, nor deleted unless ``deletable``."""

    deletable = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.deletable and super().has_delete_permission(request, obj)


@admin.register(Collection)
class CollectionAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "is_public", "document_count"]
    prepopulated_fields = {"slug": ["name"]}
    filter_horizontal = ["groups"]
    search_fields = ["name", "slug"]

    @admin.display(description=_("Documents"))
    def document_count(self, obj: Collection) -> int:
        return obj.documents.count()


class DocumentUploadForm(forms.ModelForm):
    #: on a document's change page: a file uploaded here becomes its next version
    new_version = forms.FileField(
        label=_("Upload a new version"),
        required=False,
        help_text=_("The current version keeps answering until the new one is ready."),
    )

    class Meta:
        model = Document
        fields = ["collection", "title", "file"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        upload, collection = cleaned.get("file"), cleaned.get("collection")
        if self.instance.pk is None and upload is not None and collection is not None:
            try:
                document_services.document_validate_upload(file=upload, collection=collection)
            except KnowledgeError as exc:
                raise forms.ValidationError(exc.message, code=exc.code) from exc
        return cleaned


class DocumentVersionInline(admin.TabularInline):
    """A document's versions, read-only; an older one is restored with its button (the change form's submit)."""

    model = DocumentVersion
    fields = ["number", "status", "original_name", "size", "created_by", "created_at", "error", "restore"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    max_num = 0

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description=_("Restore"))
    def restore(self, obj: DocumentVersion) -> str:
        if obj.number == obj.document.version:
            return str(_("current"))
        return format_html(
            '<button type="submit" name="_restore_version" value="{}" class="button">{}</button>',
            obj.number,
            _("Restore"),
        )


class ChunkInline(admin.TabularInline):
    model = Chunk
    fields = ["ordinal", "page", "heading", "token_count", "text"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True
    max_num = 0

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = ["title", "collection", "status_badge", "short_error", "page_count", "chunk_count", "created_at"]
    list_filter = ["status", ("collection", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["title", "original_name", "sha256"]
    readonly_fields = [
        "status_badge",
        "stage",
        "error",
        "warnings",
        "original_name",
        "mime_type",
        "size",
        "sha256",
        "uploaded_by",
        "page_count",
        "chunk_count",
        "ocr_pages",
        "embedder",
        "index_version",
        "attempts",
        "created_at",
        "updated_at",
        "processed_at",
    ]
    inlines = [DocumentVersionInline, ChunkInline]
    form = DocumentUploadForm
    actions = ["reingest", "delete_with_vectors", "rebuild_index"]

    class Media:
        css = _ADMIN_CSS

    def get_queryset(self, request: HttpRequest) -> QuerySet[Document]:
        # the model permissions say who manages documents; the collections' groups say whose
        return super().get_queryset(request).filter(collection__in=collections_readable_by(user=request.user))

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "collection":
            kwargs["queryset"] = collections_readable_by(user=request.user)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Document | None = None) -> list[str]:
        if obj is None:
            return ["collection", "title", "file"]
        return ["collection", "title", "file", "new_version", "version", *self.readonly_fields]

    def get_readonly_fields(self, request: HttpRequest, obj: Document | None = None) -> list[str]:
        if obj is None:
            return []
        return ["file", "version", *self.readonly_fields]

    def get_inlines(self, request: HttpRequest, obj: Document | None) -> list[Any]:
        return self.inlines if obj is not None else []

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # it would leave the vectors behind
        return actions

    @admin.display(description=_("Status"), ordering="status")
    def status_badge(self, obj: Document) -> str:
        return format_html('<span class="kp-badge kp-badge-{}">{}</span>', obj.status, obj.get_status_display())

    @admin.display(description=_("Error"))
    def short_error(self, obj: Document) -> str:
        return truncatechars(obj.error, 80) if obj.error else ""

    def save_model(self, request: HttpRequest, obj: Document, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            self._new_version(request, obj, form)
            return
        upload = form.cleaned_data["file"]
        created = document_services.document_create(
            file=upload,
            filename=upload.name,
            collection=form.cleaned_data["collection"],
            title=form.cleaned_data.get("title") or "",
            uploaded_by=request.user,
            ip_address=audit_services.client_ip(request),
        )
        obj.pk = created.pk
        obj.refresh_from_db()

    def _new_version(self, request: HttpRequest, obj: Document, form: Any) -> None:
        """A file in "Upload a new version", or a version's Restore button, makes the document's next version."""
        upload = form.cleaned_data.get("new_version")
        restore = request.POST.get("_restore_version", "")
        try:
            if upload is not None:
                document_services.document_replace(
                    document=obj,
                    file=upload,
                    filename=upload.name,
                    actor=request.user,
                    check_type=True,
                    ip_address=audit_services.client_ip(request),
                )
                self.message_user(request, _("The new version is queued; the current one answers until it is ready."))
            elif restore.isdigit():
                document_services.document_version_restore(
                    document=obj, number=int(restore), actor=request.user, ip_address=audit_services.client_ip(request)
                )
                self.message_user(request, _("Version %(n)s is restored as a new version and queued.") % {"n": restore})
        except KnowledgeError as exc:
            self.message_user(request, exc.message, messages.ERROR)
        obj.refresh_from_db()

    def response_change(self, request: HttpRequest, obj: Document) -> HttpResponse:
        if "_restore_version" in request.POST:  # stay on the page, to watch the version
            return HttpResponseRedirect(request.path)
        return super().response_change(request, obj)

    def delete_model(self, request: HttpRequest, obj: Document) -> None:
        document_services.document_delete(
            document=obj, actor=request.user, ip_address=audit_services.client_ip(request)
        )

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Document]) -> None:
        # one writer block for them all: one new faiss generation, not one per document
        bulk_services.documents_delete_many(
            documents=queryset, actor=request.user, ip_address=audit_services.client_ip(request)
        )

    @admin.action(description=_("Re-ingest selected documents"))
    def reingest(self, request: HttpRequest, queryset: QuerySet[Document]) -> None:
        for document in queryset:
            document_services.document_reingest(document=document)
        self.message_user(request, _("%(n)d document(s) queued.") % {"n": queryset.count()})

    @admin.action(description=_("Delete selected documents (with their vectors)"), permissions=["delete"])
    def delete_with_vectors(self, request: HttpRequest, queryset: QuerySet[Document]) -> None:
        count = queryset.count()
        self.delete_queryset(request, queryset)
        self.message_user(request, _("%(n)d document(s) deleted.") % {"n": count})

    @admin.action(description=_("Rebuild the search index from the database"))
    def rebuild_index(self, request: HttpRequest, queryset: QuerySet[Document]) -> None:
        from knowledge.tasks import index_rebuild_task

        try:
            index_rebuild_task.delay()
        except Exception:  # the broker is down: say so rather than a server error
            self.message_user(
                request, _("The rebuild could not be queued: the task queue is unreachable."), messages.ERROR
            )
            return
        self.message_user(request, _("The search store is being rebuilt: its progress is under Search store rebuilds."))


@admin.register(Chunk)
class ChunkAdmin(_RecordAdmin):
    list_display = ["id", "document", "ordinal", "page", "heading", "token_count"]
    list_filter = ["document__collection"]
    search_fields = ["text", "heading"]
    readonly_fields = ["document", "ordinal", "page", "heading", "token_count", "text"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Chunk]:
        readable = collections_readable_by(user=request.user)
        return super().get_queryset(request).filter(document__collection__in=readable)


class MessageInline(admin.StackedInline):
    model = Message
    extra = 0
    fields = ["question", "answer", "mode", "model", "prompt_tokens", "completion_tokens", "latency_ms", "feedback"]
    readonly_fields = fields


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["__str__", "user", "collection", "updated_at"]
    list_filter = ["collection"]
    search_fields = ["title", "user__username"]
    inlines = [MessageInline]


class ApiKeyForm(forms.ModelForm):
    """A key reads all collections or those listed, never both; none listed means no access."""

    class Meta:
        model = ApiKey
        fields = ["name", "all_collections", "collections"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if cleaned.get("all_collections") and cleaned.get("collections"):
            raise forms.ValidationError(
                _("Choose “all collections” or some collections, not both."), code="ambiguous_reach"
            )
        return cleaned


class ApiKeyCreateForm(ApiKeyForm):
    expires_in_days = forms.IntegerField(
        label=_("Expires in (days)"),
        min_value=1,
        required=False,
        help_text=_("Leave empty for a key that never expires."),
    )

    class Meta(ApiKeyForm.Meta):
        fields = ["user", "name", "all_collections", "collections"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are made by ``apikey_create``: the raw key is shown once, in a message, and never stored."""

    list_display = [
        "prefix",
        "name",
        "user",
        "all_collections",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
        "state",
    ]
    list_filter = [("user", admin.RelatedOnlyFieldListFilter), "all_collections", "revoked_at", "expires_at"]
    list_select_related = ["user"]
    search_fields = ["prefix", "name", "user__username"]
    filter_horizontal = ["collections"]
    actions = ["revoke"]

    def get_form(self, request: HttpRequest, obj: ApiKey | None = None, change: bool = False, **kwargs: Any) -> Any:
        kwargs["form"] = ApiKeyCreateForm if obj is None else ApiKeyForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        if obj is None:
            return ["user", "name", "all_collections", "collections", "expires_in_days"]
        return [
            "prefix",
            "user",
            "name",
            "all_collections",
            "collections",
            "created_at",
            "expires_at",
            "last_used_at",
            "revoked_at",
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        if obj is None:
            return []
        return ["prefix", "user", "created_at", "expires_at", "last_used_at", "revoked_at"]

    @admin.display(description=_("State"))
    def state(self, obj: ApiKey) -> str:
        if obj.revoked_at is not None:
            return str(_("revoked"))
        if obj.expires_at is not None and obj.expires_at <= timezone.now():
            return str(_("expired"))
        return str(_("active"))

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        days = form.cleaned_data.get("expires_in_days")
        key, raw_key = apikey_services.apikey_create(
            user=form.cleaned_data["user"],
            name=form.cleaned_data.get("name") or "",
            all_collections=bool(form.cleaned_data.get("all_collections")),
            collections=list(form.cleaned_data.get("collections") or []),
            expires_in=timedelta(days=days) if days else None,
        )
        obj.pk = key.pk
        obj.refresh_from_db()
        self.message_user(
            request,
            format_html(
                str(_("The new API key is <code>{}</code>. Copy it now: it is stored hashed and never shown again.")),
                raw_key,
            ),
            messages.WARNING,
        )

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        if change:  # on creation the service has already set the collections
            super().save_related(request, form, formsets, change)

    @admin.action(description=_("Revoke selected API keys"))
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        keys = list(queryset.filter(revoked_at__isnull=True))
        for key in keys:
            apikey_services.apikey_revoke(key=key)
        self.message_user(request, _("%(n)d API key(s) revoked.") % {"n": len(keys)})


@admin.register(AuditEvent)
class AuditEventAdmin(_RecordAdmin):
    """Read-only: the audit log; "Export as CSV" downloads the rows chosen (all of a filter with "select all")."""

    list_display = ["time", "action", "username", "via", "collections", "document_title", "ip_address"]
    list_filter = ["action", "time", "via", ("user", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["username", "document_title"]
    date_hierarchy = "time"
    actions = ["export_csv"]

    @admin.action(description=_("Export as CSV"))
    def export_csv(self, request: HttpRequest, queryset: QuerySet[AuditEvent]) -> HttpResponse:
        response = HttpResponse(content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="audit.csv"'
        audit_services.audit_write_csv(response, audit_services.audit_rows(events=queryset.order_by("time", "id")))
        return response


class SourceForm(forms.ModelForm):
    """A source's settings are checked when saved (a relative folder, a bad URL, an unknown option): nothing is
    contacted then; an unreachable source fails its first run with the reason."""

    class Meta:
        model = Source
        fields = [
            "name",
            "collection",
            "kind",
            "location",
            "include",
            "exclude",
            "max_depth",
            "max_pages",
            "every_minutes",
            "enabled",
        ]

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean()
        if cleaned.get("kind") and cleaned.get("location"):
            try:
                source_services.source_check(construct_instance(self, Source()))
            except SourceConfigError as exc:  # the engine's own sentence
                raise forms.ValidationError(str(exc)) from exc
        return cleaned


@admin.register(Source)
class SourceAdmin(admin.ModelAdmin):
    """Document sources: a folder, a website or an S3 bucket synced into a collection on a schedule, or now with
    the "Sync now" action (or ``manage.py sync``)."""

    form = SourceForm
    list_display = ["name", "kind", "location", "collection", "enabled", "last_run", "next_run_at"]
    list_filter = ["kind", "enabled", "collection"]
    search_fields = ["name", "location"]
    readonly_fields = ["next_run_at", "created_at", "recent_runs"]
    actions = ["sync_now"]

    @admin.display(description=_("Recent runs"))
    def recent_runs(self, source: Source) -> str:
        """The last runs, newest first: what each added, updated, removed, and what failed and why."""
        rows = [
            (
                f"{run.started_at:%Y-%m-%d %H:%M}",
                run.trigger,
                run.get_status_display(),
                f"{run.found} / {run.added} / {run.updated} / {run.removed} / {run.failed}",
                run.error or "; ".join(f"{f['key']}: {f['reason']}" for f in run.failures[:10]),
            )
            for run in source.runs.order_by("-started_at")[:10]
        ]
        if not rows:
            return str(_("never"))
        head = format_html(
            "<tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
            _("Started"),
            _("By"),
            _("Status"),
            _("found / added / updated / removed / failed"),
            _("Why"),
        )
        body = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows)
        return format_html("<table>{}{}</table>", head, body)

    @admin.display(description=_("Last run"))
    def last_run(self, source: Source) -> str:
        run = source.runs.order_by("-started_at").first()
        if run is None:
            return str(_("never"))
        if run.status == SourceRun.Status.FAILED:
            return f"{run.started_at:%Y-%m-%d %H:%M} {_('failed')}: {truncatechars(run.error, 80)}"
        if run.status == SourceRun.Status.RUNNING:
            return f"{run.started_at:%Y-%m-%d %H:%M} {_('running')}"
        return str(
            _("%(time)s: %(added)d added, %(updated)d updated, %(removed)d removed, %(failed)d failed")
            % {
                "time": f"{run.started_at:%Y-%m-%d %H:%M}",
                "added": run.added,
                "updated": run.updated,
                "removed": run.removed,
                "failed": run.failed,
            }
        )

    @admin.action(description=_("Sync now"))
    def sync_now(self, request: HttpRequest, queryset: QuerySet[Source]) -> None:
        for source in queryset:
            try:
                source_services.source_sync_request(source, trigger="admin")
            except KnowledgeError as exc:
                self.message_user(request, f"{source.name}: {exc.message}", messages.WARNING)
            else:
                self.message_user(request, _("Sync of %(name)s queued.") % {"name": source.name}, messages.SUCCESS)


@admin.register(UsageRecord)
class UsageRecordAdmin(_RecordAdmin):
    """Read-only: what each request spent, with the totals per user per day of the filtered records."""

    class Media:
        css = _ADMIN_CSS

    list_display = [
        "created_at",
        "user",
        "api_key",
        "end_user_id",
        "endpoint",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
    ]
    list_filter = [
        ("user", admin.RelatedOnlyFieldListFilter),
        ("api_key", admin.RelatedOnlyFieldListFilter),
        "endpoint",
        "created_at",
        "end_user_id",
    ]
    list_select_related = ["user", "api_key"]
    search_fields = ["end_user_id", "user__username", "api_key__prefix"]
    date_hierarchy = "created_at"

    @admin.display(description=_("Tokens"))
    def total_tokens(self, obj: UsageRecord) -> int:
        return obj.tokens

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None)
        if context and "cl" in context:
            context["daily_totals"] = usage_daily_totals(records=context["cl"].queryset)
        return response


@admin.register(SearchRebuild)
class SearchRebuildAdmin(_RecordAdmin):
    """Rebuilds of the search store (``manage.py rebuild_index``, the documents' action): how far each one is."""

    deletable = True

    list_display = ("started_at", "status", "progress", "backend", "embedder", "previous_embedder", "finished_at")
    list_filter = ("status", "backend")
    readonly_fields = [field.name for field in SearchRebuild._meta.fields] + ["progress"]

    @admin.display(description=_("progress"))
    def progress(self, run: SearchRebuild) -> str:
        return f"{run.done:,} / {run.total:,} ({run.percent:.0f}%)"


class UserLimitsInline(admin.StackedInline):
    """A user's own daily token quota and request rate, above or below the defaults (blank: the default)."""

    model = UserLimits
    fields = ("token_quota_per_day", "rate_limit")
    verbose_name_plural = _("Limits (blank: TOKEN_QUOTA_PER_DAY and API_RATE_LIMIT)")


admin.site.unregister(get_user_model())


@admin.register(get_user_model())
class PortalUserAdmin(UserAdmin):  # type: ignore[type-arg]
    """Django's user admin, with the user's own limits."""

    inlines = (*UserAdmin.inlines, UserLimitsInline)
