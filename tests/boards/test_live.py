"""Live boards: Server-Sent Events from real uvicorn processes, fed through Redis.

The streams are read with a plain HTTP client, as a browser's EventSource reads them; the
changes are made through the services in this process (a third process, as a Celery worker or
the admin would be) or over HTTP to the other server.

Nothing here waits a fixed time. A test that needs the servers listening waits for their
subscriptions to show on the live channel (Redis PUBSUB NUMSUB, after `live_channel` has let
every listener of an earlier test go), and a test that needs "nothing else was published"
publishes a marker of its own and reads up to it (Redis delivers a channel's messages in
order). Timeouts are generous and only decide failure; how fast a change travels is measured
by `make bench` (live fan-out), not asserted here.
"""

import asyncio
import http.client
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
from django.conf import settings
from django.db import transaction
from django.test import Client

from activity import live
from activity.events import EventKind
from activity.log import Actor
from activity.models import Event
from boards import services
from boards.models import Role
from tests.conftest import as_actor, column, make_card, make_user

pytestmark = pytest.mark.usefixtures("transactional_db")


@dataclass
class Message:
    event: str
    data: str
    id: int | None

    @property
    def json(self) -> dict:
        return json.loads(self.data)


class Stream:
    """One EventSource-like connection to a board's live stream."""

    def __init__(self, server, path: str, *, session: str, headers: dict | None = None):
        self.connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        self.connection.request(
            "GET",
            path,
            headers={"Cookie": f"sessionid={session}", "Accept": "text/event-stream"}
            | (headers or {}),
        )
        self.response = self.connection.getresponse()
        self.status = self.response.status
        self.timed_out = False  # a socket file cannot be read again after a timeout
        self.ended = False  # the server ended the stream

    def next(self, timeout: float = 10.0) -> Message | None:
        """The next event (comments skipped), or None when the stream ended (`ended`) or
        nothing came within the timeout (`timed_out`)."""
        if self.timed_out or self.ended or self.connection.sock is None:
            return None
        self.connection.sock.settimeout(timeout)
        fields: dict[str, list[str]] = {}
        try:
            while True:
                line = self.response.readline().decode()
                if not line:
                    self.ended = True
                    return None
                line = line.rstrip("\n")
                if not line:
                    if "event" in fields or "data" in fields:
                        ids = fields.get("id")
                        return Message(
                            event=fields.get("event", ["message"])[-1],
                            data="\n".join(fields.get("data", [])),
                            id=int(ids[-1]) if ids else None,
                        )
                    fields = {}
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(": ")
                fields.setdefault(name, []).append(value)
        except TimeoutError:
            self.timed_out = True
            return None

    def changes(self, count: int, timeout: float = 10.0) -> list[Message]:
        found: list[Message] = []
        deadline = time.monotonic() + timeout
        while len(found) < count and time.monotonic() < deadline:
            message = self.next(timeout=max(0.05, deadline - time.monotonic()))
            if message is not None and message.event == "change":
                found.append(message)
        return found

    def close(self) -> None:
        self.connection.close()


