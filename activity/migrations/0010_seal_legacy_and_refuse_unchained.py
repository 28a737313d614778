import django.db.models.deletion
from django.db import migrations, models

from activity import dbtriggers
from activity.chain import LEGACY_FIELDS, legacy_digest


def seal_legacy_events(apps, schema_editor) -> None:
    """Per board, seal the events written before the chain (no seq) as they are now."""
    Event = apps.get_model("activity", "Event")
    LegacySeal = apps.get_model("activity", "LegacySeal")
    alias = schema_editor.connection.alias
    unchained = Event.objects.using(alias).filter(seq__isnull=True)
    boards = unchained.order_by().values_list("board_id", flat=True).distinct()
    for board_id in sorted(boards):
        rows = unchained.filter(board_id=board_id).order_by("id").values_list(*LEGACY_FIELDS)
        count, digest, runs = legacy_digest(rows.iterator(chunk_size=5000))
        LegacySeal.objects.using(alias).create(
            board_id=board_id, count=count, digest=digest, ids=runs
        )


class Migration(migrations.Migration):
    """Close the log to rows written past the application.

    Events written before the chain (migration 0006) are sealed per board (`LegacySeal`): a
    seq-less event not among them is foreign, named by verify_activity and not replayed. The
    database now takes an event only as its board's chain head (activity.dbtriggers), so a
    plain INSERT without a seq, or at a place the head is not at, is refused. Verifying the
    log from the admin takes a permission of its own (`activity.verify_event`).
    """

    dependencies = [
        ("activity", "0009_event_via"),
        ("boards", "0004_default_orders_without_joins"),
    ]

    operations = [
        migrations.CreateModel(
            name="LegacySeal",
            fields=[
                (
                    "board",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.PROTECT,
                        primary_key=True,
                        related_name="+",
                        serialize=False,
                        to="boards.board",
                    ),
                ),
                ("count", models.PositiveIntegerField()),
                ("digest", models.CharField(max_length=64)),
                (
                    "ids",
                    models.JSONField(help_text="The sealed events' ids, as [first, last] runs."),
                ),
                ("sealed_at", models.DateTimeField(auto_now_add=True)),
            ],
        ),
        migrations.AlterModelOptions(
            name="event",
            options={
                "ordering": ["id"],
                "permissions": [("verify_event", "Can verify the activity log")],
            },
        ),
        migrations.RunPython(seal_legacy_events, migrations.RunPython.noop),
        migrations.RunPython(dbtriggers.install, migrations.RunPython.noop),
    ]
