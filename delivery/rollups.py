"""Incremental, idempotent projections of the log: deployments, card flow, rework, daily rollups.

`rollups_advance()` applies the events committed since its last run, in batches, each batch
in one transaction with the cursor that records it: a run killed half-way leaves the cursor
where it was, and the rerun applies the same events again to the same rows (every write here
is an upsert keyed by the event, or a min, or a recomputation). The result does not depend on
the order events are applied in: card times and daily numbers are recomputed from the
projection rows for everything a batch touched.

Commit safety (DESIGN.md, invariant 5): on PostgreSQL an event is read only once every
transaction with a lower id has finished (its txid is below the snapshot's xmin), so an
event whose transaction commits late is neither skipped nor counted twice.

Rebuild (PostgreSQL): `rollups_rebuild()` recomputes every projection in one transaction of
a few set-based SQL statements (`_REBUILD`), from the events visible to that transaction's
snapshot, whatever transaction ids they carry; the cursor's watermark becomes the snapshot's
xmin, so an event the snapshot could not see is read by the next incremental run, and one it
saw above the watermark is read again then, which changes nothing (applying is idempotent).
On SQLite a rebuild empties the projections and applies the log batch by batch.

Restores: transaction ids are a cluster's own. A logical dump restored into another cluster
(a fresh one counts from the start again) carries events, and a cursor watermark, from the
old counter: typically far above the new one, so the restored events would wait for ids the
new cluster may take years to reach, while the events written after the restore would lie
below the restored watermark and never be read. So the cursor records the cluster it counts
in (`system_identifier`), and a run that finds no cursor, or one of another cluster, first
rebuilds by visibility as above (no stored transaction id is trusted), which re-anchors the
watermark in this cluster's ids; from then on the incremental reader is the usual one. A
restore into the same cluster, or a physical replica of it, keeps its identifier and needs
nothing. (A reader that instead treated ids at or above pg_current_xact_id() as foreign
would lose that evidence once the new counter passes them, and could not tell an old event
from a new one below the restored watermark.)

Speed: a batch is applied set-wise, with a fixed number of queries whatever its size. The
events are read as plain tuples (only the payload keys the projections need, extracted by
the database); the cards, flows, moments and deliveries the batch touches are read with one
query each; each kind of projection row is written with one bulk insert or upsert (ON
CONFLICT), and only the rows whose values change; the touched days are recomputed from one
read of their deployments, deliveries and rework. Runs are serialised by the cursor's row
lock, so reading, merging in Python and writing back cannot race another run.
"""

import datetime
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from django.db import connection, transaction
from django.db.models import BooleanField, Case, Q, QuerySet, Value, When
from django.db.models.fields.json import KT, KeyTransform

from activity.models import Event
from boards.models import Card  # read for card refs and creation times, never written here
from delivery.metrics import percentile
from delivery.models import (
    CardFlow,
    CardMoment,
    DailyRollup,
    Deployment,
    DeploymentCard,
    DeploymentKind,
    ProjectionCursor,
    Rework,
)

CURSOR = "delivery"
BATCH = 5000
DELIVERED_TO = {"production", "staging"}  # environments whose success delivers cards
DEPLOYED = "deployed"
IN_PROGRESS = "in_progress"
DAYS_PER_QUERY = 200  # touched days recomputed per round of queries (bounds the OR list)
UTC = datetime.UTC

# The projection tables, dependents first (the order a rebuild empties them in).
PROJECTIONS = (DeploymentCard, Deployment, Rework, CardMoment, CardFlow, DailyRollup)


def rollups_advance(*, batch: int = BATCH, progress: Callable[[int], None] | None = None) -> int:
    """Apply every event committed since the last run; returns how many were applied."""
    applied = 0
    if connection.vendor == "postgresql" and not _cursor_of_this_cluster():
        # No cursor yet, or one written by another cluster (a restored dump): its transaction
        # ids mean nothing here, so read the whole log once by visibility (see rebuild).
        applied = _rebuild_postgresql(progress=progress, unless_cursor_is_ours=True)
    while True:
        count, more = _advance_one_batch(batch=batch)
        applied += count
        if progress and count:
            progress(count)
        if not more:
            return applied


def rollups_rebuild(*, batch: int = BATCH, progress: Callable[[int], None] | None = None) -> int:
    """Forget every projection and build them again from the whole log."""
    if connection.vendor == "postgresql":
        return _rebuild_postgresql(progress=progress)
    with transaction.atomic():
        ProjectionCursor.objects.select_for_update().filter(name=CURSOR).first()
        with connection.cursor() as cursor:
            for model in PROJECTIONS:
                cursor.execute(f"DELETE FROM {connection.ops.quote_name(model._meta.db_table)}")
        ProjectionCursor.objects.update_or_create(
            name=CURSOR, defaults={"txid_watermark": 0, "event_watermark": 0, "events_applied": 0}
        )
    return rollups_advance(batch=batch, progress=progress)


