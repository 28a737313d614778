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

from activity.metrics import percentile
from activity.models import (
    CardFlow,
    CardMoment,
    DailyRollup,
    Deployment,
    DeploymentCard,
    DeploymentKind,
    Event,
    ProjectionCursor,
    Rework,
)
from boards.models import Card  # read for card refs and creation times, never written here

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
    while True:
        count, more = _advance_one_batch(batch=batch)
        applied += count
        if progress and count:
            progress(count)
        if not more:
            return applied


def rollups_rebuild(*, batch: int = BATCH, progress: Callable[[int], None] | None = None) -> int:
    """Forget every projection and build them again from the whole log."""
    with transaction.atomic():
        ProjectionCursor.objects.select_for_update().filter(name=CURSOR).first()
        with connection.cursor() as cursor:
            tables = [model._meta.db_table for model in PROJECTIONS]
            if connection.vendor == "postgresql":
                cursor.execute("TRUNCATE " + ", ".join(map(connection.ops.quote_name, tables)))
            else:
                for table in tables:
                    cursor.execute(f"DELETE FROM {connection.ops.quote_name(table)}")
        ProjectionCursor.objects.update_or_create(
            name=CURSOR, defaults={"txid_watermark": 0, "event_watermark": 0, "events_applied": 0}
        )
    return rollups_advance(batch=batch, progress=progress)


def events_pending() -> int:
    """How many committed events the projections have not applied yet (for progress bars)."""
    cursor = ProjectionCursor.objects.filter(name=CURSOR).first()
    if connection.vendor == "postgresql":
        low = cursor.txid_watermark if cursor else 0
        return Event.objects.filter(txid__gte=low, txid__lt=_snapshot_xmin()).count()
    return Event.objects.filter(pk__gt=cursor.event_watermark if cursor else 0).count()


def _snapshot_xmin() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
        return cursor.fetchone()[0]


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
