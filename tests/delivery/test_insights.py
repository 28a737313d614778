"""The insights page and the multi-board view against a small history worked out by hand.

The history is committed through the services under `activity.clock.frozen_at`, the
projections are brought up to date with `rollups_advance()`, and the pages are read at a fixed
moment (`NOW`) through the same clock, so every number below can be checked by hand.
"""

import datetime
import json
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from activity import clock
from activity.log import Actor
from activity.models import Source
from boards import services
from boards.models import LabelKind, Role
from delivery import insights
from delivery.metrics import Window, delivery_metrics
from tests.conftest import as_actor, column, make_user, rollups_settle

# Committed history: on PostgreSQL the projections read only finished transactions. The pages
# read the same on the SQLite default, so these run there too.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.sqlite]

D0 = datetime.datetime(2026, 10, 1, tzinfo=datetime.UTC)  # a Thursday
NOW = D0 + datetime.timedelta(days=14)  # Thursday 15 October, midnight


def at(day: int, hour: int = 0) -> datetime.datetime:
    return D0 + datetime.timedelta(days=day, hours=hour)


def ms(moment: datetime.datetime) -> int:
    return int(moment.timestamp() * 1000)


class Story:
    """Writes a board's history through the services, each step at its own moment."""

    def __init__(self, board, user):
        self.board = board
        self.actor = as_actor(user)
        self.ci = Actor(user=user, source=Source.API, via="ci")

    def create(self, moment, title, column_name="To Do"):
        with clock.frozen_at(moment):
            return services.card_create(
                actor=self.actor,
                board_id=self.board.pk,
                title=title,
                column_id=column(self.board, column_name).pk,
            )

    def move(self, moment, card, to):
        card.refresh_from_db()
        with clock.frozen_at(moment):
            services.card_move(
                actor=self.actor,
                card_id=card.pk,
                to_column_id=column(self.board, to).pk,
                expected_version=card.version,
            )

    def archive(self, moment, card):
        with clock.frozen_at(moment):
            services.card_archive(actor=self.actor, card_id=card.pk)

    def deploy(self, moment, cards, *, version, status="success", commit_at=None):
        commits = [services.Commit(sha="abcdef12", timestamp=commit_at)] if commit_at else []
        with clock.frozen_at(moment):
            services.deployment_record(
                actor=self.ci, board_id=self.board.pk, version=version,
                environment="production", status=status,
                card_numbers=[card.number for card in cards], commits=commits,
            )  # fmt: skip


@pytest.fixture
def history(board, bob):
    """Five production deployments over a week (one failed, two manual), one rework, one archive.

    | card  | created | in progress | deployed                         | lead | cycle |
    | A (1) | d0 09h  | d0 10h      | d1 12h CI 2026.10.1, commit d0 8h | 28h  | 26h   |
    | B (2) | d0 09h  | d1 09h      | d1 12h CI 2026.10.1, commit d0 8h | 28h  | 3h    |
    | C (3) | d1 09h  | d1 10h      | d2 10h manual                     | 24h  | 24h   |
    | D (4) | d2 09h  | d2 12h      | d3 13h CI 2026.10.2-fix, commit d2 11h | 26h | 25h |
    | E (5) | d5 09h  | -           | - (waits in To Do)                |      |       |
    | F (6) | d5 10h  | d6 10h      | - (archived d7 10h)               |      |       |
    | G (7) | d6 09h  | d6 10h      | d7 12h manual                     | 26h  | 26h   |
    D's first try, 2026.10.2 at d3 10h, failed. C goes back to In Progress at d4 09h (rework),
    and is there now.
    """
    story = Story(board, bob)
    a = story.create(at(0, 9), "A")
    b = story.create(at(0, 9), "B")
    story.move(at(0, 10), a, "In Progress")
    story.move(at(0, 14), a, "Staging")
    story.move(at(1, 9), b, "In Progress")
    story.move(at(1, 10), b, "Staging")
    story.deploy(at(1, 12), [a, b], version="2026.10.1", commit_at=at(0, 8))
    c = story.create(at(1, 9), "C")
    story.move(at(1, 10), c, "In Progress")
    story.move(at(2, 10), c, "Deployed")
    d = story.create(at(2, 9), "D")
    story.move(at(2, 12), d, "In Progress")
    story.move(at(3, 9), d, "Staging")
    story.deploy(at(3, 10), [d], version="2026.10.2", status="failed", commit_at=at(2, 11))
    story.deploy(at(3, 13), [d], version="2026.10.2-fix", commit_at=at(2, 11))
    story.move(at(4, 9), c, "In Progress")
    story.create(at(5, 9), "E")
    f = story.create(at(5, 10), "F")
    g = story.create(at(6, 9), "G")
    story.move(at(6, 10), f, "In Progress")
    story.move(at(6, 10), g, "In Progress")
    story.archive(at(7, 10), f)
    story.move(at(7, 12), g, "Deployed")
    rollups_settle()
    return board


