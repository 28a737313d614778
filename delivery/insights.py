"""Read-only queries behind the insights page of a service and the multi-board view.

Each function reads a fixed number of SQL queries whatever the history's size. Delivery
numbers come from the projections (`delivery.models`, kept by `delivery.rollups`) through
`delivery.metrics`, so the pages, the metrics and the CSV agree; the cumulative flow comes
straight from the log, and work in progress from the boards as they are now. "Now" is
`activity.clock.now()`, so a test can look at the pages from a fixed moment.

Decisions made here:
- A window is the last 30, 90 or 365 days up to now; weeks start on Monday, days are UTC days.
- Only production deployments count, failed ones included (as in `delivery.metrics`).
- WIP: the open cards in the stages In Progress, In Review and Staging now. Work item age:
  how long each of them has been under way, from its first entry into In Progress (or, for a
  card that skipped it, from entering its present column).
- The cumulative flow counts the open cards in each stage at the end of each UTC day (today:
  now). An archived card leaves it; a column whose stage is changed takes its cards along.
- The multi-board view measures the last 30 days, and its sparkline the last 12 weeks of
  seven days each, ending now.
"""

import datetime
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, overload

from django.db.models import Count, F, Max, OuterRef, Q, QuerySet, Subquery
from django.db.models import Window as SqlWindow
from django.db.models.functions import RowNumber, TruncWeek

from activity import clock, events
from activity.events import EventKind
from activity.log import Actor
from activity.models import Event
from boards.models import LABEL_NAME_MAX_LENGTH, Board, Card, Label, LabelKind, Stage
from boards.queries import board_list, boards_visible
from delivery.metrics import (
    DAY,
    HOUR,
    MONTH,
    WEEK,
    DeliveryMetrics,
    Window,
    delivery_metrics,
    percentile,
    production,
    tier,
)
from delivery.models import Deployment, DeploymentCard

UTC = datetime.UTC
WINDOW_DAYS = (30, 90, 365)
DEFAULT_WINDOW_DAYS = 90
SERVICE_WINDOW_DAYS = 30
SPARKLINE_WEEKS = 12
RECENT_DEPLOYMENTS = 15
SCATTER_LIMIT = 2000  # the newest points; the percentile lines still use every delivery
RELEASE_NAMES = 50
RECENT_RELEASES = 8

# The events that place a card in a stage (the cumulative flow, when work began), and the
# one that moves a whole column to another stage.
FLOW_KINDS = (
    EventKind.CARD_CREATED,
    EventKind.CARD_MOVED,
    EventKind.CARD_ARCHIVED,
    EventKind.CARD_RESTORED,
)
KINDS_READ: frozenset[EventKind] = frozenset({*FLOW_KINDS, EventKind.COLUMN_UPDATED})
# Deliveries come from the projections (delivery.rollups), the rest changes no card's stage.
KINDS_IGNORED: frozenset[EventKind] = frozenset(
    {
        EventKind.BOARD_CREATED,
        EventKind.BOARD_UPDATED,
        EventKind.COLUMN_CREATED,
        EventKind.MEMBERSHIP_SET,
        EventKind.MEMBERSHIP_REMOVED,
        EventKind.LABEL_CREATED,
        EventKind.LABEL_UPDATED,
        EventKind.CARD_UPDATED,
        EventKind.CARD_LABELLED,
        EventKind.CARD_UNLABELLED,
        EventKind.CARD_ASSIGNED,
        EventKind.COMMENT_ADDED,
        EventKind.DEPLOYMENT_RECORDED,
        EventKind.DEPLOYMENT_ROLLED_BACK,
        EventKind.INCIDENT_OPENED,
        EventKind.INCIDENT_RESOLVED,
    }
)
WIP_STAGES = (Stage.IN_PROGRESS.value, Stage.REVIEW.value, Stage.STAGING.value)
AGING_STAGES = (Stage.TODO.value, *WIP_STAGES)

# The DORA bands of delivery.metrics.delivery_metrics, for numbers aggregated over many
# boards at once; tests hold the two to the same tiers.
FREQUENCY_BANDS = (1, 1 / 7, 1 / 30)  # deployments a day
LEAD_TIME_BANDS = (DAY, WEEK, MONTH)
CHANGE_FAILURE_BANDS = (0.05000001, 0.10000001, 0.15000001)

