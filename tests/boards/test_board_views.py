"""The board in the browser, server side: pages, fragments, moves, dialogs, permissions."""

import datetime
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from activity.events import EventKind
from activity.log import Actor
from activity.models import Event
from boards import services
from boards.models import Card
from boards.queries import COLUMN_PAGE, natural_key
from boards.ranking import ranks_spread
from tests.conftest import as_actor, column, column_titles, make_card

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


def oob_ids(response) -> list[str]:
    return re.findall(r'id="([\w-]+)"[^>]*hx-swap-oob="true"', response.content.decode())


def move(client, card, to: str, *, version=None, htmx=True, **extra):
    data = {"to_column": column(card.board, to).pk, "version": version or card.version, **extra}
    url = reverse("boards:card-move", args=[card.board.key, card.number])
    return client.post(url, data, **(HX if htmx else {}))


@pytest.fixture
def editor(client, bob):
    client.force_login(bob)
    return client


@pytest.fixture
def viewer(client, victor):
    client.force_login(victor)
    return client


# --- page and fragments ---------------------------------------------------------------------


@pytest.mark.sqlite
def test_the_board_is_a_whole_page_without_htmx_and_a_fragment_with_it(editor, board):
    make_card(board, title="Refunds")
    url = reverse("boards:detail", args=["PAY"])
    page = editor.get(url)
    fragment = editor.get(url, **HX)
    assert page.content.decode().startswith("<!doctype html>")
    assert fragment.content.decode().lstrip().startswith('<div class="board')
    assert "Refunds" in fragment.content.decode()
    assert "HX-Request" in fragment["Vary"]


def test_a_history_restore_gets_the_whole_page(editor, board):
    response = editor.get(
        reverse("boards:detail", args=["PAY"]), HTTP_HX_HISTORY_RESTORE_REQUEST="true", **HX
    )
    assert response.content.decode().startswith("<!doctype html>")


def test_cards_show_ref_labels_assignees_due_date_and_age(editor, board, bob):
    card = make_card(board, title="Retry captures")
    label = services.label_create(
        actor=as_actor(bob), board_id=board.pk, name="bug", colour="#dc2626"
    )
    services.card_label_add(actor=as_actor(bob), card_id=card.pk, label_id=label.pk)
    services.card_assign(actor=as_actor(bob), card_id=card.pk, user_ids=[bob.pk])
    card.refresh_from_db()
    yesterday = timezone.localdate() - datetime.timedelta(days=1)
    services.card_update(
        actor=as_actor(bob), card_id=card.pk, expected_version=card.version, due_date=yesterday
    )
    html = editor.get(reverse("boards:detail", args=["PAY"])).content.decode()
    item = html[html.index(f'id="card-{card.pk}"') :]
    item = item[: item.index("</li>\n")]
    assert "PAY-1" in item
    assert 'data-colour="#dc2626"' in item
    assert ">BO<" in item  # bob's initials
    assert "overdue" in item
    assert 'class="age"' in item


def card_item(html: str, card: Card) -> str:
    """The card's own <li> in a page or fragment."""
    item = html[html.index(f'id="card-{card.pk}"') :]
    return item[: item.index("</li>")]


def test_a_card_past_its_due_date_is_overdue_until_it_reaches_deployed(editor, board, bob):
    late, shipped = make_card(board, title="Late"), make_card(board, title="Shipped late")
    yesterday = timezone.localdate() - datetime.timedelta(days=1)
    for card in (late, shipped):
        card.refresh_from_db()
        services.card_update(
            actor=as_actor(bob), card_id=card.pk, expected_version=card.version, due_date=yesterday
        )
        card.refresh_from_db()
    page = reverse("boards:detail", args=["PAY"])
    assert "overdue" in card_item(editor.get(page).content.decode(), shipped)  # cached, too

    assert move(editor, shipped, "Deployed").status_code == 200
    html = editor.get(page).content.decode()
    assert "overdue" in card_item(html, late)
    assert "overdue" not in card_item(html, shipped)
    assert yesterday.strftime("%b") in card_item(html, shipped)  # the date still shows
    # The column's further pages ("Show more cards") follow the same rule.
    deployed = reverse("boards:column-cards", args=["PAY", column(board, "Deployed").pk])
    fragment = editor.get(deployed + "?after=", **HX).content.decode()
    assert "overdue" not in card_item(fragment, shipped)


