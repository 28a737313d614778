"""Live boards: every committed event reaches every open board stream, on every web process.

Writers: `log.record` hands each event to `event_recorded`, which keeps a short message for it
and publishes the transaction's messages once, after the commit: one Redis PUBLISH however
many events the transaction wrote, and nothing at all when it rolls back.

Readers: each web process's event loop keeps one subscription (Redis pub/sub, or in-process
when there is no REDIS_URL) and fans the messages out to asyncio queues, one per open stream,
so a stream costs a queue and a suspended coroutine, not a thread or a database connection.
A message is only a nudge that says what to redraw; the log stays the truth, and a stream that
may have missed messages (a reconnect, Redis away for a while) catches up from the log.

A stream lives no longer than the right to see it: it ends when its session does (a logout
ends it at once, through the channel; a session expired or deleted, a user deactivated or no
longer a member, at the next heartbeat at the latest). A user holds at most STREAMS_PER_USER
streams open, counted across every process. The tab id a browser sends (X-Flux-Client) never
leaves the server: messages carry a keyed tag of it, and each stream tells its own viewer only
whether a change was theirs (`mine`).
"""

import asyncio
import enum
import json
import logging
import math
import os
import time
import uuid
import weakref
from collections import OrderedDict, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils.crypto import salted_hmac

from activity import events
from activity.describe import event_actor, event_describe
from activity.events import EventKind
from activity.models import Event

logger = logging.getLogger(__name__)

# Seconds between keep-alive comments; also how often the session, the user and the membership
# are checked again. (FLUX_LIVE_HEARTBEAT: for tests that need a stream to notice quickly.)
HEARTBEAT = float(os.environ.get("FLUX_LIVE_HEARTBEAT", "15"))
STREAMS_PER_USER = 20  # open streams one user may hold, across every process
STREAM_TTL = 45  # a stream that stopped refreshing its place this long ago no longer counts
PRESENCE_TTL = 45  # a viewer whose stream stopped refreshing for this long is gone
PRESENCE_SETTLE = 0.3  # seconds: joins and leaves within this are announced together
CATCH_UP_LIMIT = 200  # more missed events than this: the page reloads instead
QUEUE_SIZE = 1000
RESYNC = {"resync": True}  # queued when messages may have been lost: catch up from the log
ENDED = {"ended": True}  # queued when the stream's session ended: revoke at once
SESSION_ENDED = "session-ended"  # the kind of the message a logout publishes


class Redraw(enum.Enum):
    """What an open board redraws after an event."""

    PAYLOAD = "the columns its payload names"
    CARD = "the card's own column"
    BOARD = "the whole board"
    NOTHING = "nothing on the board"


# Every kind, and what viewers redraw for it; a kind missing here redraws the whole board.
REDRAW: dict[EventKind, Redraw] = {
    EventKind.CARD_CREATED: Redraw.PAYLOAD,
    EventKind.CARD_MOVED: Redraw.PAYLOAD,
    EventKind.CARD_ARCHIVED: Redraw.PAYLOAD,
    EventKind.CARD_RESTORED: Redraw.PAYLOAD,
    EventKind.CARD_UPDATED: Redraw.CARD,
    EventKind.CARD_LABELLED: Redraw.CARD,
    EventKind.CARD_UNLABELLED: Redraw.CARD,
    EventKind.CARD_ASSIGNED: Redraw.CARD,
    EventKind.BOARD_CREATED: Redraw.BOARD,
    EventKind.BOARD_UPDATED: Redraw.BOARD,
    EventKind.COLUMN_CREATED: Redraw.BOARD,
    EventKind.COLUMN_UPDATED: Redraw.BOARD,
    EventKind.LABEL_CREATED: Redraw.BOARD,
    EventKind.LABEL_UPDATED: Redraw.BOARD,
    # Nothing on the board shows these: a deployment's moves and labels are events of their own.
    EventKind.COMMENT_ADDED: Redraw.NOTHING,
    EventKind.DEPLOYMENT_RECORDED: Redraw.NOTHING,
    EventKind.DEPLOYMENT_ROLLED_BACK: Redraw.NOTHING,
    EventKind.INCIDENT_OPENED: Redraw.NOTHING,
    EventKind.INCIDENT_RESOLVED: Redraw.NOTHING,
    EventKind.MEMBERSHIP_SET: Redraw.NOTHING,
    EventKind.MEMBERSHIP_REMOVED: Redraw.NOTHING,
}
# Kinds after which a viewer may have lost the right to see the board: streams check again.
ACCESS_KINDS: frozenset[EventKind] = frozenset(
    {
        EventKind.MEMBERSHIP_SET,
        EventKind.MEMBERSHIP_REMOVED,
        EventKind.BOARD_CREATED,
        EventKind.BOARD_UPDATED,
    }
)


