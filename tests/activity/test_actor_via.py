"""The log names the person and, apart, the token that acted for them: a token's name never
passes for a person.

The security finding: bob (an editor) made an API token named "alice" (the board's admin)
and moved a card with it, and every surface said alice did it. Now every surface says "bob
via token alice", and the chain covers `via` while events without one hash as before.
"""

import csv
import datetime
import io
import json
import re
from typing import Any

import pytest
from django.http import StreamingHttpResponse
from django.test import Client
from django.utils.html import strip_tags

from activity import describe, live
from activity.chain import content_of, event_content
from activity.events import EventKind
from activity.log import Actor
from activity.models import Event, Source
from boards.models import Comment
from boards.tokens import token_actor, token_create
from history.replay import board_verify
from tests.activity.test_chain import behind_the_apps_back
from tests.conftest import make_card, rollups_settle

pytestmark = pytest.mark.django_db(transaction=True)

IMPERSONATION = re.compile(r"(?<!token )\balice moved")


def words(html: str) -> str:
    return " ".join(strip_tags(html).split())


def page(client: Client, url: str, **headers) -> str:
    response = client.get(url, headers=headers)
    assert response.status_code == 200, url
    if isinstance(response, StreamingHttpResponse):
        return b"".join(response.streaming_content).decode()
    return response.content.decode()


@pytest.fixture
def token_named_alice(board, bob) -> str:
    """bob, an editor, names his token after the board's admin."""
    _, secret = token_create(actor=Actor(user=bob), user=bob, name="alice")
    return secret


@pytest.fixture
def moved_by_token(board, bob, token_named_alice):
    """bob creates a card on the web, then his token "alice" moves it to Deployed."""
    card = make_card(board, title="Retry payouts", by=bob)
    response = Client().post(
        f"/api/v1/cards/{card.ref}/move",
        json.dumps({"to": "Deployed"}),
        content_type="application/json",
        headers={"Authorization": f"Bearer {token_named_alice}"},
    )
    assert response.status_code == 200, response.content
    moved = Event.objects.get(card=card, kind=EventKind.CARD_MOVED)
    return card, moved


@pytest.fixture
def admin_client(client, alice):
    client.force_login(alice)
    return client


def test_the_label_is_the_person_and_the_token_apart():
    assert describe.actor_label("maya") == "maya"
    assert describe.actor_label("maya", "") == "maya"
    assert describe.actor_label("maya", "deploy-bot") == "maya via token deploy-bot"


@pytest.mark.sqlite
def test_the_event_records_the_person_and_the_token_apart(moved_by_token, bob):
    card, moved = moved_by_token
    assert (moved.actor_id, moved.actor_name, moved.via, moved.source) == (
        bob.pk,
        "bob",
        "alice",
        Source.API,
    )
    created = Event.objects.get(card=card, kind=EventKind.CARD_CREATED)
    assert (created.actor_name, created.via, created.source) == ("bob", "", Source.WEB)


@pytest.mark.sqlite
def test_a_person_actor_cannot_carry_another_name(bob):
    with pytest.raises(ValueError, match="named by their username"):
        Actor(user=bob, source=Source.API, name="alice")
    assert Actor.system("ci-pipeline").display_name == "ci-pipeline"
    assert Actor(user=None).display_name == "system"


@pytest.mark.sqlite
def test_a_token_actor_is_its_person_via_the_token(bob, token_named_alice):
    token = bob.api_tokens.get()
    actor = token_actor(token)
    assert (actor.display_name, actor.via, actor.label) == ("bob", "alice", "bob via token alice")


@pytest.mark.sqlite
def test_the_board_feed_says_bob_via_token_alice(admin_client, moved_by_token):
    text = words(page(admin_client, "/b/PAY/activity/"))
    assert "bob via token alice moved PAY-1 from To Do to Deployed" in text
    assert "bob created PAY-1" in text  # the web change: just the person
    assert not IMPERSONATION.search(text)


@pytest.mark.sqlite
def test_the_persons_feed_and_time_travel_say_it_too(admin_client, board, bob, moved_by_token):
    _, moved = moved_by_token
    make_card(board, title="Later", by=bob)  # so that the move is in the past
    text = words(page(admin_client, "/people/bob/activity/"))
    assert "bob via token alice moved PAY-1" in text
    assert not IMPERSONATION.search(text)
    text = words(page(admin_client, f"/b/PAY/history/?event={moved.pk}"))
    assert "just after bob via token alice moved PAY-1" in text
    assert not IMPERSONATION.search(text)
    assert "alice moved" not in words(page(admin_client, "/people/alice/activity/"))


@pytest.mark.sqlite
def test_the_card_dialog_history_says_it(admin_client, moved_by_token):
    text = words(page(admin_client, "/b/PAY/cards/1/", **{"HX-Request": "true"}))
    assert "bob via token alice moved from To Do to Deployed" in text
    assert "bob created" in text
    assert not re.search(r"(?<!token )\balice moved", text)


