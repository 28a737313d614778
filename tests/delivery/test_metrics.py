"""Delivery metrics against numbers worked out by hand on a small, fixed history."""

import datetime

import pytest

from activity import clock
from activity.log import Actor
from activity.models import Source
from boards import services
from delivery.metrics import DAY, HOUR, Window, delivery_metrics, percentile, tier
from delivery.models import DailyRollup, Deployment, DeploymentCard
from tests.conftest import as_actor, column, rollups_settle

# Committed history: on PostgreSQL the projections read only finished transactions.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.sqlite]

D0 = datetime.datetime(2026, 10, 1, tzinfo=datetime.UTC)


def at(day: int, hour: int) -> datetime.datetime:
    return D0 + datetime.timedelta(days=day, hours=hour)


@pytest.fixture
def history(board, bob):
    """Four production deployments in a week (one failed, one manual) and one rework.

    | card | created | in progress | deployed          | first commit | lead | cycle |
    | A    | d0 09h  | d0 10h      | d1 12h (CI)       | d0 08h       | 28h  | 26h   |
    | B    | d0 09h  | d1 09h      | d1 12h (CI)       | d0 08h       | 28h  | 3h    |
    | C    | d1 09h  | d1 10h      | d2 10h (manual)   | -            | 24h  | 24h   |
    | D    | d2 09h  | d2 12h      | d3 13h (CI, after a failure at d3 10h) | d2 11h | 26h | 25h |
    C goes back to In Progress at d4 09h (sent back).
    Each day's deployments list one commit of their own: the change of d0 08h ships at d1 12h
    (28 h), that of d2 11h at d3 13h (26 h; the deployment at d3 10h with it failed).
    """
    actor = as_actor(bob)
    ci = Actor(user=bob, source=Source.API, via="ci")

    def step(moment, call):
        with clock.frozen_at(moment):
            return call()

    def create(moment, title):
        return step(moment, lambda: services.card_create(actor=actor, board_id=board.pk,
                                                         title=title))  # fmt: skip

    def move(moment, card, to):
        card.refresh_from_db()
        step(moment, lambda: services.card_move(actor=actor, card_id=card.pk,
                                                to_column_id=column(board, to).pk,
                                                expected_version=card.version))  # fmt: skip

    def deploy(moment, cards, status, commit_at):
        step(moment, lambda: services.deployment_record(
            actor=ci, board_id=board.pk, version=f"v{moment.day}", environment="production",
            status=status, card_numbers=[c.number for c in cards],
            commits=[services.Commit(sha=f"abcdef{moment.day:02x}", timestamp=commit_at)],
        ))  # fmt: skip

    a = create(at(0, 9), "A")
    b = create(at(0, 9), "B")
    move(at(0, 10), a, "In Progress")
    move(at(0, 14), a, "Staging")
    move(at(1, 9), b, "In Progress")
    move(at(1, 10), b, "Staging")
    deploy(at(1, 12), [a, b], "success", at(0, 8))
    c = create(at(1, 9), "C")
    move(at(1, 10), c, "In Progress")
    move(at(2, 10), c, "Deployed")
    d = create(at(2, 9), "D")
    move(at(2, 12), d, "In Progress")
    move(at(3, 9), d, "Staging")
    deploy(at(3, 10), [d], "failed", at(2, 11))
    deploy(at(3, 13), [d], "success", at(2, 11))
    move(at(4, 9), c, "In Progress")
    rollups_settle()
    return board


def test_each_card_delivery_carries_its_lead_and_cycle_time(history):
    rows = {
        row.card_ref: (row.lead_time / HOUR, row.cycle_time and row.cycle_time / HOUR)
        for row in DeploymentCard.objects.filter(deployment__environment="production")
    }
    assert rows == {
        "PAY-1": (28, 26),
        "PAY-2": (28, 3),
        "PAY-3": (24, 24),
        "PAY-4": (26, 25),
    }
    kinds = sorted(Deployment.objects.values_list("kind", "status"))
    assert kinds == [("ci", "failed"), ("ci", "success"), ("ci", "success"),
                     ("manual", "success")]  # fmt: skip


