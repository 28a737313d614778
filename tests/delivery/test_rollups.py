"""The projections: incremental runs give the hand-computed rows and equal a rebuild, whatever
the history and the order transactions commit in; a run killed half-way loses nothing.

Incremental runs and rebuilds share one definition (delivery.rollups), so "incremental equals
rebuild" checks the scoping (which cards and days a batch recomputes), not the rules: the rules
are checked against numbers worked out by hand, here and in test_metrics.py."""

import datetime
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.db import connection, transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from activity import clock
from activity.log import Actor
from boards import services
from boards.models import Card, Stage
from delivery.models import (
    CardFlow,
    Change,
    DailyRollup,
    Deployment,
    DeploymentCard,
    Incident,
    ProjectionCursor,
    Rework,
)
from delivery.rollups import CURSOR, rollups_advance, rollups_rebuild
from tests.conftest import as_actor, column, make_card, make_user, rollups_settle

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[2]


def projections() -> dict:
    """Every projection row by its natural key, comparable across rebuilds."""
    return {
        "deployments": sorted(
            Deployment.objects.values_list(
                "event_id", "board_id", "kind", "version", "environment", "status", "deployed_at"
            )
        ),
        "cards": sorted(
            DeploymentCard.objects.values_list(
                "deployment__event_id",
                "card_id",
                "lead_time",
                "cycle_time",
                "card_lead_time",
                "started_at",
                "first_commit_at",
            )
        ),
        "flows": sorted(
            CardFlow.objects.values_list("card_id", "created_at", "started_at", "first_commit_at")
        ),
        "rework": sorted(Rework.objects.values_list("event_id", "card_id", "occurred_at")),
        "changes": sorted(
            Change.objects.values_list(
                "board_id",
                "sha",
                "committed_at",
                "deployment__event_id",
                "deployed_at",
                "lead_time",
            )
        ),
        "incidents": sorted(
            Incident.objects.values_list(
                "event_id", "started_at", "caused_by", "resolved_at", "fixed_by", "restored_at"
            )
        ),
        "days": sorted(
            DailyRollup.objects.values_list(
                "board_id",
                "day",
                "deployments",
                "failed_deployments",
                "successful_deployments",
                "failed_changes",
                "unplanned_deployments",
                "changes",
                "change_lead_p50",
                "change_lead_p85",
                "cards_deployed",
                "lead_time_p50",
                "lead_time_p85",
                "cycle_time_p50",
                "cycle_time_p85",
                "rework",
            )
        ),
    }


def deploy(board, actor, cards, *, status="success", environment="production", commit_at=None,
           finished_at=None):  # fmt: skip
    return services.deployment_record(
        actor=actor,
        board_id=board.pk,
        version="v1",
        environment=environment,
        status=status,
        card_numbers=[c.number for c in cards],
        commits=[services.Commit(sha="abcdef12", timestamp=commit_at)] if commit_at else [],
        finished_at=finished_at,
    )


D0 = datetime.datetime(2026, 11, 2, tzinfo=datetime.UTC)
HOUR = 3600.0


def at(day: int, hour: int) -> datetime.datetime:
    return D0 + datetime.timedelta(days=day, hours=hour)


def delivered_hours() -> dict:
    """Each delivery as (environment, kind, deployed at, card title): its start, first commit,
    and lead, cycle and card lead times in hours."""
    rows = DeploymentCard.objects.values_list(
        "deployment__environment", "deployment__kind", "deployed_at", "card__title",
        "started_at", "first_commit_at", "lead_time", "cycle_time", "card_lead_time",
    )  # fmt: skip
    return {
        (environment, kind, deployed, title): (
            started,
            committed,
            lead / HOUR,
            cycle and cycle / HOUR,
            card_lead / HOUR,
        )
        for environment, kind, deployed, title, started, committed, lead, cycle, card_lead in rows
    }


