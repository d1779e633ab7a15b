"""The portal's data: collections of documents, their chunks, and chat history.

Fields and constraints only; the rules that change these rows live in ``knowledge.services``.
The database is the source of truth: the FAISS index is derived from the Chunk table.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import PurePath

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

DEFAULT_COLLECTION_SLUG = "default"


class Collection(models.Model):
    """A named set of documents, readable by everyone signed in or only by some groups."""

    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    is_public = models.BooleanField(
        default=True,
        help_text=_("Readable by every signed-in user; otherwise only by the groups below."),
    )
    groups = models.ManyToManyField(Group, blank=True, related_name="collections")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


def document_upload_to(instance: Document | DocumentVersion, filename: str) -> str:
    # A random folder per upload: the original name is kept for display only, and two uploads
    # with the same name never collide or overwrite each other.
    safe_name = PurePath(filename).name or "upload"
    return f"documents/{uuid.uuid4().hex}/{safe_name}"


class Document(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        PROCESSING = "processing", _("Processing")
        READY = "ready", _("Ready")
        FAILED = "failed", _("Failed")

    collection = models.ForeignKey(Collection, on_delete=models.PROTECT, related_name="documents")
    title = models.CharField(max_length=300)
    file = models.FileField(upload_to=document_upload_to, max_length=500)
    original_name = models.CharField(max_length=300, blank=True)
    mime_type = models.CharField(max_length=120, blank=True)
    size = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, db_index=True)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="documents"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    #: what the worker is doing right now ("parsing", "ocr", "embedding", …), for progress feedback
    stage = models.CharField(max_length=32, blank=True)
    error = models.TextField(blank=True, help_text=_("Why the document failed, in plain words."))
    warnings = models.JSONField(default=list, blank=True)
    page_count = models.PositiveIntegerField(null=True, blank=True)
    chunk_count = models.PositiveIntegerField(default=0)
    ocr_pages = models.JSONField(default=list, blank=True)
    index_version = models.PositiveIntegerField(null=True, blank=True)
    embedder = models.CharField(max_length=200, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    #: a process works on the document until then, and renews it while it does (see knowledge.services.leases)
    lease_until = models.DateTimeField(null=True, blank=True)
    #: runs on this document that ended with their process (a worker killed, out of memory): no outcome
    lost_runs = models.PositiveIntegerField(
        default=0, help_text=_("Times a worker died while processing this document.")
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    #: the number of the version that answers (the file, name, size, hash and type above are its); a newer
    #: version being processed waits in DocumentVersion until it is ready
    version = models.PositiveIntegerField(default=1)
    #: where the document lives outside the portal (a synced website page or bucket object), for citations
    origin_url = models.URLField(max_length=2000, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["collection", "sha256"], name="unique_document_per_collection"),
        ]
        indexes = [models.Index(fields=["collection", "status"])]

    def __str__(self) -> str:
        return self.title


#: statuses of a document whose chunks answer: ready, and queued or processing again (a new version or a
#: re-ingestion: its chunks are those of its current version until the new ones replace them)
DOCUMENT_ANSWERING_STATUSES = (Document.Status.READY, Document.Status.QUEUED, Document.Status.PROCESSING)


class DocumentVersion(models.Model):
    """One uploaded file of a document: the first upload is version 1, each new file or restore the next.

    The document's current version is ``Document.version``; a newer one is ``queued`` or ``processing``
    until its chunks replace the current one's (then it is ``ready`` and the previous one ``replaced``),
    or ``failed`` with its reason while the current one keeps answering.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        PROCESSING = "processing", _("Processing")
        READY = "ready", _("Ready")
        FAILED = "failed", _("Failed")
        REPLACED = "replaced", _("Replaced")

    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    file = models.FileField(upload_to=document_upload_to, max_length=500)
    original_name = models.CharField(max_length=300, blank=True)
    mime_type = models.CharField(max_length=120, blank=True)
    size = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    error = models.TextField(blank=True, help_text=_("Why the version failed, in plain words."))
    page_count = models.PositiveIntegerField(null=True, blank=True)
    chunk_count = models.PositiveIntegerField(default=0)
    #: the number of the older version this one was made from (a restore)
    restored_from = models.PositiveIntegerField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    ready_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["document_id", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["document", "number"], name="unique_document_version_number"),
        ]

    def __str__(self) -> str:
        return f"{self.document_id} v{self.number}"


