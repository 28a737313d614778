"""The insights page and the multi-board view against a small history worked out by hand.

The history is committed through the services under `activity.clock.frozen_at`, the
projections are brought up to date with `rollups_advance()`, and the pages are read at a fixed
moment (`NOW`) through the same clock, so every number below can be checked by hand.
"""

import datetime
import html
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

    def deploy(self, moment, cards, *, version, status="success", commits=(), hotfix=False,
               fixes=()):  # fmt: skip
        """A production deployment reported by CI; `commits` are (sha, committed at) pairs.
        Returns its public id."""
        with clock.frozen_at(moment):
            return services.deployment_record(
                actor=self.ci, board_id=self.board.pk, version=version,
                environment="production", status=status,
                card_numbers=[card.number for card in cards],
                commits=[services.Commit(sha=sha, timestamp=when) for sha, when in commits],
                hotfix=hotfix, fixes_incident_ids=fixes,
            ).event.pk  # fmt: skip

    def roll_back(self, moment, deployment_id):
        with clock.frozen_at(moment):
            services.deployment_roll_back(actor=self.ci, deployment_id=deployment_id)

    def incident(self, moment, title, *, started_at, cause=None):
        with clock.frozen_at(moment):
            return services.incident_open(
                actor=self.ci, board_id=self.board.pk, title=title, started_at=started_at,
                cause_deployment_id=cause,
            ).pk  # fmt: skip

    def resolve(self, moment, incident_id, *, fixed_by=None):
        with clock.frozen_at(moment):
            services.incident_resolve(
                actor=self.ci, incident_id=incident_id, fixed_by_deployment_id=fixed_by
            )