def events_pending() -> int:
    """How many committed events the projections have not applied yet (for progress bars)."""
    cursor = ProjectionCursor.objects.filter(name=CURSOR).first()
    if connection.vendor == "postgresql":
        if cursor is None or not _cursor_of_this_cluster():
            return Event.objects.count()  # the next run reads the whole log
        low, high = cursor.txid_watermark, _snapshot_xmin()
        return Event.objects.filter(txid__gte=low, txid__lt=high).count()
    return Event.objects.filter(pk__gt=cursor.event_watermark if cursor else 0).count()


def _snapshot_xmin() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
        return cursor.fetchone()[0]


def _cursor_of_this_cluster() -> bool:
    """Whether the cursor exists and was written by this PostgreSQL cluster."""
    with connection.cursor() as cursor:
        cursor.execute(_CURSOR_CLUSTER, [CURSOR])
        stored, current = cursor.fetchone()
    return stored == current


_CURSOR_CLUSTER = """
    SELECT (SELECT cluster FROM activity_projectioncursor WHERE name = %s),
           system_identifier::text
      FROM pg_control_system()"""


# --- reading the log ----------------------------------------------------------------------------

# One event as the projections need it (a named tuple of the fields below).
EventRow = tuple


def _event_rows(events: QuerySet) -> list[EventRow]:
    """The events as plain tuples, with only the payload keys the projections read."""
    return list(
        events.annotate(
            created_stage=KT("payload__card__stage"),
            from_stage=KT("payload__from__stage"),
            to_stage=KT("payload__to__stage"),
            by_deployment=Case(
                When(payload__has_key="deployment_id", then=Value(True)),
                default=Value(False),
                output_field=BooleanField(),
            ),
            deployment_data=Case(
                When(kind="deployment.recorded", then=KeyTransform("deployment", "payload")),
                default=None,
            ),
        ).values_list(
            "pk",
            "txid",
            "kind",
            "board_id",
            "card_id",
            "occurred_at",
            "source",
            "actor_name",
            "created_stage",
            "from_stage",
            "to_stage",
            "by_deployment",
            "deployment_data",
            named=True,
        )
    )


@transaction.atomic
def _advance_one_batch(*, batch: int) -> tuple[int, bool]:
    """Apply one batch; returns how many events, and whether more are waiting."""
    cursor, _ = ProjectionCursor.objects.get_or_create(name=CURSOR)
    cursor = ProjectionCursor.objects.select_for_update().get(pk=cursor.pk)
    if connection.vendor == "postgresql":
        events, cursor.txid_watermark, more = _next_by_txid(cursor.txid_watermark, batch)
    else:
        events = _event_rows(
            Event.objects.filter(pk__gt=cursor.event_watermark).order_by("pk")[: batch + 1]
        )
        more = len(events) > batch
        events = events[:batch]
        if events:
            cursor.event_watermark = events[-1].pk
    if events:
        _apply(events)
    cursor.events_applied += len(events)
    cursor.save()
    return len(events), more


def _next_by_txid(watermark: int, batch: int) -> tuple[list[EventRow], int, bool]:
    """Events of finished transactions from `watermark` on, whole transactions at a time;
    with the next watermark and whether more events are waiting below the horizon."""
    horizon = _snapshot_xmin()
    events = _event_rows(
        Event.objects.filter(txid__gte=watermark, txid__lt=horizon).order_by("txid", "pk")[
            : batch + 1
        ]
    )
    if len(events) <= batch:
        return events, max(horizon, watermark), False
    last = events[-1].txid
    whole = [event for event in events if event.txid != last]
    if whole:
        return whole, last, True
    # One transaction wrote more than a batch: take all of it.
    return _event_rows(Event.objects.filter(txid=last).order_by("pk")), last + 1, True


# --- applying a batch ---------------------------------------------------------------------------


@dataclass
class _FlowNote:
    """What one batch says about a card's flow (None: nothing)."""

    board_id: int
    created_at: datetime.datetime | None = None
    started_at: datetime.datetime | None = None
    first_commit_at: datetime.datetime | None = None


