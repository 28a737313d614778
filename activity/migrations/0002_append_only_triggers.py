from django.db import migrations

from activity import dbtriggers


class Migration(migrations.Migration):
    dependencies = [("activity", "0001_initial")]

    operations = [migrations.RunPython(dbtriggers.install, dbtriggers.uninstall)]
