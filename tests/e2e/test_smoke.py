"""Smoke test in real Chromium: log in, find the board, see the pipeline; outsiders get a 404."""

import re

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import make_user
from tests.e2e.conftest import log_in

pytestmark = pytest.mark.e2e

PIPELINE = ["To Do", "In Progress", "In Review", "Staging", "Deployed"]


def test_a_member_logs_in_opens_the_board_and_sees_the_pipeline_and_the_card(
    page: Page, app_server, payments, browser_log
):
    log_in(page, "bob")
    expect(page).to_have_url(app_server.url + "/")
    expect(page.get_by_role("heading", name="Your boards")).to_be_visible()

    page.get_by_role("link", name=re.compile("Payments")).click()
    expect(page).to_have_url(app_server.url + "/b/PAY/")
    columns = page.locator("section.column h2")
    expect(columns).to_have_text(PIPELINE)
    todo = page.locator("section.column", has=page.get_by_role("heading", name="To Do"))
    expect(todo.get_by_text("Retry failed payouts")).to_be_visible()
    expect(todo.get_by_text("PAY-1")).to_be_visible()

    assert browser_log.problems() == []


def test_a_non_member_who_opens_the_board_sees_the_404_page(
    page: Page, app_server, payments, browser_log
):
    make_user("mallory")
    log_in(page, "mallory")
    expect(page.get_by_role("heading", name="Your boards")).to_be_visible()
    expect(page.get_by_text("Payments")).to_have_count(0)

    response = page.goto("/b/PAY/")
    assert response is not None
    assert response.status == 404
    expect(page.get_by_role("heading", name="404")).to_be_visible()
    expect(page.get_by_text("nothing here, or you do not have access to it")).to_be_visible()
    expect(page.get_by_text("Retry failed payouts")).to_have_count(0)

    assert browser_log.problems(expected_status={"/b/PAY/": 404}) == []
