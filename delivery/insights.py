"""Read-only queries behind the insights page of a service and the multi-board view.

Each function reads a fixed number of SQL queries whatever the history's size. Delivery
numbers come from the projections (`delivery.models`, kept by `delivery.rollups`) through
`delivery.metrics`, so the pages, the metrics and the CSV agree; the cumulative flow comes
straight from the log, and work in progress from the boards as they are now. "Now" is
`activity.clock.now()`, so a test can look at the pages from a fixed moment.

Decisions made here:
- A window is the last 30, 90 or 365 days up to now; weeks start on Monday, days are UTC days.
- The definitions are `delivery.metrics`'s (DORA's keys, then Flux's flow figures), and the
  multi-board view uses the same ones: successful deployments for the frequency, failed
  changes for the change failure rate, the per-change lead time.
- One unit per figure on the whole page: a duration is shown in the unit that reads its
  largest summary value naturally (minutes under an hour, hours under two days, else days),
  and its card, chart and table all use that unit. Every figure carries its definition and
  sample size as a hover title, and its raw value in data attributes.
- A figure without data has no tier: "No data", not "low".
- WIP: the open cards in the stages In Progress, In Review and Staging now. Work item age:
  how long each of them has been under way, from its first entry into In Progress (or, for a
  card that skipped it, from entering its present column).
- The cumulative flow counts the open cards in each stage at the end of each UTC day (today:
  now). An archived card leaves it; a column whose stage is changed takes its cards along.
- The incidents listed are those begun in the window (as the recovery time counts them).
- The multi-board view measures the last 30 days, and its sparkline the last 12 weeks of
  seven days each, ending now.
"""

import datetime
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count, Exists, F, Max, OuterRef, Q, QuerySet, Subquery
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
    FAILURES,
    HOUR,
    MONTH,
    WEEK,
    DeliveryMetrics,
    Spread,
    Window,
    delivery_metrics,
    percentile,
    production,
    tier,
)
from delivery.models import Change, Deployment, DeploymentCard, Incident

UTC = datetime.UTC
WINDOW_DAYS = (30, 90, 365)
DEFAULT_WINDOW_DAYS = 90
SERVICE_WINDOW_DAYS = 30
SPARKLINE_WEEKS = 12
RECENT_DEPLOYMENTS = 15
RECENT_INCIDENTS = 50
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
# Deliveries, incidents and rollbacks come from the projections (delivery.rollups), the rest
# changes no card's stage.
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
FREQUENCY_BANDS = (1, 1 / 7, 1 / 30)  # successful deployments a day
LEAD_TIME_BANDS = (DAY, WEEK, MONTH)
CHANGE_FAILURE_BANDS = (0.05000001, 0.10000001, 0.15000001)

# What each tier of a DORA key means (the DORA 2023 report's clusters, made contiguous by
# Flux: the report leaves gaps between some), for the hover of a tier badge.
BANDS: dict[str, dict[str, str]] = {
    "frequency": {
        "elite": "on demand, several a day: at least one successful deployment a day",
        "high": "at least one a week, less than one a day",
        "medium": "at least one a month (30 days), less than one a week",
        "low": "less than one a month",
    },
    "change_lead_time": {
        "elite": "median under a day",
        "high": "median under a week",
        "medium": "median under a month (30 days)",
        "low": "median a month or longer",
    },
    "change_failure": {
        "elite": "at most 5 %",
        "high": "at most 10 %",
        "medium": "at most 15 %",
        "low": "more than 15 %",
    },
    "recovery": {
        "elite": "median under an hour",
        "high": "median under a day",
        "medium": "median under a week",
        "low": "median a week or longer",
    },
}
CONTIGUOUS = "DORA 2023's bands, made contiguous by Flux (the report leaves gaps between some)"