# --- Messages ----------------------------------------------------------------------------------


def _columns_of(event: Event, column_id: int | None) -> list[int] | None:
    """The columns a change needs redrawn: a list (maybe empty), or None for the whole board."""
    try:
        redraw = REDRAW.get(EventKind(event.kind), Redraw.BOARD)
    except ValueError:  # not a kind Flux writes: redraw the whole board to be safe
        redraw = Redraw.BOARD
    match redraw:
        case Redraw.NOTHING:
            return []
        case Redraw.CARD:
            return [column_id] if column_id is not None else None
        case Redraw.BOARD:
            return None
    try:
        payload = events.read(event.kind, event.payload)
    except events.MalformedEvent:  # the payload cannot say which: redraw them all
        return None
    match payload:
        case events.CardCreated(card=card):
            return [card["column_id"]]
        case events.CardMoved(from_=before, to=after):
            return sorted({before["column_id"], after["column_id"]})
        case events.CardArchived(column_id=column) | events.CardRestored(column_id=column):
            return [column]
    return None


def event_message(event: Event, *, client: str = "", column_id: int | None = None) -> dict:
    """What a viewer needs to redraw after `event`: no database access, no secrets."""
    return {
        "id": event.pk,
        "board": event.board_id,
        "kind": event.kind,
        "card": event.card_id,
        "columns": _columns_of(event, column_id),
        "actor": event.actor_name,
        "actor_id": event.actor_id,
        "via": event.via,
        "client": client,
        "text": f"{event_actor(event)} {event_describe(event)}",
    }


def event_recorded(event: Event, *, card: Any = None, client: str = "") -> None:
    """Publish `event` to live viewers once the current transaction commits."""
    conn = transaction.get_connection()
    pending: list[dict] | None = getattr(conn, "flux_live_pending", None)
    callback = getattr(conn, "flux_live_callback", None)
    if pending is None or not any(cb is callback for _, cb, _ in conn.run_on_commit):
        pending = []
        callback = partial(_publish_committed, pending)
        conn.flux_live_pending, conn.flux_live_callback = pending, callback
        transaction.on_commit(callback)
    column_id = getattr(card, "column_id", None)
    tag = client_tag(event.actor_id, client)
    pending.append(event_message(event, client=tag, column_id=column_id))


def client_tag(user_id: int | None, client: str) -> str:
    """What messages carry instead of a tab's id: keyed by the server's secret and bound to
    the user the change was made as, so a caller who sends someone else's tab id makes a tag
    that no stream of that person matches, and no viewer ever sees a tab id."""
    if not client or user_id is None:
        return ""
    return salted_hmac("flux.live.client", f"{user_id}:{client}", algorithm="sha256").hexdigest()[
        :32
    ]


def session_tag(session_key: str | None) -> str:
    """A session's name on the live channel (never the key itself)."""
    if not session_key:
        return ""
    return salted_hmac("flux.live.session", session_key, algorithm="sha256").hexdigest()[:32]


def for_viewer(message: dict, *, client: str = "") -> dict:
    """The message as one viewer is sent it: no tag, only whether the viewer's tab made it."""
    shown = {name: value for name, value in message.items() if name != "client"}
    shown["mine"] = bool(client) and message.get("client") == client
    return shown


def session_ended(session_key: str | None) -> None:
    """A session was logged out: every process ends that session's streams now."""
    tag = session_tag(session_key)
    if not tag:
        return
    try:
        publish([{"kind": SESSION_ENDED, "session": tag}])
    except Exception:  # its streams end at their next heartbeat instead
        logger.warning("could not announce a logout to live streams", exc_info=True)


def _publish_committed(messages: list[dict]) -> None:
    try:
        publish(messages)
    except Exception:  # a viewer misses a nudge and catches up later; the writer carries on
        logger.warning("could not publish %d live update(s)", len(messages), exc_info=True)