def test_the_weeks_delivery_metrics_match_the_hand_computed_ones(history):
    m = delivery_metrics(board_id=history.pk, window=Window(start=at(0, 0), end=at(7, 0)))
    assert (m.deployments, m.successful_deployments, m.failed_deployments) == (4, 3, 1)
    assert (m.failed_changes, m.unplanned_deployments, m.deployment_rework_rate) == (1, 0, 0)
    assert m.per_day == pytest.approx(3 / 7)  # successful ones only
    assert m.per_week == pytest.approx(3)
    assert m.frequency_tier == "high"
    assert m.change_lead_time.p50 == pytest.approx(27 * HOUR)
    assert m.change_lead_time.p85 == pytest.approx(27.7 * HOUR)
    assert (m.change_lead_time.count, m.changes_clamped) == (2, 0)
    assert m.lead_time.p50 == pytest.approx(27 * HOUR)
    assert m.lead_time.p85 == pytest.approx(28 * HOUR)
    assert m.lead_time_tier == "high"
    assert m.cycle_time.p50 == pytest.approx(24.5 * HOUR)
    assert m.cycle_time.p85 == pytest.approx(25.55 * HOUR)
    assert m.change_failure_rate == pytest.approx(0.25)
    assert m.change_failure_tier == "low"
    assert m.recovery_time.p50 == pytest.approx(3 * HOUR)
    assert m.recovery_tier == "high"
    assert (m.throughput, m.sent_back, m.sent_back_rate) == (4, 1, 0.25)
    assert (m.incidents, m.open_incidents) == (0, 0)


def test_daily_rollups_hold_each_days_numbers(history):
    days = {
        (r.day.day, r.deployments, r.failed_deployments, r.cards_deployed, r.rework):
        r.lead_time_p50 and r.lead_time_p50 / HOUR
        for r in DailyRollup.objects.filter(board=history)
    }  # fmt: skip
    assert days == {
        (2, 1, 0, 2, 0): 28,
        (3, 1, 0, 1, 0): 24,
        (4, 2, 1, 1, 0): 26,
        (5, 0, 0, 0, 1): None,
    }


def test_a_window_without_deployments_has_no_tier_and_no_medians(history):
    m = delivery_metrics(board_id=history.pk, window=Window(start=at(30, 0), end=at(37, 0)))
    assert (m.deployments, m.frequency_tier, m.lead_time.p50, m.change_failure_rate) == (
        0,
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("value", "bands", "higher", "expected"),
    [
        (1.0, (1, 1 / 7, 1 / 30), True, "elite"),  # one deployment a day is elite
        (0.999, (1, 1 / 7, 1 / 30), True, "high"),
        (1 / 7, (1, 1 / 7, 1 / 30), True, "high"),
        (1 / 30, (1, 1 / 7, 1 / 30), True, "medium"),
        (1 / 31, (1, 1 / 7, 1 / 30), True, "low"),
        (DAY - 1, (DAY, 7 * DAY, 30 * DAY), False, "elite"),  # lead time under a day
        (DAY, (DAY, 7 * DAY, 30 * DAY), False, "high"),
        (30 * DAY, (DAY, 7 * DAY, 30 * DAY), False, "low"),
        (0.05, (0.05000001, 0.10000001, 0.15000001), False, "elite"),  # CFR 5 % is elite
        (0.15, (0.05000001, 0.10000001, 0.15000001), False, "medium"),
        (0.16, (0.05000001, 0.10000001, 0.15000001), False, "low"),
        (HOUR, (HOUR, DAY, 7 * DAY), False, "high"),  # recovery of exactly an hour
        (None, (HOUR, DAY, 7 * DAY), False, None),
    ],
)
def test_tier_boundaries(value, bands, higher, expected):
    assert tier(value, bands, higher_is_better=higher) == expected


def test_percentiles_interpolate_between_neighbours():
    assert percentile([], 50) is None
    assert percentile([5.0], 85) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([10.0, 20.0], 85) == pytest.approx(18.5)


def test_later_events_never_rewrite_an_earlier_deliverys_times(board, bob):
    """To Do -> Deployed (no start, no commit), then In Progress -> Deployed again, then a
    deployment naming it with a commit made after the first delivery."""
    actor = as_actor(bob)

    def move(moment, card, to):
        card.refresh_from_db()
        with clock.frozen_at(moment):
            services.card_move(actor=actor, card_id=card.pk, to_column_id=column(board, to).pk,
                               expected_version=card.version)  # fmt: skip

    with clock.frozen_at(at(0, 9)):
        card = services.card_create(actor=actor, board_id=board.pk, title="twice")
    move(at(0, 12), card, "Deployed")
    move(at(1, 9), card, "In Progress")
    move(at(1, 15), card, "Deployed")
    with clock.frozen_at(at(2, 9)):
        services.deployment_record(
            actor=actor, board_id=board.pk, version="v2", environment="production",
            status="success", card_numbers=[card.number],
            commits=[services.Commit(sha="abcdef12", timestamp=at(1, 10))],
        )  # fmt: skip
    rollups_settle()
    rows = sorted(
        DeploymentCard.objects.filter(card=card).values_list(
            "deployed_at", "lead_time", "cycle_time"
        )
    )
    assert [(lead / HOUR, cycle and cycle / HOUR) for _, lead, cycle in rows] == [
        (3, None),  # created 09h -> deployed 12h; never in progress yet
        (6, 6),  # started d1 09h -> deployed d1 15h; the later commit does not apply
        (23, 24),  # commit d1 10h -> d2 09h; cycle from d1 09h
    ]
