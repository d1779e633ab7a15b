"""The tables of the ``postgres`` search store (knowledge.search.schema), where they can exist.

On PostgreSQL with the pgvector extension available: ``CREATE EXTENSION IF NOT EXISTS vector`` and the search
tables. On SQLite, or on a PostgreSQL without pgvector (or a role that may not create the extension), nothing:
such a database cannot hold the ``postgres`` store, and the store says so clearly when it is configured.
"""

import logging

from django.db import migrations

logger = logging.getLogger(__name__)


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
    dependencies = [
        ("knowledge", "0008_document_leases"),
    ]

    operations = [
        migrations.RunPython(create_search_tables, drop_search_tables, elidable=False),
    ]