@pytest.fixture
def member(client, bob):
    client.force_login(bob)
    return client


def get(client, url):
    with clock.frozen_at(NOW):
        return client.get(url)


def insights_url(key="PAY", query=""):
    return reverse("delivery:insights", args=[key]) + query


def chart_data(response) -> dict:
    """The JSON the page hands to its charts, read as the browser reads it."""
    found = re.search(
        r'<script id="insights-data" type="application/json">(.*?)</script>',
        response.content.decode(),
        re.S,
    )
    assert found, "the page carries no chart data"
    return json.loads(found.group(1))


def metric_card(response, key: str) -> tuple[str, str | None]:
    """(the card's visible text, its tier) for the metric card `key`."""
    html = response.content.decode()
    card = re.search(rf'<li class="metric[^"]*" id="metric-{key}".*?</li>', html, re.S)
    assert card, f"no metric card {key}"
    tier = re.search(r'data-tier="(\w+)"', card.group(0))
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", card.group(0))).strip()
    return text, tier and tier.group(1)


def text_of(response) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.content.decode()))


# --- the insights page ---------------------------------------------------------------------------


def test_the_metric_cards_show_the_hand_computed_numbers_and_tiers(member, history):
    response = get(member, insights_url(query="?days=30"))
    assert response.status_code == 200
    expected = {
        # 5 deployments in 30 days: 1.17 a week, at least one a week is "high".
        "frequency": ("1.2 a week", "5 production deployments in 30 days", "high"),
        # leads 24, 26, 26, 28, 28 h: p50 26 h (under a week: high), p85 28 h.
        "lead_time": ("26.0 h p50", "p85 28.0 h · 5 changes", "high"),
        # 1 failed of 5: 20 %, above 15 %: low.
        "change_failure": ("20 %", "1 of 5 deployments failed", "low"),
        # failed at d3 10h, fixed at d3 13h: 3 h, under a day: high.
        "recovery": ("3.0 h p50", "1 recovery in the window", "high"),
        # cycles 3, 24, 25, 26, 26 h.
        "cycle_time": ("25.0 h p50", "p85 26.0 h · 5 cards", None),
        "throughput": ("5 cards", "1.2 a week", None),
        "rework": ("20 %", "1 card sent back from Deployed", None),
        # C is the only card under way now; it first started at d1 10h: 12 d 14 h ago.
        "wip": ("1 card now", "1 In Progress, 0 In Review, 0 Staging", None),
        "age": ("12.6 d p50", "p85 12.6 d · oldest PAY-3", None),
    }
    for key, (value, detail, tier) in expected.items():
        text, shown_tier = metric_card(response, key)
        assert value in text, (key, text)
        assert detail in text, (key, text)
        assert shown_tier == tier, key


def test_each_metric_card_says_what_it_measures(member, history):
    response = get(member, insights_url())
    assert "earliest commit CI supplied" in metric_card(response, "lead_time")[0]
    assert (
        "Failed production deployments divided by all" in metric_card(response, "change_failure")[0]
    )
    assert "next successful one of the same service" in metric_card(response, "recovery")[0]
    assert "first entry into In Progress" in metric_card(response, "cycle_time")[0]
    assert "Elite: at least one a day" in metric_card(response, "frequency")[0]