def session_of(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


class LiveChannel:
    """The live channel as Redis sees it: who subscribes, and what is published on it."""

    def __init__(self):
        self.redis = redis.Redis.from_url(settings.REDIS_URL)
        self.name = live.channel()

    def subscribers(self) -> int:
        [(_, count)] = self.redis.pubsub_numsub(self.name)
        return count

    def wait_for_subscribers(self, count: int, timeout: float = 30.0) -> None:
        """Until `count` web processes follow the channel: each process's hub subscribes
        once, when its first stream opens, so the streams just opened are being fed."""
        deadline = time.monotonic() + timeout
        while (subscribed := self.subscribers()) != count:
            assert time.monotonic() < deadline, (
                f"{subscribed} subscriber(s) on {self.name} after {timeout:.0f} s, not {count}"
            )
            time.sleep(0.02)

    def let_idle_listeners_go(self, timeout: float = 30.0) -> None:
        """Until nobody follows the channel. A hub whose streams have all closed stops
        listening when its next message comes (or after a heartbeat): this sends it one."""
        deadline = time.monotonic() + timeout
        while (subscribed := self.subscribers()) != 0:
            assert time.monotonic() < deadline, (
                f"{subscribed} subscriber(s) still on {self.name} after {timeout:.0f} s: "
                "a stream of an earlier test is still open"
            )
            self.redis.publish(self.name, "[]")  # a batch of no messages: a no-op for a hub
            time.sleep(0.02)


@pytest.fixture
def live_channel() -> Iterator[LiveChannel]:
    """The live channel, with no process listening on it yet."""
    channel = LiveChannel()
    channel.let_idle_listeners_go()
    yield channel
    channel.redis.close()


class Subscriber:
    """A plain subscriber of the live channel, as another web process is."""

    def __init__(self, channel: LiveChannel):
        self.channel = channel
        self.pubsub = channel.redis.pubsub()
        self.pubsub.subscribe(channel.name)
        confirmed = self.pubsub.get_message(timeout=10)
        assert confirmed is not None and confirmed["type"] == "subscribe"

    def published(self, board, timeout: float = 10.0) -> list[list[dict]]:
        """Every PUBLISH of the board's changes since the last call, each a list of messages.

        A marker is published after them and everything is read up to it: a publish that
        had happened by now is before the marker, so none is missed and none is waited for.
        """
        marker = uuid.uuid4().hex
        self.channel.redis.publish(self.channel.name, json.dumps([{"marker": marker}]))
        found: list[list[dict]] = []
        deadline = time.monotonic() + timeout
        while True:
            message = self.pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
            assert message is not None, f"the marker did not come back within {timeout:.0f} s"
            if message["type"] != "message":
                continue
            batch = json.loads(message["data"])
            if batch == [{"marker": marker}]:
                return found
            changes = [
                m for m in batch if m.get("board") == board.pk and m.get("kind") != "presence"
            ]
            if changes:
                found.append(changes)

    def close(self) -> None:
        self.pubsub.close()


@pytest.fixture
def subscriber(live_channel):
    listening = Subscriber(live_channel)
    yield listening
    listening.close()


@pytest.fixture
def open_stream(live_channel):
    streams: list[Stream] = []

    def opener(server, user, key="PAY", **kwargs) -> Stream:
        stream = Stream(server, f"/b/{key}/live/", session=session_of(user), **kwargs)
        streams.append(stream)
        return stream

    yield opener
    for stream in streams:
        stream.close()


def latest_event_id(board) -> int:
    return Event.objects.filter(board=board).order_by("-id").values_list("id", flat=True)[0]


def test_a_non_member_cannot_open_the_stream_and_a_stranger_is_sent_to_log_in(
    app_server, board, mallory, open_stream
):
    assert open_stream(app_server, mallory).status == 404
    anonymous = http.client.HTTPConnection("127.0.0.1", app_server.port, timeout=5)
    anonymous.request("GET", "/b/PAY/live/")
    response = anonymous.getresponse()
    assert response.status == 302
    assert "/accounts/login/" in response.getheader("Location", "")


def test_a_change_made_elsewhere_reaches_every_open_stream(
    app_server, other_server, board, alice, bob, open_stream, live_channel
):
    card = make_card(board, title="Ship the retry")
    streams = [open_stream(app_server, alice), open_stream(other_server, bob)]
    for stream in streams:
        assert stream.status == 200
        assert stream.response.getheader("Content-Type").startswith("text/event-stream")
    live_channel.wait_for_subscribers(2)  # both processes follow the channel

    services.card_move(
        actor=as_actor(bob),
        card_id=card.pk,
        to_column_id=column(board, "In Progress").pk,
        expected_version=None,
    )
    moved = latest_event_id(board)
    for stream in streams:
        [message] = stream.changes(1)
        assert message.id == moved
        change = message.json
        assert change["kind"] == EventKind.CARD_MOVED
        assert change["card"] == card.pk
        assert change["actor"] == "bob"
        assert change["text"] == f"bob moved {card.ref} from To Do to In Progress"
        assert sorted(change["columns"]) == sorted(
            [column(board, "To Do").pk, column(board, "In Progress").pk]
        )


def test_reconnecting_with_last_event_id_replays_exactly_the_missed_events(
    app_server, board, alice, bob, open_stream, live_channel
):
    card = make_card(board, title="Seen before the drop")
    seen = latest_event_id(board)
    # While the viewer is away: three changes.
    services.card_move(
        actor=as_actor(bob),
        card_id=card.pk,
        to_column_id=column(board, "In Review").pk,
        expected_version=None,
    )
    services.comment_add(actor=as_actor(bob), card_id=card.pk, body="looks good")
    other = make_card(board, title="Made while away")
    missed = list(
        Event.objects.filter(board=board, id__gt=seen).order_by("id").values_list("id", "kind")
    )
    assert len(missed) == 3

    for headers, path_suffix in (({"Last-Event-ID": str(seen)}, ""), ({}, f"?last={seen}")):
        stream = Stream(
            app_server, f"/b/PAY/live/{path_suffix}", session=session_of(alice), headers=headers
        )
        try:
            replayed = stream.changes(len(missed))
            assert [(m.id, m.json["kind"]) for m in replayed] == missed
            assert replayed[2].json["card"] == other.pk
            # ... and nothing else: the next change on the stream is one made after the replay.
            live_channel.wait_for_subscribers(1)
            services.comment_add(actor=as_actor(bob), card_id=card.pk, body="after the replay")
            [after] = stream.changes(1)
            newest = latest_event_id(board)
            assert (after.id, after.json["kind"]) == (newest, EventKind.COMMENT_ADDED)
            missed.append((newest, EventKind.COMMENT_ADDED))  # the next reconnection replays it too
        finally:
            stream.close()
        live_channel.let_idle_listeners_go()


def test_a_stream_without_a_position_starts_from_now(
    app_server, board, alice, open_stream, live_channel
):
    make_card(board, title="Old news")
    stream = open_stream(app_server, alice)
    live_channel.wait_for_subscribers(1)
    news = make_card(board, title="News")
    # The first change the stream sends is the one made after it opened: no replay.
    [first] = stream.changes(1)
    assert (first.id, first.json["card"]) == (latest_event_id(board), news.pk)


def test_events_are_published_after_commit_once_per_transaction_and_never_on_rollback(
    board, alice, bob, subscriber
):
    cards = [make_card(board, title=f"Card {n}") for n in range(3)]
    published = subscriber.published(board)
    assert [[change["card"] for change in batch] for batch in published] == [
        [card.pk] for card in cards
    ]

    class Abandon(Exception):
        pass

    def move_then_abandon():
        with transaction.atomic():
            services.card_move(
                actor=as_actor(bob),
                card_id=cards[0].pk,
                to_column_id=column(board, "Staging").pk,
                expected_version=None,
            )
            assert subscriber.published(board) == []  # not before the commit
            raise Abandon

    with pytest.raises(Abandon):
        move_then_abandon()
    assert subscriber.published(board) == []  # nor after the rollback

    before = latest_event_id(board)
    services.deployment_record(
        actor=Actor(user=alice),
        board_id=board.pk,
        version="v1.0",
        environment="production",
        status="success",
        card_numbers=[card.number for card in cards],
    )
    written = list(
        Event.objects.filter(board=board, id__gt=before).order_by("id").values_list("id", flat=True)
    )
    assert len(written) > 3  # the deployment, its label, and a move and a label per card
    [batch] = subscriber.published(board)  # one PUBLISH for the whole transaction
    assert [change["id"] for change in batch] == written


def test_a_member_removed_from_the_board_stops_receiving(
    app_server, board, alice, bob, open_stream, live_channel
):
    stream = open_stream(app_server, bob)
    assert stream.status == 200
    live_channel.wait_for_subscribers(1)
    services.membership_remove(actor=as_actor(alice), board_id=board.pk, user_id=bob.pk)
    events = []
    while (message := stream.next()) is not None:
        events.append(message.event)
    assert stream.ended, "the stream was still open 10 s after the removal"
    assert events[-1] == "revoked"


def test_the_polling_fallback_answers_what_is_new_since_an_event(board, alice, bob, client):
    seen = make_card(board) and latest_event_id(board)
    card = make_card(board, title="Polled")
    client.force_login(bob)
    body = client.get(f"/b/PAY/live/changes?after={seen}").json()
    assert [change["card"] for change in body["changes"]] == [card.pk]
    assert body["last"] == latest_event_id(board)
    assert client.get(f"/b/PAY/live/changes?after={body['last']}").json()["changes"] == []
    client.force_login(board.memberships.get(role=Role.ADMIN).user)
    assert client.get("/b/PAY/live/changes?after=x").json()["changes"] == []


def test_the_polling_fallback_is_for_members_only(board, mallory, client):
    client.force_login(mallory)
    assert client.get("/b/PAY/live/changes?after=0").status_code == 404
    assert client.get("/b/PAY/columns/").status_code == 404


def test_viewers_see_who_else_is_viewing(app_server, other_server, board, alice, bob, open_stream):
    watching = open_stream(app_server, alice)
    assert watching.status == 200
    open_stream(other_server, bob)
    deadline = time.monotonic() + 30
    names: set[str] = set()
    while time.monotonic() < deadline and names != {"alice", "bob"} and not watching.timed_out:
        message = watching.next(timeout=max(0.1, deadline - time.monotonic()))
        if message and message.event == "presence":
            names = set(re.findall(r'title="(\w+) is viewing', message.data))
    assert names == {"alice", "bob"}


def _thread_count(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("Threads:")).split()[1])


