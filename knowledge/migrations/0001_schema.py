"""The whole schema of the ``knowledge`` app in one migration: it replaces 0001_initial to
0011_search_recent_postings, which it was squashed from.

A new database runs this one migration. A database that applied all eleven is already here (Django
records this one as applied too); one that stopped part-way must first be migrated to 0011 by an earlier
release (see ``knowledge.checks``, which says so before ``migrate`` starts).

On PostgreSQL with the pgvector extension available, the last operation creates the ``postgres`` search
store's tables (``CREATE EXTENSION IF NOT EXISTS vector`` and ``knowledge.search.schema``); on SQLite, or a
PostgreSQL without pgvector (or a role that may not create the extension), nothing: such a database cannot
hold the ``postgres`` store, and the store says so clearly when it is configured.
"""

import logging
import uuid

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

import knowledge.models

logger = logging.getLogger(__name__)


def create_default_collection(apps, schema_editor):
    """Every document belongs to a collection: the default one exists from the start."""
    Collection = apps.get_model("knowledge", "Collection")
    Collection.objects.get_or_create(
        slug="default",
        defaults={"name": "Default", "description": "Documents readable by every signed-in user.", "is_public": True},
    )


def create_search_tables(apps, schema_editor):
    from knowledge.search import schema

    connection = schema_editor.connection
    if not schema.pgvector_available(connection):
        return
    try:
        with connection.cursor() as cursor:
            cursor.execute("SAVEPOINT search_store")
        schema.install(connection)
        with connection.cursor() as cursor:
            cursor.execute("RELEASE SAVEPOINT search_store")
    except Exception as exc:  # a role without the right to create the extension: the faiss store still works
        with connection.cursor() as cursor:
            cursor.execute("ROLLBACK TO SAVEPOINT search_store")
        logger.warning("The search tables of the postgres store were not created: %s", exc)


def drop_search_tables(apps, schema_editor):
    from knowledge.search import schema

    schema.uninstall(schema_editor.connection)