class Chunk(models.Model):
    """A passage of a document; its primary key is its vector id in the FAISS index."""

    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    ordinal = models.PositiveIntegerField()
    text = models.TextField()
    page = models.PositiveIntegerField(null=True, blank=True)
    heading = models.TextField(blank=True, help_text=_("Heading path, outermost first, joined by ' > '."))
    token_count = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["document_id", "ordinal"]
        constraints = [
            models.UniqueConstraint(fields=["document", "ordinal"], name="unique_chunk_ordinal"),
        ]

    def __str__(self) -> str:
        return f"{self.document_id}#{self.ordinal}"

    @property
    def vector_id(self) -> int:
        return self.pk


class DocumentPart(models.Model):
    """A page range of a big PDF, parsed, chunked and embedded by its own task.

    Its chunks and vectors wait here until the last part is done; that part writes them all as the
    document's chunks and deletes the parts. A document being processed whole has no parts.
    """

    class Status(models.TextChoices):
        PENDING = "pending", _("Pending")
        DONE = "done", _("Done")

    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="parts")
    #: 1-based position of the part in the document
    number = models.PositiveIntegerField()
    first_page = models.PositiveIntegerField()
    last_page = models.PositiveIntegerField()
    #: its pages include scans: it is read with OCR, by a task of the "ocr" queue
    ocr = models.BooleanField(default=False)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    #: the part's chunk drafts in reading order: {"text", "page", "headings", "token_count"}
    chunks = models.JSONField(default=list, blank=True)
    #: their vectors, float32, one row per chunk, row-major
    vectors = models.BinaryField(default=b"", blank=True)
    title = models.CharField(max_length=300, blank=True)
    ocr_pages = models.JSONField(default=list, blank=True)
    warnings = models.JSONField(default=list, blank=True)
    #: a process works on the part until then, and renews it while it does (see knowledge.services.leases)
    lease_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["document_id", "number"]
        constraints = [
            models.UniqueConstraint(fields=["document", "number"], name="unique_document_part_number"),
        ]

    def __str__(self) -> str:
        return f"{self.document_id} pages {self.first_page}-{self.last_page}"


class Conversation(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=300, blank=True)
    collection = models.ForeignKey(
        Collection, null=True, blank=True, on_delete=models.SET_NULL, related_name="conversations"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at", "-id"]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"


class Message(models.Model):
    class Feedback(models.IntegerChoices):
        DOWN = -1, _("Not helpful")
        UP = 1, _("Helpful")

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    question = models.TextField()
    answer = models.TextField(blank=True)
    mode = models.CharField(max_length=16, blank=True)
    #: the sources as shown to the user (id, document, title, page, score, text, highlight)
    sources = models.JSONField(default=list, blank=True)
    cited_chunks = models.ManyToManyField(Chunk, blank=True, related_name="citations")
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    model = models.CharField(max_length=200, blank=True)
    feedback = models.SmallIntegerField(choices=Feedback.choices, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return self.question[:80]


class ApiKey(models.Model):
    """A key for programs (``Authorization: Token <key>``). Only its SHA-256 is stored; the key is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, unique=True, help_text=_("The key's public beginning, to recognise it."))
    key_hash = models.CharField(max_length=64, unique=True)
    #: the key reads every collection its user may read; otherwise only those listed (none: no access)
    all_collections = models.BooleanField(
        default=False, help_text=_("Read every collection its user may read; otherwise only those listed below.")
    )
    collections = models.ManyToManyField(
        Collection,
        blank=True,
        related_name="api_keys",
        help_text=_("Without “all collections”, the key may read only these; none means no access."),
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("API key")

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"


class UsageRecord(models.Model):
    """Tokens spent by one request: per user, per key and per end user of an integration."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="usage")
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="usage")
    end_user_id = models.CharField(max_length=200, blank=True, db_index=True)
    endpoint = models.CharField(max_length=50)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "created_at"]), models.Index(fields=["api_key", "created_at"])]

    def __str__(self) -> str:
        return f"{self.endpoint} {self.prompt_tokens}+{self.completion_tokens} tokens"

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


#: django-ratelimit's rates: N per second, minute, hour or day, or per several of them (10/15m)
RATE_PATTERN = r"^\d+/\d*[smhd]\Z"


