"""Time travel in Chromium: open the board as it was, step through events, with a clean CSP."""

import datetime
import re

import pytest
from playwright.sync_api import Page, expect

from activity import clock
from activity.events import EventKind
from activity.log import Actor
from activity.models import Event
from boards import services
from boards.models import Card
from tests.e2e.conftest import BrowserLog, log_in

pytestmark = pytest.mark.e2e

MONDAY = datetime.datetime(2026, 10, 5, 9, 0, tzinfo=datetime.UTC)


def test_stepping_through_a_days_events_shows_the_board_as_it_was(
    page: Page, payments, browser_log: BrowserLog
):
    card = Card.objects.get(board=payments)
    bob = payments.memberships.get(user__username="bob").user
    in_progress = payments.columns.get(name="In Progress")
    with clock.frozen_at(MONDAY):
        services.card_move(
            actor=Actor(user=bob), card_id=card.pk, to_column_id=in_progress.pk,
            expected_version=None,
        )  # fmt: skip
    with clock.frozen_at(MONDAY + datetime.timedelta(hours=1)):
        services.card_update(
            actor=Actor(user=bob), card_id=card.pk, expected_version=None, title="Retry payouts"
        )
    moved = Event.objects.get(kind=EventKind.CARD_MOVED)
    log_in(page, "alice")
    page.goto(f"/b/PAY/history/?event={moved.pk}")
    expect(page.locator(".past-banner")).to_contain_text("The past, read-only")
    board = page.locator("#past-board")
    expect(board.locator(".column", has_text="In Progress")).to_contain_text("Retry failed payouts")

    page.get_by_role("link", name="Next event →").click()
    expect(page).to_have_url(re.compile(r"\?event=\d+$"))
    expect(board.locator(".column", has_text="In Progress")).to_contain_text("Retry payouts")
    expect(page.locator(".past-banner")).to_contain_text("This is Payments now")

    page.get_by_role("link", name="← Previous event").click()
    expect(page).to_have_url(re.compile(rf"\?event={moved.pk}$"))
    expect(board).to_contain_text("Retry failed payouts")
    page.keyboard.press("Alt+ArrowLeft")  # one more step back: the card was still in To Do
    expect(board.locator(".column", has_text="To Do")).to_contain_text("Retry failed payouts")
    expect(page.locator(".since-then")).to_contain_text("To Do → In Progress")

    page.get_by_label("Date and time (UTC)").fill("2026-10-05T09:30")
    page.get_by_role("button", name="Show").click()
    expect(page).to_have_url(re.compile(r"\?at=2026-10-05T09%3A30|\?at=2026-10-05T09:30"))
    expect(board.locator(".column", has_text="In Progress")).to_contain_text("Retry failed payouts")
    assert browser_log.problems() == []