def test_the_board_page_runs_the_same_queries_with_10_and_1000_cards(editor, board, bob):
    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            response = editor.get(reverse("boards:detail", args=["PAY"]))
        assert response.status_code == 200
        return len(queries)

    for i in range(10):
        make_card(board, title=f"small {i}")
    small = count()
    label = services.label_create(actor=as_actor(bob), board_id=board.pk, name="bug")
    # A thousand more, written in bulk: this test is about the read path.
    now = timezone.now()
    columns = list(board.columns.all())
    ranks = ranks_spread(count=1000)
    cards = Card.objects.bulk_create(
        Card(
            board=board,
            column=columns[1 + i % 4],  # the small cards sit in To Do
            number=100 + i,
            title=f"big {i}",
            rank=ranks[i],
            created_at=now,
            updated_at=now,
            entered_column_at=now,
        )
        for i in range(1000)
    )
    Card.labels.through.objects.bulk_create(
        Card.labels.through(card_id=c.pk, label_id=label.pk) for c in cards
    )
    Card.assignees.through.objects.bulk_create(
        Card.assignees.through(card_id=c.pk, user_id=bob.pk) for c in cards
    )
    assert count() == small
    print(f"board page: {small} queries at 10 and at 1,010 cards")


def test_a_crowded_column_shows_a_page_and_loads_more_on_demand(editor, board):
    for i in range(COLUMN_PAGE + 5):
        make_card(board, title=f"card {i:03}")
    html = editor.get(reverse("boards:detail", args=["PAY"])).content.decode()
    assert "card 049" in html and "card 050" not in html
    assert "Show more cards" in html
    found = re.search(r'hx-get="([^"]+after=[^"]+)"', html)
    assert found is not None
    more = found.group(1).replace("&amp;", "&")
    page = editor.get(more, **HX).content.decode()
    assert "card 050" in page and "card 054" in page and "card 049" not in page
    assert "Show more cards" not in page


@pytest.mark.parametrize(
    ("query", "shown", "hidden"),
    [
        ("q=refund", "Refund flow", "Payout batch"),
        ("q=PAY-2", "Payout batch", "Refund flow"),
        ("label=bug", "Refund flow", "Payout batch"),
        ("assignee=bob", "Payout batch", "Refund flow"),
        ("release=2026.11.1", "Payout batch", "Refund flow"),
    ],
)
def test_filters_narrow_the_board(editor, board, bob, query, shown, hidden):
    refund = make_card(board, title="Refund flow")
    payout = make_card(board, title="Payout batch")
    bug = services.label_create(actor=as_actor(bob), board_id=board.pk, name="bug")
    release = services.label_create(
        actor=as_actor(bob), board_id=board.pk, name="2026.11.1", kind="release"
    )
    services.card_label_add(actor=as_actor(bob), card_id=refund.pk, label_id=bug.pk)
    services.card_label_add(actor=as_actor(bob), card_id=payout.pk, label_id=release.pk)
    services.card_assign(actor=as_actor(bob), card_id=payout.pk, user_ids=[bob.pk])
    html = editor.get(reverse("boards:detail", args=["PAY"]) + "?" + query, **HX).content.decode()
    assert shown in html
    assert hidden not in html


def test_clear_filters_shows_only_while_filtering_on_the_page_and_in_the_htmx_answer(editor, board):
    make_card(board, title="Refund flow")
    url = reverse("boards:detail", args=["PAY"])
    clear = f'<a class="clear" href="{url}">Clear filters</a>'
    assert clear not in editor.get(url).content.decode()
    assert clear in editor.get(url + "?q=refund").content.decode()
    # The form is not swapped under htmx, so the board's answer brings the link out of band,
    # and takes it away again once the filter is cleared.
    fragment = editor.get(url + "?q=refund", **HX).content.decode()
    assert re.search(rf'id="filter-clear"[^>]*hx-swap-oob="innerHTML">{re.escape(clear)}', fragment)
    unfiltered = editor.get(url, **HX).content.decode()
    assert re.search(r'id="filter-clear"[^>]*hx-swap-oob="innerHTML"></span>', unfiltered)
    assert "Clear filters" not in unfiltered


