from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("knowledge", "0005_document_parts"),
    ]

    operations = [
        migrations.AddField(
            model_name="documentpart",
            name="ocr",
            field=models.BooleanField(default=False),
        ),
    ]