class Migration(migrations.Migration):
    replaces = [
        ("knowledge", "0001_initial"),
        ("knowledge", "0002_default_collection"),
        ("knowledge", "0003_api_keys_usage"),
        ("knowledge", "0004_api_tasks"),
        ("knowledge", "0005_document_parts"),
        ("knowledge", "0006_documentpart_ocr"),
        ("knowledge", "0007_apikey_all_collections"),
        ("knowledge", "0008_document_leases"),
        ("knowledge", "0009_search_store"),
        ("knowledge", "0010_search_embedders"),
        ("knowledge", "0011_search_recent_postings"),
    ]

    initial = True

    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="Collection",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("slug", models.SlugField(max_length=64, unique=True)),
                ("name", models.CharField(max_length=200)),
                ("description", models.TextField(blank=True)),
                (
                    "is_public",
                    models.BooleanField(
                        default=True, help_text="Readable by every signed-in user; otherwise only by the groups below."
                    ),
                ),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("groups", models.ManyToManyField(blank=True, related_name="collections", to="auth.group")),
            ],
            options={
                "ordering": ["name"],
            },
        ),
        migrations.CreateModel(
            name="Conversation",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("title", models.CharField(blank=True, max_length=300)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
                (
                    "collection",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="conversations",
                        to="knowledge.collection",
                    ),
                ),
                (
                    "user",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="conversations",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "ordering": ["-updated_at", "-id"],
            },
        ),
        migrations.CreateModel(
            name="Document",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("title", models.CharField(max_length=300)),
                ("file", models.FileField(max_length=500, upload_to=knowledge.models.document_upload_to)),
                ("original_name", models.CharField(blank=True, max_length=300)),
                ("mime_type", models.CharField(blank=True, max_length=120)),
                ("size", models.BigIntegerField(default=0)),
                ("sha256", models.CharField(db_index=True, max_length=64)),
                (
                    "status",
                    models.CharField(
                        choices=[
                            ("queued", "Queued"),
                            ("processing", "Processing"),
                            ("ready", "Ready"),
                            ("failed", "Failed"),
                        ],
                        db_index=True,
                        default="queued",
                        max_length=16,
                    ),
                ),
                ("stage", models.CharField(blank=True, max_length=32)),
                ("error", models.TextField(blank=True, help_text="Why the document failed, in plain words.")),
                ("warnings", models.JSONField(blank=True, default=list)),
                ("page_count", models.PositiveIntegerField(blank=True, null=True)),
                ("chunk_count", models.PositiveIntegerField(default=0)),
                ("ocr_pages", models.JSONField(blank=True, default=list)),
                ("index_version", models.PositiveIntegerField(blank=True, null=True)),
                ("embedder", models.CharField(blank=True, max_length=200)),
                ("attempts", models.PositiveIntegerField(default=0)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
                ("processed_at", models.DateTimeField(blank=True, null=True)),
                (
                    "collection",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT, related_name="documents", to="knowledge.collection"
                    ),
                ),
                (
                    "uploaded_by",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="documents",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                ("lease_until", models.DateTimeField(blank=True, null=True)),
                (
                    "lost_runs",
                    models.PositiveIntegerField(
                        default=0, help_text="Times a worker died while processing this document."
                    ),
                ),
            ],
            options={
                "ordering": ["-created_at", "-id"],
            },
        ),
        migrations.CreateModel(
            name="Chunk",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("ordinal", models.PositiveIntegerField()),
                ("text", models.TextField()),
                ("page", models.PositiveIntegerField(blank=True, null=True)),
                ("heading", models.TextField(blank=True, help_text="Heading path, outermost first, joined by ' > '.")),
                ("token_count", models.PositiveIntegerField(default=0)),
                (
                    "document",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="chunks", to="knowledge.document"
                    ),
                ),
            ],
            options={
                "ordering": ["document_id", "ordinal"],
            },
        ),
        migrations.CreateModel(
            name="Message",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("question", models.TextField()),
                ("answer", models.TextField(blank=True)),
                ("mode", models.CharField(blank=True, max_length=16)),
                ("sources", models.JSONField(blank=True, default=list)),
                ("prompt_tokens", models.PositiveIntegerField(default=0)),
                ("completion_tokens", models.PositiveIntegerField(default=0)),
                ("latency_ms", models.PositiveIntegerField(blank=True, null=True)),
                ("model", models.CharField(blank=True, max_length=200)),
                (
                    "feedback",
                    models.SmallIntegerField(blank=True, choices=[(-1, "Not helpful"), (1, "Helpful")], null=True),
                ),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("cited_chunks", models.ManyToManyField(blank=True, related_name="citations", to="knowledge.chunk")),
                (
                    "conversation",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="messages",
                        to="knowledge.conversation",
                    ),
                ),
            ],
            options={
                "ordering": ["created_at", "id"],
            },
        ),
        migrations.AddIndex(
            model_name="document",
            index=models.Index(fields=["collection", "status"], name="knowledge_d_collect_5da084_idx"),
        ),
        migrations.AddConstraint(
            model_name="document",
            constraint=models.UniqueConstraint(fields=("collection", "sha256"), name="unique_document_per_collection"),
        ),
        migrations.AddConstraint(
            model_name="chunk",
            constraint=models.UniqueConstraint(fields=("document", "ordinal"), name="unique_chunk_ordinal"),
        ),
        migrations.RunPython(create_default_collection, migrations.RunPython.noop),
        migrations.CreateModel(
            name="ApiKey",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(blank=True, max_length=100)),
                (
                    "prefix",
                    models.CharField(
                        help_text="The key's public beginning, to recognise it.", max_length=16, unique=True
                    ),
                ),
                ("key_hash", models.CharField(max_length=64, unique=True)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("expires_at", models.DateTimeField(blank=True, null=True)),
                ("last_used_at", models.DateTimeField(blank=True, null=True)),
                ("revoked_at", models.DateTimeField(blank=True, null=True)),
                (
                    "collections",
                    models.ManyToManyField(
                        blank=True,
                        help_text="Without “all collections”, the key may read only these; none means no access.",
                        related_name="api_keys",
                        to="knowledge.collection",
                    ),
                ),
                (
                    "user",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="api_keys",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                (
                    "all_collections",
                    models.BooleanField(
                        default=False,
                        help_text="Read every collection its user may read; otherwise only those listed below.",
                    ),
                ),
            ],
            options={
                "verbose_name": "API key",
                "ordering": ["-created_at"],
            },
        ),
        migrations.CreateModel(
            name="UsageRecord",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("end_user_id", models.CharField(blank=True, db_index=True, max_length=200)),
                ("endpoint", models.CharField(max_length=50)),
                ("prompt_tokens", models.PositiveIntegerField(default=0)),
                ("completion_tokens", models.PositiveIntegerField(default=0)),
                ("created_at", models.DateTimeField(auto_now_add=True, db_index=True)),
                (
                    "api_key",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="usage",
                        to="knowledge.apikey",
                    ),
                ),
                (
                    "user",
                    models.ForeignKey(
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="usage",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "ordering": ["-created_at"],
                "indexes": [
                    models.Index(fields=["user", "created_at"], name="knowledge_u_user_id_a202fd_idx"),
                    models.Index(fields=["api_key", "created_at"], name="knowledge_u_api_key_d926f7_idx"),
                ],
            },
        ),
        migrations.CreateModel(
            name="ApiTask",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("endpoint", models.CharField(max_length=50)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "api_key",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="tasks",
                        to="knowledge.apikey",
                    ),
                ),
                (
                    "user",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="api_tasks",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "ordering": ["-created_at"],
            },
        ),
        migrations.CreateModel(
            name="DocumentPart",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("number", models.PositiveIntegerField()),
                ("first_page", models.PositiveIntegerField()),
                ("last_page", models.PositiveIntegerField()),
                (
                    "status",
                    models.CharField(
                        choices=[("pending", "Pending"), ("done", "Done")], default="pending", max_length=16
                    ),
                ),
                ("chunks", models.JSONField(blank=True, default=list)),
                ("vectors", models.BinaryField(blank=True, default=b"")),
                ("title", models.CharField(blank=True, max_length=300)),
                ("ocr_pages", models.JSONField(blank=True, default=list)),
                ("warnings", models.JSONField(blank=True, default=list)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
                (
                    "document",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="parts", to="knowledge.document"
                    ),
                ),
                ("ocr", models.BooleanField(default=False)),
                ("lease_until", models.DateTimeField(blank=True, null=True)),
            ],
            options={
                "ordering": ["document_id", "number"],
                "constraints": [
                    models.UniqueConstraint(fields=("document", "number"), name="unique_document_part_number")
                ],
            },
        ),
        migrations.CreateModel(
            name="SearchEmbedder",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("identity", models.CharField(max_length=1000, unique=True)),
                ("config", models.JSONField()),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
        ),
        migrations.CreateModel(
            name="SearchRebuild",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("backend", models.CharField(max_length=20)),
                ("embedder", models.CharField(max_length=300)),
                ("previous_embedder", models.CharField(blank=True, max_length=300)),
                (
                    "status",
                    models.CharField(
                        choices=[("running", "Running"), ("done", "Done"), ("failed", "Failed")],
                        default="running",
                        max_length=10,
                    ),
                ),
                ("done", models.PositiveBigIntegerField(default=0)),
                ("total", models.PositiveBigIntegerField(default=0)),
                ("error", models.TextField(blank=True)),
                ("started_at", models.DateTimeField(auto_now_add=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
                ("finished_at", models.DateTimeField(blank=True, null=True)),
            ],
            options={
                "verbose_name": "search store rebuild",
                "verbose_name_plural": "search store rebuilds",
                "ordering": ["-started_at"],
            },
        ),
        migrations.RunPython(create_search_tables, drop_search_tables, elidable=False),
    ]
