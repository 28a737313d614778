"""The delivery projections: derived from the log by `delivery.rollups`, never written by
anything else. `manage.py rollups --rebuild` recomputes them from scratch and must give the
same rows. The tables keep the names they were created with (`activity_*`).
"""

from django.db import models

from activity.models import Event
from boards.models import (
    DEPLOYMENT_URL_MAX_LENGTH,
    ENVIRONMENT_MAX_LENGTH,
    LABEL_NAME_MAX_LENGTH,
    USERNAME_MAX_LENGTH,
)


class DeploymentKind(models.TextChoices):
    CI = "ci", "Recorded by CI"
    MANUAL = "manual", "Manual move into Deployed"


class Deployment(models.Model):
    """One deployment: a CI-recorded one, or a manual move of a card into Deployed. Its
    public id (the API's, the CSV's) is `event_id`: the id of the event that recorded it."""

    event = models.OneToOneField(Event, on_delete=models.PROTECT, related_name="+")
    board = models.ForeignKey("boards.Board", on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=10, choices=DeploymentKind.choices)
    version = models.CharField(max_length=LABEL_NAME_MAX_LENGTH, blank=True)
    environment = models.CharField(max_length=ENVIRONMENT_MAX_LENGTH)
    status = models.CharField(max_length=12)
    deployed_at = models.DateTimeField()
    url = models.CharField(max_length=DEPLOYMENT_URL_MAX_LENGTH, blank=True)
    commit_shas = models.JSONField(default=list)
    source = models.CharField(max_length=10)
    actor_name = models.CharField(max_length=USERNAME_MAX_LENGTH)
    hotfix = models.BooleanField(default=False)
    fixes = models.JSONField(default=list, help_text="Ids of the incidents it fixes.")
    rollback_event = models.ForeignKey(
        Event, null=True, on_delete=models.PROTECT, related_name="+", db_constraint=False
    )
    rolled_back_at = models.DateTimeField(null=True)

    class Meta:
        db_table = "activity_deployment"
        indexes = [models.Index(fields=["board", "deployed_at"], name="deployment_board_time")]

    def __str__(self) -> str:
        return f"{self.board_id} {self.version or self.kind} {self.status} at {self.deployed_at}"


# The per-card projections below (a row per delivery, per moment, per card: a million rows
# and more) reference their rows without a database foreign key: a key costs a check per
# inserted row, half the time of a rebuild. Every reference is made by delivery.rollups from
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
        db_table = "activity_deploymentcard"
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

    class Meta:
        db_table = "activity_cardflow"

    def __str__(self) -> str:
        return f"flow of card {self.card_id}"


class CardMoment(models.Model):
    """A moment a delivery time can start from: the card entered In Progress ("start"), or a
    deployment named the card with its earliest commit ("commit"). Each delivery uses the
    moments true at or before it: a start from when the card entered, a commit from its
    deployment's own time (when it finished, not when CI reported it). So the times depend on
    what was reported, never on the order or delay of the reports: a deployment backfilled
    later re-times the later deliveries of its cards."""

    START, COMMIT = "start", "commit"

    event = models.ForeignKey(
        Event, on_delete=models.PROTECT, related_name="+", db_constraint=False
    )
    card = models.ForeignKey(
        "boards.Card", on_delete=models.PROTECT, related_name="+", db_constraint=False
    )
    kind = models.CharField(max_length=10, choices=[(START, "start"), (COMMIT, "commit")])
    at = models.DateTimeField()
    known_at = models.DateTimeField(
        help_text="From when it counts: its own time (a commit: its deployment's finish)."
    )

    class Meta:
        db_table = "activity_cardmoment"
        constraints = [
            models.UniqueConstraint(fields=["event", "card", "kind"], name="card_moment_once")
        ]
        indexes = [models.Index(fields=["card", "kind", "at"], name="card_moment_lookup")]

    def __str__(self) -> str:
        return f"{self.kind} of card {self.card_id} at {self.at}"


class DeploymentCommit(models.Model):
    """A commit a CI deployment listed (a row per deployment and sha)."""

    deployment = models.ForeignKey(
        Deployment, on_delete=models.CASCADE, related_name="+", db_constraint=False
    )
    board = models.ForeignKey(
        "boards.Board", on_delete=models.PROTECT, related_name="+", db_constraint=False
    )
    sha = models.CharField(max_length=64)
    committed_at = models.DateTimeField(null=True)

    class Meta:
        db_table = "activity_deploymentcommit"
        constraints = [
            models.UniqueConstraint(fields=["deployment", "sha"], name="deployment_commit_once")
        ]
        indexes = [models.Index(fields=["board", "sha"], name="deployment_commit_sha")]

    def __str__(self) -> str:
        return f"{self.sha} in deployment {self.deployment_id}"