HELP = {
    "frequency": (
        "Successful production deployments (not failed, not rolled back) in the window: each "
        "one recorded by CI, and each card moved into Deployed by hand; per day, per week (7 "
        f"days) and per month (30 days). Tiers ({CONTIGUOUS}): elite, on demand, several a day "
        "(at least one a day); high, at least one a week; medium, at least one a month; low, "
        "fewer."
    ),
    "change_lead_time": (
        "Per change: a commit CI reported with a timestamp (its earliest, if reported twice), "
        "to the first successful production deployment that listed it and was not rolled "
        "back; median and 85th percentile. A commit stamped after its deployment (clock skew) "
        "counts as 0 and is counted; one without a timestamp, or not shipped yet, is not a "
        "sample. A change counts in the window of its deployment. Tiers on the median "
        f"({CONTIGUOUS}): elite under a day; high under a week; medium under a month; low "
        "longer."
    ),
    "change_failure": (
        "Production deployments that failed, were rolled back, or are named as the cause of "
        "an incident, over all production deployments in the window (any status). Tiers "
        f"({CONTIGUOUS}): elite at most 5 %; high 10 %; medium 15 %; low more."
    ),
    "recovery": (
        "One sample per failure that began in the window: a run of consecutive failed or "
        "rolled-back production deployments, from the first to the next successful one (none "
        "while it lasts); an incident, from its start to the first successful production "
        "deployment that fixes it, else to its resolution (open ones give none and are "
        f"counted). Median and 85th percentile. Tiers on the median ({CONTIGUOUS}): elite "
        "under an hour; high under a day; medium under a week; low longer."
    ),
    "deployment_rework": (
        "DORA's fifth key: unplanned production deployments (marked a hotfix, or fixing an "
        "incident) over all production deployments in the window. DORA publishes no tiers "
        "for it yet."
    ),
    "card_lead_time": (
        "Flux's own, per card: from the first commit of the deployments that named the card "
        "(else its first entry into In Progress, else its creation) to its production "
        "deployment, never below 0; median and 85th percentile. A card shipped twice counts "
        "twice. DORA's lead time is per change (above)."
    ),
    "cycle_time": (
        "From a card's first entry into In Progress to its production deployment; median and "
        "85th percentile. DORA sets no tiers for it."
    ),
    "throughput": "Cards deployed to production in the window (a card shipped twice counts twice).",
    "sent_back": (
        "Flux's own: cards that left Deployed for an earlier stage in the window, per card "
        "deployed to production in it. (Flux called this rework rate before DORA gave that "
        "name to its fifth key.)"
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


def number_text(value: float) -> str:
    """A count per period: no decimal from 10, one from 1, two below ("12", "1.4", "0.13")."""
    if value >= 10:
        return f"{value:.0f}"
    return f"{value:.1f}" if value >= 1 or value == 0 else f"{value:.2f}"


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """A count with its noun: "1 change", "2 changes"; `nouns` for an irregular plural."""
    return f"{count} {noun if count == 1 else (nouns or noun + 's')}"


def frequency_text(per_day: float) -> str:
    """Deployments in the unit that reads best: a day from one a day, else a week from one a
    week, else a month."""
    if per_day >= 1:
        return f"{number_text(per_day)} a day"
    if per_day * 7 >= 1:
        return f"{number_text(per_day * 7)} a week"
    return f"{number_text(per_day * 30)} a month"


@dataclass(frozen=True)
class Unit:
    """The unit a duration figure is shown in, the same on its card, chart and table."""

    symbol: str  # "h"
    name: str  # "hours"
    seconds: int

    def value(self, seconds: float | None) -> float | None:
        """`seconds` in this unit, rounded for charts and data attributes; None for None."""
        return None if seconds is None else round(seconds / self.seconds, 3)

    def number(self, seconds: float | None) -> str:
        """`seconds` as a number of this unit, for a table whose header names the unit
        ("26.0", "40"); a dash for None."""
        if seconds is None:
            return "—"
        value = seconds / self.seconds
        if self.symbol == "min":
            return f"{value:.0f}"
        return f"{value:.2f}" if 0 < value < 0.05 else f"{value:.1f}"

    def text(self, seconds: float | None) -> str:
        """`seconds` written in this unit ("26.0 h", "40 min"); a dash for None."""
        return "—" if seconds is None else f"{self.number(seconds)} {self.symbol}"

    @property
    def data(self) -> dict[str, str | int]:
        """What the charts need to label their axes and tooltips."""
        return {"symbol": self.symbol, "name": self.name, "seconds": self.seconds}


MINUTES = Unit("min", "minutes", 60)
HOURS = Unit("h", "hours", HOUR)
DAYS = Unit("d", "days", DAY)


def unit_pick(*seconds: float | None) -> Unit:
    """The unit for a figure whose summary values are `seconds`: the one that reads the largest
    naturally (minutes under an hour, hours under two days, else days); hours without data."""
    known = [value for value in seconds if value is not None]
    if not known:
        return HOURS
    largest = max(known)
    if largest < HOUR:
        return MINUTES
    return HOURS if largest < 2 * DAY else DAYS


def _day_start(day: datetime.date) -> datetime.datetime:
    return datetime.datetime.combine(day, datetime.time.min, tzinfo=UTC)


def _monday(day: datetime.date) -> datetime.date:
    return day - datetime.timedelta(days=day.weekday())


# --- the insights page -------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """A number on a metric card beside its headline (a p85, a count, a breakdown), with its
    own hover title."""

    part: str  # its data-part, for tests and styles
    text: str
    title: str


@dataclass(frozen=True)
class MetricCard:
    key: str  # the value's data-metric
    name: str
    value: str
    title: str  # the value's hover: its exact definition and sample size
    help: str
    data: dict[str, str] = field(default_factory=dict)  # raw values, as data-* attributes
    details: tuple[Figure, ...] = ()
    tier: str | None = None
    rated: bool = False  # a DORA key with tiers: its badge is shown, "No data" without data
    dora: bool = False
    qualifier: str = ""  # what the value is: "p50", "now"

    @property
    def tier_title(self) -> str:
        """The badge's hover: what its tier means, or why there is none."""
        if self.tier is None:
            return "No data: nothing in this window to rate."
        return f"{self.tier.capitalize()}: {BANDS[self.key][self.tier]} ({CONTIGUOUS})."


@dataclass(frozen=True)
class WeekCount:
    week: datetime.date  # its Monday
    succeeded: int  # status success: what the frequency counts
    failed: int
    rolled_back: int

    @property
    def deployments(self) -> int:
        return self.succeeded + self.failed + self.rolled_back


@dataclass(frozen=True)
class CyclePoint:
    ref: str
    number: int
    version: str
    deployed_at: datetime.datetime
    seconds: float


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
    in_column: float  # seconds in its present column
    started_at: datetime.datetime | None  # first entry into In Progress, if any

    @property
    def stage_label(self) -> str:
        return Stage(self.stage).label


@dataclass(frozen=True)
class IncidentRow:
    """An incident begun in the window, with the deployments that caused and fixed it."""

    id: int  # its public id
    title: str
    started_at: datetime.datetime
    restored_at: datetime.datetime | None  # None: still open
    resolved_at: datetime.datetime | None
    caused_by: int | None  # a deployment's public id
    caused_version: str | None  # None when no such deployment was recorded
    fixed_by: int | None  # the deployment that restored service, else the one named resolving
    fixed_version: str | None

    @property
    def recovery(self) -> float | None:
        """Seconds from its start to its restore; None while open."""
        if self.restored_at is None:
            return None
        return (self.restored_at - self.started_at).total_seconds()


def deployments_by_week(*, board_id: int, window: Window) -> list[WeekCount]:
    """Production deployments per week of the window (Mondays, UTC) by status, every week
    listed: 1 query."""
    rows = (
        production([board_id], window)
        .annotate(week=TruncWeek("deployed_at", tzinfo=UTC))
        .values("week")
        .annotate(
            succeeded=Count("pk", filter=Q(status="success")),
            failed=Count("pk", filter=Q(status="failed")),
            rolled_back=Count("pk", filter=Q(status="rolled_back")),
        )
        .order_by("week")
    )
    found = {row["week"].date(): row for row in rows}
    weeks, week = [], _monday(window.start.astimezone(UTC).date())
    last = _monday(window.end.astimezone(UTC).date())
    while week <= last:
        row = found.get(week, {"succeeded": 0, "failed": 0, "rolled_back": 0})
        weeks.append(
            WeekCount(
                week=week,
                succeeded=row["succeeded"],
                failed=row["failed"],
                rolled_back=row["rolled_back"],
            )
        )
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
        CyclePoint(ref=ref, number=number, version=version, deployed_at=at, seconds=cycle)
        for ref, number, version, at, cycle in rows
        if cycle is not None  # always: the query leaves out the others
    ]
    return points[::-1]


def deployments_recent(
    *, board_id: int, window: Window, limit: int = RECENT_DEPLOYMENTS
) -> list[Deployment]:
    """The window's latest production deployments, newest first, each with `card_count`,
    `via` (the token that recorded it for the person, read from its event) and
    `caused_incident` (named as the cause of an incident): 1 query."""
    caused = Incident.objects.filter(board_id=board_id, caused_by=OuterRef("event_id"))
    return list(
        production([board_id], window)
        .annotate(card_count=Count("cards"), via=F("event__via"), caused_incident=Exists(caused))
        .order_by("-deployed_at", "-event_id")[:limit]
    )


def _version_of(deployment_id_field: str) -> Subquery:
    """The version of the deployment whose public id is in `deployment_id_field`."""
    return Subquery(
        Deployment.objects.filter(event_id=OuterRef(deployment_id_field)).values("version")[:1]
    )


def incidents_read(
    *, board_id: int, window: Window, limit: int = RECENT_INCIDENTS
) -> list[IncidentRow]:
    """The incidents begun in the window, newest first (at most `limit`), with the versions of
    the deployments that caused and fixed them: 2 queries.

    The deployment that fixed one is the one its restore time comes from (the first successful
    production deployment naming it in `fixes_incidents`, at or after its start), else the one
    named when it was resolved."""
    rows = list(
        Incident.objects.filter(
            board_id=board_id, started_at__gte=window.start, started_at__lt=window.end
        )
        .annotate(
            caused_version=_version_of("caused_by"),
            fixed_version=_version_of("fixed_by"),
        )
        .order_by("-started_at", "-event_id")
        .values_list(
            "event_id", "title", "started_at", "restored_at", "resolved_at", "caused_by",
            "caused_version", "fixed_by", "fixed_version",
        )[:limit]
    )  # fmt: skip
    # Fixes of incidents begun in the window come after its start: few rows, and one query
    # whatever the number of incidents (a JSON "contains" is not portable to SQLite).
    fixes = list(
        Deployment.objects.filter(
            board_id=board_id,
            environment="production",
            status="success",
            deployed_at__gte=window.start,
        )
        .exclude(fixes=[])
        .order_by("deployed_at", "event_id")
        .values_list("event_id", "version", "deployed_at", "fixes")
    )
    found = []
    for pk, title, started, restored, resolved, cause, cause_v, fixer, fixer_v in rows:
        restoring = next(
            ((i, v) for i, v, at, named in fixes if pk in named and at >= started), None
        )
        if restoring is not None:
            fixer, fixer_v = restoring
        found.append(
            IncidentRow(
                id=pk,
                title=title,
                started_at=started,
                restored_at=restored,
                resolved_at=resolved,
                caused_by=cause,
                caused_version=cause_v,
                fixed_by=fixer,
                fixed_version=fixer_v,
            )
        )
    return found


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
            in_column=max(0.0, (now - entered).total_seconds()),
            started_at=started_at,
        )
        for key, number, title, column, stage, entered, started_at in rows
    ]


