"""The board in real Chromium: drag, reorder, keyboard, dialog, filters, conflicts."""

import re

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from activity.events import EventKind
from activity.models import Event
from boards.models import Card
from tests.conftest import column_titles, make_card
from tests.e2e.conftest import log_in

pytestmark = pytest.mark.e2e


def column(page: Page, name: str) -> Locator:
    return page.locator("section.column", has=page.get_by_role("heading", name=name, exact=True))


def card(page: Page, ref: str) -> Locator:
    return page.locator(f'.card[data-ref="{ref}"]')


def refs(page: Page, name: str) -> list[str]:
    return column(page, name).locator(".card").evaluate_all("els => els.map(e => e.dataset.ref)")


# Where SortableJS has put the dragged card while the button is still down: the drop makes
# the move from this place. Before a card `target` (after it when `below`), or in a list.
PLACED = """([item, target, below]) => target.matches(".card")
  ? (below ? item.previousElementSibling : item.nextElementSibling) === target
  : item.parentElement === target"""


def drag(
    page: Page, source: Locator, target: Locator, *, below: bool = False, placed: bool = True
) -> None:
    """Press on `source`, glide to `target` (its top half, or just below it), let go.

    When `placed`, the button is let go only once the card has moved to its new place in
    the page; `placed=False` is for a drag that must not move anything (the board is busy).
    """
    item, goal = source.element_handle(), target.element_handle()
    start = source.bounding_box()
    end = target.bounding_box()
    assert start is not None and end is not None
    x0, y0 = start["x"] + start["width"] / 2, start["y"] + 12
    x1 = end["x"] + end["width"] / 2
    y1 = end["y"] + (end["height"] - 6 if below else 8)
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x0 + 8, y0 + 8, steps=4)
    page.mouse.move(x1, y1, steps=25)
    if placed:
        page.wait_for_function(PLACED, arg=[item, goal, below])
    page.mouse.up()


def toast(page: Page, text: str) -> None:
    expect(page.locator("#toasts")).to_contain_text(text)


def test_drag_a_card_to_in_review_and_it_stays_there_and_shows_in_its_history(
    page: Page, payments, browser_log
):
    make_card(payments, title="Second card")
    log_in(page, "bob")
    page.goto("/b/PAY/")
    drag(page, card(page, "PAY-1"), column(page, "In Review").locator("ol.cards"))
    toast(page, "PAY-1 moved to In Review.")
    assert refs(page, "In Review") == ["PAY-1"]
    expect(column(page, "In Review").locator(".count")).to_have_text("1")
    expect(column(page, "To Do").locator(".count")).to_have_text("1")

    page.reload()
    assert refs(page, "In Review") == ["PAY-1"]
    assert column_titles(payments, "In Review") == ["Retry failed payouts"]

    card(page, "PAY-1").locator("a.title").click()
    dialog = page.locator("dialog#card-dialog")
    expect(dialog).to_be_visible()
    expect(page).to_have_url(re.compile(r"/b/PAY/cards/1/$"))
    expect(dialog.locator(".history")).to_contain_text("bob moved from To Do to In Review")
    assert browser_log.problems() == []


def test_reorder_within_a_column(page: Page, payments, browser_log):
    make_card(payments, title="Second card")
    make_card(payments, title="Third card")
    log_in(page, "bob")
    page.goto("/b/PAY/")
    assert refs(page, "To Do") == ["PAY-1", "PAY-2", "PAY-3"]
    drag(page, card(page, "PAY-3"), card(page, "PAY-1"))
    toast(page, "PAY-3 moved to To Do.")
    assert refs(page, "To Do") == ["PAY-3", "PAY-1", "PAY-2"]
    assert column_titles(payments, "To Do") == ["Third card", "Retry failed payouts", "Second card"]
    assert browser_log.problems() == []


def test_move_with_the_keyboard(page: Page, payments, browser_log):
    make_card(payments, title="Second card")
    log_in(page, "bob")
    page.goto("/b/PAY/")
    card(page, "PAY-2").focus()
    page.keyboard.press("Alt+ArrowRight")
    toast(page, "PAY-2 moved to In Progress.")
    expect(card(page, "PAY-2")).to_be_focused()
    page.keyboard.press("Alt+ArrowRight")
    toast(page, "PAY-2 moved to In Review.")
    expect(card(page, "PAY-2")).to_be_focused()
    card(page, "PAY-1").focus()
    page.keyboard.press("Alt+ArrowRight")
    toast(page, "PAY-1 moved to In Progress.")
    page.keyboard.press("Alt+ArrowRight")
    toast(page, "PAY-1 moved to In Review.")
    assert refs(page, "In Review") == ["PAY-1", "PAY-2"]
    page.keyboard.press("Alt+ArrowDown")
    expect(column(page, "In Review").locator(".card").first).to_have_attribute("data-ref", "PAY-2")
    expect(page.locator("#board")).not_to_have_class(re.compile(r"\bbusy\b"))
    assert column_titles(payments, "In Review") == ["Second card", "Retry failed payouts"]
    expect(page.locator("#announcer")).to_contain_text("PAY-1")
    assert browser_log.problems() == []


