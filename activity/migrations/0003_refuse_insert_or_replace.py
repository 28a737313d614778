from django.db import migrations

from activity import dbtriggers


class Migration(migrations.Migration):
    """Re-install the triggers: SQLite gains one that refuses INSERT OR REPLACE."""

    dependencies = [("activity", "0002_append_only_triggers")]

    operations = [migrations.RunPython(dbtriggers.install, migrations.RunPython.noop)]