class Change(models.Model):
    """A change (a commit) of a service, and the production deployment that first shipped it:
    the first successful production deployment listing it, by finish time, not rolled back.
    DORA's change lead time is `lead_time`."""

    board = models.ForeignKey(
        "boards.Board", on_delete=models.PROTECT, related_name="+", db_constraint=False
    )
    sha = models.CharField(max_length=64)
    committed_at = models.DateTimeField(null=True, help_text="Its earliest reported time.")
    deployment = models.ForeignKey(
        Deployment, null=True, on_delete=models.SET_NULL, related_name="+", db_constraint=False
    )
    deployed_at = models.DateTimeField(null=True)
    lead_time = models.FloatField(
        null=True, help_text="Committed to deployed, seconds; 0 for a commit stamped after."
    )

    class Meta:
        db_table = "activity_change"
        constraints = [models.UniqueConstraint(fields=["board", "sha"], name="change_once")]
        indexes = [models.Index(fields=["board", "deployed_at"], name="change_board_time")]

    def __str__(self) -> str:
        return f"change {self.sha}"


class Incident(models.Model):
    """A production incident; its public id is `event_id`, the event that opened it."""

    event = models.OneToOneField(Event, on_delete=models.PROTECT, related_name="+")
    board = models.ForeignKey("boards.Board", on_delete=models.PROTECT, related_name="+")
    title = models.CharField(max_length=200)
    started_at = models.DateTimeField()
    caused_by = models.BigIntegerField(null=True, help_text="The public id of a deployment.")
    resolve_event = models.ForeignKey(
        Event, null=True, on_delete=models.PROTECT, related_name="+", db_constraint=False
    )
    resolved_at = models.DateTimeField(null=True)
    fixed_by = models.BigIntegerField(null=True, help_text="The public id of a deployment.")
    restored_at = models.DateTimeField(
        null=True,
        help_text="The first production deployment fixing it, else its resolution.",
    )

    class Meta:
        db_table = "activity_incident"
        indexes = [
            models.Index(fields=["board", "started_at"], name="incident_board_time"),
            models.Index(fields=["caused_by"], name="incident_cause"),
        ]

    def __str__(self) -> str:
        return f"incident {self.event_id}: {self.title}"


class Rework(models.Model):
    """A card leaving Deployed for an earlier stage."""

    event = models.OneToOneField(Event, on_delete=models.PROTECT, related_name="+")
    board = models.ForeignKey("boards.Board", on_delete=models.PROTECT, related_name="+")
    card = models.ForeignKey("boards.Card", on_delete=models.PROTECT, related_name="+")
    occurred_at = models.DateTimeField()

    class Meta:
        db_table = "activity_rework"

    def __str__(self) -> str:
        return f"rework of card {self.card_id}"


class DailyRollup(models.Model):
    """Per service and UTC day: the delivery numbers, recomputed whole for each touched day."""

    board = models.ForeignKey("boards.Board", on_delete=models.PROTECT, related_name="+")
    day = models.DateField()
    deployments = models.PositiveIntegerField(default=0)
    failed_deployments = models.PositiveIntegerField(default=0)
    successful_deployments = models.PositiveIntegerField(default=0)
    failed_changes = models.PositiveIntegerField(
        default=0, help_text="Failed, rolled back or the cause of an incident."
    )
    unplanned_deployments = models.PositiveIntegerField(
        default=0, help_text="Hotfixes and fixes of incidents."
    )
    changes = models.PositiveIntegerField(default=0, help_text="Changes first shipped.")
    change_lead_p50 = models.FloatField(null=True)
    change_lead_p85 = models.FloatField(null=True)
    cards_deployed = models.PositiveIntegerField(default=0)
    lead_time_p50 = models.FloatField(null=True)
    lead_time_p85 = models.FloatField(null=True)
    cycle_time_p50 = models.FloatField(null=True)
    cycle_time_p85 = models.FloatField(null=True)
    rework = models.PositiveIntegerField(default=0)

    class Meta:
        db_table = "activity_dailyrollup"
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
    delivery.rollups, "Restores").
    """

    name = models.CharField(max_length=50, unique=True)
    txid_watermark = models.BigIntegerField(default=0)
    event_watermark = models.BigIntegerField(default=0)
    events_applied = models.BigIntegerField(default=0)
    cluster = models.CharField(
        max_length=20, blank=True, default="", help_text="PostgreSQL's system identifier."
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "activity_projectioncursor"

    def __str__(self) -> str:
        return self.name
