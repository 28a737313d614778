"""Live streams end with their session, are capped per user, and leak nothing.

A server of its own (a fast heartbeat, so a session deleted behind a stream's back is noticed
within a second or two; the default cap of streams per user), read with raw sockets. Nothing
waits a fixed time: each test polls the signal it needs under a generous deadline.
"""

import asyncio
import http.client
import os
import time
from collections.abc import Iterator

import pytest
import redis
from django.conf import settings
from django.contrib.sessions.models import Session
from django.db import connection
from django.test import Client

from activity import live
from boards import services
from tests.boards.test_live import LiveChannel, Stream, session_of
from tests.conftest import as_actor
from tests.servers import AppServer, database_url_for_servers

pytestmark = pytest.mark.usefixtures("transactional_db")

HEARTBEAT = 0.5


@pytest.fixture(scope="module")
def fast_server(django_db_setup, django_db_blocker) -> Iterator[AppServer]:
    with django_db_blocker.unblock():
        url = database_url_for_servers()
    saved = os.environ.get("FLUX_LIVE_HEARTBEAT")
    os.environ["FLUX_LIVE_HEARTBEAT"] = str(HEARTBEAT)
    try:
        server = AppServer(database_url=url, redis_url=settings.REDIS_URL)
    finally:
        if saved is None:
            os.environ.pop("FLUX_LIVE_HEARTBEAT")
        else:
            os.environ["FLUX_LIVE_HEARTBEAT"] = saved
    yield server
    server.stop()


def _ended(stream: Stream, timeout: float = 30.0) -> list[str]:
    """The events the stream sent until the server ended it (fails if it did not)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stream.ended:
        message = stream.next(timeout=max(0.1, deadline - time.monotonic()))
        if message is not None:
            seen.append(message.event)
        elif stream.timed_out:
            break
    assert stream.ended, f"the stream was still open {timeout:.0f} s later ({seen})"
    return seen


def test_logging_out_ends_the_open_stream(fast_server, board, bob):
    client = Client()
    client.force_login(bob)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    stream = Stream(fast_server, "/b/PAY/live/", session=session)
    try:
        assert stream.status == 200
        stream.next(timeout=5)  # the stream is running
        # Log out through the server, as the browser does (the page's logout form).
        connection = http.client.HTTPConnection("127.0.0.1", fast_server.port, timeout=10)
        csrf = "a" * 32
        connection.request(
            "POST",
            "/accounts/logout/",
            body=f"csrfmiddlewaretoken={csrf}",
            headers={
                "Cookie": f"sessionid={session}; csrftoken={csrf}",
                "Content-Type": "application/x-www-form-urlencoded",
                "Referer": fast_server.url + "/",
                "Origin": fast_server.url,
            },
        )
        response = connection.getresponse()
        assert response.status in (302, 200), response.status
        assert not Session.objects.filter(session_key=session).exists()
        assert _ended(stream)[-1] == "revoked"
    finally:
        stream.close()


def test_a_deleted_session_ends_the_stream_at_the_next_heartbeat(fast_server, board, bob):
    session = session_of(bob)
    stream = Stream(fast_server, "/b/PAY/live/", session=session)
    try:
        assert stream.status == 200
        # Expiry, clearsessions or the admin: the row goes (its cached copy may linger).
        Session.objects.filter(session_key=session).delete()
        assert _ended(stream)[-1] == "revoked"
    finally:
        stream.close()


def test_a_deactivated_user_s_stream_ends(fast_server, board, bob):
    stream = Stream(fast_server, "/b/PAY/live/", session=session_of(bob))
    try:
        assert stream.status == 200
        bob.is_active = False
        bob.save(update_fields=["is_active"])
        assert _ended(stream)[-1] == "revoked"
    finally:
        stream.close()


def test_a_removed_member_s_stream_ends(fast_server, board, alice, bob):
    stream = Stream(fast_server, "/b/PAY/live/", session=session_of(bob))
    try:
        assert stream.status == 200
        services.membership_remove(actor=as_actor(alice), board_id=board.pk, user_id=bob.pk)
        assert _ended(stream)[-1] == "revoked"
    finally:
        stream.close()


# --- The cap, and no leak -----------------------------------------------------------------


def _request(session: str) -> bytes:
    return (
        "GET /b/PAY/live/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
        f"Cookie: sessionid={session}\r\n\r\n"
    ).encode()


async def _open(port: int, session: str) -> tuple[int, dict[str, str], asyncio.StreamWriter]:
    """Open a stream; its status, headers and writer (to close it), once its first bytes came."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_request(session))
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    status = int(head.split(" ", 2)[1])
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in head.split("\r\n")[1:] if line)
    }
    if status == 200:
        await reader.readuntil(b"retry: 2000\n\n")
    return status, headers, writer