def page_units(*, metrics: DeliveryMetrics, age: Spread, aging: list[AgingCard]) -> dict[str, Unit]:
    """The one unit of each duration figure on the page, for its card, chart and table. The
    aging chart (time in the present column) shares the work item age's."""
    m = metrics
    in_column = sorted(card.in_column for card in aging)
    return {
        "change_lead_time": unit_pick(m.change_lead_time.p50, m.change_lead_time.p85),
        "recovery": unit_pick(m.recovery_time.p50, m.recovery_time.p85),
        "card_lead_time": unit_pick(m.lead_time.p50, m.lead_time.p85),
        "cycle_time": unit_pick(m.cycle_time.p50, m.cycle_time.p85),
        "age": unit_pick(age.p50, age.p85, percentile(in_column, 85)),
    }


def raw_number(value: float | int) -> str:
    """A raw value for a data attribute: plain digits, never an exponent ("93600.0", "0.2")."""
    return str(value) if isinstance(value, int) else repr(round(float(value), 6))


def _raw(**values: float | int | None) -> dict[str, str]:
    """Data attributes (`p85_seconds` becomes data-p85-seconds) of the values there are."""
    return {
        name.replace("_", "-"): raw_number(value)
        for name, value in values.items()
        if value is not None
    }


def _spread_card(
    *,
    key: str,
    name: str,
    spread: Spread,
    unit: Unit,
    of: tuple[str, str],
    measure: str,
    details: tuple[Figure, ...] = (),
    data: dict[str, str] | None = None,
    tier: str | None = None,
    rated: bool = False,
    dora: bool = False,
) -> MetricCard:
    """A duration figure: its median, with its p85 and sample size beside it. `of` names a
    sample and samples ("change", "changes"); `measure` says what is measured ("lead times:
    commit → ...")."""
    samples = plural(spread.count, *of)
    what, _, definition = measure.partition(": ")
    return MetricCard(
        key=key,
        name=name,
        value=unit.text(spread.p50),
        qualifier="p50",
        title=f"Median of the {what} of {samples}: {definition}.",
        help=HELP[key],
        data=data or _raw(seconds=spread.p50, p85_seconds=spread.p85, count=spread.count),
        details=(
            Figure(
                "p85",
                f"p85 {unit.text(spread.p85)}",
                f"85th percentile of the {what} of the same {samples}.",
            ),
            Figure("count", samples, f"{samples} in the sample."),
            *details,
        ),
        tier=tier,
        rated=rated,
        dora=dora,
    )


