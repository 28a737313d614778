"""Delivery figures are a function of what was reported, not of when or in which order.

One generated history (cards created and moved by people, deployments with their commits,
rollbacks, incidents with their causes and fixes, hotfixes) is reported twice, into two sets
of boards that start out identical:

- live: everything in time order, each report at the moment it happened and without a time
  of its own (a deployment without `finished_at`, an incident without `started_at`, ...);
- backfilled: the people's card events at their times, then every CI report in a random order
  that respects what a report needs to exist (a rollback after its deployment, a fix after
  its incident), each posted at a random later moment (a second to three months late) with
  its own time set, the rollups run at random points in between and at the end.

Both must give the same per-card delivery rows, daily rollups and metrics, equal to a small
reference computed here from the generated history alone (it shares no code with
delivery.rollups or delivery.metrics: a wrong rule in production code shows as a difference,
which "incremental equals rebuild" cannot see), and a rebuild must give them again.

What "the same history" means for the cards. A person's move is a fact with a time (this card
went into In Progress at t), but what it does depends on where the card is: a successful
deployment moves the cards it names forward (to Staging or Deployed), and in the backfilled
report that deployment is posted only after every move people made. So a person's move keeps
its meaning in both reports only while no deployment has moved the card yet: the generator
keeps a move when the card's column, just before it, is the same whether or not the
deployments before it have been reported (simulated below, `_moves_kept`), and drops it
otherwise. Every kept move is then the same event in both reports (same card, time, from and
to stage): the same start, the same manual delivery into Deployed, the same card sent back
from Deployed. The moves the deployments make carry their deployment's id and are no
delivery, start or send-back of their own, so their differing times and origins (the column
the card was in when the report arrived) do not count. Times are distinct, to the minute, so
that nothing depends on how ties are broken (ids differ between the reports).

The reference reads the definitions literally, where they leave a choice, so:
- a card moved into Deployed by hand is a successful production deployment (no commits): it
  counts for frequency, in the change failure rate's denominator, and ends a failed run;
- "successful" means reported as success and not rolled back since: what counts for
  frequency, ships a change, ends a run of failures or restores an incident. A delivery is
  different: a card named by a successful deployment stays delivered when it is rolled back;
- an incident is restored by the first successful production deployment that lists it in
  `fixes_incidents`, else by its resolution; the `fixed_by` a resolution names is reported
  (sometimes) but restores nothing by itself;
- live, an incident is opened when it starts, so every deployment fixing it finishes later.
Rollbacks, causes and fixes are generated only where a live report could make them (a
rollback after its deployment, a cause before its incident, a fix after its incident's start).

`test_fifty_deployments_reported_live_and_backfilled_give_one_table` generates one larger
history and prints its figures for both reports as a table: run it with `-s` to see it
(`pytest tests/delivery/test_reporting_order.py -k table -s`).
"""

import dataclasses
import datetime
import functools
import itertools
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from activity import clock
from activity.log import Actor
from boards import services
from boards.models import Board, Stage
from delivery.metrics import Window, delivery_metrics
from delivery.models import DailyRollup, DeploymentCard, DeploymentKind
from delivery.rollups import rollups_advance, rollups_rebuild
from tests.conftest import make_user, rollups_settle

pytestmark = pytest.mark.django_db(transaction=True)

T0 = datetime.datetime(2025, 3, 3, tzinfo=datetime.UTC)
MINUTE, DAY = 60, 1440  # a minute in seconds, a day in minutes
PRODUCTION, STAGING = "production", "staging"
SUCCESS, FAILED, ROLLED_BACK = "success", "failed", "rolled_back"
ORDER = {stage: index for index, stage in enumerate(Stage)}  # a board's stages, in order
KEYS = itertools.count()
T = TypeVar("T")


def at(minutes: int) -> datetime.datetime:
    return T0 + datetime.timedelta(minutes=minutes)


# --- the history -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CardPlan:
    service: int
    title: str
    created: int  # minutes after T0, like every time below
    stage: Stage  # where it is created
    moves: tuple[tuple[int, Stage, Stage], ...] = ()  # (when, from, to): the kept moves


