from django.db import migrations, models


def backfill(apps, schema_editor):
    # Before this field, the last change of a card is the best estimate of its arrival.
    Card = apps.get_model("boards", "Card")
    Card.objects.filter(entered_column_at__isnull=True).update(
        entered_column_at=models.F("updated_at")
    )


class Migration(migrations.Migration):
    dependencies = [("boards", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="card",
            name="entered_column_at",
            field=models.DateTimeField(null=True),
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="card",
            name="entered_column_at",
            field=models.DateTimeField(help_text="When the card came into its column."),
        ),
    ]