@pytest.mark.sqlite
@pytest.mark.parametrize("runs", ["after every step, an event a batch", "once, one batch"])
def test_incremental_runs_give_the_hand_computed_rows(board, bob, runs):
    """The rows worked out by hand, not compared with a rebuild (which shares the definition).

    | when   | what                                                                        |
    | d0 09h | A created in To Do, B created in In Progress                                |
    | d0 10h | A to In Progress; 11h C created in To Do; 15h A to Staging                  |
    | d0 16h | CI: A and B to production, first commit d0 08h (they move to Deployed)      |
    | d0 17h | C moved by hand into Deployed: a manual delivery                            |
    | d0 18h | CI: C to qa, commit d0 12h: no delivery, but C's commit is known from now   |
    | d1 09h | C back to In Progress: rework                                               |
    | d1 12h | CI: C to production, failed, commit d1 10h                                  |
    | d1 14h | CI: C to production, no commits: lead from the d0 12h commit, cycle from d1 09h |
    | d1 15h | CI: A to staging, commit d1 13h: a delivery the daily numbers do not count  |
    """
    actor = as_actor(bob)
    rollups_advance()  # the cursor exists: every run below is incremental

    def step(moment, call):
        with clock.frozen_at(moment):
            call()
        if runs.startswith("after every step"):
            while rollups_advance(batch=1):
                pass

    def create(title, column_name):
        return services.card_create(actor=actor, board_id=board.pk, title=title,
                                    column_id=column(board, column_name).pk)  # fmt: skip

    def move(title, column_name):
        card = Card.objects.get(board=board, title=title)
        services.card_move(actor=actor, card_id=card.pk,
                           to_column_id=column(board, column_name).pk,
                           expected_version=card.version)  # fmt: skip

    def ci(titles, environment, status="success", commit_at=None):
        cards = [Card.objects.get(board=board, title=title) for title in titles]
        deploy(board, actor, cards, status=status, environment=environment, commit_at=commit_at)

    step(at(0, 9), lambda: create("A", "To Do"))
    step(at(0, 9), lambda: create("B", "In Progress"))
    step(at(0, 10), lambda: move("A", "In Progress"))
    step(at(0, 11), lambda: create("C", "To Do"))
    step(at(0, 15), lambda: move("A", "Staging"))
    step(at(0, 16), lambda: ci(["A", "B"], "production", commit_at=at(0, 8)))
    step(at(0, 17), lambda: move("C", "Deployed"))
    step(at(0, 18), lambda: ci(["C"], "qa", commit_at=at(0, 12)))
    step(at(1, 9), lambda: move("C", "In Progress"))
    step(at(1, 12), lambda: ci(["C"], "production", status="failed", commit_at=at(1, 10)))
    step(at(1, 14), lambda: ci(["C"], "production"))
    step(at(1, 15), lambda: ci(["A"], "staging", commit_at=at(1, 13)))
    rollups_settle()

    for built in ("incremental", "rebuilt"):
        if built == "rebuilt":
            rollups_rebuild()
        assert delivered_hours() == {
            ("production", "ci", at(0, 16), "A"): (at(0, 10), at(0, 8), 8, 6, 7),
            ("production", "ci", at(0, 16), "B"): (at(0, 9), at(0, 8), 8, 7, 7),
            ("production", "manual", at(0, 17), "C"): (None, None, 6, None, 6),
            ("production", "ci", at(1, 14), "C"): (at(1, 9), at(0, 12), 26, 5, 27),
            ("staging", "ci", at(1, 15), "A"): (at(0, 10), at(0, 8), 31, 29, 30),
        }, built
        flows = CardFlow.objects.values_list("card__title", "created_at", "started_at",
                                             "first_commit_at")  # fmt: skip
        assert sorted(flows) == [
            ("A", at(0, 9), at(0, 10), at(0, 8)),
            ("B", at(0, 9), at(0, 9), at(0, 8)),
            ("C", at(0, 11), at(1, 9), at(0, 12)),
        ], built
        assert list(Rework.objects.values_list("card__title", "occurred_at")) == [("C", at(1, 9))]
        days = DailyRollup.objects.filter(board=board).values_list(
            "day", "deployments", "failed_deployments", "cards_deployed", "rework",
            "lead_time_p50", "lead_time_p85", "cycle_time_p50", "cycle_time_p85",
        )  # fmt: skip
        # d0: leads 6, 8, 8 h and cycles 6, 7 h (the manual delivery has none); d1: C alone.
        assert list(days) == [
            (at(0, 0).date(), 2, 0, 3, 0, 8 * HOUR, 8 * HOUR, 6.5 * HOUR,
             pytest.approx((6 + 0.85) * HOUR)),
            (at(1, 0).date(), 2, 1, 1, 1, 26 * HOUR, 26 * HOUR, 5 * HOUR, 5 * HOUR),
        ], built  # fmt: skip