def test_a_filter_matching_nothing_says_so_once_with_a_way_back(editor, board):
    make_card(board, title="Refund flow")
    url = reverse("boards:detail", args=["PAY"])
    for response in (editor.get(url + "?q=nothing-like-it"), editor.get(url + "?q=nothing", **HX)):
        html = response.content.decode()
        assert html.count("No cards match these filters") == 1
        status = re.search(r'<div id="filter-empty"[^>]*role="status"[^>]*>(.*?)</div>', html, re.S)
        assert status is not None
        assert f'href="{url}">Clear filters</a>' in status.group(1)
    for query in ("", "?q=refund"):
        assert "No cards match" not in editor.get(url + query).content.decode()


def test_every_filter_control_has_a_visible_label(editor, board):
    html = editor.get(reverse("boards:detail", args=["PAY"])).content.decode()
    form = html[html.index('<form id="filters"') :]
    form = form[: form.index("</form>")]
    for control, name in [
        ("filter-q", "Search cards"),
        ("filter-label", "Label"),
        ("filter-assignee", "Assignee"),
        ("filter-release", "Release"),
    ]:
        assert f'<label for="{control}">{name}</label>' in form
        assert f'id="{control}"' in form
    assert "visually-hidden" not in form


def test_releases_are_offered_newest_version_first(editor, board, bob):
    for name in ["2026.11.2", "2026.9.30", "2026.11.11", "2026.11.10", "2025.12.1"]:
        services.label_create(actor=as_actor(bob), board_id=board.pk, name=name, kind="release")
    html = editor.get(reverse("boards:detail", args=["PAY"])).content.decode()
    select = html[html.index('<select id="filter-release"') :]
    offered = re.findall(r'<option value="([^"]+)"', select[: select.index("</select>")])
    assert offered == ["2026.11.11", "2026.11.10", "2026.11.2", "2026.9.30", "2025.12.1"]


@pytest.mark.parametrize(
    ("names", "ordered"),
    [
        (["v10", "v9", "v1"], ["v1", "v9", "v10"]),
        (["1.0-rc2", "1.0-rc10", "1.0"], ["1.0", "1.0-rc2", "1.0-rc10"]),
        (["v01", "v1", "V1"], ["V1", "v01", "v1"]),
        (["9" * 5000, "1" + "0" * 4999, "release"], ["1" + "0" * 4999, "9" * 5000, "release"]),
    ],
)
def test_natural_key_orders_numbers_as_numbers_and_never_raises(names, ordered):
    assert sorted(names, key=natural_key) == ordered


# --- moves ------------------------------------------------------------------------------------


def test_a_move_answers_with_only_the_two_affected_columns(editor, board):
    card = make_card(board, title="Refunds")
    response = move(editor, card, "In Review")
    assert response.status_code == 200
    assert sorted(oob_ids(response)) == sorted(
        [f"column-{column(board, 'To Do').pk}", f"column-{column(board, 'In Review').pk}"]
    )
    assert "PAY-1 moved to In Review." in response.content.decode()
    assert column_titles(board, "In Review") == ["Refunds"]


def test_a_move_within_a_column_answers_with_that_column(editor, board):
    a, b = make_card(board, title="a"), make_card(board, title="b")
    response = move(editor, b, "To Do", before=a.pk)
    assert oob_ids(response) == [f"column-{column(board, 'To Do').pk}"]
    assert column_titles(board, "To Do") == ["b", "a"]


PLACED = {**HX, "HTTP_X_FLUX_PLACED": "1"}