@dataclass
class _Batch:
    """Everything one batch of events asks of the projections, gathered before any write."""

    flows: dict[int, _FlowNote] = field(default_factory=dict)
    moments: dict[tuple[int, int, str], tuple[datetime.datetime, datetime.datetime]] = field(
        default_factory=dict
    )  # (event, card, kind) -> (at, known_at)
    deployments: dict[int, Deployment] = field(default_factory=dict)  # by event id
    rework: dict[int, Rework] = field(default_factory=dict)  # by event id
    # (deployment event id, its occurred_at, card ids, first commit) per delivering deployment
    deliveries: list[tuple[int, datetime.datetime, list[int], datetime.datetime | None]] = field(
        default_factory=list
    )
    cards: set[int] = field(default_factory=set)
    days: set[tuple[int, datetime.date]] = field(default_factory=set)

    def note(self, card_id: int, board_id: int, **earliest: datetime.datetime | None) -> None:
        flow = self.flows.setdefault(card_id, _FlowNote(board_id=board_id))
        for name, at in earliest.items():
            if at is not None and (getattr(flow, name) is None or at < getattr(flow, name)):
                setattr(flow, name, at)

    def moment(self, event_id, card_id, kind, at, occurred_at) -> None:
        known_at = max(at, occurred_at) if kind == CardMoment.COMMIT else at
        self.moments.setdefault((event_id, card_id, kind), (at, known_at))


def _apply(events: Iterable[EventRow]) -> None:
    todo = _Batch()
    for event in events:
        match event.kind:
            case "card.created":
                _gather_created(event, todo)
            case "card.moved":
                _gather_move(event, todo)
            case "deployment.recorded":
                _gather_deployment(event, todo)
    deployments = _write_deployments(todo)
    for event_id, occurred_at, card_ids, first_commit in todo.deliveries:
        for card_id in card_ids:
            if first_commit is not None:
                todo.note(card_id, deployments[event_id].board_id, first_commit_at=first_commit)
                todo.moment(event_id, card_id, CardMoment.COMMIT, first_commit, occurred_at)
            todo.cards.add(card_id)
    if todo.rework:
        Rework.objects.bulk_create(todo.rework.values(), ignore_conflicts=True)
    if todo.moments:
        CardMoment.objects.bulk_create(
            [
                CardMoment(event_id=event_id, card_id=card_id, kind=kind, at=at, known_at=known)
                for (event_id, card_id, kind), (at, known) in todo.moments.items()
            ],
            ignore_conflicts=True,
        )
    delivered = {
        (deployments[event_id].pk, card_id): deployments[event_id]
        for event_id, _, card_ids, _ in todo.deliveries
        for card_id in card_ids
    }
    known = {
        pk: (created_at, f"{key}-{number}")
        for pk, created_at, key, number in Card.objects.filter(pk__in=todo.cards).values_list(
            "pk", "created_at", "board__key", "number"
        )
    }
    created = _write_flows(todo, delivered, known)
    _write_card_times(todo, delivered, known, created)
    _refresh_days(todo.days)


def _gather_created(event: EventRow, todo: _Batch) -> None:
    at = event.occurred_at
    started = at if event.created_stage == IN_PROGRESS else None
    todo.note(event.card_id, event.board_id, created_at=at, started_at=started)
    if started:
        todo.moment(event.pk, event.card_id, CardMoment.START, at, at)
    todo.cards.add(event.card_id)


def _gather_move(event: EventRow, todo: _Batch) -> None:
    before, after, at = event.from_stage, event.to_stage, event.occurred_at
    todo.note(event.card_id, event.board_id, started_at=at if after == IN_PROGRESS else None)
    if after == IN_PROGRESS:
        todo.moment(event.pk, event.card_id, CardMoment.START, at, at)
    todo.cards.add(event.card_id)
    if before == DEPLOYED and after != DEPLOYED:
        todo.rework[event.pk] = Rework(
            event_id=event.pk, board_id=event.board_id, card_id=event.card_id, occurred_at=at
        )
        todo.days.add((event.board_id, at.astimezone(UTC).date()))
    if after == DEPLOYED and before != DEPLOYED and not event.by_deployment:
        todo.deployments[event.pk] = Deployment(
            event_id=event.pk,
            board_id=event.board_id,
            kind=DeploymentKind.MANUAL,
            environment="production",
            status="success",
            deployed_at=at,
            source=event.source,
            actor_name=event.actor_name,
        )
        todo.deliveries.append((event.pk, at, [event.card_id], None))