def test_one_process_holds_hundreds_of_idle_streams_without_a_thread_each(
    app_server, board, alice, bob, live_channel
):
    """Each stream is a coroutine and a queue: threads stay flat, and a change reaches all.
    (Ten viewers with as many streams each as one user may hold.)"""
    streams = 200
    viewers = [make_user(f"viewer{n}") for n in range(streams // live.STREAMS_PER_USER)]
    for viewer_user in viewers:
        services.membership_set(
            actor=as_actor(alice), board_id=board.pk, user_id=viewer_user.pk, role=Role.VIEWER
        )
    requests = [
        (
            f"GET /b/PAY/live/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
            f"Cookie: sessionid={session_of(viewer_user)}\r\n\r\n"
        ).encode()
        for viewer_user in viewers
    ]
    threads_before = _thread_count(app_server.process.pid)
    card = make_card(board, title="Fan out")
    received: list[int] = []
    opened = threading.Event()
    go = threading.Event()

    async def viewer(reader_writers, n):
        reader, writer = await asyncio.open_connection("127.0.0.1", app_server.port)
        writer.write(requests[n % len(requests)])
        await writer.drain()
        await reader.readuntil(b"retry: 2000\n\n")
        reader_writers.append(writer)
        return reader

    async def wait_for_change(reader):
        while True:
            line = await reader.readline()
            if line.startswith(b"event: change"):
                received.append(1)
                return

    async def run():
        writers: list = []
        readers = []
        for batch in range(0, streams, 50):
            readers += await asyncio.gather(*(viewer(writers, n) for n in range(batch, batch + 50)))
        opened.set()
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        try:
            await asyncio.wait_for(asyncio.gather(*(wait_for_change(r) for r in readers)), 60)
        finally:
            for writer in writers:
                writer.close()

    thread = threading.Thread(target=lambda: asyncio.run(run()))
    thread.start()
    assert opened.wait(60), "the streams did not open"
    live_channel.wait_for_subscribers(1)
    threads_during = _thread_count(app_server.process.pid)
    services.card_move(
        actor=as_actor(bob),
        card_id=card.pk,
        to_column_id=column(board, "In Progress").pk,
        expected_version=None,
    )
    go.set()
    thread.join(90)
    assert len(received) == streams
    assert threads_during - threads_before < 20, (threads_before, threads_during)


@pytest.mark.sqlite
def test_without_redis_the_hub_carries_committed_changes_within_the_process(settings, board, bob):
    """`make run` has no Redis: a change committed on a request thread reaches the streams
    that this process's event loop serves."""
    settings.REDIS_URL = ""
    card = make_card(board, title="Local")
    received: list[dict] = []

    async def listen(opened: threading.Event, done: threading.Event):
        queue = live.hub().subscribe(board.pk, lambda viewers: "")
        opened.set()
        while True:
            message = await asyncio.wait_for(queue.get(), timeout=30)
            if message.get("card") == card.pk:
                received.append(message)
                done.set()
                return

    opened, done = threading.Event(), threading.Event()
    loop_thread = threading.Thread(target=lambda: asyncio.run(listen(opened, done)))
    loop_thread.start()
    assert opened.wait(30)
    services.card_move(
        actor=as_actor(bob),
        card_id=card.pk,
        to_column_id=column(board, "In Review").pk,
        expected_version=None,
    )
    assert done.wait(30)
    loop_thread.join(30)
    assert received[0]["kind"] == EventKind.CARD_MOVED
    assert received[0]["text"] == f"bob moved {card.ref} from To Do to In Review"


def test_a_tab_id_is_never_sent_to_viewers_and_only_its_own_tab_is_told_mine(
    app_server, board, alice, bob, open_stream, live_channel
):
    """X-Flux-Client is the caller's to choose: viewers see only `mine`, worked out on the
    server for their own stream, so no one learns a tab id or can make another tab skip."""
    from activity import log as activity_log

    card = make_card(board, title="Whose change?")
    bobs_tab = "tab-of-bob-1"
    bobs = Stream(app_server, f"/b/PAY/live/?client={bobs_tab}", session=session_of(bob))
    alices = open_stream(app_server, alice)
    try:
        assert (bobs.status, alices.status) == (200, 200)
        live_channel.wait_for_subscribers(1)

        def move_as(user, tab: str, to: str) -> None:
            token = activity_log.client_id.set(tab)
            try:
                services.card_move(
                    actor=as_actor(user),
                    card_id=card.pk,
                    to_column_id=column(board, to).pk,
                    expected_version=None,
                )
            finally:
                activity_log.client_id.reset(token)

        move_as(bob, bobs_tab, "In Progress")  # bob's own tab
        move_as(alice, bobs_tab, "In Review")  # alice, claiming to be bob's tab
        [own, forged] = bobs.changes(2)
        assert own.json["mine"] is True
        assert forged.json["mine"] is False
        for message in [own, forged, *alices.changes(2)]:
            assert bobs_tab not in message.data
            assert "client" not in message.json
        assert [m.json["mine"] for m in (own, forged)] == [True, False]
    finally:
        bobs.close()
