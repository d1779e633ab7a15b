from django.db import migrations, models


def _unlimited_keys_stay_unlimited(apps, schema_editor):
    # Before this field, a key without collections read everything: keep it so for existing keys.
    ApiKey = apps.get_model("knowledge", "ApiKey")
    ApiKey.objects.filter(collections__isnull=True).update(all_collections=True)


class Migration(migrations.Migration):
    dependencies = [
        ("knowledge", "0006_documentpart_ocr"),
    ]

    operations = [
        migrations.AddField(
            model_name="apikey",
            name="all_collections",
            field=models.BooleanField(
                default=False,
                help_text="Read every collection its user may read; otherwise only those listed below.",
            ),
        ),
        migrations.AlterField(
            model_name="apikey",
            name="collections",
            field=models.ManyToManyField(
                blank=True,
                help_text="Without “all collections”, the key may read only these; none means no access.",
                related_name="api_keys",
                to="knowledge.collection",
            ),
        ),
        migrations.RunPython(_unlimited_keys_stay_unlimited, migrations.RunPython.noop),
    ]