@dataclass(frozen=True)
class DeploymentPlan:
    service: int
    at: int  # when it finished
    environment: str
    status: str  # as reported: success, failed or rolled_back
    cards: tuple[str, ...]  # titles, named in this order
    commits: tuple[tuple[str, int | None], ...]  # (sha, timestamp)
    hotfix: bool = False
    fixes: tuple[int, ...] = ()  # incidents, by index
    rolled_back: int | None = None  # when a later report took it back


@dataclass(frozen=True)
class IncidentPlan:
    service: int
    started: int
    cause: int | None  # a deployment, by index
    resolved: int | None
    fixed_by: int | None  # a deployment, by index, named when resolving


@dataclass(frozen=True)
class History:
    services: int
    days: int  # every deployment, incident and move happens within this many days of T0
    cards: tuple[CardPlan, ...]
    deployments: tuple[DeploymentPlan, ...]
    incidents: tuple[IncidentPlan, ...]

    @property
    def window(self) -> Window:
        """A window covering the whole history (resolutions and rollbacks come later)."""
        return Window(start=T0 - datetime.timedelta(days=1),
                      end=T0 + datetime.timedelta(days=self.days + 15))  # fmt: skip

    def delivers(self, deployment: DeploymentPlan) -> Stage | None:
        """The stage a deployment moves its cards to, if it delivers them."""
        if deployment.status != SUCCESS:
            return None
        return {PRODUCTION: Stage.DEPLOYED, STAGING: Stage.STAGING}.get(deployment.environment)


@dataclass(frozen=True)
class Dice:
    """Where a history's choices come from: hypothesis (which shrinks each towards its
    lowest value: the first of a choice, no chance taken) or a seeded `random.Random`."""

    integer: Callable[[int, int], int]  # a whole number from low to high, both included

    def choice(self, values: Sequence[T]) -> T:
        return values[self.integer(0, len(values) - 1)]

    def chance(self, one_in: int) -> bool:
        return self.integer(1, one_in) == one_in

    def some(self, values: Sequence[T], most: int) -> list[T]:
        """Up to `most` of `values` (each once, in the order drawn)."""
        count = self.integer(0, most) if values else 0
        return list(dict.fromkeys(self.choice(values) for _ in range(count)))


