"""The board's filter bar in real Chromium: labels, the clear link and the empty message follow
the filter as htmx swaps the board under the form."""

import re

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import make_card
from tests.e2e.conftest import log_in

pytestmark = pytest.mark.e2e


def test_filtering_to_nothing_says_so_and_clear_brings_the_board_back(
    page: Page, payments, browser_log
):
    make_card(payments, title="Payout batch")
    log_in(page, "bob")
    page.goto("/b/PAY/")
    for name in ("Search cards", "Label", "Assignee", "Release"):
        expect(page.get_by_label(name, exact=True)).to_be_visible()
    filters = page.get_by_role("search")
    expect(filters.get_by_role("link", name="Clear filters")).to_have_count(0)

    page.get_by_label("Search cards").fill("batch")
    expect(page.locator(".card")).to_have_count(1)
    expect(filters.get_by_role("link", name="Clear filters")).to_be_visible()
    expect(page.get_by_role("status").filter(has_text="No cards match")).to_have_count(0)

    page.get_by_label("Search cards").fill("nothing like it")
    expect(page.locator(".card")).to_have_count(0)
    empty = page.locator("#filter-empty")
    expect(empty).to_have_text(re.compile(r"No cards match these filters"))
    expect(page.get_by_label("Search cards")).to_be_focused()  # the form was not swapped

    empty.get_by_role("link", name="Clear filters").click()
    expect(page).to_have_url(re.compile(r"/b/PAY/$"))
    expect(page.get_by_label("Search cards")).to_have_value("")
    expect(page.locator(".card")).to_have_count(2)
    expect(empty).to_be_empty()
    expect(filters.get_by_role("link", name="Clear filters")).to_have_count(0)
    assert browser_log.problems() == []