def _gather_deployment(event: EventRow, todo: _Batch) -> None:
    data = event.deployment_data
    finished = data.get("finished_at")
    deployed_at = datetime.datetime.fromisoformat(finished) if finished else event.occurred_at
    commits = [c["timestamp"] for c in data.get("commits", []) if c.get("timestamp")]
    first_commit = min(map(datetime.datetime.fromisoformat, commits)) if commits else None
    todo.deployments[event.pk] = Deployment(
        event_id=event.pk,
        board_id=event.board_id,
        kind=DeploymentKind.CI,
        version=data["version"],
        environment=data["environment"],
        status=data["status"],
        deployed_at=deployed_at,
        url=data.get("url") or "",
        commit_shas=[c["sha"] for c in data.get("commits", [])],
        source=event.source,
        actor_name=event.actor_name,
    )
    card_ids = [card["id"] for card in data.get("cards", [])]
    if data["status"] == "success" and data["environment"] in DELIVERED_TO:
        todo.deliveries.append((event.pk, event.occurred_at, card_ids, first_commit))
    elif first_commit is not None:
        for card_id in card_ids:
            todo.note(card_id, event.board_id, first_commit_at=first_commit)
            todo.moment(event.pk, card_id, CardMoment.COMMIT, first_commit, event.occurred_at)
            todo.cards.add(card_id)


def _write_deployments(todo: _Batch) -> dict[int, Deployment]:
    """Insert the batch's deployments (a rerun keeps the rows it finds); by event id, as stored."""
    if not todo.deployments:
        return {}
    Deployment.objects.bulk_create(todo.deployments.values(), ignore_conflicts=True)
    stored = {
        deployment.event_id: deployment
        for deployment in Deployment.objects.filter(event_id__in=todo.deployments).only(
            "pk", "event_id", "board_id", "deployed_at"
        )
    }
    for deployment in stored.values():
        todo.days.add((deployment.board_id, deployment.deployed_at.astimezone(UTC).date()))
    return stored


def _write_flows(todo: _Batch, delivered: dict, known: dict) -> dict[int, datetime.datetime]:
    """Lower each touched card's flow to what the batch adds; the cards' creation times."""
    for (_, card_id), deployment in delivered.items():
        todo.flows.setdefault(card_id, _FlowNote(board_id=deployment.board_id))
    stored = {flow.card_id: flow for flow in CardFlow.objects.filter(card_id__in=todo.flows)}
    changed: list[CardFlow] = []
    for card_id, note in todo.flows.items():
        flow = stored.get(card_id)
        if flow is None:
            flow = CardFlow(card_id=card_id, board_id=note.board_id, created_at=known[card_id][0])
            stored[card_id] = flow
            dirty = True
        else:
            dirty = False
        for name in ("created_at", "started_at", "first_commit_at"):
            at = getattr(note, name)
            if at is not None and (getattr(flow, name) is None or at < getattr(flow, name)):
                setattr(flow, name, at)
                dirty = True
        if dirty:
            changed.append(flow)
    if changed:
        CardFlow.objects.bulk_create(
            changed,
            update_conflicts=True,
            unique_fields=["card"],
            update_fields=["created_at", "started_at", "first_commit_at"],
        )
    return {card_id: flow.created_at for card_id, flow in stored.items()}


Moment = tuple[str, datetime.datetime, datetime.datetime]
TIMES = (
    "card_ref",
    "created_at",
    "started_at",
    "first_commit_at",
    "deployed_at",
    "lead_time",
    "cycle_time",
    "card_lead_time",
)


def _write_card_times(todo: _Batch, delivered: dict, known: dict, created: dict) -> None:
    """Every delivery of the touched cards, new or old, with its times recomputed from the
    moments known at its deployment; writes only the rows whose times change."""
    moments: dict[int, list[Moment]] = defaultdict(list)
    rows = CardMoment.objects.filter(card_id__in=todo.cards).values_list(
        "card_id", "kind", "at", "known_at"
    )
    for card_id, kind, at, known_at in rows:
        moments[card_id].append((kind, at, known_at))
    stored = DeploymentCard.objects.filter(card_id__in=todo.cards).values_list(
        "deployment_id", "card_id", "deployment__board_id", *TIMES
    )
    current = {(deployment_id, card_id): (board_id, tuple(times))
               for deployment_id, card_id, board_id, *times in stored}  # fmt: skip
    for (deployment_id, card_id), deployment in delivered.items():
        unknown = tuple(deployment.deployed_at if name == "deployed_at" else None for name in TIMES)
        current.setdefault((deployment_id, card_id), (deployment.board_id, unknown))
    changed: list[DeploymentCard] = []
    for (deployment_id, card_id), (board_id, times) in current.items():
        deployed_at = times[TIMES.index("deployed_at")]
        fresh = _card_times(deployed_at, moments[card_id], created[card_id], ref=known[card_id][1])
        if fresh != times:
            changed.append(
                DeploymentCard(
                    deployment_id=deployment_id,
                    card_id=card_id,
                    **dict(zip(TIMES, fresh, strict=True)),
                )
            )
        todo.days.add((board_id, deployed_at.astimezone(UTC).date()))
    if changed:
        DeploymentCard.objects.bulk_create(
            changed,
            update_conflicts=True,
            unique_fields=["deployment", "card"],
            update_fields=[name for name in TIMES if name != "deployed_at"],
        )


