"""`manage.py rollups [--rebuild]`: bring the delivery projections up to date, or rebuild them."""

from django.core.management.base import BaseCommand
from tqdm import tqdm

from activity.models import Event
from delivery.rollups import BATCH, events_pending, rollups_advance, rollups_rebuild


class Command(BaseCommand):
    help = "Apply new events to the deployment history and daily rollups (or rebuild them)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--rebuild", action="store_true", help="Recompute everything from the whole log."
        )
        parser.add_argument(
            "--batch", type=int, default=BATCH, help="Events per transaction (incremental runs)."
        )

    def handle(self, *args, rebuild: bool, batch: int, **options):
        total = Event.objects.count() if rebuild else events_pending()
        with tqdm(total=total, unit="event", desc="rollups", disable=None) as bar:
            if rebuild:
                applied = rollups_rebuild(progress=bar.update)
            else:
                applied = rollups_advance(progress=bar.update, batch=batch)
        self.stdout.write(f"Applied {applied} events.")