@pytest.mark.sqlite
def test_a_moment_recorded_later_but_known_before_a_delivery_retimes_it(board, bob):
    """CI's clock runs ahead: a deployment recorded at d0 22h says it finished at d1 02h. The
    card enters In Progress at d0 23h, in a later run: that delivery, already rolled up, and
    its day (which nothing else in that run touches) are recomputed with the start."""
    actor = as_actor(bob)
    rollups_advance()  # the cursor exists: the runs below are incremental
    with clock.frozen_at(at(0, 20)):
        card = services.card_create(actor=actor, board_id=board.pk, title="X")
    with clock.frozen_at(at(0, 22)):
        deploy(board, actor, [card], finished_at=at(1, 2))
    rollups_settle()
    delivery = ("production", "ci", at(1, 2), "X")
    assert delivered_hours() == {delivery: (None, None, 6, None, 6)}
    card.refresh_from_db()
    with clock.frozen_at(at(0, 23)):
        services.card_move(actor=actor, card_id=card.pk,
                           to_column_id=column(board, "In Progress").pk,
                           expected_version=card.version)  # fmt: skip
    rollups_settle()
    assert delivered_hours() == {delivery: (at(0, 23), None, 3, 3, 6)}
    days = DailyRollup.objects.filter(board=board).values_list(
        "day", "cards_deployed", "lead_time_p50", "cycle_time_p50", "rework"
    )
    assert list(days) == [(at(0, 0).date(), 0, None, None, 1),
                          (at(1, 0).date(), 1, 3 * HOUR, 3 * HOUR, 0)]  # fmt: skip


@pytest.mark.sqlite
@pytest.mark.parametrize("reported_after_hours", [0, 0.01, 30 * 24])
def test_a_deployments_own_commits_count_however_late_it_is_reported(
    board, bob, reported_after_hours
):
    """CI posts when its job has finished, a moment (or, backfilling, a month) after the
    `finished_at` it reports: the deployment's own commits still start its cards' lead time."""
    actor = as_actor(bob)
    with clock.frozen_at(at(0, 0)):
        card = services.card_create(actor=actor, board_id=board.pk, title="X")
    finished = at(4, 0)
    with clock.frozen_at(finished + datetime.timedelta(hours=reported_after_hours)):
        deploy(board, actor, [card], commit_at=at(1, 0), finished_at=finished)
    rollups_settle()
    delivery = ("production", "ci", finished, "X")
    assert delivered_hours() == {delivery: (None, at(1, 0), 72, None, 96)}