def _card_times(
    deployed_at: datetime.datetime,
    moments: list[Moment],
    created_at: datetime.datetime,
    *,
    ref: str,
) -> tuple:
    """A delivery's times (in TIMES order) from what was known by then: the card's first
    entry into In Progress, and the earliest commit a deployment at or before `deployed_at`
    named for it."""
    earlier = [(kind, at) for kind, at, known in moments if known <= deployed_at]
    started = min((at for kind, at in earlier if kind == CardMoment.START), default=None)
    committed = min((at for kind, at in earlier if kind == CardMoment.COMMIT), default=None)
    start_of_change = committed or started or created_at
    return (
        ref,
        created_at,
        started,
        committed,
        deployed_at,
        max(0.0, (deployed_at - start_of_change).total_seconds()),
        (deployed_at - started).total_seconds() if started else None,
        max(0.0, (deployed_at - created_at).total_seconds()),
    )


def _refresh_days(days: set[tuple[int, datetime.date]]) -> None:
    """Recompute each touched (service, UTC day) from the projection rows."""
    ordered = sorted(days)
    for start in range(0, len(ordered), DAYS_PER_QUERY):
        _refresh_some_days(ordered[start : start + DAYS_PER_QUERY])


def _day_ranges(days: list[tuple[int, datetime.date]], board: str, moment: str) -> Q:
    ranges = Q()
    for board_id, day in days:
        start = datetime.datetime.combine(day, datetime.time.min, tzinfo=UTC)
        ranges |= Q(
            **{board: board_id, f"{moment}__gte": start,
               f"{moment}__lt": start + datetime.timedelta(days=1)}
        )  # fmt: skip
    return ranges


def _refresh_some_days(days: list[tuple[int, datetime.date]]) -> None:
    wanted = set(days)
    deployments = {key: [0, 0] for key in wanted}  # (deployments, failed)
    leads: dict = defaultdict(list)
    cycles: dict = defaultdict(list)
    rework = dict.fromkeys(wanted, 0)
    production = Deployment.objects.filter(environment="production")
    for board_id, deployed_at, status in production.filter(
        _day_ranges(days, "board_id", "deployed_at")
    ).values_list("board_id", "deployed_at", "status"):
        counts = deployments[(board_id, deployed_at.astimezone(UTC).date())]
        counts[0] += 1
        counts[1] += status == "failed"
    delivered = DeploymentCard.objects.filter(
        _day_ranges(days, "deployment__board_id", "deployment__deployed_at"),
        deployment__environment="production",
    ).values_list("deployment__board_id", "deployment__deployed_at", "lead_time", "cycle_time")
    for board_id, deployed_at, lead, cycle in delivered:
        key = (board_id, deployed_at.astimezone(UTC).date())
        leads[key].append(lead)
        if cycle is not None:
            cycles[key].append(cycle)
    for board_id, occurred_at in Rework.objects.filter(
        _day_ranges(days, "board_id", "occurred_at")
    ).values_list("board_id", "occurred_at"):
        rework[(board_id, occurred_at.astimezone(UTC).date())] += 1
    stored = {
        (rollup.board_id, rollup.day): rollup
        for rollup in DailyRollup.objects.filter(
            board_id__in={board_id for board_id, _ in days}, day__in={day for _, day in days}
        )
    }
    fields = [
        "deployments",
        "failed_deployments",
        "cards_deployed",
        "lead_time_p50",
        "lead_time_p85",
        "cycle_time_p50",
        "cycle_time_p85",
        "rework",
    ]
    changed, emptied = [], []
    for key in days:
        day_leads, day_cycles = sorted(leads[key]), sorted(cycles[key])
        values = {
            "deployments": deployments[key][0],
            "failed_deployments": deployments[key][1],
            "cards_deployed": len(day_leads),
            "lead_time_p50": percentile(day_leads, 50),
            "lead_time_p85": percentile(day_leads, 85),
            "cycle_time_p50": percentile(day_cycles, 50),
            "cycle_time_p85": percentile(day_cycles, 85),
            "rework": rework[key],
        }
        rollup = stored.get(key)
        if not any(values[k] for k in ("deployments", "cards_deployed", "rework")):
            if rollup is not None:
                emptied.append(rollup.pk)
        elif rollup is None or any(getattr(rollup, k) != v for k, v in values.items()):
            changed.append(DailyRollup(board_id=key[0], day=key[1], **values))
    if changed:
        DailyRollup.objects.bulk_create(
            changed, update_conflicts=True, unique_fields=["board", "day"], update_fields=fields
        )
    if emptied:
        DailyRollup.objects.filter(pk__in=emptied).delete()