def publish(messages: list[dict]) -> None:
    """Send messages to every process's viewers: one Redis call, or in-process without Redis."""
    if not messages:
        return
    if settings.REDIS_URL:
        _redis().publish(channel(), json.dumps(messages, separators=(",", ":")))
    else:
        for hub in list(_hubs.values()):
            hub.dispatch_threadsafe(messages)


def channel() -> str:
    """One channel per database: pub/sub ignores Redis database numbers, so name it apart."""
    return f"flux:live:{connection.settings_dict['NAME']}"


_sync_redis = None


def _redis():
    global _sync_redis
    if _sync_redis is None:
        import redis

        _sync_redis = redis.Redis.from_url(
            settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1
        )
    return _sync_redis


# --- The per-process hub -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Viewer:
    user_id: int
    name: str


class Hub:
    """One event loop's subscription and Redis client, shared by every stream that loop serves."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queues: dict[int, set[asyncio.Queue]] = defaultdict(set)
        self.sessions: dict[str, set[asyncio.Queue]] = defaultdict(set)
        self.listener: asyncio.Task | None = None
        self.channel = channel()
        self.connected = not settings.REDIS_URL
        self.redis = None
        if settings.REDIS_URL:
            import redis.asyncio as aioredis

            self.redis = aioredis.Redis.from_url(
                settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=2, max_connections=64
            )
        # Presence, per board: the renderer its streams use, the avatars' latest HTML, and a
        # pending refresh (many joins at once cost one lookup and one render).
        self.renderers: dict[int, Callable[[list[Viewer]], str]] = {}
        self.presence_html: dict[int, str] = {}
        self.presence_due: dict[int, asyncio.TimerHandle] = {}

    def subscribe(
        self, board_id: int, render: Callable[[list[Viewer]], str], *, session: str = ""
    ) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(maxsize=QUEUE_SIZE)
        self.queues[board_id].add(queue)
        if session:
            self.sessions[session].add(queue)
        self.renderers[board_id] = render
        if settings.REDIS_URL and (self.listener is None or self.listener.done()):
            self.listener = self.loop.create_task(self._listen())
        return queue

    def unsubscribe(self, board_id: int, queue: asyncio.Queue, *, session: str = "") -> None:
        if session in self.sessions:
            self.sessions[session].discard(queue)
            if not self.sessions[session]:
                del self.sessions[session]
        self.queues[board_id].discard(queue)
        if not self.queues[board_id]:
            del self.queues[board_id]
            self.renderers.pop(board_id, None)
            self.presence_html.pop(board_id, None)

    def dispatch(self, messages: Iterable[dict]) -> None:
        for message in messages:
            if message.get("kind") == SESSION_ENDED:
                for queue in list(self.sessions.get(message.get("session", ""), ())):
                    _offer(queue, ENDED)
                continue
            board_id = message.get("board")
            if board_id not in self.queues:
                continue
            if message.get("kind") == "presence":
                self.presence_soon(board_id)
                continue
            for queue in list(self.queues[board_id]):
                _offer(queue, message)

    def resync_all(self) -> None:
        for queues in self.queues.values():
            for queue in queues:
                _offer(queue, RESYNC)

    def dispatch_threadsafe(self, messages: list[dict]) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.dispatch, messages)

    def presence_soon(self, board_id: int) -> None:
        if board_id not in self.presence_due:
            self.presence_due[board_id] = self.loop.call_later(
                PRESENCE_SETTLE, lambda: self.loop.create_task(self._presence_send(board_id))
            )

    async def _presence_send(self, board_id: int) -> None:
        self.presence_due.pop(board_id, None)
        render = self.renderers.get(board_id)
        if render is None:
            return
        viewers = await _safely(presence_viewers(self, board_id), None)
        if viewers is None:
            return
        html = await db(render, viewers)
        self.presence_html[board_id] = html
        message = {"board": board_id, "kind": "presence", "html": html}
        for queue in list(self.queues.get(board_id, ())):
            _offer(queue, message)

    async def _listen(self) -> None:
        """Follow the Redis channel for as long as this loop has streams; reconnect if cut off."""
        delay = 0.2
        while self.queues:
            try:
                if self.redis is None:  # REDIS_URL was set after this hub was made: retry
                    raise RuntimeError("this event loop's hub has no Redis client")
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    if not self.connected:
                        self.connected = True
                        self.resync_all()  # whatever was published meanwhile is in the log
                        for board_id in list(self.queues):
                            self.presence_soon(board_id)  # and who came or went
                    delay = 0.2
                    while self.queues:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=HEARTBEAT
                        )
                        if message and message["type"] == "message":
                            self.dispatch(json.loads(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception:
                if self.connected:
                    logger.warning("live updates lost Redis; retrying", exc_info=True)
                self.connected = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        # Unsubscribed: the next listener must catch its streams up when it connects.
        self.connected = False
        self.listener = None
        await self.idle_close()

    async def idle_close(self) -> None:
        """No stream left on this loop: close the pool's idle connections. (The pool is
        bounded, but a process with no viewers should hold no Redis connection for them.)"""
        if self.redis is not None and not self.queues:
            try:
                await self.redis.connection_pool.disconnect(inuse_connections=False)
            except Exception:
                logger.info("could not close idle live connections", exc_info=True)


def _offer(queue: asyncio.Queue, message: dict) -> None:
    try:
        queue.put_nowait(message)
    except asyncio.QueueFull:  # a stuck viewer: drop what it has queued and let it catch up
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(ENDED if message is ENDED else RESYNC)


_hubs: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub]" = weakref.WeakKeyDictionary()


def hub() -> Hub:
    loop = asyncio.get_running_loop()
    if loop not in _hubs:
        _hubs[loop] = Hub(loop)
    return _hubs[loop]


# --- Presence ------------------------------------------------------------------------------------
# Who has a stream open on a board: a Redis sorted set of "stream:user id:name" scored by when
# the entry expires (streams refresh theirs on every heartbeat), or a dict without Redis.

_local_presence: dict[int, dict[str, float]] = defaultdict(dict)


def presence_key(board_id: int) -> str:
    return f"flux:presence:{connection.settings_dict['NAME']}:{board_id}"


def _presence_changed(board_id: int) -> tuple[str, str]:
    """The PUBLISH that tells every process this board's viewers changed."""
    return channel(), json.dumps([{"board": board_id, "kind": "presence"}])