@pytest.fixture
def history(board, bob):
    """Five production deployments over a week (one failed, two manual), one card sent back,
    one archive.

    | card  | created | in progress | deployed                                 | lead | cycle |
    | A (1) | d0 09h  | d0 10h      | d1 12h CI 2026.10.1, commit a1 d0 8h      | 28h  | 26h   |
    | B (2) | d0 09h  | d1 09h      | d1 12h CI 2026.10.1, commit a1 d0 8h      | 28h  | 3h    |
    | C (3) | d1 09h  | d1 10h      | d2 10h manual                            | 24h  | 24h   |
    | D (4) | d2 09h  | d2 12h      | d3 13h CI 2026.10.2-fix, commit d2 d2 11h | 26h  | 25h   |
    | E (5) | d5 09h  | -           | - (waits in To Do)                       |      |       |
    | F (6) | d5 10h  | d6 10h      | - (archived d7 10h)                      |      |       |
    | G (7) | d6 09h  | d6 10h      | d7 12h manual                            | 26h  | 26h   |
    D's first try, 2026.10.2 at d3 10h with the same commit d2, failed. C goes back to In
    Progress at d4 09h (sent back), and is there now. Two changes: a1 (d0 08h, shipped d1 12h:
    28 h) and d2 (d2 11h, shipped by the first successful deployment listing it, d3 13h: 26 h).
    """
    story = Story(board, bob)
    a = story.create(at(0, 9), "A")
    b = story.create(at(0, 9), "B")
    story.move(at(0, 10), a, "In Progress")
    story.move(at(0, 14), a, "Staging")
    story.move(at(1, 9), b, "In Progress")
    story.move(at(1, 10), b, "Staging")
    story.deploy(at(1, 12), [a, b], version="2026.10.1", commits=[("a1", at(0, 8))])
    c = story.create(at(1, 9), "C")
    story.move(at(1, 10), c, "In Progress")
    story.move(at(2, 10), c, "Deployed")
    d = story.create(at(2, 9), "D")
    story.move(at(2, 12), d, "In Progress")
    story.move(at(3, 9), d, "Staging")
    story.deploy(at(3, 10), [d], version="2026.10.2", status="failed", commits=[("d2", at(2, 11))])
    story.deploy(at(3, 13), [d], version="2026.10.2-fix", commits=[("d2", at(2, 11))])
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
def troubled(history, bob):
    """The history, then a rollback, two incidents, a hotfix and a failure (no cards named, so
    the cards' figures and the flow stay the history's). Returns the ids by name.

    - T1 2026.10.3 at d8 09h (commit c3, d8 07h), rolled back at d8 10h.
    - I1 "Checkout errors", begun d8 11h, caused by T1.
    - T2 2026.10.3.1 at d8 15h: a hotfix fixing I1, with c3 and c4 (stamped d8 16h: after it).
      I1 is resolved at d8 17h naming T2; it was restored at d8 15h, by T2.
    - T3 2026.10.4 at d10 10h failed (commit c5, d10 08h); T4 2026.10.4 at d10 12h succeeded.
    - I2 "Slow search", begun d10 13h, caused by T4, still open.
    """
    story = Story(history, bob)
    t1 = story.deploy(at(8, 9), [], version="2026.10.3", commits=[("c3", at(8, 7))])
    story.roll_back(at(8, 10), t1)
    i1 = story.incident(at(8, 11), "Checkout errors", started_at=at(8, 11), cause=t1)
    t2 = story.deploy(at(8, 15), [], version="2026.10.3.1", hotfix=True, fixes=[i1],
                      commits=[("c3", at(8, 7)), ("c4", at(8, 16))])  # fmt: skip
    story.resolve(at(8, 17), i1, fixed_by=t2)
    t3 = story.deploy(at(10, 10), [], version="2026.10.4", status="failed",
                      commits=[("c5", at(10, 8))])  # fmt: skip
    t4 = story.deploy(at(10, 12), [], version="2026.10.4", commits=[("c5", at(10, 8))])
    i2 = story.incident(at(10, 14), "Slow search", started_at=at(10, 13), cause=t4)
    rollups_settle()
    return {"T1": t1, "T2": t2, "T3": t3, "T4": t4, "I1": i1, "I2": i2}


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
    page = response.content.decode()
    card = re.search(rf'<li class="metric[^"]*" id="metric-{key}".*?</li>', page, re.S)
    assert card, f"no metric card {key}"
    tier = re.search(r'data-tier="(\w+)"', card.group(0))
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", card.group(0))).strip()
    return html.unescape(text), tier and tier.group(1)


def figures(response, attribute: str = "data-metric") -> dict[str, dict[str, str]]:
    """Every element of the page carrying `attribute`, by its value: its attributes and, as
    "text", its text (the figures are leaf elements)."""
    found = {}
    for attributes, text in re.findall(
        rf'<\w+ ([^>]*\b{attribute}="[^"]+"[^>]*)>([^<]*)<', response.content.decode()
    ):
        values = {k: html.unescape(v) for k, v in re.findall(r'([\w-]+)="([^"]*)"', attributes)}
        values["text"] = html.unescape(text).strip()
        found[values[attribute]] = values
    return found


def parts(response, key: str) -> dict[str, dict[str, str]]:
    """The figures beside a card's headline (p85, counts, breakdowns), by their data-part."""
    html_text = response.content.decode()
    card = re.search(rf'<li class="metric[^"]*" id="metric-{key}".*?</li>', html_text, re.S)
    assert card, f"no metric card {key}"
    found = {}
    for attributes, text in re.findall(r'<span ([^>]*\bdata-part="[^"]+"[^>]*)>([^<]*)<', card[0]):
        values = {k: html.unescape(v) for k, v in re.findall(r'([\w-]+)="([^"]*)"', attributes)}
        found[values["data-part"]] = {**values, "text": html.unescape(text)}
    return found


def text_of(response) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.content.decode()))


# --- the insights page ---------------------------------------------------------------------------

KEYS = [
    "frequency", "change_lead_time", "change_failure", "recovery", "deployment_rework",
    "card_lead_time", "cycle_time", "throughput", "sent_back", "wip", "age",
]  # fmt: skip