def history_generate(dice: Dice, *, shape: "Shape") -> History:
    """A random history of `shape`: see the module's docstring."""
    used: set[int] = set()

    def fresh(minutes: int) -> int:
        """A time no other event has: everything in the history happens at its own minute."""
        while minutes in used:
            minutes += 1
        used.add(minutes)
        return minutes

    horizon = shape.days * DAY
    shas = [f"{number:04x}" * 2 for number in range(shape.shas)]
    services = shape.services or dice.integer(1, 2)
    planned = [
        CardPlan(service=service, title=f"s{service}c{number}",
                 created=fresh(dice.integer(0, horizon // 2)),
                 stage=dice.choice([Stage.TODO, Stage.IN_PROGRESS, Stage.REVIEW]))
        for service in range(services)
        for number in range(dice.integer(1, shape.cards))
    ]  # fmt: skip
    stages = list(Stage)
    wished = []
    for _ in range(dice.integer(0, 4 * len(planned))):
        index = dice.integer(0, len(planned) - 1)
        when = fresh(planned[index].created + dice.integer(1, 20 * DAY))
        wished.append((index, when, dice.choice(stages)))
    plans = []
    for _ in range(dice.integer(*shape.deployments)):
        service = dice.integer(0, services - 1)
        moment = fresh(dice.integer(0, horizon))
        existing = [c.title for c in planned if c.service == service and c.created < moment]
        commits = tuple(
            (
                dice.choice(shas),
                None if dice.chance(4) else moment + dice.integer(-20 * DAY, 3 * 60),
            )
            for _ in range(dice.integer(0, 3))
        )
        plans.append(
            DeploymentPlan(
                service=service,
                at=moment,
                environment=dice.choice([PRODUCTION] * 4 + [STAGING, "qa"]),
                status=dice.choice([SUCCESS] * 4 + [FAILED, ROLLED_BACK]),
                cards=tuple(dice.some(existing, 3)),
                commits=commits,
                hotfix=dice.chance(6),
            )
        )
    incidents = []
    for _ in range(dice.integer(*shape.incidents)):
        service = dice.integer(0, services - 1)
        started = fresh(dice.integer(0, horizon))
        causes = [i for i, d in enumerate(plans) if d.service == service and d.at < started]
        resolved = None if dice.chance(3) else fresh(started + dice.integer(1, 10 * DAY))
        fixers = [
            i for i, d in enumerate(plans)
            if d.service == service and started < d.at and (resolved is None or d.at < resolved)
        ]  # fmt: skip
        incidents.append(
            IncidentPlan(
                service=service,
                started=started,
                cause=dice.choice(causes) if causes and dice.chance(2) else None,
                resolved=resolved,
                fixed_by=(
                    dice.choice(fixers) if fixers and resolved is not None and dice.chance(2)
                    else None
                ),
            )
        )  # fmt: skip
    for index, plan in enumerate(plans):
        open_then = [
            i for i, incident in enumerate(incidents)
            if incident.service == plan.service and incident.started < plan.at
        ]  # fmt: skip
        fixes = tuple(dice.some(open_then, 2)) if dice.chance(2) else ()
        rolled_back = None
        if plan.status == SUCCESS and dice.chance(4):
            rolled_back = fresh(plan.at + dice.integer(1, 3 * DAY))
        plans[index] = dataclasses.replace(plan, fixes=fixes, rolled_back=rolled_back)
    history = History(services=services, days=shape.days, cards=tuple(planned),
                      deployments=tuple(plans), incidents=tuple(incidents))  # fmt: skip
    return dataclasses.replace(history, cards=_moves_kept(history, wished))


@dataclass(frozen=True)
class Shape:
    """How big a generated history is."""

    days: int = 60  # its events' times, from T0
    services: int | None = None  # one or two, at random
    cards: int = 6  # at most, per service
    deployments: tuple[int, int] = (3, 10)
    incidents: tuple[int, int] = (0, 3)
    shas: int = 6  # the commits deployments list (a few: the same commit in several)


@st.composite
def histories(draw, *, shape: Shape = Shape()) -> History:
    return history_generate(Dice(integer=lambda low, high: draw(st.integers(low, high))),
                            shape=shape)  # fmt: skip


def _moves_kept(history: History, wished: list[tuple[int, int, Stage]]) -> tuple[CardPlan, ...]:
    """Each card with the people's moves that mean the same in both reports (see the module's
    docstring): a move is kept when the card is where it would be had no deployment been
    reported yet, and is not already in the column asked for."""
    kept = []
    for index, card in enumerate(history.cards):
        timeline = sorted(
            [(when, "move", stage) for i, when, stage in wished if i == index]
            + [
                (d.at, "deploy", target)
                for d in history.deployments
                if d.service == card.service and card.title in d.cards
                and (target := history.delivers(d)) is not None
            ]
        )  # fmt: skip
        live = alone = card.stage  # with the deployments reported as they happen, and without
        moves = []
        for when, what, stage in timeline:
            if what == "deploy":
                live = stage if ORDER[live] < ORDER[stage] else live
            elif live == alone and stage != alone:
                moves.append((when, alone, stage))
                live = alone = stage
        kept.append(dataclasses.replace(card, moves=tuple(moves)))
    return tuple(kept)


# --- reporting it ------------------------------------------------------------------------------


@dataclass
class Report:
    """One report of the history: its boards (one per service) and the public ids the
    services answered with (deployments' and incidents', by their index in the history)."""

    history: History
    actor: Actor
    boards: list[Board]
    cards: dict[tuple[int, str], int] = dataclasses.field(default_factory=dict)  # numbers
    deployments: dict[int, int] = dataclasses.field(default_factory=dict)
    incidents: dict[int, int] = dataclasses.field(default_factory=dict)

    @classmethod
    def new(cls, history: History, prefix: str) -> "Report":
        actor = Actor(user=make_user(f"{prefix.lower()}-{next(KEYS)}"))
        boards = [
            services.board_create(actor=actor, name=f"Service {s}", key=f"{prefix}{next(KEYS)}")
            for s in range(history.services)
        ]
        return cls(history=history, actor=actor, boards=boards)

    def create(self, card: CardPlan) -> None:
        board = self.boards[card.service]
        made = services.card_create(
            actor=self.actor, board_id=board.pk, title=card.title,
            column_id=board.columns.get(stage=card.stage).pk,
        )  # fmt: skip
        self.cards[card.service, card.title] = made.number

    def move(self, card: CardPlan, origin: Stage, stage: Stage) -> None:
        board = self.boards[card.service]
        result = services.card_move(
            actor=self.actor, card_ref=(board.key, self.cards[card.service, card.title]),
            to_column_id=board.columns.get(stage=stage).pk, expected_version=None,
        )  # fmt: skip
        assert result.moved and result.from_column.stage == origin, (card, origin, stage)

    def deploy(self, index: int, *, timed: bool) -> None:
        plan = self.history.deployments[index]
        self.deployments[index] = services.deployment_record(
            actor=self.actor,
            board_id=self.boards[plan.service].pk,
            version=f"v{index}",
            environment=plan.environment,
            status=plan.status,
            card_numbers=[self.cards[plan.service, title] for title in plan.cards],
            commits=[
                services.Commit(sha=sha, timestamp=None if stamp is None else at(stamp))
                for sha, stamp in plan.commits
            ],
            finished_at=at(plan.at) if timed else None,
            hotfix=plan.hotfix,
            fixes_incident_ids=[self.incidents[i] for i in plan.fixes],
        ).event.pk

    def roll_back(self, index: int, *, timed: bool) -> None:
        when = self.history.deployments[index].rolled_back
        assert when is not None
        services.deployment_roll_back(
            actor=self.actor,
            deployment_id=self.deployments[index],
            rolled_back_at=at(when) if timed else None,
        )

    def open(self, index: int, *, timed: bool) -> None:
        plan = self.history.incidents[index]
        self.incidents[index] = services.incident_open(
            actor=self.actor,
            board_id=self.boards[plan.service].pk,
            title=f"incident {index}",
            started_at=at(plan.started) if timed else None,
            cause_deployment_id=None if plan.cause is None else self.deployments[plan.cause],
        ).pk

    def resolve(self, index: int, *, timed: bool) -> None:
        plan = self.history.incidents[index]
        assert plan.resolved is not None
        services.incident_resolve(
            actor=self.actor,
            incident_id=self.incidents[index],
            resolved_at=at(plan.resolved) if timed else None,
            fixed_by_deployment_id=(
                None if plan.fixed_by is None else self.deployments[plan.fixed_by]
            ),
        )


Step = tuple[int, Callable[[], None]]  # when it happened, and how to report it


def card_steps(report: Report, history: History) -> list[Step]:
    """The people's card events, each with its time."""
    steps: list[Step] = []
    for card in history.cards:
        steps.append((card.created, functools.partial(report.create, card)))
        steps += [
            (when, functools.partial(report.move, card, origin, stage))
            for when, origin, stage in card.moves
        ]
    return steps


@dataclass(frozen=True)
class CiReport:
    """One report CI (or a person, through the API) makes: what it is, when it happened,
    which reports must exist before it, and how to make it (`timed`: with its own time)."""

    key: tuple[str, int]
    when: int
    needs: frozenset[tuple[str, int]]
    make: Callable[..., None]


def ci_reports(report: Report, history: History) -> list[CiReport]:
    reports = []
    for i, d in enumerate(history.deployments):
        needs = frozenset(("open", f) for f in d.fixes)
        reports.append(CiReport(("deploy", i), d.at, needs, functools.partial(report.deploy, i)))
        if d.rolled_back is not None:
            reports.append(
                CiReport(("roll back", i), d.rolled_back, frozenset({("deploy", i)}),
                         functools.partial(report.roll_back, i))
            )  # fmt: skip
    for i, incident in enumerate(history.incidents):
        needs = frozenset() if incident.cause is None else frozenset({("deploy", incident.cause)})
        reports.append(
            CiReport(("open", i), incident.started, needs, functools.partial(report.open, i))
        )
        if incident.resolved is not None:
            fix = set() if incident.fixed_by is None else {("deploy", incident.fixed_by)}
            reports.append(
                CiReport(("resolve", i), incident.resolved, frozenset({("open", i), *fix}),
                         functools.partial(report.resolve, i))
            )  # fmt: skip
    return reports


def report_live(history: History, rng: random.Random) -> Report:
    """Everything in time order, each report at its own moment, with no time of its own; the
    rollups run now and then (as the worker does after a delivery) and at the end."""
    report = Report.new(history, "L")
    steps = card_steps(report, history)
    steps += [
        (made.when, functools.partial(made.make, timed=False))
        for made in ci_reports(report, history)
    ]
    for when, step in sorted(steps, key=lambda s: s[0]):
        with clock.frozen_at(at(when)):
            step()
        if rng.random() < 0.1:
            rollups_advance()
    rollups_settle()
    return report


def report_backfilled(history: History, rng: random.Random) -> Report:
    """The people's card events at their times; then CI's reports in a random order that
    respects what each needs to exist, each late by a second to three months and carrying
    its own time; the rollups run at random points in between."""
    report = Report.new(history, "B")
    for when, step in sorted(card_steps(report, history), key=lambda s: s[0]):
        with clock.frozen_at(at(when)):
            step()
        if rng.random() < 0.1:
            rollups_advance()
    pending = {made.key: made for made in ci_reports(report, history)}
    done: set[tuple[str, int]] = set()
    while pending:
        made = pending.pop(rng.choice(sorted(k for k, r in pending.items() if r.needs <= done)))
        with clock.frozen_at(at(made.when) + _delay(rng)):
            made.make(timed=True)
        done.add(made.key)
        if rng.random() < 0.25:
            rollups_advance()
    rollups_settle()
    return report


def _delay(rng: random.Random) -> datetime.timedelta:
    """How late CI reports: a moment after finishing, or minutes, hours, days, months later."""
    seconds = rng.choice([1, 60, 3600, 86_400, 30 * 86_400])
    return datetime.timedelta(seconds=rng.randint(1, 3 * seconds))


# --- what the projections and metrics say ------------------------------------------------------


Delivery = tuple  # (service, card title, kind of deployment, deployed at)
Times = tuple  # (first commit, start, lead, cycle, card lead): times, and seconds
DAY_FIELDS = [f.attname for f in DailyRollup._meta.concrete_fields if f.name not in ("id", "board")]


def deliveries(report: Report) -> dict[Delivery, Times]:
    """The per-card delivery rows of a report's boards, keyed by what the history names."""
    service_of = {board.pk: s for s, board in enumerate(report.boards)}
    rows = DeploymentCard.objects.filter(deployment__board__in=report.boards).values_list(
        "deployment__board_id", "card__title", "deployment__kind", "deployed_at",
        "first_commit_at", "started_at", "lead_time", "cycle_time", "card_lead_time",
    )  # fmt: skip
    found: dict[Delivery, Times] = {}
    for board, title, kind, deployed, *times in rows:
        key = (service_of[board], title, kind, deployed)
        assert key not in found, key
        found[key] = tuple(times)
    return found


def daily(report: Report) -> dict[tuple, tuple]:
    """The daily rollups of a report's boards, by (service, day): every number they hold."""
    service_of = {board.pk: s for s, board in enumerate(report.boards)}
    rows = DailyRollup.objects.filter(board__in=report.boards).values_list("board_id", *DAY_FIELDS)
    return {(service_of[board], day): tuple(rest) for board, day, *rest in rows}


def metrics(history: History, report: Report) -> list[dict]:
    """delivery_metrics of each of a report's services over the history's window."""
    return [
        dataclasses.asdict(delivery_metrics(board_id=board.pk, window=history.window))
        for board in report.boards
    ]


@dataclass(frozen=True)
class Figures:
    """One service's figures over a window, named as in the definitions; a spread is
    (p50, p85, count), in seconds."""

    deployments: int  # production deployments, any status
    successful: int  # deployment frequency's count
    per_day: float
    per_week: float
    change_lead: tuple
    changes_clamped: int  # changes whose commit is stamped after their deployment
    card_lead: tuple
    change_failure_rate: float | None
    recovery: tuple
    incidents: int  # begun in the window
    open_incidents: int  # of those, not restored
    deployment_rework_rate: float | None
    sent_back: int  # cards moved out of Deployed to an earlier stage


def figures_shown(shown: dict) -> Figures:
    """The figures as delivery_metrics gives them."""

    def spread_of(value: dict) -> tuple:
        return value["p50"], value["p85"], value["count"]

    return Figures(
        deployments=shown["deployments"],
        successful=shown["successful_deployments"],
        per_day=shown["per_day"],
        per_week=shown["per_week"],
        change_lead=spread_of(shown["change_lead_time"]),
        changes_clamped=shown["changes_clamped"],
        card_lead=spread_of(shown["lead_time"]),
        change_failure_rate=shown["change_failure_rate"],
        recovery=spread_of(shown["recovery_time"]),
        incidents=shown["incidents"],
        open_incidents=shown["open_incidents"],
        deployment_rework_rate=shown["deployment_rework_rate"],
        sent_back=shown["sent_back"],
    )


# --- the reference: the definitions, computed from the history alone ---------------------------


def reference_deliveries(history: History) -> dict[Delivery, Times]:
    """Every delivery and its times, as "Per-card delivery times" defines them: a card named
    by a deployment that succeeded (rolled back later or not) in production or staging, or
    moved into Deployed by hand; its first commit from every deployment naming it by then (any
    environment or status), its start from its first entry into In Progress by then."""
    found: dict[Delivery, Times] = {}
    for card in history.cards:
        delivered = [
            (d.at, DeploymentKind.CI.value)
            for d in history.deployments
            if d.service == card.service and card.title in d.cards
            and d.status == SUCCESS and d.environment in (PRODUCTION, STAGING)
        ] + [
            (when, DeploymentKind.MANUAL.value)
            for when, origin, stage in card.moves
            if stage == Stage.DEPLOYED and origin != Stage.DEPLOYED
        ]  # fmt: skip
        entries = [card.created] if card.stage == Stage.IN_PROGRESS else []
        entries += [when for when, _, stage in card.moves if stage == Stage.IN_PROGRESS]
        for when, kind in delivered:
            commits = [
                stamp
                for d in history.deployments
                if d.service == card.service and card.title in d.cards and d.at <= when
                for _, stamp in d.commits
                if stamp is not None
            ]
            first_commit = min(commits, default=None)
            started = min((e for e in entries if e <= when), default=None)
            origin = next(t for t in (first_commit, started, card.created) if t is not None)
            found[card.service, card.title, kind, at(when)] = (
                None if first_commit is None else at(first_commit),
                None if started is None else at(started),
                float(max(0, when - origin) * MINUTE),
                None if started is None else float((when - started) * MINUTE),
                float(max(0, when - card.created) * MINUTE),
            )
    return found


def quantile(values: Iterable[float], q: float) -> float | None:
    """The q-quantile of `values`, interpolated linearly between the two nearest ranks."""
    ordered = sorted(values)
    if not ordered:
        return None
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def spread(values: list[float]) -> tuple:
    return quantile(values, 0.5), quantile(values, 0.85), len(values)


def production_deployments(history: History, service: int) -> list[tuple[tuple, DeploymentPlan]]:
    """A service's production deployments in time order, each with its key: CI's by index,
    and the people's moves into Deployed (a manual delivery: a successful production
    deployment without commits)."""
    found: list[tuple[tuple, DeploymentPlan]] = [
        (("ci", i), d)
        for i, d in enumerate(history.deployments)
        if d.service == service and d.environment == PRODUCTION
    ]
    for card in history.cards:
        if card.service == service:
            found += [
                (("manual", when), DeploymentPlan(service, when, PRODUCTION, SUCCESS, (), ()))
                for when, origin, stage in card.moves
                if stage == Stage.DEPLOYED and origin != Stage.DEPLOYED
            ]
    return sorted(found, key=lambda pair: pair[1].at)


def reference_figures(history: History, service: int) -> Figures:
    """A service's figures over the history's window, as "DORA figures" defines them."""
    window = history.window
    in_window = lambda minutes: window.start <= at(minutes) < window.end  # noqa: E731
    production = production_deployments(history, service)
    counted = [(key, d) for key, d in production if in_window(d.at)]
    caused = {("ci", i.cause) for i in history.incidents if i.cause is not None}

    def succeeded(d: DeploymentPlan) -> bool:
        """Successful, and not rolled back since."""
        return d.status == SUCCESS and d.rolled_back is None

    # Per card: the production deliveries in the window.
    card_leads = [
        times[2]
        for (s, _, kind, deployed), times in reference_deliveries(history).items()
        if s == service and window.start <= deployed < window.end
        and (kind == DeploymentKind.MANUAL or _environment_of(history, s, deployed) == PRODUCTION)
    ]  # fmt: skip
    # Per change: each sha with a timestamp, from its earliest one (in any deployment of the
    # service) to the first successful production deployment listing it (none: no change).
    stamps: dict[str, int] = {}
    for d in history.deployments:
        for sha, stamp in d.commits if d.service == service else ():
            if stamp is not None:
                stamps[sha] = min(stamp, stamps.get(sha, stamp))
    changes = []
    for sha, committed in stamps.items():
        shipped = [d.at for _, d in production if succeeded(d) and sha in dict(d.commits)]
        if shipped and in_window(min(shipped)):
            changes.append((committed, min(shipped)))
    # Recovery: each run of failed or rolled-back production deployments, to the next
    # successful one; each incident, to its first fix in production, else its resolution.
    samples = []
    run_start = None
    for _, d in production:
        if not succeeded(d):
            run_start = d.at if run_start is None else run_start
        elif run_start is not None:
            if in_window(run_start):
                samples.append(float((d.at - run_start) * MINUTE))
            run_start = None
    incidents = [
        (i, incident)
        for i, incident in enumerate(history.incidents)
        if incident.service == service and in_window(incident.started)
    ]
    unrestored = 0
    for i, incident in incidents:
        fixes = [
            d.at for _, d in production
            if succeeded(d) and i in d.fixes and d.at >= incident.started
        ]  # fmt: skip
        restored = min(fixes) if fixes else incident.resolved
        if restored is None:
            unrestored += 1
        else:
            samples.append(float((restored - incident.started) * MINUTE))
    failed = [key for key, d in counted if not succeeded(d) or key in caused]
    unplanned = [key for key, d in counted if d.hotfix or d.fixes]
    sent_back = [
        when for card in history.cards if card.service == service
        for when, origin, stage in card.moves
        if origin == Stage.DEPLOYED and stage != Stage.DEPLOYED and in_window(when)
    ]  # fmt: skip
    successful = sum(1 for _, d in counted if succeeded(d))
    return Figures(
        deployments=len(counted),
        successful=successful,
        per_day=successful / window.days,
        per_week=successful / window.days * 7,
        change_lead=spread([float(max(0, shipped - made) * MINUTE) for made, shipped in changes]),
        changes_clamped=sum(1 for made, shipped in changes if made > shipped),
        card_lead=spread(card_leads),
        change_failure_rate=len(failed) / len(counted) if counted else None,
        recovery=spread(samples),
        incidents=len(incidents),
        open_incidents=unrestored,
        deployment_rework_rate=len(unplanned) / len(counted) if counted else None,
        sent_back=len(sent_back),
    )


def _environment_of(history: History, service: int, deployed: datetime.datetime) -> str:
    """The environment of the CI deployment at `deployed` (times are distinct)."""
    return next(
        d.environment for d in history.deployments if d.service == service and at(d.at) == deployed
    )


def close(a, b) -> bool:
    """Equal, floats to a relative 1e-9 (a percentile may be interpolated in another order)."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


# --- the property --------------------------------------------------------------------------------


def differences(history: History, rng: random.Random) -> tuple[list[str], tuple[list, list]]:
    """Report the history live and backfilled. Every way the two reports, or either and the
    reference, disagree, incrementally and after a rebuild (none: the property holds); and
    the metrics each report shows."""
    live = report_live(history, rng)
    backfilled = report_backfilled(history, rng)
    expected = reference_deliveries(history)
    found: list[str] = []
    for built in ("incremental", "rebuilt"):
        if built == "rebuilt":
            rollups_rebuild()
        for name, report in (("live", live), ("backfilled", backfilled)):
            got = deliveries(report)
            found += [
                f"{built}, {name}: delivery {key}: {got.get(key)}, reference {expected.get(key)}"
                for key in sorted(set(got) | set(expected), key=repr)
                if got.get(key) != expected.get(key)
            ]
        days_live, days_backfilled = daily(live), daily(backfilled)
        found += [
            f"{built}: day {key}: live {days_live.get(key)}, backfilled {days_backfilled.get(key)}"
            for key in sorted(set(days_live) | set(days_backfilled), key=repr)
            if days_live.get(key) != days_backfilled.get(key)
        ]
        shown = metrics(history, live), metrics(history, backfilled)
        for service, (one, other) in enumerate(zip(*shown, strict=True)):
            found += [
                f"{built}: service {service}: {name}: live {one[name]}, backfilled {other[name]}"
                for name in one
                if one[name] != other[name]
            ]
            reference = dataclasses.asdict(reference_figures(history, service))
            for name, value in dataclasses.asdict(figures_shown(one)).items():
                if not close(value, reference[name]):
                    found.append(
                        f"{built}: service {service}: {name}: shown {value}, "
                        f"reference {reference[name]}"
                    )
    return found, shown


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(history=histories(), rng=st.randoms(use_true_random=False))
def test_figures_do_not_depend_on_when_or_in_which_order_ci_reports(history, rng, transactional_db):
    """Live and backfilled reports of one history agree with each other and the reference,
    incrementally and rebuilt (the module's docstring says what each report is)."""
    found, _ = differences(history, rng)
    assert not found, "\n".join([repr(history), *found])


# --- the table for the closing note --------------------------------------------------------------

TABLE_SEED = 2026
TABLE_SHAPE = Shape(
    days=120, services=1, cards=30, deployments=(80, 80), incidents=(6, 6), shas=150
)


def test_fifty_deployments_reported_live_and_backfilled_give_one_table(transactional_db):
    """One seeded history of 80 deployments over 120 days (50 of them to production), reported
    live and backfilled in a random order: its figures beside the reference's (see them with
    -s; they are the rebuilt projections', which the incremental runs must equal)."""
    rng = random.Random(TABLE_SEED)
    history = history_generate(Dice(integer=rng.randint), shape=TABLE_SHAPE)
    found, (live, backfilled) = differences(history, rng)
    print(figures_table(history, live[0], backfilled[0]))
    assert not found, "\n".join(found)


def figures_table(history: History, live: dict, backfilled: dict) -> str:
    """The figures of the two reports and of the reference, one row each."""
    hours = lambda seconds: "-" if seconds is None else f"{seconds / 3600:.1f} h"  # noqa: E731
    percent = lambda rate: "-" if rate is None else f"{100 * rate:.1f} %"  # noqa: E731
    rows = [
        ("production deployments (any status)", lambda f: str(f.deployments)),
        ("successful (not rolled back)", lambda f: str(f.successful)),
        ("frequency per day", lambda f: f"{f.per_day:.3f}"),
        ("frequency per week", lambda f: f"{f.per_week:.2f}"),
        ("change lead time p50", lambda f: hours(f.change_lead[0])),
        ("change lead time p85", lambda f: hours(f.change_lead[1])),
        ("changes (of which clamped to 0)", lambda f: f"{f.change_lead[2]} ({f.changes_clamped})"),
        ("card lead time p50", lambda f: hours(f.card_lead[0])),
        ("card lead time p85", lambda f: hours(f.card_lead[1])),
        ("cards delivered to production", lambda f: str(f.card_lead[2])),
        ("change failure rate", lambda f: percent(f.change_failure_rate)),
        ("recovery time p50", lambda f: hours(f.recovery[0])),
        ("recovery samples (open incidents)", lambda f: f"{f.recovery[2]} ({f.open_incidents})"),
        ("deployment rework rate", lambda f: percent(f.deployment_rework_rate)),
    ]
    columns = (figures_shown(live), figures_shown(backfilled), reference_figures(history, 0))
    lines = [f"{'figure':<38} {'live':>12} {'backfilled':>12} {'reference':>12}"]
    lines += [f"{name:<38} " + " ".join(f"{show(f):>12}" for f in columns) for name, show in rows]
    return "\n".join(lines)
