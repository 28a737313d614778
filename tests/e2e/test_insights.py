"""The insights page and the multi-board view in real Chromium: charts drawn under the CSP."""

import datetime
import re

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from activity import clock
from activity.log import Actor
from activity.models import Source
from boards import services
from boards.models import Board
from delivery.models import Deployment
from tests.conftest import column, rollups_settle
from tests.e2e.conftest import log_in

pytestmark = pytest.mark.e2e

CHARTS = ["frequency", "cycle", "flow", "aging"]


@pytest.fixture
def shipped(payments: Board) -> Board:
    """PAY with three weeks of history: three releases (one failing first) and work under way.
    Each week's release ships one commit made at the start of its day 1: 2.2 days before."""
    bob = payments.memberships.get(user__username="bob").user
    actor, ci = Actor(user=bob), Actor(user=bob, source=Source.API, via="ci")
    start = timezone.now() - datetime.timedelta(days=21)

    def at(day: float) -> datetime.datetime:
        return start + datetime.timedelta(days=day)

    def move(moment, card, to):
        card.refresh_from_db()
        with clock.frozen_at(moment):
            services.card_move(actor=actor, card_id=card.pk,
                               to_column_id=column(payments, to).pk,
                               expected_version=card.version)  # fmt: skip

    def deploy(moment, cards, version, status="success", committed=None):
        with clock.frozen_at(moment):
            services.deployment_record(
                actor=ci, board_id=payments.pk, version=version, environment="production",
                status=status, card_numbers=[card.number for card in cards],
                commits=[services.Commit(sha=f"sha-{version}", timestamp=committed)],
            )  # fmt: skip

    for week in range(3):
        with clock.frozen_at(at(week * 7)):
            cards = [
                services.card_create(actor=actor, board_id=payments.pk, title=f"Week {week} #{i}")
                for i in range(3)
            ]
        for i, card in enumerate(cards):
            move(at(week * 7 + 0.2 + i * 0.1), card, "In Progress")
            move(at(week * 7 + 1.5 + i * 0.5), card, "Staging")
        if week == 1:
            deploy(at(week * 7 + 3), cards[:2], f"2026.{week}", "failed", at(week * 7 + 1))
        deploy(at(week * 7 + 3.2), cards[:2], f"2026.{week}", committed=at(week * 7 + 1))
    rollups_settle()
    return payments


def charts_drawn(page: Page) -> dict:
    """Each chart canvas of the page: whether Chart.js drew a chart on it, and its datasets."""
    return page.evaluate(
        """() => Object.fromEntries(
            Array.from(document.querySelectorAll("canvas[data-chart]")).map((canvas) => {
                const chart = Chart.getChart(canvas);
                return [canvas.dataset.chart, chart ? {
                    type: chart.config.type,
                    datasets: chart.data.datasets.map((set) => set.data.length),
                    width: canvas.width,
                } : null];
            })
        )"""
    )


def test_the_insights_page_draws_its_charts_under_the_csp(
    page: Page, app_server, shipped, browser_log
):
    log_in(page, "bob")
    page.goto("/b/PAY/")
    page.get_by_role("link", name="Insights", exact=True).click()
    expect(page).to_have_url(app_server.url + "/b/PAY/insights/")
    expect(page.get_by_role("heading", name="Payments insights")).to_be_visible()

    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('canvas[data-chart]'))"
        ".every((canvas) => window.Chart && Chart.getChart(canvas))"
    )
    drawn = charts_drawn(page)
    assert sorted(drawn) == sorted(CHARTS)
    assert all(chart is not None and chart["width"] > 0 for chart in drawn.values())
    assert drawn["frequency"]["type"] == "bar"
    assert drawn["cycle"]["datasets"][0] == 6  # two cards shipped in each of three releases
    assert drawn["flow"]["datasets"] == [90] * 5  # five stages, one point a day
    assert sum(drawn["aging"]["datasets"]) == 4  # the board's first card and one per week

    frequency = page.locator(
        "section", has=page.get_by_role("heading", name="Deployment frequency")
    )
    frequency.get_by_text("Numbers").click()
    expect(frequency.get_by_role("table")).to_be_visible()
    expect(page.locator("#metric-change_failure")).to_contain_text("25 %")
    expect(page.locator("#metric-change_failure .tier")).to_have_text("Low")
    # Three changes, each committed 2.2 days before the deployment that shipped it.
    lead = page.locator('[data-metric="change_lead_time"]')
    expect(lead).to_have_text("2.2 d")
    expect(lead).to_have_attribute("data-seconds", str(round(2.2 * 86400, 6)))
    expect(lead).to_have_attribute("title", re.compile(r"^Median of the lead times of 3 changes"))

    page.get_by_role("link", name="30 days").click()
    expect(page).to_have_url(re.compile(r"/b/PAY/insights/\?days=30$"))
    page.wait_for_function(
        "() => Chart.getChart(document.querySelector('canvas[data-chart=flow]'))"
        ".data.labels.length === 30"
    )

    assert browser_log.problems() == []