HELP = {
    "frequency": (
        "Production deployments a week: each one recorded by CI, and each manual move of a "
        "card into Deployed; failed ones count too. Elite: at least one a day; high: one a "
        "week; medium: one a month; low: fewer."
    ),
    "lead_time": (
        "From the earliest commit CI supplied (else the first entry into In Progress) to the "
        "card's production deployment; median and 85th percentile. Elite: under a day; high: "
        "under a week; medium: under a month; low: longer."
    ),
    "change_failure": (
        "Failed production deployments divided by all production deployments. Elite: at most "
        "5 %; high: 10 %; medium: 15 %; low: more."
    ),
    "recovery": (
        "From a failed production deployment to the next successful one of the same service; "
        "median. Elite: under an hour; high: under a day; medium: under a week; low: longer."
    ),
    "cycle_time": (
        "From a card's first entry into In Progress to its production deployment; median and "
        "85th percentile. DORA sets no tiers for it."
    ),
    "throughput": "Cards deployed to production in the window (a card shipped twice counts twice).",
    "rework": (
        "Cards that left Deployed for an earlier stage, per card deployed to production in the "
        "window."
    ),
    "wip": "Open cards under way now: in the stages In Progress, In Review and Staging.",
    "age": (
        "How long each card under way has been so: from its first entry into In Progress (else "
        "from entering its column) until now; median and 85th percentile."
    ),
}


# --- small helpers -----------------------------------------------------------------------------


def window_days_parse(value: str | None) -> int:
    """30, 90 or 365 from a query-string value; 90 for anything else, never an error."""
    try:
        days = int(str(value or "").strip())
    except ValueError:
        return DEFAULT_WINDOW_DAYS
    return days if days in WINDOW_DAYS else DEFAULT_WINDOW_DAYS


def release_name_parse(value: str | None) -> str:
    """A release name from a query-string value: trimmed, at most a label's length; "" for none."""
    return str(value or "").replace("\x00", "").strip()[:LABEL_NAME_MAX_LENGTH]


def duration_text(seconds: float | None) -> str:
    """A duration in its natural unit ("40 min", "5.5 h", "3.2 d"); a dash without one."""
    if seconds is None:
        return "—"
    if seconds < HOUR:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * DAY:
        return f"{seconds / HOUR:.1f} h"
    return f"{seconds / DAY:.1f} d"


def percent_text(rate: float | None) -> str:
    """A rate as a percentage with at most one decimal ("25 %", "12.5 %"); a dash without one."""
    if rate is None:
        return "—"
    return f"{rate * 100:.1f}".removesuffix(".0") + " %"


def _day_start(day: datetime.date) -> datetime.datetime:
    return datetime.datetime.combine(day, datetime.time.min, tzinfo=UTC)


def _monday(day: datetime.date) -> datetime.date:
    return day - datetime.timedelta(days=day.weekday())


@overload
def _hours(seconds: float) -> float: ...
@overload
def _hours(seconds: float | None) -> float | None: ...
def _hours(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds / HOUR, 2)


# --- the insights page -------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricCard:
    key: str
    name: str
    value: str
    detail: str
    help: str
    tier: str | None = None
    dora: bool = False
    qualifier: str = ""  # what the value is: "p50", "now"


@dataclass(frozen=True)
class WeekCount:
    week: datetime.date  # its Monday
    deployments: int
    failed: int

    @property
    def succeeded(self) -> int:
        return self.deployments - self.failed


@dataclass(frozen=True)
class CyclePoint:
    ref: str
    number: int
    version: str
    deployed_at: datetime.datetime
    hours: float


@dataclass(frozen=True)
class FlowDay:
    day: datetime.date
    counts: dict[str, int]  # stage -> open cards at the end of the day

    @property
    def cells(self) -> list[int]:
        return [self.counts.get(stage.value, 0) for stage in Stage]


@dataclass(frozen=True)
class AgingCard:
    ref: str
    number: int
    title: str
    column: str
    stage: str
    entered_column_at: datetime.datetime
    age_days: float  # in its present column
    started_at: datetime.datetime | None  # first entry into In Progress, if any

    @property
    def stage_label(self) -> str:
        return Stage(self.stage).label


