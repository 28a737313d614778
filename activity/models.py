"""The append-only activity log.

An Event is written once, by `activity.log.record`, and never changed: the model refuses
updates and deletes, and the database refuses them too (triggers from migrations, see
`activity.dbtriggers`).
"""

from django.conf import settings
from django.db import models


class Source(models.TextChoices):
    WEB = "web", "Web"
    API = "api", "API"
    ADMIN = "admin", "Admin"
    SYSTEM = "system", "System"


class AppendOnlyError(Exception):
    """Raised when code tries to change or remove an event."""


class EventQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnlyError("Events are append-only; they cannot be updated.")

    def delete(self):
        raise AppendOnlyError("Events are append-only; they cannot be deleted.")

    def bulk_update(self, objs, fields, batch_size=None):
        raise AppendOnlyError("Events are append-only; they cannot be updated.")


class Event(models.Model):
    occurred_at = models.DateTimeField(db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    actor_name = models.CharField(max_length=150, help_text="The user's name or an API token's.")
    source = models.CharField(max_length=10, choices=Source.choices)
    board = models.ForeignKey("boards.Board", on_delete=models.PROTECT, related_name="events")
    card = models.ForeignKey(
        "boards.Card", null=True, blank=True, on_delete=models.PROTECT, related_name="events"
    )
    kind = models.CharField(max_length=40)
    payload = models.JSONField(default=dict)
    # The writing transaction's id (pg_current_xact_id), set by a database trigger on
    # PostgreSQL so incremental readers can use a commit-safe watermark. Null on SQLite.
    txid = models.BigIntegerField(null=True, blank=True, editable=False)

    objects = EventQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["board", "id"], name="activity_event_board_id"),
            models.Index(fields=["card", "id"], name="activity_event_card_id"),
            models.Index(fields=["kind", "id"], name="activity_event_kind_id"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.kind} by {self.actor_name}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnlyError("Events are append-only; they cannot be updated.")
        kwargs["force_insert"] = True  # never an UPDATE, even with an explicit id
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("Events are append-only; they cannot be deleted.")