def test_create_a_card_inline_and_edit_it_in_the_dialog(page: Page, payments, browser_log):
    log_in(page, "bob")
    page.goto("/b/PAY/")
    field = column(page, "To Do").get_by_placeholder("Add a card…")
    field.fill("Chargeback webhook")
    field.press("Enter")
    toast(page, "PAY-2 created.")
    expect(column(page, "To Do").get_by_placeholder("Add a card…")).to_be_focused()
    expect(card(page, "PAY-2")).to_contain_text("Chargeback webhook")

    card(page, "PAY-2").locator("a.title").click()
    dialog = page.locator("dialog#card-dialog")
    dialog.get_by_label("Title").fill("")
    dialog.get_by_label("Description").fill("Handle **disputes** from the PSP")
    dialog.get_by_role("button", name="Save").click()
    expect(dialog.locator("#title-error")).to_contain_text("required")
    expect(dialog.get_by_label("Description")).to_have_value("Handle **disputes** from the PSP")

    dialog.get_by_label("Title").fill("Chargeback webhook v2")
    dialog.get_by_role("button", name="Save").click()
    expect(dialog.locator(".saved")).to_be_visible()
    expect(dialog.locator(".markdown strong")).to_have_text("disputes")
    expect(card(page, "PAY-2").locator(".title")).to_have_text("Chargeback webhook v2")
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)
    expect(page).to_have_url(re.compile(r"/b/PAY/$"))
    saved = Card.objects.get(board=payments, number=2)
    assert saved.description == "Handle **disputes** from the PSP"
    assert browser_log.problems(expected_status={"/b/PAY/cards/2/": 422}) == []


def test_filter_then_go_back_and_forth(page: Page, payments, browser_log):
    make_card(payments, title="Payout batch")
    log_in(page, "bob")
    page.goto("/b/PAY/")
    page.get_by_label("Search cards").fill("batch")
    expect(page).to_have_url(re.compile(r"\?q=batch$"))
    expect(page.locator(".card")).to_have_count(1)
    page.reload()
    expect(page.get_by_label("Search cards")).to_have_value("batch")
    expect(page.locator(".card")).to_have_count(1)

    page.go_back()
    expect(page).to_have_url(re.compile(r"/b/PAY/$"))
    expect(page.locator(".card")).to_have_count(2)
    expect(page.locator(".topbar")).to_have_count(1)  # a whole page, never a bare fragment
    page.go_forward()
    expect(page.locator(".card")).to_have_count(1)
    expect(page.locator(".topbar")).to_have_count(1)
    assert browser_log.problems() == []


def test_someone_else_moves_the_card_first_and_the_page_says_so(
    page: Page, browser: Browser, app_server, payments, browser_log
):
    # Bob's page is cut off from live updates (and their polling fallback), so it goes on
    # showing the board as it was when alice moves the card.
    page.route(re.compile(r"/live/"), lambda route: route.abort())
    log_in(page, "bob")
    page.goto("/b/PAY/")

    other = browser.new_context(base_url=app_server.url)
    alice = other.new_page()
    log_in(alice, "alice")
    alice.goto("/b/PAY/")
    drag(alice, card(alice, "PAY-1"), column(alice, "Staging").locator("ol.cards"))
    toast(alice, "PAY-1 moved to Staging.")
    other.close()

    # Bob's page still shows PAY-1 in To Do with the version it saw.
    drag(page, card(page, "PAY-1"), column(page, "In Review").locator("ol.cards"))
    toast(page, "changed by someone else first")
    assert refs(page, "Staging") == ["PAY-1"]
    assert refs(page, "In Review") == []
    assert Event.objects.filter(card__number=1, kind=EventKind.CARD_MOVED).count() == 1
    problems = browser_log.problems(expected_status={"/b/PAY/cards/1/move": 409})
    # The cut-off stream is reported by Chromium (its URL) and htmx (an Event object).
    assert [p for p in problems if "/live/" not in p and "[object Event]" not in p] == []


def test_a_drop_while_a_move_is_in_flight_is_not_sent(page: Page, payments, browser_log):
    make_card(payments, title="Second card")
    log_in(page, "bob")
    page.goto("/b/PAY/")
    held = []
    # Hold the first move's request so the second drag happens while it is in flight.
    page.route("**/cards/*/move*", lambda route: held.append(route))
    drag(page, card(page, "PAY-1"), column(page, "In Review").locator("ol.cards"))
    expect(page.locator("#board")).to_have_class(re.compile(r"\bbusy\b"))
    drag(page, card(page, "PAY-2"), column(page, "Staging").locator("ol.cards"), placed=False)
    assert len(held) == 1
    held[0].continue_()
    toast(page, "PAY-1 moved to In Review.")
    expect(page.locator("#board")).not_to_have_class(re.compile(r"\bbusy\b"))
    assert Event.objects.filter(kind=EventKind.CARD_MOVED).count() == 1
    assert refs(page, "In Review") == ["PAY-1"]
    assert refs(page, "To Do") == ["PAY-2"]
    assert refs(page, "Staging") == []
    expect(page.locator('.card[data-ref="PAY-1"]')).to_have_count(1)
    assert browser_log.problems() == []