# --- rebuilding on PostgreSQL -------------------------------------------------------------------


def _rebuild_postgresql(
    *, progress: Callable[[int], None] | None = None, unless_cursor_is_ours: bool = False
) -> int:
    """Rebuild every projection from the log in one transaction, set-wise in SQL.

    The events are those visible to the transaction's snapshot, whatever their stored
    transaction ids (a restored dump's come from another cluster); the cursor's watermark
    becomes that snapshot's xmin in this cluster, so every event the snapshot could not see
    (its transaction was still running) has a transaction id at or above it and is read by
    the next incremental run. Events the snapshot saw above the watermark are read again
    then, which changes nothing: applying an event is idempotent.

    The SQL computes what `_apply` computes, to the bit: lead and cycle times are the exact
    differences of the epochs (numeric) rounded once to a double, as timedelta.total_seconds()
    does, and the percentiles follow metrics.percentile step by step in double precision.
    """
    outermost = not connection.in_atomic_block
    with transaction.atomic(), connection.cursor() as cursor:
        if outermost:
            # One snapshot for every statement; taken after the lock below (LOCK takes none).
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        # Waits for a run in progress and keeps others out (they lock the cursor's row).
        cursor.execute("LOCK TABLE activity_projectioncursor IN EXCLUSIVE MODE")
        cursor.execute(_REBUILD_START, [CURSOR])
        watermark, cluster, stored_cluster = cursor.fetchone()
        if unless_cursor_is_ours and stored_cluster == cluster:
            return 0  # another run has just done it
        cursor.execute("SET LOCAL work_mem = '64MB'")
        cursor.execute("SET LOCAL maintenance_work_mem = '256MB'")
        # Foreign keys checked as each statement ends: an index cannot be built on a table
        # with checks still pending.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        tables = [model._meta.db_table for model in PROJECTIONS]
        cursor.execute("TRUNCATE " + ", ".join(map(connection.ops.quote_name, tables)))
        # An index built once over the loaded rows costs a fraction of a million insertions
        # into it: the secondary indexes (no constraint uses them) are dropped and then
        # created again, as they were, in this transaction.
        cursor.execute(_SECONDARY_INDEXES, [tables])
        indexes = cursor.fetchall()
        for name, _ in indexes:
            cursor.execute(f"DROP INDEX {name}")
        for statement in _REBUILD:
            params = {"delivered_to": sorted(DELIVERED_TO)} if "%(" in statement else None
            cursor.execute(statement, params)
        for _, definition in indexes:
            cursor.execute(definition)
        cursor.execute("ANALYZE " + ", ".join(map(connection.ops.quote_name, tables)))
        cursor.execute("SELECT count(*) FROM activity_event")
        events = cursor.fetchone()[0]
        ProjectionCursor.objects.update_or_create(
            name=CURSOR,
            defaults={
                "txid_watermark": watermark,
                "event_watermark": 0,
                "events_applied": events,
                "cluster": cluster,
            },
        )
    if progress and events:
        progress(events)
    return events


_REBUILD_START = """
    SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint, s.system_identifier::text,
           (SELECT cluster FROM activity_projectioncursor WHERE name = %s)
      FROM pg_control_system() s"""


_SECONDARY_INDEXES = """
    SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
      FROM pg_index i
     WHERE i.indrelid = ANY(%s::regclass[])
       AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conindid = i.indexrelid)
     ORDER BY 1"""


def _percentile_sql(values: str, q: int) -> str:
    """metrics.percentile(values, q) of a sorted float8[] in SQL, operation for operation."""
    position = f"((cardinality({values}) - 1) * {q})::float8 / 100"
    low, high = f"{values}[floor({position})::int + 1]", f"{values}[ceil({position})::int + 1]"
    return f"{low} + ({high} - {low}) * ({position} - floor({position}))"


def _seconds_sql(later: str, earlier: str) -> str:
    """(later - earlier).total_seconds(): the exact difference, rounded once to a double."""
    return f"(extract(epoch FROM {later}) - extract(epoch FROM {earlier}))::float8"