@pytest.mark.sqlite
def test_the_api_event_list_names_bob_and_the_token_apart(moved_by_token, token_named_alice):
    response = Client().get(
        "/api/v1/boards/PAY/events", headers={"Authorization": f"Bearer {token_named_alice}"}
    )
    assert response.status_code == 200
    items = response.json()["items"]
    move = next(item for item in items if item["kind"] == EventKind.CARD_MOVED)
    assert (move["actor"], move["via"]) == ("bob", "alice")
    create = next(item for item in items if item["kind"] == EventKind.CARD_CREATED)
    assert (create["actor"], create["via"]) == ("bob", "")


@pytest.mark.sqlite
def test_the_live_message_says_it(admin_client, moved_by_token):
    _, moved = moved_by_token
    message = live.event_message(moved)
    assert (message["actor"], message["via"]) == ("bob", "alice")
    assert message["text"] == "bob via token alice moved PAY-1 from To Do to Deployed"
    response = admin_client.get("/b/PAY/live/changes", {"after": moved.pk - 1})
    (change,) = response.json()["changes"]
    assert change["text"].startswith("bob via token alice moved")


@pytest.mark.sqlite
def test_the_csv_actor_column_says_it(admin_client, moved_by_token):
    rollups_settle()
    body = page(admin_client, "/b/PAY/insights/deployments.csv")
    (row,) = csv.DictReader(io.StringIO(body))
    assert row["actor"] == "bob via token alice"
    assert row["source"] == "api"


@pytest.mark.sqlite
def test_the_insights_by_column_says_it(admin_client, moved_by_token):
    rollups_settle()
    html = page(admin_client, "/b/PAY/insights/")
    assert "<td>bob via token alice</td>" in html  # the "By" column
    assert "<td>alice</td>" not in html


@pytest.mark.sqlite
def test_the_admin_event_list_shows_the_token_apart(client, staff, moved_by_token):
    client.force_login(staff)
    html = page(client, "/admin/activity/event/")
    assert '<td class="field-via">alice</td>' in html
    assert '<td class="field-actor_name">bob</td>' in html


@pytest.mark.sqlite
def test_a_comment_through_a_token_is_authored_by_its_person(moved_by_token, bob):
    from boards import services

    card, _ = moved_by_token
    token_actor_ = token_actor(bob.api_tokens.get())
    services.comment_add(actor=token_actor_, card_id=card.pk, body="Shipped")
    comment = Comment.objects.get(card=card)
    assert (comment.author_id, comment.author_name) == (bob.pk, "bob")
    event = Event.objects.get(kind=EventKind.COMMENT_ADDED)
    assert (event.actor_name, event.via) == ("bob", "alice")


@pytest.mark.sqlite
def test_the_chain_covers_via_and_still_verifies(board, moved_by_token):
    _, moved = moved_by_token
    assert board_verify(board_id=board.pk).ok
    behind_the_apps_back("UPDATE activity_event SET via = '' WHERE id = %s", [moved.pk])
    report = board_verify(board_id=board.pk)
    assert not report.ok
    assert [problem.event_id for problem in report.chain] == [moved.pk]


def test_an_event_without_via_hashes_exactly_as_before():
    """The canonical document gains "via" only when there is one: every event written before
    it existed keeps its hash (this is the document as it was, hashed by hand)."""
    import hashlib

    at = datetime.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=datetime.UTC)
    fields: dict[str, Any] = {
        "board_id": 1,
        "card_id": 2,
        "kind": EventKind.CARD_MOVED,
        "occurred_at": at,
        "actor_id": 3,
        "actor_name": "ci",
        "source": "api",
        "payload": {"a": 1},
        "request_id": "r",
    }
    before = json.dumps(
        {
            "v": 1,
            "board": 1,
            "card": 2,
            "kind": EventKind.CARD_MOVED,
            "at": "2026-01-02T03:04:05.000006Z",
            "actor": 3,
            "actor_name": "ci",
            "source": "api",
            "payload": {"a": 1},
            "request_id": "r",
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    assert content_of(**fields) == hashlib.sha256(before.encode()).digest()
    assert content_of(**fields, via="") == content_of(**fields)
    assert content_of(**fields, via="deploy-bot") != content_of(**fields)


@pytest.mark.sqlite
def test_a_stored_event_hashes_its_via(moved_by_token):
    _, moved = moved_by_token
    moved.refresh_from_db()
    assert event_content(moved) != content_of(
        board_id=moved.board_id,
        card_id=moved.card_id,
        kind=moved.kind,
        occurred_at=moved.occurred_at,
        actor_id=moved.actor_id,
        actor_name=moved.actor_name,
        source=moved.source,
        payload=moved.payload,
        request_id=moved.request_id,
    )