def test_the_chart_data_holds_weekly_deployments_cycle_points_and_the_flow(member, history):
    data = chart_data(get(member, insights_url(query="?days=30")))

    assert data["window"]["days"] == 30
    assert data["frequency"] == {
        "weeks": ["2026-09-14", "2026-09-21", "2026-09-28", "2026-10-05", "2026-10-12"],
        "succeeded": [0, 0, 3, 1, 0],
        "failed": [0, 0, 1, 0, 0],
    }

    points = [(p["ref"], p["x"], p["y"], p["version"]) for p in data["cycle"]["points"]]
    assert points == [
        ("PAY-1", ms(at(1, 12)), 26.0, "2026.10.1"),
        ("PAY-2", ms(at(1, 12)), 3.0, "2026.10.1"),
        ("PAY-3", ms(at(2, 10)), 24.0, ""),
        ("PAY-4", ms(at(3, 13)), 25.0, "2026.10.2-fix"),
        ("PAY-7", ms(at(7, 12)), 26.0, ""),
    ]
    assert (data["cycle"]["p50"], data["cycle"]["p85"]) == (25.0, 26.0)

    flow = data["flow"]
    assert len(flow["days"]) == 30
    assert (flow["days"][0], flow["days"][-1]) == ("2026-09-16", "2026-10-15")
    by_day = {
        day: tuple(flow["series"][stage][i] for stage in
                   ("todo", "in_progress", "review", "staging", "deployed"))
        for i, day in enumerate(flow["days"])
    }  # fmt: skip
    assert by_day["2026-09-30"] == (0, 0, 0, 0, 0)
    assert by_day["2026-10-01"] == (1, 0, 0, 1, 0)  # A in Staging, B waiting
    assert by_day["2026-10-02"] == (0, 1, 0, 0, 2)  # A, B shipped; C started
    assert by_day["2026-10-03"] == (0, 1, 0, 0, 3)  # C shipped by hand; D started
    assert by_day["2026-10-04"] == (0, 0, 0, 0, 4)  # D shipped after a failure
    assert by_day["2026-10-05"] == (0, 1, 0, 0, 3)  # C sent back
    assert by_day["2026-10-06"] == (2, 1, 0, 0, 3)  # E and F arrive
    assert by_day["2026-10-07"] == (1, 3, 0, 0, 3)  # F and G started
    assert by_day["2026-10-08"] == (1, 1, 0, 0, 4)  # F archived, G shipped
    assert by_day["2026-10-15"] == (1, 1, 0, 0, 4)

    aging = {p["ref"]: (p["stage"], p["days"]) for p in data["aging"]["points"]}
    # E has waited in To Do since d5 09h, C has been back in In Progress since d4 09h.
    assert aging == {
        "PAY-5": ("todo", pytest.approx(8.625, abs=0.01)),
        "PAY-3": ("in_progress", pytest.approx(9.625, abs=0.01)),
    }


def test_every_chart_has_its_numbers_in_a_table(member, history):
    response = get(member, insights_url(query="?days=30"))
    html = response.content.decode()
    assert html.count('<details class="numbers">') == 4
    assert html.count("<canvas") == 4
    text = text_of(response)
    assert "2026-09-28 4 1" in text  # the week's deployments and failures
    assert "PAY-2 2026-10-02 12:00 2026.10.1 3.0" in text  # a cycle-time point
    assert "2026-10-07 1 3 0 0 3" in text  # a day of the cumulative flow
    assert "PAY-5 E To Do To Do 8.6" in text  # an aging card


def test_releases_on_the_insights_page_link_to_the_multi_board_view(member, history):
    html = get(member, insights_url()).content.decode()
    assert 'href="/services/?release=2026.10.2-fix"' in html
    assert 'href="/services/?release=2026.10.1"' in html


@pytest.mark.parametrize("days", ["abc", "7", "", "-30", "9" * 50])
def test_a_window_that_is_not_offered_falls_back_to_ninety_days(member, history, days):
    response = get(member, insights_url(query=f"?days={days}"))
    assert response.status_code == 200
    assert chart_data(response)["window"]["days"] == 90
    assert re.search(r'<a href="\?days=90" aria-current="page">', response.content.decode())


def test_the_window_selector_keeps_the_window_in_the_url(member, history):
    response = get(member, insights_url(query="?days=365"))
    data = chart_data(response)
    assert data["window"]["days"] == 365
    assert len(data["flow"]["days"]) == 365
    assert 'href="?days=30"' in response.content.decode()


def test_a_viewer_may_read_the_insights(client, history, victor):
    client.force_login(victor)
    assert get(client, insights_url()).status_code == 200


def test_a_non_member_gets_a_404(client, history, mallory):
    client.force_login(mallory)
    response = get(client, insights_url())
    assert response.status_code == 404
    assert "2026.10.1" not in response.content.decode()