# The statements of a rebuild, in order; each reads the log (or the rows written before it)
# once. The stage tests are _gather_move's and _gather_created's; `IS DISTINCT FROM` is
# Python's != where a payload lacks the key.
_REBUILD = [
    # Deployments: every CI-recorded one, and every manual move into Deployed.
    """
    INSERT INTO activity_deployment (event_id, board_id, kind, version, environment, status,
                                     deployed_at, url, commit_shas, source, actor_name)
    SELECT e.id, e.board_id, 'ci', d->>'version', d->>'environment', d->>'status',
           coalesce(nullif(d->>'finished_at', '')::timestamptz, e.occurred_at),
           coalesce(d->>'url', ''),
           coalesce((SELECT jsonb_agg(c->'sha' ORDER BY n)
                       FROM jsonb_array_elements(d->'commits') WITH ORDINALITY AS x(c, n)),
                    '[]'::jsonb),
           e.source, e.actor_name
      FROM activity_event e CROSS JOIN LATERAL (SELECT e.payload->'deployment' AS d) p
     WHERE e.kind = 'deployment.recorded'
    UNION ALL
    SELECT e.id, e.board_id, 'manual', '', 'production', 'success', e.occurred_at, '',
           '[]'::jsonb, e.source, e.actor_name
      FROM activity_event e
     WHERE e.kind = 'card.moved' AND e.payload->'to'->>'stage' = 'deployed'
       AND (e.payload->'from'->>'stage') IS DISTINCT FROM 'deployed'
       AND NOT e.payload ? 'deployment_id'
     ORDER BY 1""",
    # Rework: a card leaving Deployed for an earlier stage.
    """
    INSERT INTO activity_rework (event_id, board_id, card_id, occurred_at)
    SELECT id, board_id, card_id, occurred_at
      FROM activity_event
     WHERE kind = 'card.moved' AND payload->'from'->>'stage' = 'deployed'
       AND (payload->'to'->>'stage') IS DISTINCT FROM 'deployed'
     ORDER BY id""",
    # The cards each deployment names (once each), whether it delivers them, and its
    # earliest commit.
    """
    CREATE TEMPORARY TABLE rollups_named ON COMMIT DROP AS
    SELECT d.id AS deployment_id, d.event_id, e.occurred_at, d.deployed_at,
           d.status = 'success' AND d.environment = ANY(%(delivered_to)s) AS delivers,
           c.first_commit, named.card_id
      FROM activity_deployment d
      JOIN activity_event e ON e.id = d.event_id
     CROSS JOIN LATERAL (
           SELECT min(nullif(x->>'timestamp', '')::timestamptz) AS first_commit
             FROM jsonb_array_elements(e.payload->'deployment'->'commits') x) c
     CROSS JOIN LATERAL (
           SELECT DISTINCT (x->>'id')::bigint AS card_id
             FROM jsonb_array_elements(e.payload->'deployment'->'cards') x) named
     WHERE d.kind = 'ci'
    UNION ALL
    SELECT d.id, d.event_id, d.deployed_at, d.deployed_at, true, NULL, e.card_id
      FROM activity_deployment d
      JOIN activity_event e ON e.id = d.event_id
     WHERE d.kind = 'manual'""",
    "ANALYZE rollups_named",
    # Card moments: entries into In Progress, and commits as their deployment reported them.
    """
    INSERT INTO activity_cardmoment (event_id, card_id, kind, at, known_at)
    SELECT id, card_id, 'start', occurred_at, occurred_at
      FROM activity_event
     WHERE (kind = 'card.created' AND payload->'card'->>'stage' = 'in_progress')
        OR (kind = 'card.moved' AND payload->'to'->>'stage' = 'in_progress')
    UNION ALL
    SELECT event_id, card_id, 'commit', first_commit, greatest(first_commit, occurred_at)
      FROM rollups_named
     WHERE first_commit IS NOT NULL
     ORDER BY 2, 1""",
    # Card flows: every card an event touched; created at its row's time unless its
    # card.created event says earlier.
    """
    INSERT INTO activity_cardflow (card_id, board_id, created_at, started_at, first_commit_at)
    SELECT c.id, c.board_id, least(c.created_at, t.created_at), t.started_at,
           t.first_commit_at
      FROM (SELECT card_id, min(created_at) AS created_at, min(started_at) AS started_at,
                   min(first_commit_at) AS first_commit_at
              FROM (SELECT card_id,
                           CASE WHEN kind = 'card.created' THEN occurred_at END AS created_at,
                           NULL::timestamptz AS started_at, NULL::timestamptz AS first_commit_at
                      FROM activity_event
                     WHERE kind IN ('card.created', 'card.moved')
                    UNION ALL
                    SELECT card_id, NULL, CASE WHEN kind = 'start' THEN at END,
                           CASE WHEN kind = 'commit' THEN at END
                      FROM activity_cardmoment
                    UNION ALL
                    SELECT card_id, NULL, NULL, NULL FROM rollups_named WHERE delivers) notes
             GROUP BY card_id) t
      JOIN boards_card c ON c.id = t.card_id
     ORDER BY c.id""",
    # Deliveries, each timed from the moments known at or before its deployment: per card,
    # its moments (at the time they became known) and deliveries in time order, a moment
    # before a delivery at the same instant, each delivery taking the running minimum.
    f"""
    INSERT INTO activity_deploymentcard (deployment_id, card_id, card_ref, created_at,
                                         started_at, first_commit_at, deployed_at, lead_time,
                                         cycle_time, card_lead_time)
    SELECT m.deployment_id, m.card_id, b.key || '-' || c.number, f.created_at, m.started_at,
           m.first_commit_at, m.deployed_at,
           greatest(0, {
        _seconds_sql("m.deployed_at", "coalesce(m.first_commit_at, m.started_at, f.created_at)")
    }),
           {_seconds_sql("m.deployed_at", "m.started_at")},
           greatest(0, {_seconds_sql("m.deployed_at", "f.created_at")})
      FROM (SELECT deployment_id, card_id, moment AS deployed_at,
                   min(start_at) OVER running AS started_at,
                   min(commit_at) OVER running AS first_commit_at
              FROM (SELECT NULL::bigint AS deployment_id, card_id, known_at AS moment, 0 AS ord,
                           CASE WHEN kind = 'start' THEN at END AS start_at,
                           CASE WHEN kind = 'commit' THEN at END AS commit_at
                      FROM activity_cardmoment
                    UNION ALL
                    SELECT deployment_id, card_id, deployed_at, 1, NULL, NULL
                      FROM rollups_named
                     WHERE delivers) timeline
            WINDOW running AS (PARTITION BY card_id ORDER BY moment, ord
                               ROWS UNBOUNDED PRECEDING)) m
      JOIN activity_cardflow f ON f.card_id = m.card_id
      JOIN boards_card c ON c.id = m.card_id
      JOIN boards_board b ON b.id = c.board_id
     WHERE m.deployment_id IS NOT NULL
     ORDER BY m.deployment_id, m.card_id""",
    # Daily rollups, each (service, UTC day) with anything in it, in one pass.
    f"""
    INSERT INTO activity_dailyrollup (board_id, day, deployments, failed_deployments,
                                      cards_deployed, lead_time_p50, lead_time_p85,
                                      cycle_time_p50, cycle_time_p85, rework)
    WITH deployments AS (
        SELECT board_id, (deployed_at AT TIME ZONE 'UTC')::date AS day, count(*) AS total,
               count(*) FILTER (WHERE status = 'failed') AS failed
          FROM activity_deployment
         WHERE environment = 'production'
         GROUP BY 1, 2),
    delivered AS (
        SELECT d.board_id, (d.deployed_at AT TIME ZONE 'UTC')::date AS day,
               array_agg(dc.lead_time ORDER BY dc.lead_time) AS leads,
               array_agg(dc.cycle_time ORDER BY dc.cycle_time)
                   FILTER (WHERE dc.cycle_time IS NOT NULL) AS cycles
          FROM activity_deploymentcard dc
          JOIN activity_deployment d ON d.id = dc.deployment_id
         WHERE d.environment = 'production'
         GROUP BY 1, 2),
    rework AS (
        SELECT board_id, (occurred_at AT TIME ZONE 'UTC')::date AS day, count(*) AS total
          FROM activity_rework
         GROUP BY 1, 2),
    days AS (
        SELECT board_id, day FROM deployments
        UNION SELECT board_id, day FROM delivered
        UNION SELECT board_id, day FROM rework)
    SELECT days.board_id, days.day, coalesce(dp.total, 0), coalesce(dp.failed, 0),
           coalesce(cardinality(dl.leads), 0),
           {_percentile_sql("dl.leads", 50)}, {_percentile_sql("dl.leads", 85)},
           {_percentile_sql("dl.cycles", 50)}, {_percentile_sql("dl.cycles", 85)},
           coalesce(rw.total, 0)
      FROM days
      LEFT JOIN deployments dp USING (board_id, day)
      LEFT JOIN delivered dl USING (board_id, day)
      LEFT JOIN rework rw USING (board_id, day)
     ORDER BY 1, 2""",
]
