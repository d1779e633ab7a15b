"""The ``postgres`` store's tables brought up to date: recent postings in a small table of their own (merged into
``search_posting`` in the background), room for HOT updates in ``search_term``. The search SQL is idempotent:
this runs it again where 0009 created it (or creates it now, where pgvector has become available)."""

import importlib

from django.db import migrations

search_store = importlib.import_module("knowledge.migrations.0009_search_store")


class Migration(migrations.Migration):
    dependencies = [
        ("knowledge", "0010_search_embedders"),
    ]

    operations = [
        migrations.RunPython(search_store.create_search_tables, migrations.RunPython.noop, elidable=False),
    ]