def test_the_figures_show_the_hand_computed_numbers_and_tiers(member, history):
    response = get(member, insights_url(query="?days=30"))
    assert response.status_code == 200
    expected = {
        # 4 successful of the 5 production deployments (the failed 2026.10.2 does not count):
        # 4 / 30 days = 0.133 a day, x7 = 0.933 a week, x30 = 4.0 a month. Under one a week
        # it reads "a month"; from one a month (0.033 a day) to one a week (0.143) is medium.
        "frequency": (
            "4.0 a month",
            "4 of 5 production deployments succeeded · 0.13 a day · 0.93 a week · 4.0 a month",
            "medium",
        ),
        # Changes a1 28 h, d2 26 h: p50 (26 + 28) / 2 = 27 h; p85 at position 0.85 of [26, 28]:
        # 26 + 0.85 x 2 = 27.7 h. Under a week: high.
        "change_lead_time": ("27.0 h p50", "p85 27.7 h · 2 changes · 0 clamped to 0", "high"),
        # 1 failed change (2026.10.2 failed) of 5: 20 %, above 15 %: low.
        "change_failure": (
            "20 %",
            "1 of 5 production deployments · 1 failed · 0 rolled back · 0 caused an incident",
            "low",
        ),
        # The run 2026.10.2 (d3 10h) to 2026.10.2-fix (d3 13h): 3 h, under a day: high.
        "recovery": ("3.0 h p50", "p85 3.0 h · 1 recovery · 0 incidents, 0 open", "high"),
        # No hotfix, nothing fixing an incident: 0 of 5. DORA gives no tiers.
        "deployment_rework": ("0 %", "0 unplanned of 5 production deployments", None),
        # Per card: 24, 26, 26, 28, 28 h: p50 26 h; p85 at position 3.4: 28 + 0.4 x 0 = 28 h.
        "card_lead_time": ("26.0 h p50", "p85 28.0 h · 5 cards", None),
        # Cycles 3, 24, 25, 26, 26 h: p50 25 h; p85 at position 3.4: 26 h.
        "cycle_time": ("25.0 h p50", "p85 26.0 h · 5 cards", None),
        # 5 cards / (30 / 7 weeks) = 1.17 a week.
        "throughput": ("5 cards", "1.2 a week", None),
        # C left Deployed once; 1 / 5 cards delivered.
        "sent_back": ("20 %", "1 card sent back of 5", None),
        # C is the only card under way now; it first started at d1 10h: 12 d 14 h ago, 12.58 d.
        "wip": ("1 card now", "1 In Progress · 0 In Review · 0 Staging", None),
        "age": ("12.6 d p50", "p85 12.6 d · 1 card under way · oldest PAY-3", None),
    }
    assert list(figures(response)) == KEYS
    for key, (value, detail, tier) in expected.items():
        text, shown_tier = metric_card(response, key)
        assert value in text, (key, text)
        assert detail in text, (key, text)
        assert shown_tier == tier, key
    raw = figures(response)
    assert float(raw["frequency"]["data-per-day"]) == pytest.approx(4 / 30, abs=1e-6)
    assert float(raw["change_lead_time"]["data-seconds"]) == 27 * 3600
    assert float(raw["change_lead_time"]["data-p85-seconds"]) == pytest.approx(27.7 * 3600)
    assert float(raw["change_failure"]["data-rate"]) == pytest.approx(0.2)
    assert "Rework rate" not in text_of(response)  # the old name for cards sent back


