"""The Django admin, through real HTTP posts of its forms: every save goes through the services.

Each test fetches the admin page first and posts back what a browser would submit from its
form (hidden fields, the inlines' management forms, ticked boxes, selected options), changed
only where the test says so. They all run on SQLite too.
"""

import datetime
import re
from html import unescape
from html.parser import HTMLParser

import pytest
from django.urls import reverse

from activity.clock import frozen_at
from activity.events import EventKind
from activity.models import Event
from boards import services
from boards.models import Board, Card, Membership, Role
from tests.conftest import as_actor, column, make_card

pytestmark = [pytest.mark.sqlite, pytest.mark.django_db]

FormData = dict[str, list[str]]

TEXT_INPUTS = {"text", "hidden", "number", "email", "url", "search", "password", "date", "tel"}


class BrowserForm(HTMLParser):
    """The successful controls of one <form>, in the order a browser would submit them."""

    def __init__(self, form_id: str) -> None:
        super().__init__()
        self.form_id = form_id
        self.inside = False
        self.pairs: list[tuple[str, str]] = []
        self._select: tuple[str, bool] | None = None  # (name, multiple)
        self._options: list[list] = []  # [value or None, selected, text]
        self._textarea: list[str] | None = None  # [name, text]

    def handle_starttag(self, tag, attrs):
        attr = dict(attrs)
        if tag == "form":
            self.inside = attr.get("id") == self.form_id
        if not self.inside or "disabled" in attr:
            return
        name = attr.get("name")
        if tag == "input" and name:
            kind = (attr.get("type") or "text").lower()
            if kind in TEXT_INPUTS:
                self.pairs.append((name, attr.get("value") or ""))
            elif kind in {"checkbox", "radio"} and "checked" in attr:
                self.pairs.append((name, attr.get("value") or "on"))
        elif tag == "select" and name:
            self._select, self._options = (name, "multiple" in attr), []
        elif tag == "option" and self._select:
            self._options.append([attr.get("value"), "selected" in attr, ""])
        elif tag == "textarea" and name:
            self._textarea = [name, ""]

    def handle_data(self, data):
        if self._textarea is not None:
            self._textarea[1] += data
        elif self._select and self._options:
            self._options[-1][2] += data

    def handle_endtag(self, tag):
        if tag == "form":
            self.inside = False
        elif tag == "select" and self._select:
            name, multiple = self._select
            # An <option> without a value attribute submits its text.
            values = [(text.strip() if v is None else v, sel) for v, sel, text in self._options]
            chosen = [value for value, selected in values if selected]
            if not chosen and not multiple and values:
                chosen = [values[0][0]]
            self.pairs.extend((name, value) for value in chosen)
            self._select = None
        elif tag == "textarea" and self._textarea is not None:
            name, text = self._textarea
            self.pairs.append((name, text.removeprefix("\n")))  # as a browser drops it
            self._textarea = None


def form_on(response, form_id: str) -> FormData:
    assert response.status_code == 200, response.status_code
    parser = BrowserForm(form_id)
    parser.feed(response.content.decode())
    data: FormData = {}
    for name, value in parser.pairs:
        data.setdefault(name, []).append(value)
    assert data, f"no form #{form_id} on the page"
    return data