def test_the_services_page_shows_the_service_and_follows_a_release(
    page: Page, app_server, shipped, browser_log
):
    log_in(page, "bob")
    page.get_by_role("link", name="Services").click()
    expect(page).to_have_url(app_server.url + "/services/")
    row = page.locator("#service-PAY")
    expect(row).to_contain_text("Payments")
    expect(row.locator(".sparkline polyline")).to_have_count(1)

    row.get_by_role("link", name="2026.2").click()
    expect(page).to_have_url(re.compile(r"/services/\?release=2026\.2$"))
    results = page.locator("#release-results")
    expect(results).to_contain_text("PAY-8")
    expect(results).to_contain_text("PAY-9")
    expect(results.locator(".stage-pill", has_text="Deployed")).to_have_count(3)  # summary + 2

    page.get_by_role("combobox", name="Release").fill("2026.0")
    page.get_by_role("button", name="Show").click()
    expect(results).to_contain_text("PAY-2")
    expect(page).to_have_url(re.compile(r"release=2026\.0$"))

    assert browser_log.problems() == []


def test_every_figure_says_what_it_is_and_no_data_is_not_low(
    page: Page, app_server, payments, browser_log
):
    """A board with no deployment yet: each figure has its definition on hover, and the DORA
    keys read "No data" in the neutral colour of an unrated badge, not "low" in red."""
    log_in(page, "bob")
    page.goto("/b/PAY/insights/")
    keys = page.locator("[data-metric]").evaluate_all(
        "(figures) => figures.map((figure) => [figure.dataset.metric, figure.title])"
    )
    assert [key for key, _ in keys] == [
        "frequency", "change_lead_time", "change_failure", "recovery", "deployment_rework",
        "card_lead_time", "cycle_time", "throughput", "sent_back", "wip", "age",
    ]  # fmt: skip
    assert all(title for _, title in keys)
    for key in ("frequency", "change_lead_time", "change_failure", "recovery"):
        badge = page.locator(f"#metric-{key} .tier")
        expect(badge).to_have_text("No data")
        expect(badge).to_have_attribute("data-tier", "none")
        # The neutral border of every unrated badge (--line), not a tier's colour.
        expect(badge).to_have_css("border-top-color", "rgb(221, 225, 231)")
    expect(page.locator("#metric-deployment_rework .tier")).to_have_count(0)  # DORA has none
    assert browser_log.problems() == []


def test_rollbacks_hotfixes_and_incidents_show_on_the_insights_page(
    page: Page, app_server, shipped, browser_log
):
    bob = shipped.memberships.get(user__username="bob").user
    ci = Actor(user=bob, source=Source.API, via="ci")
    last = Deployment.objects.get(board=shipped, version="2026.2")
    moment = last.deployed_at
    with clock.frozen_at(moment + datetime.timedelta(hours=1)):
        services.deployment_roll_back(actor=ci, deployment_id=last.event_id)
        incident = services.incident_open(
            actor=ci, board_id=shipped.pk, title="Payouts stuck", cause_deployment_id=last.event_id
        ).pk
    with clock.frozen_at(moment + datetime.timedelta(hours=3)):
        fix = services.deployment_record(
            actor=ci, board_id=shipped.pk, version="2026.2.1", environment="production",
            status="success", hotfix=True, fixes_incident_ids=[incident],
        ).event.pk  # fmt: skip
    rollups_settle()

    log_in(page, "bob")
    page.goto("/b/PAY/insights/")
    # Failed changes: 2026.1's failure and 2026.2, rolled back, of 5 production deployments.
    expect(page.locator('[data-metric="change_failure"]')).to_have_text("40 %")
    expect(page.locator('#metric-change_failure [data-part="rolled-back"]')).to_have_text(
        "1 rolled back"
    )
    # One unplanned (the hotfix) of five.
    expect(page.locator('[data-metric="deployment_rework"]')).to_have_text("20 %")
    rolled_back = page.locator(f"#deployment-{last.event_id}")
    expect(rolled_back.locator(".status")).to_have_text("Rolled back")
    expect(rolled_back).to_contain_text("Caused an incident")
    expect(page.locator(f"#deployment-{fix}")).to_contain_text("Hotfix")
    row = page.locator(f"#incident-{incident}")
    expect(row).to_contain_text("Payouts stuck")
    expect(row).to_contain_text(f"2026.2 #{last.event_id}")
    expect(row).to_contain_text(f"2026.2.1 #{fix}")
    expect(row).to_contain_text("2.0")  # restored by the hotfix two hours after it began
    assert browser_log.problems() == []