def test_a_dragged_card_is_confirmed_with_the_column_counts_and_its_new_version(editor, board):
    """The page has already put the card where it was dropped: the answer confirms it with
    the two columns' new counts and the card's version, and draws no cards."""
    card = make_card(board, title="Refunds")
    make_card(board, title="Stays")
    url = reverse("boards:card-move", args=["PAY", card.number])
    data = {"to_column": column(board, "In Review").pk, "version": card.version}
    response = editor.post(url, data, **PLACED)
    assert response.status_code == 200
    html = response.content.decode()
    todo, review = column(board, "To Do").pk, column(board, "In Review").pk
    assert sorted(oob_ids(response)) == sorted([f"column-{todo}-head", f"column-{review}-head"])
    heads = dict(re.findall(r'id="column-(\d+)-head".*?<span class="count"[^>]*>(\d+)', html, re.S))
    assert heads == {str(todo): "1", str(review): "1"}
    assert "Refunds" not in html  # no card is drawn again
    assert "PAY-1 moved to In Review." in html
    card.refresh_from_db()
    assert (
        response["HX-Trigger"]
        == f'{{"flux:moved": {{"card": {card.pk}, "version": {card.version}}}}}'
    )
    assert len(response.content) < 2048


def test_a_drag_runs_at_most_eight_sql_statements_whatever_the_board_size(editor, board, bob):
    """Session from the cache, the user, then BEGIN, two reading locks, the card's UPDATE,
    the event (with its chain link) and COMMIT: the same count with 3 or 300 cards."""

    def statements(card, to) -> int:
        card.refresh_from_db()
        url = reverse("boards:card-move", args=["PAY", card.number])
        data = {"to_column": column(board, to).pk, "version": card.version}
        with CaptureQueriesContext(connection) as queries:
            assert editor.post(url, data, **PLACED).status_code == 200
        return len(queries)

    cards = [make_card(board, title=f"card {n}") for n in range(3)]
    small = statements(cards[0], "In Review")
    for n in range(300):
        make_card(board, title=f"more {n}", column_name="In Review")
    assert statements(cards[1], "In Review") == small
    assert small <= 8, small
    print(f"a drag: {small} SQL statements")


def test_a_stale_move_gets_409_and_the_fresh_board(editor, board, alice):
    card = make_card(board, title="Refunds")
    services.card_move(
        actor=as_actor(alice),
        card_id=card.pk,
        to_column_id=column(board, "Staging").pk,
        expected_version=card.version,
    )
    response = move(editor, card, "In Review", version=card.version)
    assert response.status_code == 409
    assert len(oob_ids(response)) == 5
    assert "changed by someone else" in response.content.decode()
    assert column_titles(board, "Staging") == ["Refunds"]


def test_a_move_past_a_blocking_wip_limit_is_refused_with_the_reason(editor, board, alice):
    review = column(board, "In Review")
    services.column_update(actor=as_actor(alice), column_id=review.pk, wip_limit=1, wip_blocks=True)
    first, second = make_card(board, title="first"), make_card(board, title="second")
    assert move(editor, first, "In Review").status_code == 200
    response = move(editor, second, "In Review")
    assert response.status_code == 409
    assert "WIP limit of 1" in response.content.decode()
    assert column_titles(board, "In Review") == ["first"]


def test_a_move_past_a_warning_wip_limit_succeeds_with_a_warning(editor, board, alice):
    review = column(board, "In Review")
    services.column_update(actor=as_actor(alice), column_id=review.pk, wip_limit=1)
    first, second = make_card(board, title="first"), make_card(board, title="second")
    move(editor, first, "In Review")
    response = move(editor, second, "In Review")
    assert response.status_code == 200
    html = response.content.decode()
    assert "over its WIP limit (2/1)" in html
    assert "over-limit" in html


def test_a_move_without_javascript_redirects_back_with_a_notice(editor, board):
    card = make_card(board, title="Refunds")
    page = editor.get(reverse("boards:card-move", args=["PAY", card.number]))
    assert page.status_code == 200 and "Move PAY-1" in page.content.decode()
    response = move(editor, card, "Staging", htmx=False)
    assert response.status_code == 302
    assert response["Location"] == reverse("boards:detail", args=["PAY"])
    assert "PAY-1 moved to Staging." in editor.get(response["Location"]).content.decode()


