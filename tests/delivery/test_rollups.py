"""The projections: incremental equals rebuilt, commit-order safe, run by a real Celery worker."""

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
    DailyRollup,
    Deployment,
    DeploymentCard,
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
        "days": sorted(
            DailyRollup.objects.values_list(
                "board_id",
                "day",
                "deployments",
                "failed_deployments",
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
            st.one_of(st.none(), st.integers(-3, 0)),  # when CI says it finished
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
                    col = board.columns.filter(stage=stage).first()
                    cards.append(services.card_create(actor=actor, board_id=board.pk,
                                                      title="x", column_id=col.pk))  # fmt: skip
                case ("move", index, stage) if cards:
                    card = Card.objects.get(pk=cards[index % len(cards)].pk)
                    col = board.columns.filter(stage=stage).first()
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