async def _close(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()
    await asyncio.gather(*(writer.wait_closed() for writer in writers), return_exceptions=True)


def _open_streams(server: AppServer, user_id: int) -> int:
    """The user's open streams as the server's cap counts them (every process)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        client.zremrangebyscore(live.streams_key(user_id), "-inf", time.time())
        return client.zcard(live.streams_key(user_id))
    finally:
        client.close()


def _wait_streams_closed(server: AppServer, user_id: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while (count := _open_streams(server, user_id)) != 0:
        assert time.monotonic() < deadline, f"{count} stream(s) still counted after {timeout} s"
        time.sleep(0.02)


def test_a_user_may_hold_only_so_many_streams_open(fast_server, board, bob):
    session = session_of(bob)

    async def run():
        opened = await asyncio.gather(
            *(_open(fast_server.port, session) for _ in range(live.STREAMS_PER_USER))
        )
        try:
            assert [status for status, _, _ in opened] == [200] * live.STREAMS_PER_USER
            status, headers, writer = await _open(fast_server.port, session)
            writer.close()
            assert status == 429
            assert int(headers["retry-after"]) > 0
        finally:
            await _close([writer for _, _, writer in opened])

    asyncio.run(run())
    _wait_streams_closed(fast_server, bob.pk)
    # Closed streams free their places at once.
    asyncio.run(_one_stream(fast_server.port, session))
    _wait_streams_closed(fast_server, bob.pk)


async def _one_stream(port: int, session: str) -> None:
    status, _, writer = await _open(port, session)
    assert status == 200
    await _close([writer])


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _redis_connections(pid: int) -> int:
    """The server process's connections to Redis, as Redis itself lists them (CLIENT LIST),
    matched to the process by the local ports of its own sockets."""
    inodes = _socket_inodes(pid)
    ports: set[int] = set()
    for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        mine = [
            each
            for each in client.client_list()
            if int(each["addr"].rsplit(":", 1)[1]) in ports
            and each["addr"].startswith(("127.0.0.1:", "[::1]:", "::1:"))
        ]
        return len(mine)
    finally:
        client.close()


def _fds(pid: int) -> int:
    """Open files other than the database pool's connections: the pool is bounded by design
    (DB_POOL_MAX_SIZE) and grows lazily to what the load asks of it, so it is counted apart."""
    return len(os.listdir(f"/proc/{pid}/fd")) - _db_connections(pid)


def _db_connections(pid: int) -> int:
    """The process's TCP connections to the database's port."""
    inodes, port = _socket_inodes(pid), int(connection.settings_dict["PORT"] or 5432)
    count = 0
    for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[9] in inodes and int(fields[2].rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def _settled(pid: int, baseline: tuple[int, int], timeout: float = 60.0) -> tuple[int, int]:
    """Wait until Redis connections and open files are back at (or below) the baseline."""
    deadline = time.monotonic() + timeout
    while True:
        now = (_redis_connections(pid), _fds(pid))
        if now[0] <= baseline[0] and now[1] <= baseline[1]:
            return now
        if time.monotonic() > deadline:
            return now
        time.sleep(0.05)


def test_opening_and_closing_500_streams_leaks_no_redis_connection_or_file(fast_server, board, bob):
    session = session_of(bob)
    pid = fast_server.process.pid
    batch = live.STREAMS_PER_USER

    def round_of_streams():
        async def run():
            opened = await asyncio.gather(*(_open(fast_server.port, session) for _ in range(batch)))
            assert [status for status, _, _ in opened] == [200] * batch
            await _close([writer for _, _, writer in opened])

        asyncio.run(run())
        _wait_streams_closed(fast_server, bob.pk)

    channel = LiveChannel()
    for _ in range(3):  # warm up: whatever a process makes once, and its bounded pools
        round_of_streams()
    channel.let_idle_listeners_go()
    baseline = _settled(pid, (_redis_connections(pid), _fds(pid)), timeout=0)
    for _ in range(500 // batch):
        round_of_streams()
    channel.let_idle_listeners_go()  # the hub stops listening once its streams are gone
    after = _settled(pid, baseline)
    channel.redis.close()
    print(f"redis connections, fds: before {baseline}, after 500 streams {after}")
    assert after[0] <= baseline[0], f"Redis connections {baseline[0]} -> {after[0]}"
    assert after[1] <= baseline[1], f"open files {baseline[1]} -> {after[1]}"
    # ...and the database connections stay within the pool's bound (the server's default).
    assert _db_connections(pid) <= int(os.environ.get("DB_POOL_MAX_SIZE", "10"))