def deployments_by_week(*, board_id: int, window: Window) -> list[WeekCount]:
    """Production deployments per week of the window (Mondays, UTC), every week listed: 1 query."""
    rows = (
        production([board_id], window)
        .annotate(week=TruncWeek("deployed_at", tzinfo=UTC))
        .values("week")
        .annotate(total=Count("pk"), failed=Count("pk", filter=Q(status="failed")))
        .order_by("week")
    )
    found = {row["week"].date(): row for row in rows}
    weeks, week = [], _monday(window.start.astimezone(UTC).date())
    last = _monday(window.end.astimezone(UTC).date())
    while week <= last:
        row = found.get(week, {"total": 0, "failed": 0})
        weeks.append(WeekCount(week=week, deployments=row["total"], failed=row["failed"]))
        week += datetime.timedelta(days=7)
    return weeks


def cycle_time_points(
    *, board_id: int, window: Window, limit: int = SCATTER_LIMIT
) -> list[CyclePoint]:
    """One point per card deployed to production in the window (newest `limit`), oldest first."""
    rows = (
        DeploymentCard.objects.filter(
            deployment__in=production([board_id], window), cycle_time__isnull=False
        )
        .order_by("-deployed_at", "-pk")
        .values_list("card_ref", "card__number", "deployment__version", "deployed_at", "cycle_time")
    )[:limit]
    points = [
        CyclePoint(ref=ref, number=number, version=version, deployed_at=at, hours=_hours(cycle))
        for ref, number, version, at, cycle in rows
        if cycle is not None  # always: the query leaves out the others
    ]
    return points[::-1]


def deployments_recent(
    *, board_id: int, window: Window, limit: int = RECENT_DEPLOYMENTS
) -> list[Deployment]:
    """The window's latest production deployments, newest first, each with `card_count` and
    `via` (the token that recorded it for the person, read from its event): 1 query."""
    return list(
        production([board_id], window)
        .annotate(card_count=Count("cards"), via=F("event__via"))
        .order_by("-deployed_at", "-event_id")[:limit]
    )


def _placement(kind: str, payload: dict[str, Any]) -> tuple[int | None, str, bool]:
    """(column id, stage, open) of a card after one of its FLOW_KINDS events."""
    match events.read(kind, payload):
        case events.CardCreated(card=card):
            return card.get("column_id"), card["stage"], not card.get("archived", False)
        case events.CardMoved(to=to):
            return to.get("column_id"), to["stage"], True
        case events.CardArchived(column_id=column_id, stage=stage):
            return column_id, stage, False
        case events.CardRestored(column_id=column_id, stage=stage):
            return column_id, stage, True
    raise events.MalformedEvent(f"a {kind} event does not place a card")


@dataclass
class _FlowState:
    """Where each card is while the log is walked forward, with running counts per stage."""

    cards: dict[int, tuple[int | None, str, bool]] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)

    def place(self, card_id: int, placement: tuple[int | None, str, bool]) -> None:
        previous = self.cards.get(card_id)
        if previous is not None and previous[2]:
            self.counts[previous[1]] -= 1
        self.cards[card_id] = placement
        if placement[2]:
            self.counts[placement[1]] += 1

    def restage(self, column_id: int, stage: str) -> None:
        for card_id, (column, _, is_open) in list(self.cards.items()):
            if column == column_id:
                self.place(card_id, (column, stage, is_open))


