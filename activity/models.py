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


# --- Projections ------------------------------------------------------------------------------
# Derived from the log by activity.rollups; `rollups --rebuild` recomputes them from scratch
# and must give the same rows. Never written by anything else.


class DeploymentKind(models.TextChoices):
    CI = "ci", "Recorded by CI"
    MANUAL = "manual", "Manual move into Deployed"


class Deployment(models.Model):
    """One deployment: a CI-recorded one, or a manual move of a card into Deployed."""

    event = models.OneToOneField(Event, on_delete=models.PROTECT, related_name="+")
    board = models.ForeignKey("boards.Board", on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=10, choices=DeploymentKind.choices)
    version = models.CharField(max_length=50, blank=True)
    environment = models.CharField(max_length=50)
    status = models.CharField(max_length=10)
    deployed_at = models.DateTimeField()
    url = models.CharField(max_length=500, blank=True)
    commit_shas = models.JSONField(default=list)
    source = models.CharField(max_length=10)
    actor_name = models.CharField(max_length=150)

    class Meta:
        indexes = [models.Index(fields=["board", "deployed_at"], name="deployment_board_time")]

    def __str__(self) -> str:
        return f"{self.board_id} {self.version or self.kind} {self.status} at {self.deployed_at}"


# The per-card projections below (a row per delivery, per moment, per card: a million rows
# and more) reference their rows without a database foreign key: a key costs a check per
# inserted row, half the time of a rebuild. Every reference is made by activity.rollups from
# a row it has just read, and the rows referred to are never deleted (events refuse it in the
# database, cards are archived, deployments go only with a rebuild).


class DeploymentCard(models.Model):
    """A card delivered by a deployment, with its delivery times (seconds)."""

    deployment = models.ForeignKey(
        Deployment, on_delete=models.CASCADE, related_name="cards", db_constraint=False
    )
    card = models.ForeignKey(
        "boards.Card", on_delete=models.PROTECT, related_name="+", db_constraint=False
    )
    card_ref = models.CharField(max_length=20)
    created_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True)
    first_commit_at = models.DateTimeField(null=True)
    deployed_at = models.DateTimeField()
    lead_time = models.FloatField(help_text="First commit (else start of work) to deployed.")
    cycle_time = models.FloatField(null=True, help_text="First entry into In Progress to deployed.")
    card_lead_time = models.FloatField(help_text="Created to deployed.")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["deployment", "card"], name="deployment_card_once")
        ]

    def __str__(self) -> str:
        return f"{self.card_ref} in deployment {self.deployment_id}"


class CardFlow(models.Model):
    """What the log says about a card's way through the pipeline so far."""

    card = models.OneToOneField(
        "boards.Card", on_delete=models.PROTECT, related_name="+", db_constraint=False
    )
    board = models.ForeignKey(
        "boards.Board", on_delete=models.PROTECT, related_name="+", db_constraint=False
    )
    created_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, help_text="First entry into In Progress.")
    first_commit_at = models.DateTimeField(null=True)

    def __str__(self) -> str:
        return f"flow of card {self.card_id}"


class CardMoment(models.Model):
    """A moment a delivery time can start from: the card entered In Progress ("start"), or a
    deployment named the card with its earliest commit ("commit"). Each delivery uses only the
    moments known at or before it, so later events never rewrite an earlier delivery's times."""

    START, COMMIT = "start", "commit"

    event = models.ForeignKey(
        Event, on_delete=models.PROTECT, related_name="+", db_constraint=False
    )
    card = models.ForeignKey(
        "boards.Card", on_delete=models.PROTECT, related_name="+", db_constraint=False
    )
    kind = models.CharField(max_length=10, choices=[(START, "start"), (COMMIT, "commit")])
    at = models.DateTimeField()
    known_at = models.DateTimeField(help_text="When the log learned of it (a commit: its deploy).")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["event", "card", "kind"], name="card_moment_once")
        ]
        indexes = [models.Index(fields=["card", "kind", "at"], name="card_moment_lookup")]

    def __str__(self) -> str:
        return f"{self.kind} of card {self.card_id} at {self.at}"


class Rework(models.Model):
    """A card leaving Deployed for an earlier stage."""

    event = models.OneToOneField(Event, on_delete=models.PROTECT, related_name="+")
    board = models.ForeignKey("boards.Board", on_delete=models.PROTECT, related_name="+")
    card = models.ForeignKey("boards.Card", on_delete=models.PROTECT, related_name="+")
    occurred_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"rework of card {self.card_id}"


class DailyRollup(models.Model):
    """Per service and UTC day: the delivery numbers, recomputed whole for each touched day."""

    board = models.ForeignKey("boards.Board", on_delete=models.PROTECT, related_name="+")
    day = models.DateField()
    deployments = models.PositiveIntegerField(default=0)
    failed_deployments = models.PositiveIntegerField(default=0)
    cards_deployed = models.PositiveIntegerField(default=0)
    lead_time_p50 = models.FloatField(null=True)
    lead_time_p85 = models.FloatField(null=True)
    cycle_time_p50 = models.FloatField(null=True)
    cycle_time_p85 = models.FloatField(null=True)
    rework = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["board", "day"], name="rollup_once_a_day")]
        ordering = ["board", "day"]

    def __str__(self) -> str:
        return f"{self.board_id} {self.day}"


class ProjectionCursor(models.Model):
    """How far the projections have read the log.

    PostgreSQL: every event whose writing transaction id is below `txid_watermark` has been
    applied (ids are not commit order; transaction ids below the snapshot's xmin are all
    finished). SQLite serialises writers, so ids are commit order there: `event_watermark`.
    Transaction ids are a cluster's own: `cluster` names the one the watermark counts in (see
    activity.rollups, "Restores").
    """

    name = models.CharField(max_length=50, unique=True)
    txid_watermark = models.BigIntegerField(default=0)
    event_watermark = models.BigIntegerField(default=0)
    events_applied = models.BigIntegerField(default=0)
    cluster = models.CharField(
        max_length=20, blank=True, default="", help_text="PostgreSQL's system identifier."
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.name


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


class BoardSnapshotQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnlyError("Snapshots are append-only; they cannot be updated.")

    def delete(self):
        raise AppendOnlyError("Snapshots are append-only; they cannot be deleted.")


class BoardSnapshot(models.Model):
    """A board's replayed state after its event `seq`: an accelerator for activity.replay,
    never the source of truth (replay from zero gives the same state), written once."""

    board = models.ForeignKey("boards.Board", on_delete=models.PROTECT, related_name="+")
    format = models.PositiveSmallIntegerField(help_text="activity.replay.FORMAT when written.")
    seq = models.BigIntegerField(help_text="The state after the board's event of this seq.")
    event_hash = models.CharField(max_length=64, help_text="That event's chain hash.")
    occurred_max = models.DateTimeField(help_text="The latest occurred_at of events covered.")
    state = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    objects = BoardSnapshotQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["board", "format", "seq"], name="board_snapshot_once")
        ]

    def __str__(self) -> str:
        return f"snapshot of board {self.board_id} at {self.seq}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnlyError("Snapshots are append-only; they cannot be updated.")
        kwargs["force_insert"] = True
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("Snapshots are append-only; they cannot be deleted.")


def _connect_sqlite_functions() -> None:
    from django.db.backends.signals import connection_created

    from activity.chain import sqlite_functions

    connection_created.connect(sqlite_functions, dispatch_uid="activity_chain_sqlite_functions")


_connect_sqlite_functions()
