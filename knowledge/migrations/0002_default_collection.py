"""Every document belongs to a collection: create the default one."""
from __future__ import annotations

from django.db import migrations


def create_default(apps, schema_editor):
    Collection = apps.get_model("knowledge", "Collection")
    Collection.objects.get_or_create(
        slug="default",
        defaults={"name": "Default", "description": "Documents readable by every signed-in user.", "is_public": True},
    )


class Migration(migrations.Migration):
    dependencies = [("knowledge", "0001_initial")]
    operations = [migrations.RunPython(create_default, migrations.RunPython.noop)]