async def presence_touch(hub: Hub, board_id: int, member: str, *, announce: bool) -> None:
    expires = time.time() + PRESENCE_TTL
    if hub.redis is None:
        _local_presence[board_id][member] = expires
        if announce:
            _announce_locally(board_id)
        return
    async with hub.redis.pipeline(transaction=False) as pipe:
        pipe.zadd(presence_key(board_id), {member: expires})
        pipe.expire(presence_key(board_id), PRESENCE_TTL * 2)
        if announce:
            pipe.publish(*_presence_changed(board_id))
        await pipe.execute()


async def presence_leave(hub: Hub, board_id: int, member: str) -> None:
    if hub.redis is None:
        _local_presence[board_id].pop(member, None)
        _announce_locally(board_id)
        return
    async with hub.redis.pipeline(transaction=False) as pipe:
        pipe.zrem(presence_key(board_id), member)
        pipe.publish(*_presence_changed(board_id))
        await pipe.execute()


async def presence_viewers(hub: Hub, board_id: int) -> list[Viewer]:
    """Everyone with a live stream on the board, once each, by name."""
    now = time.time()
    if hub.redis is None:
        entries = _local_presence[board_id]
        for member in [m for m, expires in entries.items() if expires <= now]:
            del entries[member]
        members = list(entries)
    else:
        async with hub.redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(presence_key(board_id), "-inf", now)
            pipe.zrange(presence_key(board_id), 0, -1)
            _, raw = await pipe.execute()
        members = [m.decode() for m in raw]
    viewers: dict[int, Viewer] = {}
    for member in members:
        _, user_id, name = member.split(":", 2)
        viewers.setdefault(int(user_id), Viewer(int(user_id), name))
    return sorted(viewers.values(), key=lambda viewer: viewer.name)


def _announce_locally(board_id: int) -> None:
    for each in list(_hubs.values()):
        each.dispatch_threadsafe([{"board": board_id, "kind": "presence"}])