def submit(client, url: str, form_id: str, **changes):
    """GET the admin page, change some fields as a user would, and press Save."""
    data = form_on(client.get(url), form_id)
    for name, value in changes.items():
        data[name] = [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return client.post(url, {**data, "_save": ["Save"]})


def error_page(client, response) -> str:
    """What the user sees after a refused save: never a 500, the reason on the page."""
    assert response.status_code in {200, 302}, response.status_code
    if response.status_code == 302:
        response = client.get(response["Location"])
        assert response.status_code == 200
    return response.content.decode()


def events_after(last_id: int) -> list[Event]:
    return list(Event.objects.filter(pk__gt=last_id).order_by("pk"))


def last_event_id() -> int:
    return Event.objects.order_by("-pk").values_list("pk", flat=True).first() or 0


def messages_on(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def board_url(board: Board) -> str:
    return reverse("admin:boards_board_change", args=[board.pk])


def card_url(card: Card) -> str:
    return reverse("admin:boards_card_change", args=[card.pk])


def form_index(data: FormData, prefix: str, field: str, value: object) -> int:
    """The inline row of `prefix` whose `field` shows `value`."""
    total = int(data[f"{prefix}-TOTAL_FORMS"][0])
    for i in range(total):
        if data.get(f"{prefix}-{i}-{field}") == [str(value)]:
            return i
    raise AssertionError(f"no {prefix} row with {field}={value}")


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


@pytest.fixture
def labels(board, alice):
    return [
        services.label_create(actor=as_actor(alice), board_id=board.pk, name=name)
        for name in ("bug", "infra", "ux")
    ]


@pytest.fixture
def other_board(alice):
    return services.board_create(actor=as_actor(alice), name="Search", key="SRCH")


# --- Boards ---------------------------------------------------------------------------------


def test_adding_a_board_creates_its_five_columns_and_one_admin_event(staff_client, staff):
    url = reverse("admin:boards_board_add")
    response = submit(
        staff_client, url, "board_form", name="Checkout", key="CHK", description="Pay & go"
    )
    assert response.status_code == 302
    board = Board.objects.get(key="CHK")
    assert response["Location"] == reverse("admin:boards_board_changelist")
    assert (board.name, board.description) == ("Checkout", "Pay & go")
    assert list(board.columns.order_by("position").values_list("name", flat=True)) == [
        "To Do",
        "In Progress",
        "In Review",
        "Staging",
        "Deployed",
    ]
    (event,) = Event.objects.filter(board=board)
    assert (event.kind, event.source, event.actor_name) == (EventKind.BOARD_CREATED, "admin", "sam")
    assert board.memberships.get().user == staff


def test_a_taken_board_key_is_refused_on_the_form(staff_client, board):
    before = last_event_id()
    url = reverse("admin:boards_board_add")
    response = submit(staff_client, url, "board_form", name="Payments again", key="PAY")
    assert response.status_code == 200
    assert "already exists" in response.content.decode()
    assert Board.objects.count() == 1
    assert events_after(before) == []


def test_saving_a_board_unchanged_writes_no_event(staff_client, board):
    before = last_event_id()
    response = submit(staff_client, board_url(board), "board_form")
    assert response.status_code == 302
    assert events_after(before) == []


def test_changing_a_wip_limit_in_the_column_inline_writes_one_column_updated_event(
    staff_client, board
):
    review = column(board, "In Review")
    data = form_on(staff_client.get(board_url(board)), "board_form")
    row = form_index(data, "columns", "id", review.pk)
    before = last_event_id()
    response = submit(
        staff_client, board_url(board), "board_form", **{f"columns-{row}-wip_limit": 3}
    )
    assert response.status_code == 302
    assert column(board, "In Review").wip_limit == 3
    (event,) = events_after(before)
    assert (event.kind, event.source, event.actor_name) == (
        EventKind.COLUMN_UPDATED,
        "admin",
        "sam",
    )
    assert event.payload["changes"] == {"wip_limit": {"old": None, "new": 3}}
    history = staff_client.get(reverse("admin:boards_board_history", args=[board.pk]))
    assert "Changed Wip limit for column “PAY / In Review”." in history.content.decode()


def test_adding_a_column_in_the_inline_writes_column_created(staff_client, board):
    url = board_url(board)
    data = form_on(staff_client.get(url), "board_form")
    row = int(data["columns-TOTAL_FORMS"][0])
    # What "Add another Column" does: copy the blank template row in under the next index.
    for name, value in list(data.items()):
        if name.startswith("columns-__prefix__-"):
            data[name.replace("__prefix__", str(row))] = value
    data["columns-TOTAL_FORMS"] = [str(row + 1)]
    data[f"columns-{row}-name"] = ["QA"]
    data[f"columns-{row}-stage"] = ["review"]
    data[f"columns-{row}-position"] = ["5"]
    before = last_event_id()
    response = staff_client.post(url, {**data, "_save": ["Save"]})
    assert response.status_code == 302
    (event,) = events_after(before)
    assert event.kind == EventKind.COLUMN_CREATED
    assert (event.payload["column"]["name"], event.payload["column"]["stage"]) == ("QA", "review")
    assert list(board.columns.order_by("position").values_list("name", flat=True))[-1] == "QA"
    history = staff_client.get(reverse("admin:boards_board_history", args=[board.pk]))
    assert "Added column “PAY / QA”." in history.content.decode()


def test_renaming_the_board_and_a_column_together_writes_one_event_each(staff_client, board):
    data = form_on(staff_client.get(board_url(board)), "board_form")
    row = form_index(data, "columns", "id", column(board, "Staging").pk)
    before = last_event_id()
    response = submit(
        staff_client,
        board_url(board),
        "board_form",
        name="Payments core",
        **{f"columns-{row}-name": "Pre-prod"},
    )
    assert response.status_code == 302
    assert [e.kind for e in events_after(before)] == [
        EventKind.BOARD_UPDATED,
        EventKind.COLUMN_UPDATED,
    ]
    assert Board.objects.get(pk=board.pk).name == "Payments core"
    assert board.columns.filter(name="Pre-prod").exists()


def test_adding_a_member_in_the_inline_writes_membership_set(staff_client, board, mallory):
    data = form_on(staff_client.get(board_url(board)), "board_form")
    row = int(data["memberships-INITIAL_FORMS"][0])  # the blank row after the members
    assert data["memberships-TOTAL_FORMS"] == [str(row + 1)]
    before = last_event_id()
    response = submit(
        staff_client,
        board_url(board),
        "board_form",
        **{f"memberships-{row}-user": mallory.pk, f"memberships-{row}-role": "viewer"},
    )
    assert response.status_code == 302
    assert Membership.objects.get(board=board, user=mallory).role == Role.VIEWER
    (event,) = events_after(before)
    assert (event.kind, event.source) == (EventKind.MEMBERSHIP_SET, "admin")
    assert event.payload == {
        "user_id": mallory.pk,
        "username": "mallory",
        "old": None,
        "new": "viewer",
    }


def test_changing_and_removing_members_in_the_inline(staff_client, board, bob, victor):
    data = form_on(staff_client.get(board_url(board)), "board_form")
    bob_row = form_index(data, "memberships", "user", bob.pk)
    victor_row = form_index(data, "memberships", "user", victor.pk)
    before = last_event_id()
    response = submit(
        staff_client,
        board_url(board),
        "board_form",
        **{f"memberships-{bob_row}-role": "admin", f"memberships-{victor_row}-DELETE": "on"},
    )
    assert response.status_code == 302
    assert [e.kind for e in events_after(before)] == [
        EventKind.MEMBERSHIP_SET,
        EventKind.MEMBERSHIP_REMOVED,
    ]
    assert dict(board.memberships.values_list("user__username", "role")) == {
        "alice": "admin",
        "bob": "admin",
    }


def test_removing_the_last_admin_is_refused_with_a_message(staff_client, board, alice):
    data = form_on(staff_client.get(board_url(board)), "board_form")
    row = form_index(data, "memberships", "user", alice.pk)
    before = last_event_id()
    response = submit(
        staff_client, board_url(board), "board_form", **{f"memberships-{row}-DELETE": "on"}
    )
    assert "A board keeps at least one admin" in error_page(staff_client, response)
    assert board.memberships.filter(user=alice, role=Role.ADMIN).exists()
    assert events_after(before) == []


# --- Cards ----------------------------------------------------------------------------------


def test_adding_a_card_goes_through_card_create(staff_client, board):
    make_card(board, title="First")
    before = last_event_id()
    response = submit(
        staff_client,
        reverse("admin:boards_card_add"),
        "card_form",
        board=board.pk,
        column=column(board, "In Progress").pk,
        title="  Retry failed payouts  ",
        due_date="2026-03-01",
    )
    assert response.status_code == 302
    card = Card.objects.get(title="Retry failed payouts")
    assert response["Location"] == reverse("admin:boards_card_changelist")
    assert (card.ref, card.column.name, card.due_date) == (
        "PAY-2",
        "In Progress",
        datetime.date(2026, 3, 1),
    )
    (event,) = events_after(before)
    assert (event.kind, event.card, event.source, event.actor_name) == (
        EventKind.CARD_CREATED,
        card,
        "admin",
        "sam",
    )
    (message,) = messages_on(staff_client.get(response["Location"]))
    assert "PAY-2 Retry failed payouts" in message


def test_editing_a_cards_title_writes_card_updated(staff_client, board):
    card = make_card(board, title="Old title")
    before = last_event_id()
    response = submit(staff_client, card_url(card), "card_form", title="New title")
    assert response.status_code == 302
    card.refresh_from_db()
    assert (card.title, card.version) == ("New title", 2)
    (event,) = events_after(before)
    assert (event.kind, event.source) == (EventKind.CARD_UPDATED, "admin")
    assert event.payload["changes"] == {"title": {"old": "Old title", "new": "New title"}}


def test_changing_a_cards_column_writes_card_moved(staff_client, board):
    card = make_card(board)
    before = last_event_id()
    response = submit(staff_client, card_url(card), "card_form", column=column(board, "Staging").pk)
    assert response.status_code == 302
    card.refresh_from_db()
    assert card.column.name == "Staging"
    (event,) = events_after(before)
    assert event.kind == EventKind.CARD_MOVED
    assert (event.payload["from"]["column"], event.payload["to"]["column"]) == ("To Do", "Staging")


def test_ticking_labels_writes_card_labelled(staff_client, board, labels):
    card = make_card(board)
    bug, infra, _ = labels
    before = last_event_id()
    response = submit(staff_client, card_url(card), "card_form", labels=[bug.pk, infra.pk])
    assert response.status_code == 302
    assert set(card.labels.values_list("name", flat=True)) == {"bug", "infra"}
    new = events_after(before)
    assert [e.kind for e in new] == [EventKind.CARD_LABELLED, EventKind.CARD_LABELLED]
    assert {e.payload["label"]["name"] for e in new} == {"bug", "infra"}


def test_saving_a_card_unchanged_writes_no_event(staff_client, board, labels, bob):
    card = make_card(board)
    services.card_label_add(actor=as_actor(bob), card_id=card.pk, label_id=labels[0].pk)
    services.card_assign(actor=as_actor(bob), card_id=card.pk, user_ids=[bob.pk])
    before = last_event_id()
    response = submit(staff_client, card_url(card), "card_form")
    assert response.status_code == 302
    assert events_after(before) == []


def test_a_title_of_only_spaces_is_refused_and_changes_nothing(staff_client, board):
    card = make_card(board, title="Keep me")
    before = last_event_id()
    added = submit(
        staff_client,
        reverse("admin:boards_card_add"),
        "card_form",
        board=board.pk,
        column=column(board, "To Do").pk,
        title="   ",
    )
    changed = submit(staff_client, card_url(card), "card_form", title="   ")
    for response in (added, changed):
        assert response.status_code == 200
        assert "This field is required." in response.content.decode()
    assert list(Card.objects.values_list("title", flat=True)) == ["Keep me"]
    assert events_after(before) == []


def test_a_new_card_in_another_boards_column_is_refused(staff_client, board, other_board):
    before = last_event_id()
    response = submit(
        staff_client,
        reverse("admin:boards_card_add"),
        "card_form",
        board=board.pk,
        column=column(other_board, "To Do").pk,
        title="Lost card",
    )
    assert "That column belongs to another board." in error_page(staff_client, response)
    assert not Card.objects.exists()
    assert events_after(before) == []


def test_moving_a_card_to_another_boards_column_changes_nothing(staff_client, board, other_board):
    card = make_card(board, title="Stay here")
    before = last_event_id()
    response = submit(
        staff_client,
        card_url(card),
        "card_form",
        title="Renamed on the way",
        column=column(other_board, "Staging").pk,
    )
    assert "PAY has no such column." in error_page(staff_client, response)
    card.refresh_from_db()
    assert (card.title, card.column.name, card.board.key, card.version) == (
        "Stay here",
        "To Do",
        "PAY",
        1,
    )
    assert events_after(before) == []


def test_a_label_of_another_board_is_refused(staff_client, board, other_board, alice):
    card = make_card(board)
    foreign = services.label_create(actor=as_actor(alice), board_id=other_board.pk, name="perf")
    before = last_event_id()
    response = submit(staff_client, card_url(card), "card_form", labels=[foreign.pk])
    assert "PAY has no such label." in error_page(staff_client, response)
    assert not card.labels.exists()
    assert events_after(before) == []


def test_a_stale_card_form_does_not_undo_a_move_made_meanwhile(staff_client, board, bob):
    card = make_card(board, title="Ship it")
    url = card_url(card)
    seen = form_on(staff_client.get(url), "card_form")  # the admin opens the card ...
    services.card_move(  # ... bob drags it on the board ...
        actor=as_actor(bob),
        card_id=card.pk,
        to_column_id=column(board, "Staging").pk,
        expected_version=card.version,
    )
    before = last_event_id()
    seen["title"] = ["Ship it today"]  # ... and the admin saves the page they saw
    response = staff_client.post(url, {**seen, "_save": ["Save"]})
    assert "Someone else changed this card first" in error_page(staff_client, response)
    card.refresh_from_db()
    assert (card.title, card.column.name) == ("Ship it", "Staging")
    assert events_after(before) == []


def test_card_search_finds_a_card_by_its_ref(staff_client, board, other_board):
    cards = [make_card(board, title=f"Card {n}") for n in range(1, 12)]  # PAY-1 .. PAY-11
    make_card(other_board, title="Elsewhere")  # SRCH-1
    changelist = reverse("admin:boards_card_changelist")
    for term in ("PAY-1", "pay-1", " PAY-1 "):
        html = staff_client.get(changelist, {"q": term}).content.decode()
        assert listed_ids(html, "boards/card") == [cards[0].pk], term
    html = staff_client.get(changelist, {"q": "Card 11"}).content.decode()
    assert listed_ids(html, "boards/card") == [cards[10].pk]


def test_card_search_by_ref_keeps_the_filters(staff_client, board, alice):
    card = make_card(board, title="Old work")
    services.card_archive(actor=as_actor(alice), card_id=card.pk)
    changelist = reverse("admin:boards_card_changelist")
    html = staff_client.get(changelist, {"q": "PAY-1", "archived__exact": "0"}).content.decode()
    assert listed_ids(html, "boards/card") == []
    html = staff_client.get(changelist, {"q": "PAY-1", "archived__exact": "1"}).content.decode()
    assert listed_ids(html, "boards/card") == [card.pk]


# --- The event log --------------------------------------------------------------------------


def listed_ids(html: str, model: str) -> list[int]:
    """The objects a changelist shows, in order, from the links to their change pages."""
    found = re.findall(rf'href="/admin/{model}/(\d+)/change/', html)
    return list(dict.fromkeys(int(pk) for pk in found))


@pytest.fixture
def card_event(board):
    card = make_card(board, title="Settle refunds")
    return Event.objects.get(card=card, kind=EventKind.CARD_CREATED)


def follow_link(client, url: str, html: str, text: str) -> str:
    """Click the link with this text on the page; the HTML of where it leads."""
    match = re.search(rf'<a href="(\?[^"]*)"[^>]*>\s*{re.escape(text)}\s*</a>', html)
    assert match, f"no link {text!r}"
    response = client.get(url + unescape(match.group(1)))
    assert response.status_code == 200
    return response.content.decode()


def test_the_event_list_loads_and_filters_by_board_kind_and_date(
    staff_client, board, other_board, alice, card_event
):
    with frozen_at(datetime.datetime(2025, 3, 14, 9, 30, tzinfo=datetime.UTC)):
        old_card = make_card(board, title="Last year")
    old_event = Event.objects.get(card=old_card)
    changelist = reverse("admin:activity_event_changelist")
    response = staff_client.get(changelist)
    assert response.status_code == 200
    html = response.content.decode()
    for heading in ("By board", "By kind", "By occurred at"):
        assert heading in html
    assert sorted(listed_ids(html, "activity/event")) == sorted(
        Event.objects.values_list("pk", flat=True)
    )

    by_board = follow_link(staff_client, changelist, html, "Search (SRCH)")
    assert listed_ids(by_board, "activity/event") == list(
        Event.objects.filter(board=other_board).values_list("pk", flat=True)
    )
    by_kind = follow_link(staff_client, changelist, html, EventKind.CARD_CREATED)
    assert sorted(listed_ids(by_kind, "activity/event")) == [card_event.pk, old_event.pk]
    today = follow_link(staff_client, changelist, html, "Today")
    assert old_event.pk not in listed_ids(today, "activity/event")
    assert card_event.pk in listed_ids(today, "activity/event")
    in_2025 = follow_link(staff_client, changelist, html, "2025")
    assert listed_ids(in_2025, "activity/event") == [old_event.pk]


def test_an_event_is_shown_with_its_payload_but_cannot_be_saved(staff_client, card_event):
    url = reverse("admin:activity_event_change", args=[card_event.pk])
    response = staff_client.get(url)
    assert response.status_code == 200
    html = response.content.decode()
    assert "<pre>" in html
    assert "&quot;title&quot;: &quot;Settle refunds&quot;" in html
    assert 'name="_save"' not in html
    assert reverse("admin:activity_event_delete", args=[card_event.pk]) not in html

    posted = staff_client.post(url, {"kind": "card.forged", "actor_name": "mallory"})
    assert posted.status_code == 403
    stored = Event.objects.get(pk=card_event.pk)
    assert (stored.kind, stored.actor_name, stored.payload) == (
        EventKind.CARD_CREATED,
        "alice",
        card_event.payload,
    )


def test_events_cannot_be_added_or_deleted_in_the_admin(staff_client, card_event):
    count = Event.objects.count()
    delete_url = reverse("admin:activity_event_delete", args=[card_event.pk])
    assert staff_client.get(delete_url).status_code == 403
    assert staff_client.post(delete_url, {"post": "yes"}).status_code == 403
    add_url = reverse("admin:activity_event_add")
    assert staff_client.get(add_url).status_code == 403
    assert staff_client.post(add_url, {"kind": "card.forged"}).status_code == 403
    assert Event.objects.count() == count
