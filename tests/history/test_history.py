"""The history pages: time travel, the board's activity feed and a person's activity."""

import datetime

import pytest
from django.test import Client

from activity import clock
from activity.events import EventKind
from activity.models import Event
from boards import services
from history.timeline import moment_parse
from tests.conftest import as_actor, column, make_card

pytestmark = pytest.mark.django_db

MONDAY = datetime.datetime(2026, 10, 5, 9, 0, tzinfo=datetime.UTC)


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def history(board, bob):
    """Refunds made on Monday, moved to In Progress on Tuesday, archived on Wednesday;
    Payouts made on Wednesday."""
    with clock.frozen_at(MONDAY):
        refunds = make_card(board, title="Refunds")
    with clock.frozen_at(MONDAY + datetime.timedelta(days=1)):
        services.card_move(
            actor=as_actor(bob),
            card_id=refunds.pk,
            to_column_id=column(board, "In Progress").pk,
            expected_version=None,
        )
    with clock.frozen_at(MONDAY + datetime.timedelta(days=2)):
        services.card_archive(actor=as_actor(bob), card_id=refunds.pk)
        make_card(board, title="Payouts", by=bob)
    return refunds


def test_the_board_as_it_was_is_marked_as_the_past_and_lists_changes_since(board, alice, history):
    page = client_for(alice).get("/b/PAY/history/?at=2026-10-06T12:00Z")
    assert page.status_code == 200
    html = page.content.decode()
    assert "The past, read-only" in html
    assert "Refunds" in html and "Payouts" not in html.split('id="since-title"')[0]
    since = html.split('id="since-title"')[1]
    assert "added" in since and "Payouts" in since
    assert "removed" in since and "PAY-1" in since
    assert "Back to the present" in html


def test_stepping_goes_one_event_at_a_time(board, alice, history):
    moved = Event.objects.get(kind=EventKind.CARD_MOVED)
    assert moved.seq is not None
    page = client_for(alice).get(f"/b/PAY/history/?event={moved.pk}")
    html = page.content.decode()
    previous = Event.objects.get(board=board, seq=moved.seq - 1)
    following = Event.objects.get(board=board, seq=moved.seq + 1)
    assert f'href="?event={previous.pk}"' in html and f'href="?event={following.pk}"' in html
    assert f"Event {moved.seq} of" in html
    assert "moved PAY-1 from To Do to In Progress" in html


def test_htmx_gets_the_travel_fragment_and_the_slider_pushes_a_shareable_url(alice, history):
    seconds = int((MONDAY + datetime.timedelta(hours=3)).timestamp())
    page = client_for(alice).get(f"/b/PAY/history/?t={seconds}", headers={"HX-Request": "true"})
    assert page.status_code == 200
    assert page.content.decode().lstrip().startswith('<div id="travel"')
    assert page["HX-Push-Url"] == "/b/PAY/history/?at=2026-10-05T12:00Z"


def test_before_the_board_existed_the_page_says_so(alice, history):
    page = client_for(alice).get("/b/PAY/history/?at=2001-01-01")
    assert "did not exist yet" in page.content.decode()


def test_an_unreadable_time_is_explained_not_a_500(alice, history):
    page = client_for(alice).get("/b/PAY/history/?at=yesterday-ish")
    assert page.status_code == 200
    assert "not a time Flux understands" in page.content.decode()


@pytest.mark.parametrize(
    "url",
    [
        "/b/PAY/history/",
        "/b/PAY/history/?at=2026-10-06T12:00Z",
        "/b/PAY/activity/",
        "/b/PAY/activity/?before=999999",
        "/people/alice/activity/",
    ],
)
def test_non_members_get_404_everywhere(mallory, history, url):
    assert client_for(mallory).get(url).status_code == 404


def test_an_event_of_another_board_is_404(alice, mallory, history):
    other = services.board_create(actor=as_actor(mallory), name="Other", key="OTH")
    event = Event.objects.filter(board=other).first()
    assert event is not None
    assert client_for(alice).get(f"/b/PAY/history/?event={event.pk}").status_code == 404