def test_an_anonymous_visitor_is_sent_to_log_in(client, history):
    response = get(client, insights_url())
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_a_board_without_history_shows_empty_charts_not_an_error(member, board):
    response = get(member, insights_url())
    assert response.status_code == 200
    data = chart_data(response)
    assert data["cycle"]["points"] == [] and data["cycle"]["p50"] is None
    assert sum(data["frequency"]["succeeded"]) == 0
    assert metric_card(response, "lead_time")[1] == "none"
    assert "— No data" in metric_card(response, "lead_time")[0]
    assert metric_card(response, "frequency")[1] == "low"


def test_the_insights_page_reads_a_fixed_number_of_queries_whatever_the_history(bob, client):
    """5 deployments or 50, of as many cards: the same number of SQL queries."""
    client.force_login(bob)
    counts = {}
    for key, deployments in (("FEW", 5), ("MANY", 50)):
        created = services.board_create(actor=as_actor(bob), name=key.title(), key=key)
        story = Story(created, bob)
        for i in range(deployments):
            card = story.create(at(0, 1) + datetime.timedelta(hours=i), f"card {i}")
            story.move(at(0, 2) + datetime.timedelta(hours=i), card, "In Progress")
            story.deploy(at(1) + datetime.timedelta(hours=i), [card], version=f"{key}.{i}",
                         status="failed" if i % 4 == 0 else "success")  # fmt: skip
        rollups_settle()
        with CaptureQueriesContext(connection) as queries:
            response = get(client, insights_url(key))
        assert response.status_code == 200
        assert sum(chart_data(response)["frequency"]["succeeded"]) > 0
        counts[key] = len(queries)
    assert counts["FEW"] == counts["MANY"]


# --- the cumulative flow from the log ---------------------------------------------------------


def test_the_flow_starts_from_where_each_card_was_before_the_window(history):
    days = insights.flow_by_day(board_id=history.pk, days=3, now=at(5, 12))
    assert [(d.day.isoformat(), d.cells) for d in days] == [
        # Before 10-04: A, B and C deployed, D in progress.
        ("2026-10-04", [0, 0, 0, 0, 4]),
        ("2026-10-05", [0, 1, 0, 0, 3]),
        ("2026-10-06", [2, 1, 0, 0, 3]),  # today, up to noon
    ]


def test_a_column_whose_stage_changes_takes_its_cards_along_in_the_flow(board, alice, bob):
    story = Story(board, bob)
    card = story.create(at(0, 9), "QA me")
    story.move(at(0, 10), card, "Staging")
    with clock.frozen_at(at(2, 9)):
        services.column_update(
            actor=as_actor(alice), column_id=column(board, "Staging").pk, stage="review"
        )
    # Across the change: Staging on day 0 and 1, In Review from day 2.
    across = insights.flow_by_day(board_id=board.pk, days=3, now=at(2, 18))
    assert [d.counts["staging"] for d in across] == [1, 1, 0]
    assert [d.counts["review"] for d in across] == [0, 0, 1]
    # Wholly after it: the card's last event says Staging, the column now says In Review.
    after = insights.flow_by_day(board_id=board.pk, days=2, now=at(5, 18))
    assert [(d.counts["staging"], d.counts["review"]) for d in after] == [(0, 1), (0, 1)]


# --- the multi-board view ---------------------------------------------------------------------


@pytest.fixture
def more_boards(history, alice, bob):
    """CHK, where bob is a viewer, with one card of release 2026.10.1 in To Do; and SRCH,
    which bob may not see, with a card of that release too."""
    chk = services.board_create(actor=as_actor(alice), name="Checkout", key="CHK")
    services.membership_set(actor=as_actor(alice), board_id=chk.pk, user_id=bob.pk,
                            role=Role.VIEWER)  # fmt: skip
    srch = services.board_create(actor=as_actor(alice), name="Search", key="SRCH")
    for target, title in ((chk, "Cart summary"), (srch, "Secret ranking")):
        card = Story(target, alice).create(at(2, 9), title)
        label = services.label_create(actor=as_actor(alice), board_id=target.pk,
                                      name="2026.10.1", kind=LabelKind.RELEASE)  # fmt: skip
        services.card_label_add(actor=as_actor(alice), card_id=card.pk, label_id=label.pk)
    return chk, srch


def services_row(response, key: str) -> str:
    row = re.search(rf'<tr id="service-{key}".*?</tr>', response.content.decode(), re.S)
    assert row, f"no row for {key}"
    return re.sub(r"\s+", " ", row.group(0))