def flow_by_day(*, board_id: int, days: int, now: datetime.datetime) -> list[FlowDay]:
    """Open cards per stage at the end of each of the last `days` UTC days (today: now),
    replayed from the log: 3 queries whatever the number of days or events."""
    today = now.astimezone(UTC).date()
    first = today - datetime.timedelta(days=days - 1)
    start = _day_start(first)
    card_events = Event.objects.filter(board_id=board_id, kind__in=FLOW_KINDS)
    fields = ("occurred_at", "id", "card_id", "kind", "payload")
    latest_before = (
        card_events.filter(occurred_at__lt=start)
        .annotate(
            place=SqlWindow(
                RowNumber(),
                partition_by=[F("card_id")],
                order_by=[F("occurred_at").desc(), F("id").desc()],
            )
        )
        .filter(place=1)
        .values_list(*fields)
    )
    during = (
        card_events.filter(occurred_at__gte=start, occurred_at__lte=now)
        .order_by("occurred_at", "id")
        .values_list(*fields)
    )
    restagings: list[tuple[datetime.datetime, int, int, str]] = []
    for at, pk, payload in (
        Event.objects.filter(board_id=board_id, kind=EventKind.COLUMN_UPDATED, occurred_at__lte=now)
        .order_by("occurred_at", "id")
        .values_list("occurred_at", "id", "payload")
    ):
        update = events.ColumnUpdated.from_payload(payload)
        if "stage" in update.changes:
            restagings.append((at, pk, update.column_id, update.changes["stage"]["new"]))

    state = _FlowState()
    for at, pk, card_id, kind, payload in latest_before:
        column_id, stage, is_open = _placement(kind, payload)
        for change_at, change_pk, column, new_stage in restagings:
            # A column's stage changed after the card's last event, before the window.
            if column == column_id and (at, pk) < (change_at, change_pk) and change_at < start:
                stage = new_stage
        state.place(card_id, (column_id, stage, is_open))

    # Each change as (when, event id, "card", (card id, kind, payload)) or (when, event id,
    # "column", (column id, its new stage)).
    timeline: list[tuple[datetime.datetime, int, str, tuple[Any, ...]]] = sorted(
        [(at, pk, "card", (card_id, kind, payload)) for at, pk, card_id, kind, payload in during]
        + [
            (at, pk, "column", (column, stage))
            for at, pk, column, stage in restagings
            if at >= start
        ],
        key=lambda item: (item[0], item[1]),
    )
    result, index = [], 0
    for offset in range(days):
        day = first + datetime.timedelta(days=offset)
        end = _day_start(day + datetime.timedelta(days=1))
        while index < len(timeline) and (timeline[index][0] < end or day == today):
            _, _, what, data = timeline[index]
            if what == "card":
                state.place(data[0], _placement(data[1], data[2]))
            else:
                state.restage(*data)
            index += 1
        counts = {stage.value: max(0, state.counts[stage.value]) for stage in Stage}
        result.append(FlowDay(day=day, counts=counts))
    return result


def wip_ages(*, board_id: int, now: datetime.datetime) -> list[AgingCard]:
    """Open cards not in Deployed, longest in their column first, with when work began: 1 query."""
    started = (
        Event.objects.filter(card=OuterRef("pk"))
        .filter(
            Q(kind=EventKind.CARD_MOVED, payload__to__stage=Stage.IN_PROGRESS.value)
            | Q(kind=EventKind.CARD_CREATED, payload__card__stage=Stage.IN_PROGRESS.value)
        )
        .order_by("occurred_at", "id")
        .values("occurred_at")[:1]
    )
    rows = (
        Card.objects.filter(board_id=board_id, archived=False, column__stage__in=AGING_STAGES)
        .annotate(started=Subquery(started))
        .order_by("entered_column_at", "pk")
        .values_list(
            "board__key", "number", "title", "column__name", "column__stage",
            "entered_column_at", "started",
        )
    )  # fmt: skip
    return [
        AgingCard(
            ref=f"{key}-{number}",
            number=number,
            title=title,
            column=column,
            stage=stage,
            entered_column_at=entered,
            age_days=round(max(0.0, (now - entered).total_seconds()) / DAY, 2),
            started_at=started_at,
        )
        for key, number, title, column, stage, entered, started_at in rows
    ]