# --- Open streams per user -----------------------------------------------------------------------
# A Redis sorted set per user of "stream id" scored by when the entry expires, refreshed on every
# heartbeat and removed when the stream ends, so a process that died stops counting after
# STREAM_TTL; without Redis, a dict in this process.

_local_streams: dict[int, dict[str, float]] = defaultdict(dict)


def streams_key(user_id: int) -> str:
    return f"flux:live-streams:{connection.settings_dict['NAME']}:{user_id}"


def streams_retry_after() -> int:
    """Seconds a refused viewer should wait: a closed stream frees its place at once."""
    return max(1, math.ceil(HEARTBEAT))


async def stream_claim(hub: Hub, user_id: int, stream: str) -> bool:
    """Take a place for a new stream of the user's; False when they hold the most already."""
    now = time.time()
    if hub.redis is None:
        entries = _local_streams[user_id]
        for gone in [s for s, expires in entries.items() if expires <= now]:
            del entries[gone]
        if len(entries) >= STREAMS_PER_USER:
            return False
        entries[stream] = now + STREAM_TTL
        return True
    key = streams_key(user_id)
    try:
        async with hub.redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zadd(key, {stream: now + STREAM_TTL})
            pipe.zcard(key)
            pipe.expire(key, STREAM_TTL * 2)
            _, _, count, _ = await pipe.execute()
        if count > STREAMS_PER_USER:
            await hub.redis.zrem(key, stream)
            return False
    except asyncio.CancelledError:
        raise
    except Exception:  # Redis away: the stream would get no changes anyway; let it poll the log
        logger.warning("could not count a user's live streams", exc_info=True)
    return True


async def stream_touch(hub: Hub, user_id: int, stream: str) -> None:
    expires = time.time() + STREAM_TTL
    if hub.redis is None:
        if stream in _local_streams[user_id]:
            _local_streams[user_id][stream] = expires
        return
    async with hub.redis.pipeline(transaction=False) as pipe:
        pipe.zadd(streams_key(user_id), {stream: expires}, xx=True)
        pipe.expire(streams_key(user_id), STREAM_TTL * 2)
        await pipe.execute()


async def stream_release(hub: Hub, user_id: int, stream: str) -> None:
    if hub.redis is None:
        _local_streams[user_id].pop(stream, None)
        if not _local_streams[user_id]:
            del _local_streams[user_id]
        return
    await hub.redis.zrem(streams_key(user_id), stream)


# --- Streams -------------------------------------------------------------------------------------


async def db(func: Callable, /, *args, **kwargs):
    """Run a short piece of ORM work on a pooled thread and give its connection back at once,
    so an idle stream holds no thread and no database connection."""

    def call():
        try:
            return func(*args, **kwargs)
        finally:
            close_old_connections()

    return await sync_to_async(call, thread_sensitive=False)()


def events_since(*, board_id: int, after: int, limit: int = CATCH_UP_LIMIT) -> list[dict]:
    """The board's events after id `after`, as live messages, oldest first (at most limit + 1)."""
    events = (
        Event.objects.filter(board_id=board_id, id__gt=after)
        .select_related("card")
        .order_by("id")[: limit + 1]
    )
    return [event_message(e, column_id=e.card.column_id if e.card else None) for e in events]


def event_latest(*, board_id: int) -> int:
    """The id of the board's newest event (0 when there is none): the end of its chain, off
    the (board, seq) index, or for a board from before the chain, the highest id."""
    events = Event.objects.filter(board_id=board_id)
    newest = events.filter(seq__isnull=False).order_by("-seq").values_list("id", flat=True)
    return newest.first() or events.order_by("-id").values_list("id", flat=True).first() or 0


def _newest_by_id(*, board_id: int) -> int:
    return (
        Event.objects.filter(board_id=board_id).order_by("-id").values_list("id", flat=True).first()
        or 0
    )


def sse(event: str, data: str, *, id: int | None = None) -> str:
    lines = [f"id: {id}"] if id is not None else []
    lines.append(f"event: {event}")
    lines.extend(f"data: {line}" for line in data.splitlines() or [""])
    return "\n".join(lines) + "\n\n"