def test_the_services_page_lists_only_permitted_boards_with_their_numbers(member, more_boards):
    response = get(member, reverse("delivery:services"))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="service-PAY"' in html and 'id="service-CHK"' in html
    assert "SRCH" not in html and "Search" not in html

    pay = services_row(response, "PAY")
    cells = " ".join(re.sub(r"<[^>]+>", " ", pay).split())
    # Open cards now: E in To Do, C in In Progress, A B D G in Deployed (F is archived).
    assert "To Do 1 In Progress 1 In Review 0 Staging 0 Deployed 4" in cells
    # Last: G's manual move at d7 12h; one deployment in the last 7 days, five in 30.
    assert 'datetime="2026-10-08T12:00:00+00:00"' in pay
    assert "manual move" in cells and "Succeeded" in cells
    assert re.search(r'<td class="num">1</td> <td class="num">5</td>', pay)
    assert "26.0 h High" in cells
    assert "20 %" in cells
    assert 'data-tier="low"' in pay  # the change failure rate
    # Twelve weeks of seven days up to now: four in the week before last, one in the last.
    assert "oldest first: 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 1" in pay

    chk = services_row(response, "CHK")
    assert "None yet" in chk
    assert 'data-tier="none"' in chk  # no lead time to rate


def test_the_services_numbers_agree_with_the_delivery_metrics(history, bob):
    [row] = insights.service_rows_read(actor=as_actor(bob), now=NOW)
    metrics = delivery_metrics(board_id=history.pk, window=Window.last(30, now=NOW))
    assert row.deployments_30 == metrics.deployments
    assert row.lead_time_p50 == pytest.approx(metrics.lead_time.p50)
    assert row.change_failure_rate == pytest.approx(metrics.change_failure_rate)
    assert row.frequency_tier == metrics.frequency_tier
    assert row.lead_time_tier == metrics.lead_time_tier
    assert row.change_failure_tier == metrics.change_failure_tier


def test_a_release_shows_its_cards_and_their_stages_on_every_permitted_board(member, more_boards):
    response = get(member, reverse("delivery:services") + "?release=2026.10.1")
    assert response.status_code == 200
    found = re.search(r'<div id="release-results".*', response.content.decode(), re.S)
    assert found is not None
    results = found.group(0)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", results))
    assert "PAY-1 A Deployed" in text
    assert "PAY-2 B Deployed" in text
    assert "PAY-4" not in text  # shipped in another release
    assert "CHK-1 Cart summary To Do" in text
    assert "SRCH" not in results and "Secret ranking" not in results


def test_the_release_results_come_alone_to_htmx(member, more_boards):
    with clock.frozen_at(NOW):
        response = member.get(
            reverse("delivery:services") + "?release=2026.10.1", HTTP_HX_REQUEST="true"
        )
    html = response.content.decode().strip()
    assert html.startswith('<div id="release-results"')
    assert "PAY-1" in html and "CHK-1" in html
    assert "HX-Request" in response["Vary"]


def test_a_release_nobody_has_says_so(member, more_boards):
    response = get(member, reverse("delivery:services") + "?release=no-such-release")
    assert "No card on your boards carries release no-such-release." in text_of(response)


def test_a_user_on_no_board_sees_an_empty_services_page(client, more_boards, mallory):
    client.force_login(mallory)
    response = get(client, reverse("delivery:services") + "?release=2026.10.1")
    assert response.status_code == 200
    assert "PAY-1" not in response.content.decode()
    assert "You are not on any board yet" in text_of(response)


def test_the_services_page_reads_a_fixed_number_of_queries_whatever_the_boards(client, alice):
    client.force_login(alice)
    counts = []
    for key in ("ONE", "TWO", "SIX"):
        board = services.board_create(actor=as_actor(alice), name=key.title(), key=key)
        Story(board, alice).deploy(at(3), [], version=f"{key}.1")
        rollups_settle()
        with CaptureQueriesContext(connection) as queries:
            get(client, reverse("delivery:services") + "?release=ONE.1")
        counts.append(len(queries))
    assert counts[0] == counts[1] == counts[2]


def test_anonymous_visitors_are_sent_to_log_in_from_the_services_page(client, db):
    make_user("nobody")
    response = client.get(reverse("delivery:services"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))