@pytest.mark.sqlite
@pytest.mark.parametrize("runs", ["after every report", "once at the end"])
def test_changes_rollbacks_and_incidents_give_the_hand_computed_dora_rows(board, bob, runs):
    """| time   | report                                                             |
    |--------|--------------------------------------------------------------------|
    | d0 00h | commit a; d0 02h commit b; d0 05h commit c (times in the reports)  |
    | d1 00h | D1 to production: a, b                                              |
    | d1 01h | D1 rolled back                                                      |
    | d2 00h | D2 to production: b, c; d2 03h incident "down", caused by D2        |
    | d2 04h | D3, a hotfix fixing it, to production: commit d at d2 03h30         |
    | d2 06h | the incident is resolved (D3 restored service at d2 04h)            |

    a ships with no deployment (D1 was rolled back); b and c with D2 (46 h and 43 h after
    their commits), d with D3 (0.5 h). d1: one deployment, a failed change. d2: two, D2 a
    failed change (it caused the incident), D3 unplanned."""
    actor = as_actor(bob)
    step = rollups_settle if runs == "after every report" else (lambda: None)

    def ship(at_time, version, commits, **fields):
        with clock.frozen_at(at_time):
            result = services.deployment_record(
                actor=actor, board_id=board.pk, version=version, environment="production",
                status="success", card_numbers=[],
                commits=[services.Commit(sha=sha, timestamp=when) for sha, when in commits],
                **fields,
            )  # fmt: skip
        step()
        return result.event.pk

    a, b, c = ("aaaa", at(0, 0)), ("bbbb", at(0, 2)), ("cccc", at(0, 5))
    d1 = ship(at(1, 0), "1", [a, b])
    with clock.frozen_at(at(1, 1)):
        services.deployment_roll_back(actor=actor, deployment_id=d1)
    step()
    d2 = ship(at(2, 0), "2", [b, c])
    with clock.frozen_at(at(2, 3)):
        incident = services.incident_open(
            actor=actor, board_id=board.pk, title="down", cause_deployment_id=d2
        ).pk
    step()
    d3 = ship(at(2, 4), "3", [("dddd", at(2, 3) + datetime.timedelta(minutes=30))],
              hotfix=True, fixes_incident_ids=[incident])  # fmt: skip
    with clock.frozen_at(at(2, 6)):
        services.incident_resolve(actor=actor, incident_id=incident)
    rollups_settle()
    built = projections()
    assert [row[1:] for row in built["changes"]] == [
        ("aaaa", at(0, 0), None, None, None),
        ("bbbb", at(0, 2), d2, at(2, 0), 46 * HOUR),
        ("cccc", at(0, 5), d2, at(2, 0), 43 * HOUR),
        ("dddd", at(2, 3) + datetime.timedelta(minutes=30), d3, at(2, 4), 0.5 * HOUR),
    ]
    assert built["incidents"] == [(incident, at(2, 3), d2, at(2, 6), None, at(2, 4))]
    days = DailyRollup.objects.filter(board=board).values_list(
        "day", "deployments", "successful_deployments", "failed_changes",
        "unplanned_deployments", "changes", "change_lead_p50",
    )  # fmt: skip
    assert list(days) == [
        (at(1, 0).date(), 1, 0, 1, 0, 0, None),
        (at(2, 0).date(), 2, 2, 1, 1, 3, 43 * HOUR),
    ]
    rollups_rebuild()
    assert projections() == built


@pytest.mark.sqlite
def test_running_twice_changes_nothing_and_equals_a_rebuild(board, bob):
    card = make_card(board, title="a", column_name="Staging")
    deploy(board, as_actor(bob), [card])  # may already run the rollups (eager Celery)
    rollups_settle()
    first = projections()
    assert rollups_advance() == 0
    assert projections() == first
    rollups_rebuild()
    assert projections() == first
    assert len(first["deployments"]) == 1


@pytest.mark.parametrize("first_run", ["incremental", "rebuild"])
def test_an_event_whose_transaction_commits_late_is_counted_exactly_once(
    board, bob, alice, first_run
):
    """A writes a deployment and stays open; B writes a later one and commits; the rollup
    runs; A commits; the rollup runs again: both counted, once each.

    B deploys another service: deployments of one service queue on its board's lock. The
    run while A is open is incremental (the cursor exists), or a rebuild (a first run, or
    `rollups --rebuild`, reads the log by visibility rather than by transaction id).
    """
    if first_run == "incremental":
        rollups_advance()
    other = services.board_create(actor=as_actor(alice), name="Checkout", key="CHK")
    services.membership_set(actor=as_actor(alice), board_id=other.pk, user_id=bob.pk,
                            role="editor")  # fmt: skip
    early = make_card(board, title="early", column_name="Staging")
    late = make_card(other, title="late", column_name="Staging")
    written, may_commit = threading.Event(), threading.Event()

    def transaction_a():
        try:
            with transaction.atomic():
                deploy(board, as_actor(bob), [early])
                written.set()
                assert may_commit.wait(20)
        finally:
            connection.close()

    thread = threading.Thread(target=transaction_a)
    thread.start()
    assert written.wait(20)
    deploy(other, as_actor(bob), [late])  # a higher event id, committed first
    if first_run == "rebuild":
        rollups_rebuild()
    else:
        rollups_advance()
    counted = {row.card_id for row in DeploymentCard.objects.all()}
    assert early.pk not in counted
    may_commit.set()
    thread.join()
    rollups_settle()
    rows = list(DeploymentCard.objects.values_list("card_id", flat=True))
    assert sorted(rows) == sorted([early.pk, late.pk])
    assert Deployment.objects.count() == 2
    incremental = projections()
    rollups_rebuild()
    assert projections() == incremental


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("create"), st.sampled_from(list(Stage))),
        st.tuples(st.just("move"), st.integers(0, 50), st.sampled_from(list(Stage))),
        st.tuples(
            st.just("deploy"),
            st.lists(st.integers(0, 50), max_size=3),
            st.sampled_from(["success", "success", "failed"]),
            st.sampled_from(["production", "production", "staging", "qa"]),
            st.one_of(st.none(), st.integers(-40, 5)),  # its commit, hours from now
            # when CI says it finished, hours from now: a clock ahead of the log's puts a
            # delivery after moments recorded later, which then change its times
            st.one_of(st.none(), st.integers(-3, 10)),
        ),
        st.tuples(st.just("advance")),
    ),
    min_size=5,
    max_size=30,
)
KEYS = (f"R{n}" for n in itertools.count())