def test_failures_rollbacks_incidents_and_hotfixes_count_as_dora_defines(member, troubled):
    response = get(member, insights_url(query="?days=30"))
    expected = {
        # Successful: the history's 4, T2 and T4 (T1 was rolled back, T3 failed) = 6 of 9.
        # 6 / 30 = 0.2 a day, x7 = 1.4 a week (from one a week: "a week", and high).
        "frequency": (
            "1.4 a week",
            "6 of 9 production deployments succeeded · 0.20 a day · 1.4 a week · 6.0 a month",
            "high",
        ),
        # Changes: a1 28 h, d2 26 h, c3 d8 07h -> T2 d8 15h (T1 was rolled back) 8 h, c4
        # stamped d8 16h after T2 (d8 15h): 0, clamped; c5 d10 08h -> T4 d10 12h 4 h.
        # [0, 4, 8, 26, 28]: p50 8 h (under a day: elite); p85 at 3.4: 26 + 0.4 x 2 = 26.8 h.
        "change_lead_time": ("8.0 h p50", "p85 26.8 h · 5 changes · 1 clamped to 0", "elite"),
        # Failed changes: 2026.10.2 and T3 failed, T1 rolled back (and I1's cause: once), T4
        # caused I2: 4 of 9 = 44.4 %: low.
        "change_failure": (
            "44.4 %",
            "4 of 9 production deployments · 2 failed · 1 rolled back · 1 caused an incident",
            "low",
        ),
        # Runs: d3 10h -> d3 13h 3 h; T1 d8 09h -> T2 d8 15h 6 h; T3 d10 10h -> T4 d10 12h 2 h.
        # I1: d8 11h -> T2, the first successful deployment fixing it, d8 15h: 4 h. I2 is open.
        # [2, 3, 4, 6]: p50 (3 + 4) / 2 = 3.5 h (under a day: high); p85 at 2.55:
        # 4 + 0.55 x 2 = 5.1 h.
        "recovery": ("3.5 h p50", "p85 5.1 h · 4 recoveries · 2 incidents, 1 open", "high"),
        # T2, a hotfix fixing I1: 1 of 9 = 11.1 %.
        "deployment_rework": ("11.1 %", "1 unplanned of 9 production deployments", None),
        # T1-T4 name no cards: the per-card figures stay the history's.
        "card_lead_time": ("26.0 h p50", "p85 28.0 h · 5 cards", None),
        "throughput": ("5 cards", "1.2 a week", None),
        "sent_back": ("20 %", "1 card sent back of 5", None),
    }
    for key, (value, detail, tier) in expected.items():
        text, shown_tier = metric_card(response, key)
        assert value in text, (key, text)
        assert detail in text, (key, text)
        assert shown_tier == tier, key
    raw = figures(response)
    assert raw["change_failure"]["data-caused-incident"] == "1"
    assert raw["change_lead_time"]["data-clamped"] == "1"
    assert raw["recovery"]["data-open-incidents"] == "1"


def test_each_figure_says_its_definition_and_its_sample_size(member, troubled):
    response = get(member, insights_url(query="?days=30"))
    titles = {key: found["title"] for key, found in figures(response).items()}
    assert set(titles) == set(KEYS)
    assert titles["frequency"].startswith("6 successful production deployments in the last 30 ")
    assert (
        "failed and rolled-back ones do not count; 9 production deployments in all"
        in (titles["frequency"])
    )
    assert titles["change_lead_time"].startswith(
        "Median of the lead times of 5 changes: a commit's earliest reported time → the first "
        "successful production deployment that shipped it and was not rolled back"
    )
    assert titles["change_failure"].startswith("4 failed changes of 9 production deployments")
    assert titles["recovery"].startswith("Median of the times to restore service of 4 recoveries")
    assert titles["deployment_rework"].startswith("1 unplanned of 9 production deployments")
    assert titles["card_lead_time"].startswith(
        "Median of the lead times of 5 cards: the first "
        "commit of the deployments that named the card"
    )
    assert titles["cycle_time"].startswith(
        "Median of the cycle times of 5 cards: first entry into In Progress"
    )
    assert titles["sent_back"].startswith("1 card sent back from Deployed")
    # The figures beside each headline have their own.
    p85 = parts(response, "change_lead_time")["p85"]["title"]
    assert p85 == "85th percentile of the lead times of the same 5 changes."
    assert parts(response, "change_lead_time")["clamped"]["title"].startswith(
        "1 change committed after the deployment that shipped it (clock skew), counted with a "
        "lead time of 0"
    )
    for key in KEYS:
        for part in parts(response, key).values():
            assert part["title"], (key, part)
    # And each tier badge says what its band means, the bands being Flux's contiguous ones.
    badge = re.search(r'id="metric-frequency".*?<span class="tier"[^>]*title="([^"]*)"',
                      response.content.decode(), re.S)  # fmt: skip
    assert badge and html.unescape(badge[1]).startswith(
        "High: at least one a week, less than one a day (DORA 2023's bands, made contiguous"
    )