def test_garbage_move_input_is_a_422_not_a_500(editor, board):
    card = make_card(board, title="Refunds")
    url = reverse("boards:card-move", args=["PAY", card.number])
    for data in [{}, {"to_column": "x", "version": "1"}, {"to_column": 999999, "version": 1}]:
        assert editor.post(url, data, **HX).status_code == 422
    assert Event.objects.filter(kind=EventKind.CARD_MOVED).count() == 0


# --- cards ------------------------------------------------------------------------------------


def test_creating_a_card_inline_adds_it_to_the_bottom_of_the_column(editor, board):
    make_card(board, title="first")
    todo = column(board, "To Do")
    url = reverse("boards:column-cards", args=["PAY", todo.pk])
    response = editor.post(url, {"title": "  Second  "}, **HX)
    assert response.status_code == 200
    assert oob_ids(response) == [f"column-{todo.pk}"]
    assert column_titles(board, "To Do") == ["first", "Second"]
    refused = editor.post(url, {"title": "   "}, **HX)
    assert refused.status_code == 422
    assert "toast-error" in refused.content.decode()


def test_the_card_dialog_has_its_own_url(editor, board):
    card = make_card(board, title="Refunds")
    url = reverse("boards:card", args=["PAY", card.number])
    page = editor.get(url).content.decode()
    fragment = editor.get(url, **HX).content.decode()
    assert page.startswith("<!doctype html>")
    assert 'id="card-dialog"' in page and "data-open" in page
    assert fragment.lstrip().startswith("<dialog")
    assert "created in To Do" in fragment  # the card's history


def test_editing_a_card_saves_every_field_and_logs_it(editor, board, bob):
    card = make_card(board, title="Refunds")
    bug = services.label_create(actor=as_actor(bob), board_id=board.pk, name="bug")
    response = editor.post(
        reverse("boards:card", args=["PAY", card.number]),
        {
            "version": card.version,
            "title": "Refunds v2",
            "description": "Now **bold**",
            "due_date": "2026-12-24",
            "labels": [bug.pk],
            "assignees": [bob.pk],
        },
        **HX,
    )
    assert response.status_code == 200
    card.refresh_from_db()
    assert (card.title, card.description, str(card.due_date)) == (
        "Refunds v2",
        "Now **bold**",
        "2026-12-24",
    )
    assert list(card.labels.values_list("name", flat=True)) == ["bug"]
    kinds = Event.objects.filter(card=card).values_list("kind", flat=True)
    assert list(kinds) == [
        EventKind.CARD_CREATED,
        EventKind.CARD_UPDATED,
        EventKind.CARD_LABELLED,
        EventKind.CARD_ASSIGNED,
    ]
    assert f'id="card-{card.pk}"' in response.content.decode()  # the board's copy updates too


def test_a_card_form_error_shows_next_to_the_field_and_keeps_what_was_typed(editor, board):
    card = make_card(board, title="Refunds")
    response = editor.post(
        reverse("boards:card", args=["PAY", card.number]),
        {"version": card.version, "title": "  ", "description": "My long careful text"},
        **HX,
    )
    assert response.status_code == 422
    html = response.content.decode()
    assert 'id="title-error"' in html
    assert "My long careful text" in html
    assert Card.objects.get(pk=card.pk).title == "Refunds"


def test_a_stale_card_edit_keeps_the_typed_text_and_explains(editor, board, alice):
    card = make_card(board, title="Refunds")
    services.card_update(
        actor=as_actor(alice), card_id=card.pk, expected_version=card.version, title="Alice's"
    )
    response = editor.post(
        reverse("boards:card", args=["PAY", card.number]),
        {"version": card.version, "title": "Bob's", "description": "Bob typed this"},
        **HX,
    )
    assert response.status_code == 409
    html = response.content.decode()
    assert "Someone else changed this card" in html
    assert "Bob typed this" in html and 'value="Bob&#x27;s"' in html
    assert Card.objects.get(pk=card.pk).title == "Alice's"