def test_anonymous_visitors_are_sent_to_log_in(history):
    page = Client().get("/b/PAY/activity/")
    assert page.status_code in (302, 404)


def test_the_feed_reads_in_words_with_the_exact_time_on_hover(alice, history):
    html = client_for(alice).get("/b/PAY/activity/").content.decode()
    assert "moved PAY-1 from To Do to In Progress" in html
    assert 'title="2026-10-06 09:00:00.000000 UTC"' in html
    assert html.index("archived PAY-1") < html.index("moved PAY-1")  # newest first


def test_the_feed_filters_by_person_kind_card_and_date(alice, bob, history):
    client = client_for(alice)
    by_bob = client.get("/b/PAY/activity/?person=bob").content.decode()
    assert "archived PAY-1" in by_bob and "made bob editor" not in by_bob
    moves = client.get("/b/PAY/activity/?kind=card.moved").content.decode()
    assert "moved PAY-1" in moves and "archived PAY-1" not in moves
    card_two = client.get("/b/PAY/activity/?card=PAY-2").content.decode()
    assert "created PAY-2" in card_two and "PAY-1 from" not in card_two
    tuesday = client.get("/b/PAY/activity/?since=2026-10-06&until=2026-10-06").content.decode()
    assert "moved PAY-1" in tuesday
    assert "archived PAY-1" not in tuesday and "created PAY-1" not in tuesday


def test_the_feed_scrolls_on_with_htmx_revealed(board, alice, bob):
    card = make_card(board, title="busy")
    for i in range(60):
        services.card_update(
            actor=as_actor(bob), card_id=card.pk, expected_version=None, title=f"t{i}"
        )
    client = client_for(alice)
    html = client.get("/b/PAY/activity/").content.decode()
    assert 'hx-trigger="revealed"' in html
    cursor = html.split("?before=")[1].split('"')[0].split("&")[0]
    more = client.get(f"/b/PAY/activity/?before={cursor}", headers={"HX-Request": "true"})
    fragment = more.content.decode()
    assert fragment.lstrip().startswith('<li class="entry"')
    shown = {int(x.split('"')[0]) for x in (html + fragment).split('data-event="')[1:]}
    assert len(shown) == Event.objects.filter(board=board).count()


def test_a_persons_page_shows_their_events_on_shared_boards_only(alice, bob, mallory, history):
    services.board_create(actor=as_actor(bob), name="Private", key="PRIV")
    html = client_for(alice).get("/people/bob/activity/").content.decode()
    assert "archived PAY-1" in html and "PRIV" not in html
    assert "created the board" not in html  # bob's board PRIV is not alice's to see
    assert client_for(bob).get("/people/bob/activity/").status_code == 200
    assert client_for(alice).get("/people/nobody/activity/").status_code == 404
    assert client_for(mallory).get("/people/bob/activity/").status_code == 404


def test_time_parsing_accepts_what_people_type():
    assert moment_parse("2026-10-01T12:00Z") == datetime.datetime(
        2026, 10, 1, 12, tzinfo=datetime.UTC
    )
    assert moment_parse("2026-10-01T12:00") == datetime.datetime(
        2026, 10, 1, 12, tzinfo=datetime.UTC
    )
    assert moment_parse("2026-10-01T14:00+02:00") == datetime.datetime(
        2026, 10, 1, 12, tzinfo=datetime.UTC
    )
    day = moment_parse("2026-10-01")
    assert day is not None
    assert day.date() == datetime.date(2026, 10, 1)
    assert moment_parse("2026-13-45") is None and moment_parse("<script>") is None


def test_the_admin_log_is_read_only_and_verifies(staff, history):
    client = client_for(staff)
    listing = client.get("/admin/activity/event/").content.decode()
    assert "Verify the log" in listing
    page = client.get("/admin/activity/event/verify/").content.decode()
    assert "Verified:" in page and "PAY" in page