class UserLimits(models.Model):
    """One user's own limits, set in the admin above or below the defaults (``TOKEN_QUOTA_PER_DAY``,
    ``API_RATE_LIMIT``); a blank field keeps the default."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="limits")
    token_quota_per_day = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Tokens this user may spend a day (UTC), all keys and sessions together; 0 = unlimited; "
        "blank = TOKEN_QUOTA_PER_DAY.",
    )
    rate_limit = models.CharField(
        max_length=20,
        blank=True,
        validators=[RegexValidator(RATE_PATTERN, "Write a rate as 60/m, 1000/h or 10/15m.")],
        help_text="Requests per key or session of this user, as 60/m, 1000/h or 10/15m; blank = API_RATE_LIMIT.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "limits"
        verbose_name_plural = "limits"

    def __str__(self) -> str:
        return f"limits of {self.user}"


class DirectoryAccount(models.Model):
    """A user who signs in through a directory (OpenID Connect or LDAP): which one, who they are there, and the
    portal groups the directory gave them at the last sync, so the next sync removes only those (groups given
    by hand stay)."""

    class Source(models.TextChoices):
        OIDC = "oidc", "OpenID Connect"
        LDAP = "ldap", "LDAP"

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="directory")
    source = models.CharField(max_length=8, choices=Source.choices)
    subject = models.CharField(max_length=512, help_text="The OpenID subject (sub) or the LDAP entry's DN.")
    groups = models.JSONField(default=list, blank=True, help_text="Portal groups mirrored from the directory.")
    synced_at = models.DateTimeField(help_text="When the directory's groups were last read.")
    # what lets the portal read an OpenID user's groups again without them (an API key in use): a refresh token
    refresh_token = models.TextField(blank=True, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["source", "subject"], name="directory_account_unique_subject"),
        ]

    def __str__(self) -> str:
        return f"{self.get_source_display()} account of {self.user}"


class ApiTask(models.Model):
    """An asynchronous API request ("async": true): who asked, so only they can read the result."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tasks")
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="tasks")
    endpoint = models.CharField(max_length=50)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.endpoint} task {self.pk}"


class SearchEmbedder(models.Model):
    """The embedder settings behind a search store's identity.

    When the configured embedding model changes, questions keep being embedded with the model that built the
    store (found here) until ``manage.py rebuild_index`` has built the new vectors beside the old ones and
    switched to them: no downtime.
    """

    #: the store identity (``ingestion.store.StoreIdentity``) as canonical JSON
    identity = models.CharField(max_length=1000, unique=True)
    #: the ``ingestion.embedding.EmbedderConfig`` that makes it, as JSON
    config = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.identity


class SearchRebuildQuerySet(models.QuerySet["SearchRebuild"]):
    def running(self) -> SearchRebuildQuerySet:
        """Runs still in progress: marked running and heard from within ``SearchRebuild.STALE_AFTER`` (a run
        whose process was killed stays marked running; it stops holding uploads back after that)."""
        heard = timezone.now() - SearchRebuild.STALE_AFTER
        return self.filter(status=SearchRebuild.Status.RUNNING, updated_at__gte=heard)


