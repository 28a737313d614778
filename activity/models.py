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
    actor_name = models.CharField(
        max_length=150,
        help_text="The person's username (before `via` existed: maybe a token's name).",
    )
    via = models.CharField(
        max_length=150,
        blank=True,
        default="",
        db_default="",
        help_text="The API token or integration that acted for the person, if any.",
    )
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
    # The request that wrote it (activity.log.request_id), to tie log lines to events.
    request_id = models.CharField(max_length=64, blank=True, default="", db_default="")
    # Tamper evidence (activity.chain): the event's place in its board's chain (1, 2, ...;
    # commit order within the board) and the chain's head after it, sha256(previous head ||
    # sha256(canonical content)) in hex. Empty on events written before the chain existed.
    seq = models.BigIntegerField(null=True, blank=True, editable=False)
    hash = models.CharField(max_length=64, blank=True, default="", db_default="", editable=False)

    objects = EventQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["board", "id"], name="activity_event_board_id"),
            models.Index(fields=["card", "id"], name="activity_event_card_id"),
            models.Index(fields=["kind", "id"], name="activity_event_kind_id"),
            models.Index(fields=["txid", "id"], name="activity_event_txid_id"),
            models.Index(fields=["board", "occurred_at"], name="activity_event_board_time"),
            models.Index(fields=["actor", "id"], name="activity_event_actor_id"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["board", "seq"], name="activity_event_board_seq"),
        ]
        # Verifying replays every board: a full read of the log, so not for every staff member
        # (history/admin.py's verify view; superusers have it implicitly).
        permissions = [("verify_event", "Can verify the activity log")]

    def __str__(self) -> str:
        return f"#{self.pk} {self.kind} by {self.actor_name}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnlyError("Events are append-only; they cannot be updated.")
        kwargs["force_insert"] = True  # never an UPDATE, even with an explicit id
        # Joining the board's chain is part of being an event, like being append-only: one
        # statement that locks the chain head until commit and returns this event's place.
        from activity.chain import chain_append

        chain_append(self, using=kwargs.get("using") or "default")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("Events are append-only; they cannot be deleted.")


# --- Tamper evidence and replay accelerators ---------------------------------------------------


class ChainHead(models.Model):
    """The newest link of a board's event chain: its seq and hash. Each event moves it one on,
    in the statement that also locks it, so appends on one board serialize and the chain has
    no forks; other boards' heads are other rows and do not wait."""

    board = models.OneToOneField(
        "boards.Board", primary_key=True, on_delete=models.PROTECT, related_name="+"
    )
    seq = models.BigIntegerField()
    head = models.BinaryField()

    def __str__(self) -> str:
        return f"chain of board {self.board_id} at {self.seq}"


class LegacySeal(models.Model):
    """A board's events from before the hash chain (no seq), sealed when migration 0010 ran:
    how many, which ids (as [first, last] runs) and a digest of their content
    (activity.chain.legacy_digest). A seq-less event that is not among them was written
    behind the application's back; a board without a seal has no legacy events at all.
    Written once: the database refuses any later INSERT, UPDATE or DELETE (migration 0011,
    activity.dbtriggers), so no row can be added to seal a forgery."""

    board = models.OneToOneField(
        "boards.Board", primary_key=True, on_delete=models.PROTECT, related_name="+"
    )
    count = models.PositiveIntegerField()
    digest = models.CharField(max_length=64)
    ids = models.JSONField(help_text="The sealed events' ids, as [first, last] runs.")
    sealed_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.count} legacy events of board {self.board_id}"


def _connect_sqlite_functions() -> None:
    from django.db.backends.signals import connection_created

    from activity.chain import sqlite_functions

    connection_created.connect(sqlite_functions, dispatch_uid="activity_chain_sqlite_functions")


_connect_sqlite_functions()