def metric_cards(
    *, metrics: DeliveryMetrics, aging: list[AgingCard], now: datetime.datetime
) -> list[MetricCard]:
    """The page's headline numbers: the four DORA keys with their tiers, then the flow metrics."""
    m = metrics
    in_progress = [card for card in aging if card.stage in WIP_STAGES]
    under_way = {card.ref: _under_way(card, now) for card in in_progress}
    ages = sorted(under_way.values())
    oldest = max(under_way, key=under_way.__getitem__, default=None)
    recoveries = m.recovery_time.count
    return [
        MetricCard(
            key="frequency",
            name="Deployment frequency",
            value=f"{m.per_week:.1f} a week",
            detail=f"{m.deployments} production deployment{'s' * (m.deployments != 1)} "
            f"in {m.window.days:.0f} days",
            help=HELP["frequency"],
            tier=m.frequency_tier,
            dora=True,
        ),
        MetricCard(
            key="lead_time",
            name="Lead time for changes",
            value=duration_text(m.change_lead_time.p50),
            qualifier="p50",
            detail=f"p85 {duration_text(m.change_lead_time.p85)} · "
            f"{m.change_lead_time.count} changes",
            help=HELP["lead_time"],
            tier=m.lead_time_tier,
            dora=True,
        ),
        MetricCard(
            key="change_failure",
            name="Change failure rate",
            value=percent_text(m.change_failure_rate),
            detail=f"{m.failed_changes} of {m.deployments} deployments failed",
            help=HELP["change_failure"],
            tier=m.change_failure_tier,
            dora=True,
        ),
        MetricCard(
            key="recovery",
            name="Failed deployment recovery time",
            value=duration_text(m.recovery_time.p50),
            qualifier="p50",
            detail=f"{recoveries} recover{'ies' if recoveries != 1 else 'y'} in the window",
            help=HELP["recovery"],
            tier=m.recovery_tier,
            dora=True,
        ),
        MetricCard(
            key="cycle_time",
            name="Cycle time",
            value=duration_text(m.cycle_time.p50),
            qualifier="p50",
            detail=f"p85 {duration_text(m.cycle_time.p85)} · {m.cycle_time.count} cards",
            help=HELP["cycle_time"],
        ),
        MetricCard(
            key="throughput",
            name="Throughput",
            value=f"{m.throughput} card{'s' * (m.throughput != 1)}",
            detail=f"{m.throughput / max(m.window.days / 7, 1e-9):.1f} a week",
            help=HELP["throughput"],
        ),
        MetricCard(
            key="rework",
            name="Rework rate",
            value=percent_text(m.sent_back_rate),
            detail=f"{m.sent_back} card{'s' * (m.sent_back != 1)} sent back from Deployed",
            help=HELP["rework"],
        ),
        MetricCard(
            key="wip",
            name="Work in progress",
            value=f"{len(in_progress)} card{'s' * (len(in_progress) != 1)}",
            qualifier="now",
            detail=", ".join(
                f"{sum(card.stage == stage for card in in_progress)} {Stage(stage).label}"
                for stage in WIP_STAGES
            ),
            help=HELP["wip"],
        ),
        MetricCard(
            key="age",
            name="Work item age",
            value=duration_text(percentile(ages, 50)),
            qualifier="p50",
            detail=f"p85 {duration_text(percentile(ages, 85))}"
            + (f" · oldest {oldest}" if oldest else ""),
            help=HELP["age"],
        ),
    ]


def _under_way(card: AgingCard, now: datetime.datetime) -> float:
    """Seconds since work on the card began (its first In Progress, else its column)."""
    return max(0.0, (now - (card.started_at or card.entered_column_at)).total_seconds())


