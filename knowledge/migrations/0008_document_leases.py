from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("knowledge", "0007_apikey_all_collections"),
    ]

    operations = [
        migrations.AddField(
            model_name="document",
            name="lease_until",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="document",
            name="lost_runs",
            field=models.PositiveIntegerField(
                default=0, help_text="Times a worker died while processing this document."
            ),
        ),
        migrations.AddField(
            model_name="documentpart",
            name="lease_until",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