def metric_cards(
    *,
    metrics: DeliveryMetrics,
    aging: list[AgingCard],
    age: Spread,
    units: dict[str, Unit],
    now: datetime.datetime,
) -> list[MetricCard]:
    """The page's figures: DORA's five keys (the four rated ones with their tiers), then Flux's
    flow figures. Each says its definition and sample size in its hover title."""
    m = metrics
    days = f"{m.window.days:.0f} days"
    in_progress = [card for card in aging if card.stage in WIP_STAGES]
    under_way = {card.ref: _under_way(card, now) for card in in_progress}
    oldest = max(under_way, key=under_way.__getitem__, default=None)
    deployments = plural(m.deployments, "production deployment")
    successful = plural(m.successful_deployments, "successful production deployment")
    caused_only = m.failed_changes - m.failed_deployments - m.rolled_back_deployments
    return [
        MetricCard(
            key="frequency",
            name="Deployment frequency",
            value=frequency_text(m.per_day),
            title=f"{successful} in the last {days} (failed and rolled-back ones do not "
            f"count; {deployments} in all): {number_text(m.per_day)} a day, "
            f"{number_text(m.per_week)} a week, {number_text(m.per_month)} a month.",
            help=HELP["frequency"],
            data=_raw(
                count=m.successful_deployments,
                deployments=m.deployments,
                per_day=m.per_day,
                per_week=m.per_week,
                per_month=m.per_month,
            ),
            details=(
                Figure(
                    "count",
                    f"{m.successful_deployments} of {deployments} succeeded",
                    f"{successful} in the last {days}, of {deployments} (any status).",
                ),
                Figure(
                    "per-day",
                    f"{number_text(m.per_day)} a day",
                    f"{m.successful_deployments} successful in {days}, per day.",
                ),
                Figure(
                    "per-week",
                    f"{number_text(m.per_week)} a week",
                    f"{m.successful_deployments} successful in {days}, scaled to 7 days.",
                ),
                Figure(
                    "per-month",
                    f"{number_text(m.per_month)} a month",
                    f"{m.successful_deployments} successful in {days}, scaled to 30 days.",
                ),
            ),
            tier=m.frequency_tier,
            rated=True,
            dora=True,
        ),
        _spread_card(
            key="change_lead_time",
            name="Change lead time",
            spread=m.change_lead_time,
            unit=units["change_lead_time"],
            of=("change", "changes"),
            measure="lead times: a commit's earliest reported time → the first successful "
            "production deployment that shipped it and was not rolled back (a commit stamped "
            "after it counts as 0)",
            data=_raw(
                seconds=m.change_lead_time.p50,
                p85_seconds=m.change_lead_time.p85,
                count=m.change_lead_time.count,
                clamped=m.changes_clamped,
            ),
            details=(
                Figure(
                    "clamped",
                    f"{m.changes_clamped} clamped to 0",
                    f"{plural(m.changes_clamped, 'change')} committed after the deployment "
                    "that shipped it (clock skew), counted with a lead time of 0.",
                ),
            ),
            tier=m.lead_time_tier,
            rated=True,
            dora=True,
        ),
        MetricCard(
            key="change_failure",
            name="Change failure rate",
            value=percent_text(m.change_failure_rate),
            title=f"{plural(m.failed_changes, 'failed change')} of {deployments} in the last "
            f"{days}: deployments that failed, were rolled back, or are named as the cause of "
            "an incident, over all production deployments.",
            help=HELP["change_failure"],
            data=_raw(
                rate=m.change_failure_rate,
                failed_changes=m.failed_changes,
                deployments=m.deployments,
                failed=m.failed_deployments,
                rolled_back=m.rolled_back_deployments,
                caused_incident=caused_only,
            ),
            details=(
                Figure(
                    "failed-changes",
                    f"{m.failed_changes} of {deployments}",
                    f"{plural(m.failed_changes, 'failed change')} of {deployments}.",
                ),
                Figure(
                    "failed",
                    f"{m.failed_deployments} failed",
                    f"{plural(m.failed_deployments, 'deployment')} reported failed.",
                ),
                Figure(
                    "rolled-back",
                    f"{m.rolled_back_deployments} rolled back",
                    f"{plural(m.rolled_back_deployments, 'deployment')} rolled back.",
                ),
                Figure(
                    "caused-incident",
                    f"{caused_only} caused an incident",
                    f"{plural(caused_only, 'deployment')} that neither failed nor was "
                    "rolled back, named as the cause of an incident.",
                ),
            ),
            tier=m.change_failure_tier,
            rated=True,
            dora=True,
        ),
        _spread_card(
            key="recovery",
            name="Failed deployment recovery time",
            spread=m.recovery_time,
            unit=units["recovery"],
            of=("recovery", "recoveries"),
            measure="times to restore service: a run of failed or rolled-back production "
            "deployments to the next successful one, an incident from its start to the first "
            "successful deployment fixing it (else its resolution)",
            details=(
                Figure(
                    "incidents",
                    f"{plural(m.incidents, 'incident')}, {m.open_incidents} open",
                    f"{plural(m.incidents, 'incident')} begun in the last {days}; "
                    f"{m.open_incidents} not restored yet give no sample.",
                ),
            ),
            data=_raw(
                seconds=m.recovery_time.p50,
                p85_seconds=m.recovery_time.p85,
                count=m.recovery_time.count,
                incidents=m.incidents,
                open_incidents=m.open_incidents,
            ),
            tier=m.recovery_tier,
            rated=True,
            dora=True,
        ),
        MetricCard(
            key="deployment_rework",
            name="Deployment rework rate",
            value=percent_text(m.deployment_rework_rate),
            title=f"{m.unplanned_deployments} unplanned of {deployments} in the last {days}: "
            "hotfixes and deployments that fix an incident, over all production deployments.",
            help=HELP["deployment_rework"],
            data=_raw(
                rate=m.deployment_rework_rate,
                unplanned=m.unplanned_deployments,
                deployments=m.deployments,
            ),
            details=(
                Figure(
                    "unplanned",
                    f"{m.unplanned_deployments} unplanned of {deployments}",
                    f"{plural(m.unplanned_deployments, 'deployment')} marked a hotfix or "
                    f"fixing an incident, of {deployments}.",
                ),
            ),
            dora=True,
        ),
        _spread_card(
            key="card_lead_time",
            name="Card lead time",
            spread=m.lead_time,
            unit=units["card_lead_time"],
            of=("card", "cards"),
            measure="lead times: the first commit of the deployments that named the card (else "
            "its first entry into In Progress, else its creation) → its production deployment",
        ),
        _spread_card(
            key="cycle_time",
            name="Cycle time",
            spread=m.cycle_time,
            unit=units["cycle_time"],
            of=("card", "cards"),
            measure="cycle times: first entry into In Progress → production deployment",
        ),
        MetricCard(
            key="throughput",
            name="Throughput",
            value=plural(m.throughput, "card"),
            title=f"{plural(m.throughput, 'card')} deployed to production in the last {days} "
            "(a card shipped twice counts twice).",
            help=HELP["throughput"],
            data=_raw(count=m.throughput),
            details=(
                Figure(
                    "per-week",
                    f"{number_text(m.throughput / max(m.window.days / 7, 1e-9))} a week",
                    f"{plural(m.throughput, 'card')} in {days}, scaled to 7 days.",
                ),
            ),
        ),
        MetricCard(
            key="sent_back",
            name="Cards sent back",
            value=percent_text(m.sent_back_rate),
            title=f"{plural(m.sent_back, 'card')} sent back from Deployed to an earlier stage "
            f"in the last {days}, per {plural(m.throughput, 'card')} deployed to production.",
            help=HELP["sent_back"],
            data=_raw(rate=m.sent_back_rate, count=m.sent_back, delivered=m.throughput),
            details=(
                Figure(
                    "count",
                    f"{plural(m.sent_back, 'card')} sent back of {m.throughput}",
                    f"{plural(m.sent_back, 'move')} out of Deployed to an earlier stage, "
                    f"{plural(m.throughput, 'card')} delivered.",
                ),
            ),
        ),
        MetricCard(
            key="wip",
            name="Work in progress",
            value=plural(len(in_progress), "card"),
            qualifier="now",
            title=f"{plural(len(in_progress), 'open card')} in In Progress, In Review or "
            "Staging now.",
            help=HELP["wip"],
            data=_raw(count=len(in_progress)),
            details=tuple(
                Figure(
                    stage,
                    f"{sum(card.stage == stage for card in in_progress)} {Stage(stage).label}",
                    f"Open cards in {Stage(stage).label} now.",
                )
                for stage in WIP_STAGES
            ),
        ),
        _spread_card(
            key="age",
            name="Work item age",
            spread=age,
            unit=units["age"],
            of=("card under way", "cards under way"),
            measure="ages: time since the first entry into In Progress (else since entering "
            "its column) until now",
            details=(
                (Figure("oldest", f"oldest {oldest}", f"{oldest} has been under way longest."),)
                if oldest
                else ()
            ),
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
    age = Spread.of([_under_way(card, now) for card in aging if card.stage in WIP_STAGES])
    units = page_units(metrics=metrics, age=age, aging=aging)
    cycle, aged, recovery = units["cycle_time"], units["age"], units["recovery"]
    incidents = incidents_read(board_id=board.pk, window=window)
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
            "rolledBack": [week.rolled_back for week in weeks],
        },
        "cycle": {
            "unit": cycle.data,
            "points": [
                {
                    "x": int(point.deployed_at.timestamp() * 1000),
                    "y": cycle.value(point.seconds),
                    "ref": point.ref,
                    "version": point.version,
                }
                for point in points
            ],
            "p50": cycle.value(metrics.cycle_time.p50),
            "p85": cycle.value(metrics.cycle_time.p85),
        },
        "flow": {
            "days": [day.day.isoformat() for day in flow],
            "series": {stage.value: [day.counts[stage.value] for day in flow] for stage in Stage},
        },
        "aging": {
            "unit": aged.data,
            "stages": [stage for stage in stages if stage["key"] in AGING_STAGES],
            "points": [
                {
                    "stage": card.stage,
                    "ref": card.ref,
                    "column": card.column,
                    "y": aged.value(card.in_column),
                }
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
        "units": units,
        "cards": metric_cards(metrics=metrics, aging=aging, age=age, units=units, now=now),
        "weeks": weeks,
        "points": [
            (point, cycle.number(point.seconds), raw_number(point.seconds)) for point in points
        ],
        "points_total": metrics.cycle_time.count,
        "cycle_p50": cycle.text(metrics.cycle_time.p50),
        "cycle_p85": cycle.text(metrics.cycle_time.p85),
        "flow": flow,
        "aging": [
            (card, aged.number(card.in_column), raw_number(card.in_column)) for card in aging
        ],
        "stages": list(Stage),
        "deployments": deployments_recent(board_id=board.pk, window=window),
        "incidents": [
            (row, recovery.number(row.recovery), _raw(seconds=row.recovery).get("seconds"))
            for row in incidents
        ],
        "chart_data": chart_data,
    }


# --- the multi-board view ----------------------------------------------------------------------


@dataclass
class ServiceRow:
    """One service in the multi-board view: its board (with `open_by_stage`) and its numbers,
    by the insights page's definitions (`delivery.metrics`) over the last 30 days."""

    board: Board
    last: Deployment | None = None
    deployments_7: int = 0  # production, any status
    deployments_30: int = 0
    successful_7: int = 0  # what the deployment frequency counts
    successful_30: int = 0
    failed_changes_30: int = 0  # failed, rolled back or the cause of an incident
    changes_30: int = 0  # changes with a lead time, shipped in the last 30 days
    change_lead_time_p50: float | None = None
    weekly: list[int] = field(default_factory=lambda: [0] * SPARKLINE_WEEKS)  # successful

    @property
    def change_failure_rate(self) -> float | None:
        return self.failed_changes_30 / self.deployments_30 if self.deployments_30 else None

    @property
    def per_day(self) -> float:
        return self.successful_30 / SERVICE_WINDOW_DAYS

    @property
    def frequency_tier(self) -> str | None:
        """As `delivery.metrics`: no tier without a production deployment in the window."""
        if not self.deployments_30:
            return None
        return tier(self.per_day, FREQUENCY_BANDS, higher_is_better=True)

    @property
    def frequency_text(self) -> str:
        return frequency_text(self.per_day)

    @property
    def lead_time_tier(self) -> str | None:
        return tier(self.change_lead_time_p50, LEAD_TIME_BANDS)

    @property
    def change_failure_tier(self) -> str | None:
        return tier(self.change_failure_rate, CHANGE_FAILURE_BANDS)

    @property
    def lead_time_text(self) -> str:
        return duration_text(self.change_lead_time_p50)

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
    week_ago = now - datetime.timedelta(days=7)
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

    ok = Q(status="success")
    weeks = {
        f"week_{i}": Count(
            "pk",
            filter=ok
            & Q(
                deployed_at__gte=now - datetime.timedelta(weeks=SPARKLINE_WEEKS - i),
                deployed_at__lt=now - datetime.timedelta(weeks=SPARKLINE_WEEKS - i - 1),
            ),
        )
        for i in range(SPARKLINE_WEEKS)
    }
    caused = Incident.objects.filter(board_id=OuterRef("board_id"), caused_by=OuterRef("event_id"))
    recent = Q(deployed_at__gte=month_ago)
    counts = (
        prod.filter(deployed_at__gte=min(since, month_ago), deployed_at__lt=now)
        .values("board_id")
        .annotate(
            d7=Count("pk", filter=Q(deployed_at__gte=week_ago)),
            d30=Count("pk", filter=recent),
            ok7=Count("pk", filter=ok & Q(deployed_at__gte=week_ago)),
            ok30=Count("pk", filter=ok & recent),
            failed30=Count("pk", filter=recent & (Q(status__in=FAILURES) | Q(Exists(caused)))),
            **weeks,
        )
        .order_by()
    )
    for count in counts:
        row = rows[count["board_id"]]
        row.deployments_7, row.deployments_30 = count["d7"], count["d30"]
        row.successful_7, row.successful_30 = count["ok7"], count["ok30"]
        row.failed_changes_30 = count["failed30"]
        # django-stubs types the row without the keys of annotate(**weeks), built at run time.
        row.weekly = [
            count[f"week_{i}"]  # type: ignore[literal-required]
            for i in range(SPARKLINE_WEEKS)
        ]

    # DORA's lead time is per change (delivery.models.Change), in the window of its deployment.
    leads: dict[int, list[float]] = defaultdict(list)
    changes = Change.objects.filter(
        board_id__in=ids, deployed_at__gte=month_ago, deployed_at__lt=now, lead_time__isnull=False
    ).values_list("board_id", "lead_time")
    for board_id, lead_time in changes:
        if lead_time is not None:  # always: the query leaves out the others
            leads[board_id].append(lead_time)
    for board_id, values in leads.items():
        rows[board_id].changes_30 = len(values)
        rows[board_id].change_lead_time_p50 = percentile(sorted(values), 50)
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