def test_each_metric_card_states_its_definition(member, history):
    response = get(member, insights_url())
    helps = {key: metric_card(response, key)[0] for key in KEYS}
    assert "Successful production deployments (not failed, not rolled back)" in helps["frequency"]
    assert "elite, on demand, several a day" in helps["frequency"]
    assert "made contiguous by Flux" in helps["frequency"]
    assert "counts as 0 and is counted" in helps["change_lead_time"]
    assert (
        "failed, were rolled back, or are named as the cause of an incident"
        in (helps["change_failure"])
    )
    assert "open ones give none and are counted" in helps["recovery"]
    assert (
        "unplanned production deployments (marked a hotfix, or fixing an incident)"
        in (helps["deployment_rework"])
    )
    assert "DORA's lead time is per change" in helps["card_lead_time"]
    assert "first entry into In Progress" in helps["cycle_time"]
    assert "Flux called this rework rate before DORA gave that name" in helps["sent_back"]


def test_the_chart_data_holds_weekly_deployments_cycle_points_and_the_flow(member, history):
    data = chart_data(get(member, insights_url(query="?days=30")))

    assert data["window"]["days"] == 30
    assert data["frequency"] == {
        "weeks": ["2026-09-14", "2026-09-21", "2026-09-28", "2026-10-05", "2026-10-12"],
        "succeeded": [0, 0, 3, 1, 0],
        "failed": [0, 0, 1, 0, 0],
        "rolledBack": [0, 0, 0, 0, 0],
    }

    # Cycle time is in hours on the card (p85 26 h, under two days), so in hours here too.
    assert data["cycle"]["unit"] == {"symbol": "h", "name": "hours", "seconds": 3600}
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

    # In the work item age's unit, days (its p85 is 12.6 d): E has waited in To Do since d5
    # 09h (8.625 d), C has been back in In Progress since d4 09h (9.625 d).
    assert data["aging"]["unit"]["symbol"] == "d"
    aging = {p["ref"]: (p["stage"], p["y"]) for p in data["aging"]["points"]}
    assert aging == {
        "PAY-5": ("todo", pytest.approx(8.625, abs=0.01)),
        "PAY-3": ("in_progress", pytest.approx(9.625, abs=0.01)),
    }


def test_rolled_back_deployments_show_as_such_in_the_chart_and_the_list(member, troubled):
    response = get(member, insights_url(query="?days=30"))
    data = chart_data(response)
    # Week of 10-05: G by hand (d7), T2 and T4 succeeded; T1 rolled back; T3 failed.
    assert data["frequency"]["succeeded"][-2:] == [3, 0]
    assert data["frequency"]["rolledBack"][-2:] == [1, 0]
    assert data["frequency"]["failed"][-2:] == [1, 0]
    assert "2026-10-05 3 1 1" in text_of(response)

    page = response.content.decode()

    def row(deployment_id):
        found = re.search(rf'<tr id="deployment-{deployment_id}".*?</tr>', page, re.S)
        assert found, deployment_id
        return found[0], " ".join(re.sub(r"<[^>]+>", " ", found[0]).split())

    t1, t1_text = row(troubled["T1"])
    assert 'data-status="rolled_back"' in t1
    assert "Rolled back" in t1_text and "Succeeded" not in t1_text
    assert "Caused an incident" in t1_text
    assert 'title="Rolled back 2026-10-09 10:00 UTC: a failed change."' in t1
    _, t2_text = row(troubled["T2"])
    assert "Succeeded Hotfix Fixes incident " + str(troubled["I1"]) in t2_text
    _, t3_text = row(troubled["T3"])
    assert "Failed" in t3_text and "Hotfix" not in t3_text
    _, t4_text = row(troubled["T4"])
    assert "Succeeded Caused an incident" in t4_text