def insights_page_read(
    *, board: Board, actor: Actor, days: int, now: datetime.datetime | None = None
) -> dict:
    """The insights page's context for a board already permitted: a fixed number of queries."""
    now = now or clock.now()
    window = Window.last(days, now=now)
    metrics = delivery_metrics(board_id=board.pk, window=window)
    weeks = deployments_by_week(board_id=board.pk, window=window)
    points = cycle_time_points(board_id=board.pk, window=window)
    flow = flow_by_day(board_id=board.pk, days=days, now=now)
    aging = wip_ages(board_id=board.pk, now=now)
    stages = [{"key": stage.value, "label": stage.label} for stage in Stage]
    chart_data = {
        "window": {
            "days": days,
            "start": window.start.isoformat(),
            "end": window.end.isoformat(),
            "startMs": int(window.start.timestamp() * 1000),
            "endMs": int(window.end.timestamp() * 1000),
        },
        "stages": stages,
        "frequency": {
            "weeks": [week.week.isoformat() for week in weeks],
            "succeeded": [week.succeeded for week in weeks],
            "failed": [week.failed for week in weeks],
        },
        "cycle": {
            "points": [
                {
                    "x": int(point.deployed_at.timestamp() * 1000),
                    "y": point.hours,
                    "ref": point.ref,
                    "version": point.version,
                }
                for point in points
            ],
            "p50": _hours(metrics.cycle_time.p50),
            "p85": _hours(metrics.cycle_time.p85),
        },
        "flow": {
            "days": [day.day.isoformat() for day in flow],
            "series": {stage.value: [day.counts[stage.value] for day in flow] for stage in Stage},
        },
        "aging": {
            "stages": [stage for stage in stages if stage["key"] in AGING_STAGES],
            "points": [
                {"stage": card.stage, "ref": card.ref, "column": card.column, "days": card.age_days}
                for card in aging
            ],
        },
    }
    return {
        "board": board,
        "boards": list(boards_visible(actor=actor).order_by("name").only("name", "key")),
        "days": days,
        "windows": WINDOW_DAYS,
        "window": window,
        "metrics": metrics,
        "cards": metric_cards(metrics=metrics, aging=aging, now=now),
        "weeks": weeks,
        "points": points,
        "points_total": metrics.cycle_time.count,
        "cycle_p50_hours": _hours(metrics.cycle_time.p50),
        "cycle_p85_hours": _hours(metrics.cycle_time.p85),
        "flow": flow,
        "aging": aging,
        "stages": list(Stage),
        "deployments": deployments_recent(board_id=board.pk, window=window),
        "chart_data": chart_data,
    }


# --- the multi-board view ----------------------------------------------------------------------


@dataclass
class ServiceRow:
    """One service in the multi-board view: its board (with `open_by_stage`) and its numbers."""

    board: Board
    last: Deployment | None = None
    deployments_7: int = 0
    deployments_30: int = 0
    failed_30: int = 0
    lead_time_p50: float | None = None
    weekly: list[int] = field(default_factory=lambda: [0] * SPARKLINE_WEEKS)

    @property
    def change_failure_rate(self) -> float | None:
        return self.failed_30 / self.deployments_30 if self.deployments_30 else None

    @property
    def frequency_tier(self) -> str:
        per_day = self.deployments_30 / SERVICE_WINDOW_DAYS
        return (
            tier(per_day, FREQUENCY_BANDS, higher_is_better=True) if self.deployments_30 else "low"
        )

    @property
    def lead_time_tier(self) -> str | None:
        return tier(self.lead_time_p50, LEAD_TIME_BANDS)

    @property
    def change_failure_tier(self) -> str | None:
        return tier(self.change_failure_rate, CHANGE_FAILURE_BANDS)

    @property
    def lead_time_text(self) -> str:
        return duration_text(self.lead_time_p50)

    @property
    def change_failure_text(self) -> str:
        return percent_text(self.change_failure_rate)

    @property
    def sparkline(self) -> str:
        """The weekly counts as SVG polyline points in a 120 by 28 box, oldest on the left."""
        width, height, pad = 120, 28, 3
        top = max(self.weekly) or 1
        step = (width - 2 * pad) / (len(self.weekly) - 1)
        return " ".join(
            f"{pad + i * step:.1f},{height - pad - count / top * (height - 2 * pad):.1f}"
            for i, count in enumerate(self.weekly)
        )

    @property
    def sparkline_last(self) -> tuple[str, str]:
        """The newest week's point, marked with a dot."""
        x, y = self.sparkline.rsplit(" ", 1)[-1].split(",")
        return x, y