def test_descriptions_are_rendered_as_sanitised_markdown(editor, board, bob):
    card = make_card(board, title="XSS")
    services.card_update(
        actor=as_actor(bob),
        card_id=card.pk,
        expected_version=card.version,
        description='**hi** <script>alert(1)</script><img src=x onerror="alert(2)">'
        "[x](javascript:alert(3))",
    )
    html = editor.get(reverse("boards:card", args=["PAY", card.number]), **HX).content.decode()
    preview = html[html.index('class="markdown"') :]
    preview = preview[: preview.index("</div>")]
    assert "<strong>hi</strong>" in preview
    assert "<script" not in preview and "onerror" not in preview and "javascript:" not in preview


def test_archive_and_restore_from_the_dialog(editor, board):
    card = make_card(board, title="Refunds")
    response = editor.post(reverse("boards:card-archive", args=["PAY", card.number]), **HX)
    assert response.status_code == 200
    assert "Restore card" in response.content.decode()
    assert column_titles(board, "To Do") == []
    editor.post(reverse("boards:card-restore", args=["PAY", card.number]), **HX)
    assert column_titles(board, "To Do") == ["Refunds"]


def test_comments_appear_in_the_dialog(editor, board):
    card = make_card(board, title="Refunds")
    url = reverse("boards:card-comment", args=["PAY", card.number])
    response = editor.post(url, {"body": "Ship it <b>now</b>"}, **HX)
    html = response.content.decode()
    assert "Ship it &lt;b&gt;now&lt;/b&gt;" in html
    assert editor.post(url, {"body": " "}, **HX).status_code == 422


# --- permissions ------------------------------------------------------------------------------


def board_urls(board, card) -> list[tuple[str, str]]:
    todo = column(board, "To Do").pk
    return [
        ("get", reverse("boards:detail", args=["PAY"])),
        ("get", reverse("boards:card", args=["PAY", card.number])),
        ("get", reverse("boards:card-move", args=["PAY", card.number])),
        ("get", reverse("boards:column-cards", args=["PAY", todo]) + "?after=a"),
        ("post", reverse("boards:card", args=["PAY", card.number])),
        ("post", reverse("boards:card-move", args=["PAY", card.number])),
        ("post", reverse("boards:card-archive", args=["PAY", card.number])),
        ("post", reverse("boards:card-restore", args=["PAY", card.number])),
        ("post", reverse("boards:card-comment", args=["PAY", card.number])),
        ("post", reverse("boards:column-cards", args=["PAY", todo])),
    ]


@pytest.mark.sqlite
def test_a_non_member_gets_404_for_every_page_fragment_and_form(client, board, mallory):
    card = make_card(board, title="Secret")
    client.force_login(mallory)
    for method, url in board_urls(board, card):
        for headers in ({}, HX):
            response = getattr(client, method)(url, {"to_column": 1, "version": 1}, **headers)
            assert response.status_code == 404, (method, url)
    assert Event.objects.filter(card=card).count() == 1


def test_a_viewer_sees_the_board_without_controls_and_cannot_write(viewer, board):
    card = make_card(board, title="Read only")
    html = viewer.get(reverse("boards:detail", args=["PAY"])).content.decode()
    assert "Read only" in html
    assert "data-move-url" not in html and "add-card" not in html and "editable" not in html
    dialog = viewer.get(reverse("boards:card", args=["PAY", card.number]), **HX).content.decode()
    assert "card-form" not in dialog
    before = Event.objects.count()
    for method, url in board_urls(board, card):
        if method == "post" or "move" in url:
            data = {"to_column": column(board, "Staging").pk, "version": 1, "title": "x"}
            assert getattr(viewer, method)(url, data, **HX).status_code == 403, url
    assert Event.objects.count() == before


def test_the_board_list_and_switcher_only_list_the_users_boards(editor, board):
    services.board_create(actor=Actor(user=board.memberships.get(role="admin").user), name="Ops",
                          key="OPS")  # fmt: skip
    html = editor.get(reverse("boards:detail", args=["PAY"])).content.decode()
    switcher = html[html.index('class="switcher"') : html.index("</nav>")]
    assert "Payments" in switcher
    assert "Ops" not in html