def test_the_incidents_of_the_window_are_listed_with_their_causes_and_fixes(member, troubled):
    response = get(member, insights_url(query="?days=30"))
    page = response.content.decode()
    rows = re.findall(r'<tr id="incident-(\d+)" data-incident="\d+" data-state="(\w+)">(.*?)</tr>',
                      page, re.S)  # fmt: skip
    listed = [(int(pk), state, " ".join(re.sub(r"<[^>]+>", " ", cells).split()))
              for pk, state, cells in rows]  # fmt: skip
    i1, i2, t1, t2, t4 = (troubled[name] for name in ("I1", "I2", "T1", "T2", "T4"))
    assert listed == [
        # Newest first. I2 is open: no restore, no recovery, nothing fixed it.
        (i2, "open", f"Slow search {i2} 2026-10-11 13:00 Open — 2026.10.4 #{t4} —"),
        # I1: begun d8 11h, restored by T2 at d8 15h (resolved later, at d8 17h): 4 hours, in
        # the recovery time's unit (hours: its p85 is 5.1 h).
        (i1, "restored", f"Checkout errors {i1} 2026-10-09 11:00 2026-10-09 15:00 4.0 "
                         f"2026.10.3 #{t1} 2026.10.3.1 #{t2}"),
    ]  # fmt: skip
    assert "Recovery (h)" in text_of(response)
    assert "2 in all, 1 open" in text_of(response)
    assert 'title="Resolved 2026-10-09 17:00 UTC"' in page
    # Seen from before either began: none listed, and the page says so.
    with clock.frozen_at(at(8, 0)):
        earlier = member.get(insights_url(query="?days=30"))
    assert "No incident began in this window." in text_of(earlier)


def test_every_chart_has_its_numbers_in_a_table(member, history):
    response = get(member, insights_url(query="?days=30"))
    html_text = response.content.decode()
    assert html_text.count('<details class="numbers">') == 4
    assert html_text.count("<canvas") == 4
    text = text_of(response)
    assert "2026-09-28 3 0 1" in text  # the week's successful, rolled-back, failed deployments
    assert "Cycle time (h)" in text
    assert "PAY-2 2026-10-02 12:00 2026.10.1 3.0" in text  # a cycle-time point, in hours
    assert "2026-10-07 1 3 0 0 3" in text  # a day of the cumulative flow
    assert "In column (d)" in text
    assert "PAY-5 E To Do To Do 8.6" in text  # an aging card, in days


def test_a_figure_keeps_one_unit_on_its_card_chart_and_table(member, board, bob):
    """Cycle times of days are in days everywhere (the chart was in hours, the card in days)."""
    story = Story(board, bob)
    for number, (started, shipped) in enumerate([(0, 3), (1, 5), (2, 4)]):
        card = story.create(at(started), f"long {number}")
        story.move(at(started, 1), card, "In Progress")
        story.deploy(at(shipped, 1), [card], version=f"2026.10.{number}")
    rollups_settle()
    response = get(member, insights_url(query="?days=30"))
    # Cycles 3, 4 and 2 days: p50 3 d; p85 at position 1.7: 3 + 0.7 x 1 = 3.7 d.
    assert "3.0 d p50" in metric_card(response, "cycle_time")[0]
    assert "p85 3.7 d" in metric_card(response, "cycle_time")[0]
    data = chart_data(response)
    assert data["cycle"]["unit"]["symbol"] == "d"
    assert sorted(point["y"] for point in data["cycle"]["points"]) == [2.0, 3.0, 4.0]
    assert (data["cycle"]["p50"], data["cycle"]["p85"]) == (3.0, 3.7)
    assert "Cycle time (d)" in text_of(response)
    assert "the days from its first entry into In Progress" in text_of(response)
    assert "(3.0 d) and p85 (3.7 d)" in text_of(response)


