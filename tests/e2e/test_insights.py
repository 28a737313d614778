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
from tests.conftest import column, rollups_settle
from tests.e2e.conftest import log_in

pytestmark = pytest.mark.e2e

CHARTS = ["frequency", "cycle", "flow", "aging"]


@pytest.fixture
def shipped(payments: Board) -> Board:
    """PAY with three weeks of history: three releases (one failing first) and work under way."""
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

    def deploy(moment, cards, version, status="success"):
        with clock.frozen_at(moment):
            services.deployment_record(
                actor=ci, board_id=payments.pk, version=version, environment="production",
                status=status, card_numbers=[card.number for card in cards],
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
            deploy(at(week * 7 + 3), cards[:2], f"2026.{week}", status="failed")
        deploy(at(week * 7 + 3.2), cards[:2], f"2026.{week}")
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