@pytest.mark.parametrize(
    ("method", "path", "data"),
    [
        ("get", "/b/PAY/?q=PAY-%C2%B2", None),
        ("get", "/b/PAY/?q=%00", None),
        ("get", "/b/PAY/columns/{todo}/cards?after=%00", None),
        ("get", "/b/PAY/columns/{todo}/cards?after=" + "z" * 300, None),
        ("get", "/b/PA%00Y/", None),
        ("get", "/b/PAY/cards/99999999999999999999999/", None),
        ("get", "/b/PAY/columns/99999999999999999999999/cards", None),
        ("post", "/b/PAY/cards/1/move", {"to_column": "9" * 30, "version": 1}),
        ("post", "/b/PAY/cards/1/move", {"to_column": "{todo}", "version": "9" * 30}),
        ("post", "/b/PAY/cards/1/move", {"to_column": "{todo}", "version": 1, "after": "x"}),
        ("post", "/b/PAY/cards/1/", {"version": "-1", "title": "x", "labels": ["abc"]}),
        ("post", "/b/PAY/columns/99999999999999/cards", {"title": "x"}),
    ],
)
def test_hostile_input_gets_a_4xx_never_a_500(editor, board, method, path, data):
    make_card(board, title="Refunds")
    todo = str(column(board, "To Do").pk)
    path = path.replace("{todo}", todo)
    if data:
        data = {
            k: (v.replace("{todo}", todo) if isinstance(v, str) else v) for k, v in data.items()
        }
    before = Event.objects.count()
    for headers in ({}, HX):
        response = getattr(editor, method)(path, data or {}, **headers)
        assert response.status_code < 500, (path, response.status_code)
    assert Event.objects.count() == before


def test_a_release_links_to_all_its_cards_from_the_board_and_the_dialog(editor, board, bob):
    card = make_card(board, title="Refunds", column_name="Staging")
    services.deployment_record(
        actor=as_actor(bob), board_id=board.pk, version="2026.11.3", environment="production",
        status="success", card_numbers=[card.number],
    )  # fmt: skip
    link = "/services/?release=2026.11.3"
    assert link in editor.get(reverse("boards:detail", args=["PAY"])).content.decode()
    dialog = editor.get(reverse("boards:card", args=["PAY", card.number]), **HX).content.decode()
    assert link in dialog


def test_a_card_shows_its_release_once_as_a_linked_pill(editor, board, bob):
    card = make_card(board, title="Refunds", column_name="Staging")
    services.deployment_record(
        actor=as_actor(bob), board_id=board.pk, version="2026.11.3", environment="production",
        status="success", card_numbers=[card.number],
    )  # fmt: skip
    html = editor.get(reverse("boards:detail", args=["PAY"])).content.decode()
    item = html[html.index(f'id="card-{card.pk}"') :]
    item = item[: item.index("</li>\n")]  # the card's own <li>, past its label pills
    assert item.count(">2026.11.3<") == 1
    pill = re.search(r'<li class="label label-release"[^>]*>(.*?)</li>', item)
    assert pill and 'href="/services/?release=2026.11.3"' in pill.group(1)


def test_the_board_page_links_to_its_activity_feed_time_travel_and_insights(editor, board):
    html = editor.get(reverse("boards:detail", args=["PAY"])).content.decode()
    tabs = re.search(r'<nav class="page-tabs"[^>]*>(.*?)</nav>', html, re.S)
    assert tabs
    for name in ("history:activity", "history:history", "delivery:insights"):
        assert f'href="{reverse(name, args=["PAY"])}"' in tabs.group(1)
    assert re.search(r'href="/b/PAY/"\s+aria-current="page">Board<', tabs.group(1))


def test_restoring_into_a_full_blocking_column_explains_in_the_dialog(editor, board, alice):
    card = make_card(board, title="Refunds")
    editor.post(reverse("boards:card-archive", args=["PAY", card.number]), **HX)
    services.column_update(
        actor=as_actor(alice), column_id=column(board, "To Do").pk, wip_limit=1, wip_blocks=True
    )
    make_card(board, title="fills it")
    response = editor.post(reverse("boards:card-restore", args=["PAY", card.number]), **HX)
    assert response.status_code == 409
    html = response.content.decode()
    assert html.lstrip().startswith("<dialog")
    assert "WIP limit of 1" in html
    assert Card.objects.get(pk=card.pk).archived