def test_unit_pick_reads_the_largest_value_naturally():
    assert insights.unit_pick(None, None) is insights.HOURS
    assert insights.unit_pick(40 * 60, 59 * 60) is insights.MINUTES
    assert insights.unit_pick(40 * 60, 3600) is insights.HOURS
    assert insights.unit_pick(3600, 47.9 * 3600) is insights.HOURS
    assert insights.unit_pick(3600, 48 * 3600) is insights.DAYS
    assert insights.DAYS.text(40 * 60) == "0.03 d"  # never "0.0 d" for something
    assert insights.HOURS.text(0) == "0.0 h"
    assert insights.MINUTES.text(90) == "2 min"


def test_releases_on_the_insights_page_link_to_the_multi_board_view(member, history):
    page = get(member, insights_url()).content.decode()
    assert 'href="/services/?release=2026.10.2-fix"' in page
    assert 'href="/services/?release=2026.10.1"' in page


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


def test_a_board_without_history_shows_no_tier_not_low(member, board):
    response = get(member, insights_url())
    assert response.status_code == 200
    data = chart_data(response)
    assert data["cycle"]["points"] == [] and data["cycle"]["p50"] is None
    assert sum(data["frequency"]["succeeded"]) == 0
    for key in ("frequency", "change_lead_time", "change_failure", "recovery"):
        text, tier = metric_card(response, key)
        assert tier == "none", key
        assert "No data" in text, key
        assert "Low" not in text, key
    assert "— No data" in metric_card(response, "change_lead_time")[0]
    assert "No production deployment in this window." in text_of(response)
    assert "No incident began in this window." in text_of(response)


def test_the_insights_page_reads_a_fixed_number_of_queries_whatever_the_history(bob, client):
    """5 deployments or 50, of as many cards, with incidents and rollbacks: the same number of
    SQL queries."""
    client.force_login(bob)
    counts = {}
    for key, deployments in (("FEW", 5), ("MANY", 50)):
        created = services.board_create(actor=as_actor(bob), name=key.title(), key=key)
        story = Story(created, bob)
        for i in range(deployments):
            moment = at(1) + datetime.timedelta(hours=i)
            card = story.create(at(0, 1) + datetime.timedelta(hours=i), f"card {i}")
            story.move(at(0, 2) + datetime.timedelta(hours=i), card, "In Progress")
            deployed = story.deploy(moment, [card], version=f"{key}.{i}",
                                    status="failed" if i % 4 == 0 else "success",
                                    commits=[(f"{key}{i}", at(0, 3))])  # fmt: skip
            if i % 4 == 1:
                story.roll_back(moment + datetime.timedelta(minutes=10), deployed)
            if i % 5 == 2:
                story.incident(moment + datetime.timedelta(minutes=20), f"incident {i}",
                               started_at=moment, cause=deployed)  # fmt: skip
        rollups_settle()
        with CaptureQueriesContext(connection) as queries:
            response = get(client, insights_url(key))
        assert response.status_code == 200
        assert sum(chart_data(response)["frequency"]["succeeded"]) > 0
        assert 'data-state="open"' in response.content.decode()
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
    page = response.content.decode()
    assert 'id="service-PAY"' in page and 'id="service-CHK"' in page
    assert "SRCH" not in page and "Search" not in page

    pay = services_row(response, "PAY")
    cells = " ".join(re.sub(r"<[^>]+>", " ", pay).split())
    # Open cards now: E in To Do, C in In Progress, A B D G in Deployed (F is archived).
    assert "To Do 1 In Progress 1 In Review 0 Staging 0 Deployed 4" in cells
    # Last: G's manual move at d7 12h. Successful deployments: one in the last 7 days (G),
    # four in 30 (the failed 2026.10.2 does not count).
    assert 'datetime="2026-10-08T12:00:00+00:00"' in pay
    assert "manual move" in cells and "Succeeded" in cells
    assert re.search(r'data-metric="successful_7"[^>]*>1</td>', pay)
    assert re.search(r'data-metric="successful_30"[^>]*>4</td>', pay)
    assert 'title="4 successful of 5 production deployments in the last 30 days"' in pay
    # The change lead time, as on the insights page: changes of 26 and 28 h, p50 27 h.
    assert "27.0 h High" in cells
    assert "20 %" in cells
    assert 'data-tier="low"' in pay  # the change failure rate
    # 4 successful in 30 days: 4.0 a month, medium (as on the insights page).
    assert "4.0 a month Medium" in cells
    # Successful deployments in twelve weeks of seven days up to now: three in the week
    # before last (2026.10.1, C by hand, 2026.10.2-fix; 2026.10.2 failed), one in the last.
    assert "oldest first: 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 1" in pay

    chk = services_row(response, "CHK")
    assert "None yet" in chk
    # No deployment, no change: no tier for any figure, never "low".
    assert chk.count('data-tier="none"') == 3
    assert 'data-tier="low"' not in chk
    frequency = re.search(r'<td class="rated" data-metric="frequency".*?</td>', chk, re.S)
    assert frequency and 'data-tier="none"' in frequency[0] and "No data" in frequency[0]