class SearchRebuild(models.Model):
    """One run of ``manage.py rebuild_index`` (or the admin action): its progress, shown in the admin."""

    #: a run that has not recorded progress for this long is taken for dead (the longest quiet phase is the
    #: end of a rebuild at 1M chunks: the faiss merge or the postgres HNSW build, several minutes)
    STALE_AFTER = timedelta(minutes=30)

    class Status(models.TextChoices):
        RUNNING = "running", _("Running")
        DONE = "done", _("Done")
        FAILED = "failed", _("Failed")

    backend = models.CharField(max_length=20)
    #: the embedder the new contents are made with (and the one they replace, when it changed)
    embedder = models.CharField(max_length=300)
    previous_embedder = models.CharField(max_length=300, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    done = models.PositiveBigIntegerField(default=0)
    total = models.PositiveBigIntegerField(default=0)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = SearchRebuildQuerySet.as_manager()

    class Meta:
        ordering = ["-started_at"]
        verbose_name = _("search store rebuild")
        verbose_name_plural = _("search store rebuilds")

    def __str__(self) -> str:
        return f"rebuild {self.pk} ({self.status}, {self.done}/{self.total})"

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 100.0


class AuditEvent(models.Model):
    """Who did what, when: a question, a document opened, downloaded, uploaded, replaced or deleted, a sign-in.

    Names, ids and titles are copied, not only linked: the record outlives the user, key and document.
    """

    class Action(models.TextChoices):
        QUESTION = "question", _("Question")
        DOCUMENT_OPEN = "document_open", _("Document opened")
        DOCUMENT_DOWNLOAD = "document_download", _("Document downloaded")
        DOCUMENT_UPLOAD = "document_upload", _("Document uploaded")
        DOCUMENT_REPLACE = "document_replace", _("Document replaced")
        DOCUMENT_DELETE = "document_delete", _("Document deleted")
        SIGN_IN = "sign_in", _("Signed in")
        SIGN_IN_FAILED = "sign_in_failed", _("Sign-in failed")

    class Via(models.TextChoices):
        SESSION = "session", _("Session")
        API_KEY = "api_key", _("API key")
        SYSTEM = "system", _("System")

    time = models.DateTimeField(default=timezone.now, db_index=True)
    action = models.CharField(max_length=32, choices=Action.choices, db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events"
    )
    username = models.CharField(max_length=150, blank=True, db_index=True)
    via = models.CharField(max_length=16, choices=Via.choices, default=Via.SESSION)
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events")
    api_key_prefix = models.CharField(max_length=32, blank=True)
    collections = models.CharField(max_length=500, blank=True, help_text=_("Collection slugs, comma-separated."))
    document_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    document_title = models.CharField(max_length=300, blank=True)
    #: [{"document_id", "title", "page"}] of the sources an answer came with
    cited = models.JSONField(default=list, blank=True)
    question = models.TextField(blank=True, help_text=_("Kept only when AUDIT_CONTENT is true."))
    ip_address = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-time", "-id"]
        verbose_name = _("audit event")
        verbose_name_plural = _("audit log")

    def __str__(self) -> str:
        return f"{self.time:%Y-%m-%d %H:%M:%S} {self.username or '-'} {self.action}"


class Source(models.Model):
    """A place documents are synced from into a collection: a folder, a website or an S3-compatible bucket.

    Each sync compares what the place holds with what the source brought before (``SourceItem``): new items are
    ingested, changed ones (by content hash) become new versions, vanished ones are deleted.
    """

    class Kind(models.TextChoices):
        FOLDER = "folder", _("Folder")
        WEBSITE = "website", _("Website")
        S3 = "s3", _("S3 bucket")

    name = models.SlugField(max_length=64, unique=True, help_text=_("How commands and the API name it."))
    collection = models.ForeignKey(Collection, on_delete=models.PROTECT, related_name="sources")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    location = models.CharField(
        max_length=2000,
        help_text=_("Folder: a path on the server. Website: a start URL or a sitemap. S3: bucket/prefix."),
    )
    include = models.CharField(
        max_length=500, blank=True, help_text=_("Folder and S3: glob patterns to take, comma-separated (all).")
    )
    exclude = models.CharField(
        max_length=500, blank=True, help_text=_("Folder and S3: glob patterns to leave out, comma-separated.")
    )
    max_depth = models.PositiveIntegerField(default=3, help_text=_("Website: links followed from the start."))
    max_pages = models.PositiveIntegerField(default=500, help_text=_("Website: pages and documents at most."))
    every_minutes = models.PositiveIntegerField(
        default=60, help_text=_("Minutes between scheduled syncs; 0 = only on demand.")
    )
    enabled = models.BooleanField(default=True)
    next_run_at = models.DateTimeField(null=True, blank=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class SourceRun(models.Model):
    """One sync of a source: what it added, updated, removed and could not bring, or why it failed as a whole."""

    class Status(models.TextChoices):
        RUNNING = "running", _("Running")
        SUCCEEDED = "succeeded", _("Succeeded")
        FAILED = "failed", _("Failed")

    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="runs")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    trigger = models.CharField(max_length=16, blank=True, help_text=_("schedule, admin, command or api"))
    started_at = models.DateTimeField(default=timezone.now)
    #: renewed while the run works: a run whose heartbeat stopped was killed and the next one takes over
    heartbeat_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    found = models.PositiveIntegerField(default=0)
    added = models.PositiveIntegerField(default=0)
    updated = models.PositiveIntegerField(default=0)
    removed = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    #: [{"key", "reason"}] of the items that could not be brought
    failures = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True, help_text=_("Why the run failed as a whole; nothing was removed then."))

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"{self.source} {self.started_at:%Y-%m-%d %H:%M} {self.status}"


class SourceItem(models.Model):
    """One thing a source brought: its key there, its change marker and content hash, and the document it is."""

    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="items")
    key = models.CharField(max_length=2000)
    document = models.OneToOneField(Document, on_delete=models.CASCADE, related_name="source_item")
    version = models.CharField(max_length=200, blank=True)
    sha256 = models.CharField(max_length=64)
    url = models.CharField(max_length=2000, blank=True)
    seen_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["source", "key"], name="source_item_unique_key")]

    def __str__(self) -> str:
        return f"{self.source}: {self.key}"