@pytest.mark.sqlite
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(operations=OPERATIONS)
def test_incremental_runs_equal_a_rebuild_whatever_the_history(operations, transactional_db):
    user = make_user(f"u-{next(KEYS)}")
    actor = Actor(user=user)
    board = services.board_create(actor=actor, name="Random", key=next(KEYS))
    cards: list[Card] = []
    moment = datetime.datetime(2026, 9, 1, tzinfo=datetime.UTC)
    for operation in operations:
        moment += datetime.timedelta(hours=7)
        with clock.frozen_at(moment):
            match operation:
                case ("create", stage):
                    col = board.columns.get(stage=stage)
                    cards.append(services.card_create(actor=actor, board_id=board.pk,
                                                      title="x", column_id=col.pk))  # fmt: skip
                case ("move", index, stage) if cards:
                    card = Card.objects.get(pk=cards[index % len(cards)].pk)
                    col = board.columns.get(stage=stage)
                    services.card_move(actor=actor, card_id=card.pk, to_column_id=col.pk,
                                       expected_version=card.version)  # fmt: skip
                case ("deploy", picks, status, environment, commit, finished):
                    chosen = {cards[i % len(cards)].pk: cards[i % len(cards)]
                              for i in picks} if cards else {}  # fmt: skip
                    hours = datetime.timedelta(hours=1)
                    deploy(board, actor, list(chosen.values()), status=status,
                           environment=environment,
                           commit_at=None if commit is None else moment + commit * hours,
                           finished_at=None if finished is None else moment + finished * hours,
                           )  # fmt: skip
                case ("advance",):
                    rollups_advance(batch=3)
    rollups_settle()
    incremental = projections()
    rollups_rebuild()
    assert projections() == incremental


def test_a_rollup_killed_half_way_and_rerun_equals_a_rebuild(board, bob, settings):
    actor = as_actor(bob)
    rollups_advance()  # the cursor exists: the run below is incremental, batch after batch
    for i in range(40):
        card = make_card(board, title=f"c{i}")
        services.card_move(actor=actor, card_id=card.pk,
                           to_column_id=column(board, "In Progress").pk,
                           expected_version=card.version)  # fmt: skip
        card.refresh_from_db()
        services.card_move(actor=actor, card_id=card.pk, to_column_id=column(board, "Staging").pk,
                           expected_version=card.version)  # fmt: skip
        deploy(board, actor, [card], status="failed" if i % 5 == 0 else "success")
    db = settings.DATABASES["default"]
    url = (
        f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
        if connection.vendor == "postgresql"
        else f"sqlite:///{db['NAME']}"
    )
    env = {**os.environ, "DATABASE_URL": url}
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "rollups", "--batch", "3"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    applied = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and worker.poll() is None:
        applied = (
            ProjectionCursor.objects.filter(name=CURSOR)
            .values_list("events_applied", flat=True)
            .first()
            or 0
        )
        if applied >= 30:
            worker.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    worker.wait(30)
    assert worker.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert applied > 0
    rollups_settle()
    rerun = projections()
    assert len(rerun["deployments"]) == 40
    rollups_rebuild()
    assert projections() == rerun