def test_a_rolled_back_last_deployment_says_so_on_the_services_page(member, history, bob):
    story = Story(history, bob)
    deployed = story.deploy(at(9, 9), [], version="2026.10.9")
    story.roll_back(at(9, 10), deployed)
    rollups_settle()
    pay = services_row(get(member, reverse("delivery:services")), "PAY")
    assert 'data-status="rolled_back"' in pay and "Rolled back" in pay
    assert "Succeeded" not in pay


def test_the_services_numbers_agree_with_the_delivery_metrics(troubled, bob):
    [row] = insights.service_rows_read(actor=as_actor(bob), now=NOW)
    metrics = delivery_metrics(board_id=row.board.pk, window=Window.last(30, now=NOW))
    # See test_failures_rollbacks_incidents_and_hotfixes_count_as_dora_defines: 9 production
    # deployments, 6 successful, 4 failed changes, changes p50 8 h.
    assert (row.deployments_30, metrics.deployments) == (9, 9)
    assert (row.successful_30, metrics.successful_deployments) == (6, 6)
    assert (row.failed_changes_30, metrics.failed_changes) == (4, 4)
    assert row.change_lead_time_p50 == metrics.change_lead_time.p50 == 8 * 3600
    assert row.changes_30 == metrics.change_lead_time.count == 5
    assert row.change_failure_rate == pytest.approx(metrics.change_failure_rate)
    assert row.per_day == pytest.approx(metrics.per_day)
    assert (row.frequency_tier, metrics.frequency_tier) == ("high", "high")
    assert (row.lead_time_tier, metrics.lead_time_tier) == ("elite", "elite")
    assert (row.change_failure_tier, metrics.change_failure_tier) == ("low", "low")


def test_a_service_without_deployments_has_no_frequency_tier(board, bob):
    [row] = insights.service_rows_read(actor=as_actor(bob), now=NOW)
    metrics = delivery_metrics(board_id=board.pk, window=Window.last(30, now=NOW))
    assert row.frequency_tier is None and metrics.frequency_tier is None
    assert row.lead_time_tier is None and row.change_failure_tier is None


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
    fragment = response.content.decode().strip()
    assert fragment.startswith('<div id="release-results"')
    assert "PAY-1" in fragment and "CHK-1" in fragment
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