def service_rows_read(*, actor: Actor, now: datetime.datetime | None = None) -> list[ServiceRow]:
    """Every board the actor may see with its delivery numbers side by side: 4 queries."""
    now = now or clock.now()
    rows = {board.pk: ServiceRow(board=board) for board in board_list(actor=actor)}
    if not rows:
        return []
    ids = list(rows)
    month_ago = now - datetime.timedelta(days=SERVICE_WINDOW_DAYS)
    since = now - datetime.timedelta(weeks=SPARKLINE_WEEKS)
    prod = Deployment.objects.filter(board_id__in=ids, environment="production")

    # One index probe per board (board, deployed_at), not a sort of every deployment.
    newest = (
        Deployment.objects.filter(
            board_id=OuterRef("pk"), environment="production", deployed_at__lte=now
        )
        .order_by("-deployed_at", "-event_id")
        .values("pk")[:1]
    )
    latest = Deployment.objects.filter(
        pk__in=Board.objects.filter(pk__in=ids).annotate(newest=Subquery(newest)).values("newest")
    )
    for deployment in latest:
        rows[deployment.board_id].last = deployment

    weeks = {
        f"week_{i}": Count(
            "pk",
            filter=Q(
                deployed_at__gte=now - datetime.timedelta(weeks=SPARKLINE_WEEKS - i),
                deployed_at__lt=now - datetime.timedelta(weeks=SPARKLINE_WEEKS - i - 1),
            ),
        )
        for i in range(SPARKLINE_WEEKS)
    }
    counts = (
        prod.filter(deployed_at__gte=min(since, month_ago), deployed_at__lt=now)
        .values("board_id")
        .annotate(
            d7=Count("pk", filter=Q(deployed_at__gte=now - datetime.timedelta(days=7))),
            d30=Count("pk", filter=Q(deployed_at__gte=month_ago)),
            failed30=Count("pk", filter=Q(deployed_at__gte=month_ago, status="failed")),
            **weeks,
        )
        .order_by()
    )
    for count in counts:
        row = rows[count["board_id"]]
        row.deployments_7, row.deployments_30 = count["d7"], count["d30"]
        row.failed_30 = count["failed30"]
        # django-stubs types the row without the keys of annotate(**weeks), built at run time.
        row.weekly = [
            count[f"week_{i}"]  # type: ignore[literal-required]
            for i in range(SPARKLINE_WEEKS)
        ]

    leads: dict[int, list[float]] = defaultdict(list)
    delivered = DeploymentCard.objects.filter(
        deployment__in=production(ids, Window(start=month_ago, end=now))
    ).values_list("deployment__board_id", "lead_time")
    for board_id, lead_time in delivered:
        leads[board_id].append(lead_time)
    for board_id, values in leads.items():
        rows[board_id].lead_time_p50 = percentile(sorted(values), 50)
    return list(rows.values())


@dataclass
class ReleaseBoard:
    """One permitted board's cards that carry a release label, in pipeline order."""

    board: Board
    cards: list[Card]

    @property
    def by_stage(self) -> list[tuple[Stage, int]]:
        counts = Counter(card.column.stage for card in self.cards if not card.archived)
        return [(stage, counts[stage.value]) for stage in Stage if counts[stage.value]]


def release_cards(*, actor: Actor, name: str) -> list[ReleaseBoard]:
    """For every board the actor may see, its cards (archived too) labelled with release `name`,
    in pipeline order; boards without any come last: 2 queries."""
    boards = list(boards_visible(actor=actor).order_by("name"))
    cards: QuerySet[Card] = (
        Card.objects.filter(
            board__in=[board.pk for board in boards],
            labels__kind=LabelKind.RELEASE,
            labels__name=name,
        )
        .select_related("column")
        .order_by("column__position", "column_id", "archived", "rank", "pk")
    )
    by_board: dict[int, list[Card]] = defaultdict(list)
    named = {board.pk: board for board in boards}
    for card in cards:
        card.board = named[card.board_id]  # refs need the key: no query per card
        by_board[card.board_id].append(card)
    found = [ReleaseBoard(board=board, cards=by_board[board.pk]) for board in boards]
    return sorted(found, key=lambda entry: not entry.cards)


def release_names(*, actor: Actor, limit: int = RELEASE_NAMES) -> list[str]:
    """The release names on the actor's boards, most recently made first: 1 query."""
    return list(
        Label.objects.filter(board__in=boards_visible(actor=actor), kind=LabelKind.RELEASE)
        .values("name")
        .annotate(latest=Max("pk"))
        .order_by("-latest")
        .values_list("name", flat=True)[:limit]
    )


def releases_recent(*, actor: Actor, limit: int = RECENT_RELEASES) -> list[str]:
    """Versions of the latest successful production deployments on the actor's boards: 1 query."""
    return list(
        Deployment.objects.filter(
            board__in=boards_visible(actor=actor), environment="production", status="success"
        )
        .exclude(version="")
        .values("version")
        .annotate(latest=Max("deployed_at"))
        .order_by("-latest", "version")
        .values_list("version", flat=True)[:limit]
    )
