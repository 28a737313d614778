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
"""

import datetime
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from django.db import connection, transaction

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


@dataclass
class _Touched:
    cards: set[int] = field(default_factory=set)
    days: set[tuple[int, datetime.date]] = field(default_factory=set)


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
        DeploymentCard.objects.all().delete()
        Deployment.objects.all().delete()
        Rework.objects.all().delete()
        CardMoment.objects.all().delete()
        CardFlow.objects.all().delete()
        DailyRollup.objects.all().delete()
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


@transaction.atomic
def _advance_one_batch(*, batch: int) -> tuple[int, bool]:
    """Apply one batch; returns how many events, and whether more are waiting."""
    cursor, _ = ProjectionCursor.objects.get_or_create(name=CURSOR)
    cursor = ProjectionCursor.objects.select_for_update().get(pk=cursor.pk)
    if connection.vendor == "postgresql":
        events, cursor.txid_watermark, more = _next_by_txid(cursor.txid_watermark, batch)
    else:
        events = list(
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


def _next_by_txid(watermark: int, batch: int) -> tuple[list[Event], int, bool]:
    """Events of finished transactions from `watermark` on, whole transactions at a time;
    with the next watermark and whether more events are waiting below the horizon."""
    horizon = _snapshot_xmin()
    events = list(
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
    return list(Event.objects.filter(txid=last).order_by("pk")), last + 1, True


# --- applying events ----------------------------------------------------------------------------


def _apply(events: Iterable[Event]) -> None:
    touched = _Touched()
    deliveries: list[tuple[Deployment, list[int], datetime.datetime | None]] = []
    for event in events:
        match event.kind:
            case "card.created":
                started = event.payload["card"]["stage"] == IN_PROGRESS
                _flow_note(event, started=started)
                if started:
                    _moment(event, event.card_id, CardMoment.START, event.occurred_at)
                touched.cards.add(event.card_id)
            case "card.moved":
                _apply_move(event, touched, deliveries)
            case "deployment.recorded":
                _apply_deployment(event, touched, deliveries)
    for deployment, card_ids, first_commit in deliveries:
        for card_id in card_ids:
            if first_commit is not None:
                _flow_note_commit(card_id, deployment.board_id, first_commit)
                _moment(deployment.event, card_id, CardMoment.COMMIT, first_commit)
            DeploymentCard.objects.get_or_create(
                deployment=deployment,
                card_id=card_id,
                defaults=_card_times(card_id, deployment.deployed_at, _moments([card_id])),
            )
            touched.cards.add(card_id)
    _refresh_card_times(touched)
    _refresh_days(touched.days)


def _apply_move(event: Event, touched: _Touched, deliveries: list) -> None:
    before, after = event.payload["from"], event.payload["to"]
    _flow_note(event, started=after["stage"] == IN_PROGRESS)
    if after["stage"] == IN_PROGRESS:
        _moment(event, event.card_id, CardMoment.START, event.occurred_at)
    touched.cards.add(event.card_id)
    if before["stage"] == DEPLOYED and after["stage"] != DEPLOYED:
        Rework.objects.get_or_create(
            event=event,
            defaults={"board_id": event.board_id, "card_id": event.card_id,
                      "occurred_at": event.occurred_at},
        )  # fmt: skip
        touched.days.add((event.board_id, event.occurred_at.date()))
    entering = after["stage"] == DEPLOYED and before["stage"] != DEPLOYED
    if entering and "deployment_id" not in event.payload:
        deployment, _ = Deployment.objects.get_or_create(
            event=event,
            defaults={
                "board_id": event.board_id,
                "kind": DeploymentKind.MANUAL,
                "environment": "production",
                "status": "success",
                "deployed_at": event.occurred_at,
                "source": event.source,
                "actor_name": event.actor_name,
            },
        )
        deliveries.append((deployment, [event.card_id], None))
        touched.days.add((event.board_id, deployment.deployed_at.date()))


def _apply_deployment(event: Event, touched: _Touched, deliveries: list) -> None:
    data = event.payload["deployment"]
    finished = data.get("finished_at")
    deployed_at = datetime.datetime.fromisoformat(finished) if finished else event.occurred_at
    commits = [c["timestamp"] for c in data.get("commits", []) if c.get("timestamp")]
    first_commit = min(map(datetime.datetime.fromisoformat, commits)) if commits else None
    deployment, _ = Deployment.objects.get_or_create(
        event=event,
        defaults={
            "board_id": event.board_id,
            "kind": DeploymentKind.CI,
            "version": data["version"],
            "environment": data["environment"],
            "status": data["status"],
            "deployed_at": deployed_at,
            "url": data.get("url") or "",
            "commit_shas": [c["sha"] for c in data.get("commits", [])],
            "source": event.source,
            "actor_name": event.actor_name,
        },
    )
    touched.days.add((event.board_id, deployment.deployed_at.date()))
    card_ids = [card["id"] for card in data.get("cards", [])]
    if data["status"] == "success" and data["environment"] in DELIVERED_TO:
        deliveries.append((deployment, card_ids, first_commit))
    elif first_commit is not None:
        for card_id in card_ids:
            _flow_note_commit(card_id, event.board_id, first_commit)
            _moment(event, card_id, CardMoment.COMMIT, first_commit)
            touched.cards.add(card_id)


def _flow(card_id: int, board_id: int) -> CardFlow:
    flow = CardFlow.objects.select_for_update().filter(card_id=card_id).first()
    if flow is None:
        created = Card.objects.filter(pk=card_id).values_list("created_at", flat=True).get()
        flow, _ = CardFlow.objects.get_or_create(
            card_id=card_id, defaults={"board_id": board_id, "created_at": created}
        )
    return flow


def _flow_note(event: Event, *, started: bool) -> None:
    flow = _flow(event.card_id, event.board_id)
    changed = []
    if event.kind == "card.created" and event.occurred_at < flow.created_at:
        flow.created_at = event.occurred_at
        changed.append("created_at")
    if started and (flow.started_at is None or event.occurred_at < flow.started_at):
        flow.started_at = event.occurred_at
        changed.append("started_at")
    if changed:
        flow.save(update_fields=changed)


def _flow_note_commit(card_id: int, board_id: int, first_commit: datetime.datetime) -> None:
    flow = _flow(card_id, board_id)
    if flow.first_commit_at is None or first_commit < flow.first_commit_at:
        flow.first_commit_at = first_commit
        flow.save(update_fields=["first_commit_at"])


def _moment(event: Event, card_id: int, kind: str, at: datetime.datetime) -> None:
    known_at = max(at, event.occurred_at) if kind == CardMoment.COMMIT else at
    CardMoment.objects.get_or_create(
        event=event, card_id=card_id, kind=kind, defaults={"at": at, "known_at": known_at}
    )


Moment = tuple[str, datetime.datetime, datetime.datetime]


def _moments(card_ids) -> dict[int, list[Moment]]:
    found: dict[int, list[Moment]] = {card_id: [] for card_id in card_ids}
    rows = CardMoment.objects.filter(card_id__in=card_ids).values_list(
        "card_id", "kind", "at", "known_at"
    )
    for card_id, kind, at, known_at in rows:
        found[card_id].append((kind, at, known_at))
    return found


def _card_times(card_id: int, deployed_at: datetime.datetime, moments: dict) -> dict:
    """A delivery's times from what was known by then: the card's first entry into In
    Progress, and the earliest commit a deployment at or before `deployed_at` named for it."""
    flow = CardFlow.objects.get(card_id=card_id)
    earlier = [(kind, at) for kind, at, known in moments.get(card_id, []) if known <= deployed_at]
    started = min((at for kind, at in earlier if kind == CardMoment.START), default=None)
    committed = min((at for kind, at in earlier if kind == CardMoment.COMMIT), default=None)
    start_of_change = committed or started or flow.created_at
    return {
        "card_ref": _card_ref(card_id),
        "created_at": flow.created_at,
        "started_at": started,
        "first_commit_at": committed,
        "deployed_at": deployed_at,
        "lead_time": max(0.0, (deployed_at - start_of_change).total_seconds()),
        "cycle_time": (deployed_at - started).total_seconds() if started else None,
        "card_lead_time": max(0.0, (deployed_at - flow.created_at).total_seconds()),
    }


def _card_ref(card_id: int) -> str:
    key, number = Card.objects.filter(pk=card_id).values_list("board__key", "number").get()
    return f"{key}-{number}"


def _refresh_card_times(touched: _Touched) -> None:
    """Recompute the times of every delivery of the touched cards from their flow now."""
    rows = DeploymentCard.objects.filter(card_id__in=touched.cards).select_related("deployment")
    moments = _moments(touched.cards)
    for row in rows:
        fresh = _card_times(row.card_id, row.deployed_at, moments)
        changed = [name for name, value in fresh.items() if getattr(row, name) != value]
        if changed:
            for name in changed:
                setattr(row, name, fresh[name])
            row.save(update_fields=changed)
        touched.days.add((row.deployment.board_id, row.deployed_at.date()))


def _refresh_days(days: set[tuple[int, datetime.date]]) -> None:
    """Recompute each touched (service, UTC day) from the projection rows."""
    for board_id, day in sorted(days):
        start = datetime.datetime.combine(day, datetime.time.min, tzinfo=datetime.UTC)
        end = start + datetime.timedelta(days=1)
        production = Deployment.objects.filter(
            board_id=board_id, environment="production", deployed_at__gte=start, deployed_at__lt=end
        )
        delivered = DeploymentCard.objects.filter(deployment__in=production)
        leads = sorted(delivered.values_list("lead_time", flat=True))
        cycles = sorted(c for c in delivered.values_list("cycle_time", flat=True) if c is not None)
        values = {
            "deployments": production.count(),
            "failed_deployments": production.filter(status="failed").count(),
            "cards_deployed": len(leads),
            "lead_time_p50": percentile(leads, 50),
            "lead_time_p85": percentile(leads, 85),
            "cycle_time_p50": percentile(cycles, 50),
            "cycle_time_p85": percentile(cycles, 85),
            "rework": Rework.objects.filter(
                board_id=board_id, occurred_at__gte=start, occurred_at__lt=end
            ).count(),
        }
        if any(values[k] for k in ("deployments", "cards_deployed", "rework")):
            DailyRollup.objects.update_or_create(board_id=board_id, day=day, defaults=values)
        else:
            DailyRollup.objects.filter(board_id=board_id, day=day).delete()