@dataclass(frozen=True)
class StreamSpec:
    """What a board stream needs from the boards app, which owns permissions and templates."""

    board_id: int
    viewer: Viewer
    after: int
    still_allowed: Callable[[], bool]  # sync: is the session current and may it see the board?
    render_presence: Callable[[list[Viewer]], str]  # sync: the avatars' HTML
    session: str = ""  # session_tag() of the viewer's session: its logout ends the stream
    client: str = ""  # client_tag() of the viewer's tab: changes it made come back as `mine`
    slot: str = ""  # its place among the user's open streams (stream_claim), freed at the end


async def board_stream(spec: StreamSpec) -> AsyncIterator[str]:
    """Server-Sent Events for one viewer of one board until they leave or lose access.

    The stream subscribes before it reads the log, so nothing committed in between is lost;
    an event read both ways is sent once."""
    my_hub = hub()
    queue = my_hub.subscribe(spec.board_id, spec.render_presence, session=spec.session)
    member = f"{uuid.uuid4().hex}:{spec.viewer.user_id}:{spec.viewer.name}"
    sent: OrderedDict[int, None] = OrderedDict()
    last = spec.after

    def fresh(message: dict) -> bool:
        if message["id"] in sent:
            return False
        sent[message["id"]] = None
        if len(sent) > 4 * CATCH_UP_LIMIT:
            sent.popitem(last=False)
        return True

    async def catch_up() -> AsyncIterator[str]:
        nonlocal last
        missed = await db(events_since, board_id=spec.board_id, after=last)
        if len(missed) > CATCH_UP_LIMIT:
            # Too much to replay: the page redraws its columns once, and the stream goes on
            # from the board's newest event (by id: events written outside the chain count).
            last = await db(_newest_by_id, board_id=spec.board_id)
            yield sse("reload", json.dumps({"last": last}), id=last)
            return
        for message in missed:
            if fresh(message):
                last = max(last, message["id"])
                yield sse("change", json.dumps(for_viewer(message, client=spec.client)), id=last)

    try:
        yield "retry: 2000\n\n"
        await _safely(presence_touch(my_hub, spec.board_id, member, announce=True))
        my_hub.presence_soon(spec.board_id)  # the newcomer learns who is here either way
        async for chunk in catch_up():
            yield chunk
        if spec.board_id in my_hub.presence_html:
            yield sse("presence", my_hub.presence_html[spec.board_id])
        next_beat = time.monotonic() + HEARTBEAT
        while True:
            timeout = max(0.0, next_beat - time.monotonic())
            try:
                message = await asyncio.wait_for(queue.get(), timeout=timeout)
            except TimeoutError:
                next_beat = time.monotonic() + HEARTBEAT
                await _safely(presence_touch(my_hub, spec.board_id, member, announce=False))
                if spec.slot:
                    await _safely(stream_touch(my_hub, spec.viewer.user_id, spec.slot))
                if not await db(spec.still_allowed):
                    yield sse("revoked", "{}")
                    return
                yield ": keep-alive\n\n"
                if not my_hub.connected:  # Redis is away: read the log instead
                    async for chunk in catch_up():
                        yield chunk
                continue
            if message is ENDED:
                yield sse("revoked", "{}")
                return
            if message is RESYNC:
                # The hub has just (re)subscribed: a session ended before then was not heard.
                if not await db(spec.still_allowed):
                    yield sse("revoked", "{}")
                    return
                async for chunk in catch_up():
                    yield chunk
            elif message.get("kind") == "presence":
                yield sse("presence", message["html"])
            else:
                access_may_change = message["kind"] in ACCESS_KINDS
                if access_may_change and not await db(spec.still_allowed):
                    yield sse("revoked", "{}")
                    return
                if fresh(message):
                    last = max(last, message["id"])
                    yield sse(
                        "change", json.dumps(for_viewer(message, client=spec.client)), id=last
                    )
    finally:
        my_hub.unsubscribe(spec.board_id, queue, session=spec.session)
        if spec.slot:
            await _safely(asyncio.shield(stream_release(my_hub, spec.viewer.user_id, spec.slot)))
        await _safely(asyncio.shield(presence_leave(my_hub, spec.board_id, member)))
        await asyncio.shield(my_hub.idle_close())  # the last stream out closes the pool's idle


async def _safely(awaitable: Awaitable, default: Any = None):
    """Presence is a nicety: Redis being away must not end anyone's stream."""
    try:
        return await awaitable
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.info("presence unavailable", exc_info=True)
        return default
