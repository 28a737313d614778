from django.db import migrations

from activity import dbtriggers


class Migration(migrations.Migration):
    """Seal the legacy seal: after migration 0010 wrote it, the database refuses any INSERT,
    UPDATE or DELETE on it (and, on PostgreSQL, TRUNCATE), so a row added to it cannot pass a
    forged seq-less event off as a legacy one (activity.dbtriggers). A database that ran 0010
    after these triggers existed already has them; installing is idempotent."""

    dependencies = [
        ("activity", "0010_seal_legacy_and_refuse_unchained"),
    ]

    operations = [
        migrations.RunPython(dbtriggers.install, dbtriggers.seal_uninstall),
    ]
