"""Robustness the chaos run (`make chaos`) relies on, in fast tests: a database that goes away
answers 503 with Retry-After and writes nothing; tasks survive a worker's death.

The database "going away" is simulated with Django's own query hook (execute_wrapper), which
raises what psycopg raises when PostgreSQL restarts under a connection.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.db import IntegrityError, OperationalError, connection, transaction
from django.test import Client

from activity.models import Event
from boards.models import Card
from boards.tokens import token_create
from flux.middleware import DATABASE_RETRY_AFTER, database_unavailable
from tests.conftest import as_actor, column, make_card

pytestmark = pytest.mark.django_db


def _database_gone(when: str = ""):
    """A query hook that fails like a restarted server (every query, or those containing `when`)."""

    def execute(run, sql, params, many, context):
        if when in sql:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return run(sql, params, many, context)

    return connection.execute_wrapper(execute)


def test_a_board_page_while_the_database_is_away_is_a_503_with_retry_after(board, bob):
    client = Client(HTTP_HOST="localhost", raise_request_exception=False)
    client.force_login(bob)
    with _database_gone():
        response = client.get(f"/b/{board.key}/", secure=True)
    assert response.status_code == 503
    assert response["Retry-After"] == str(DATABASE_RETRY_AFTER)
    assert "cannot reach its database" in response.content.decode()
    assert b"Traceback" not in response.content


def test_a_move_that_loses_the_database_midway_is_a_503_and_writes_nothing(board, bob):
    card = make_card(board)
    events = Event.objects.count()
    client = Client(HTTP_HOST="localhost", raise_request_exception=False)
    client.force_login(bob)
    with _database_gone(when='INSERT INTO "activity_event"'):
        response = client.post(
            f"/b/{board.key}/cards/{card.number}/move",
            {"to_column": column(board, "In Progress").pk, "version": card.version},
            headers={"HX-Request": "true"},
            secure=True,
        )
    assert response.status_code == 503
    assert response["Retry-After"] == str(DATABASE_RETRY_AFTER)
    assert Card.objects.get(pk=card.pk).column == column(board, "To Do")
    assert Event.objects.count() == events


@pytest.mark.parametrize("idempotency_key", [None, "retry-me-1"])
def test_the_api_answers_a_problem_503_while_the_database_is_away(board, bob, idempotency_key):
    card = make_card(board)
    _, secret = token_create(actor=as_actor(bob), user=bob, name="ci")
    headers = {"Authorization": f"Bearer {secret}"}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    client = Client(HTTP_HOST="localhost", raise_request_exception=False)
    with _database_gone():
        response = client.post(
            f"/api/v1/cards/{card.ref}/move",
            {"to": "review"},
            content_type="application/json",
            headers=headers,
            secure=True,
        )
    assert response.status_code == 503
    assert response["Content-Type"] == "application/problem+json"
    assert response["Retry-After"] == str(DATABASE_RETRY_AFTER)
    problem = response.json()
    assert problem["status"] == 503 and "Idempotency-Key" in problem["detail"]
    assert Card.objects.get(pk=card.pk).column == column(board, "To Do")


def test_healthz_still_reports_the_database_itself(db):
    client = Client(HTTP_HOST="localhost", raise_request_exception=False)
    with _database_gone():
        response = client.get("/healthz", secure=True)
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"


def test_only_an_unreachable_database_is_a_503():
    assert database_unavailable(OperationalError("connection refused"))
    assert database_unavailable(psycopg.OperationalError("server closed the connection"))
    assert not database_unavailable(IntegrityError("duplicate key"))
    assert not database_unavailable(ValueError("a bug"))


POOLED = settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and (
    "pool" in settings.DATABASES["default"].get("OPTIONS", {})
)


@pytest.mark.skipif(not POOLED, reason="the connection pool is PostgreSQL's")
def test_a_pooled_connection_that_died_while_idle_is_replaced_before_use():
    """What a PostgreSQL restart does to every idle pooled connection, done to one: the next
    request must get a working connection, not the dead one."""
    from django.db.backends.postgresql.base import DatabaseWrapper as PostgreSQLWrapper

    pool_options = {**settings.DATABASES["default"]["OPTIONS"]["pool"], "min_size": 1}
    pool_options["max_size"] = 1  # the pool can only hand back the connection that died
    settings_dict = {**connection.settings_dict}
    settings_dict["OPTIONS"] = {**settings_dict["OPTIONS"], "pool": pool_options}
    pooled = PostgreSQLWrapper(settings_dict, alias="pool-under-test")
    try:
        with pooled.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            [dead] = cursor.fetchone()
        pooled.close()  # back to the pool, idle
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s, 10000)", [dead])  # and gone
            assert cursor.fetchone() == (True,)
        with pooled.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            [fresh] = cursor.fetchone()
        assert fresh != dead
    finally:
        pooled.close()
        pooled.close_pool()


def test_pool_exhaustion_is_a_database_outage_to_the_middleware():
    """A request that waits its DB_POOL_TIMEOUT out gets the 503 with Retry-After too."""
    from psycopg_pool import PoolTimeout

    assert database_unavailable(PoolTimeout("couldn't get a connection after 5.00 sec"))


def _waiting_for_a_lock() -> set[int]:
    """The backends of this database waiting for a lock (ours holds the rollups' cursor)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # else a transaction sees one moment
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        return {pid for (pid,) in cursor.fetchall()}


def _wait_for(condition, what: str, worker: subprocess.Popen, log: Path, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if worker.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s. Worker log:\n{log.read_text()}")
        time.sleep(0.05)
    return found


def _pool_children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        return {int(child) for child in children.read().split()}


@pytest.mark.skipif(
    settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql"
    or not settings.REDIS_URL,
    reason="a real worker on the Redis broker, on the PostgreSQL test database",
)
@pytest.mark.django_db(transaction=True)
def test_a_task_whose_worker_dies_is_delivered_again(board, tmp_path):
    """A Celery worker's pool process is SIGKILLed while it runs the rollups: the task goes
    back to the queue and the next pool process runs it to the end.

    The rollups are held at their lock (this test holds the cursor's row) so the kill lands
    mid-task; each attempt shows as a database session waiting for that lock.
    """
    from delivery.models import ProjectionCursor
    from delivery.rollups import CURSOR, rollups_advance
    from delivery.tasks import rollups_advance_task
    from flux.celery import app
    from tests.conftest import rollups_settle
    from tests.servers import database_url_for_servers

    rollups_advance()  # the cursor row exists
    make_card(board, title="Applied by the second attempt")
    app.control.purge()  # tasks other tests enqueued without a worker
    env = {
        **os.environ,
        "DATABASE_URL": database_url_for_servers(),
        "REDIS_URL": settings.REDIS_URL,
        "DB_POOL_MAX_SIZE": "2",
        "PYTHONUNBUFFERED": "1",  # its log, line by line, for the check and a failure
    }
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    log = tmp_path / "worker.log"
    command = [sys.executable, "-m", "celery", "-A", "flux", "worker", "--pool", "prefork"]
    command += ["--concurrency", "1", "--without-mingle", "--without-gossip", "-l", "INFO"]
    command += ["-n", f"chaos-test-{os.getpid()}@127.0.0.1"]
    with open(log, "w") as output:
        worker = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        with transaction.atomic():
            ProjectionCursor.objects.select_for_update().get(name=CURSOR)
            task = rollups_advance_task.apply_async()
            first = _wait_for(_waiting_for_a_lock, "the task started", worker, log)
            [child] = _pool_children(worker.pid)
            os.kill(child, signal.SIGKILL)
            _wait_for(
                lambda: _waiting_for_a_lock() - first,
                "the task was delivered again after its pool process died",
                worker,
                log,
            )
        # The lock is released: the second attempt finishes the rollups.
        newest = Event.objects.order_by("-txid").values_list("txid", flat=True).first()
        assert newest is not None
        _wait_for(
            lambda: ProjectionCursor.objects.get(name=CURSOR).txid_watermark > newest,
            "the redelivered task applied the events",
            worker,
            log,
        )
        rollups_settle()  # and there is nothing left for anyone to apply
        received = f"rollups_advance_task[{task.id}] received"
        assert log.read_text().count(received) == 2, log.read_text()
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


@pytest.mark.skipif(not settings.REDIS_URL, reason="kombu's Redis transport")
def test_a_channel_left_behind_by_a_closed_broker_connection_fails_as_a_connection_error():
    """What killed the chaos worker while Redis was away: its connection was closed (closing
    its channels failed, Redis being gone, and was ignored), and a channel left open then
    looked up the connection's parameters on None. flux/celery.py makes that the connection
    error kombu handles by reconnecting, whichever half is gone."""
    from kombu import Connection
    from kombu.transport.redis import Channel
    from redis.exceptions import ConnectionError as RedisConnectionError

    import flux.celery  # noqa: F401  (the patch is applied when the Celery app is made)

    with Connection(settings.CELERY_BROKER_URL) as broker:
        channel = broker.channel()
        assert isinstance(channel, Channel)
        connparams = channel._connparams  # type: ignore[attr-defined]
        # Connection._close's second half alone: the transport forgets its connection.
        broker._do_close_transport()
        assert channel.connection is not None and channel.connection.client is None
        with pytest.raises(RedisConnectionError, match="closed"):
            connparams()
        channel.connection = None  # type: ignore[assignment]  # its transport gone too
        with pytest.raises(RedisConnectionError, match="closed"):
            connparams()


# --- The hostile scenario's attacks, against a running server -----------------------------------

ATTACK_PASSWORD = "hostile-attacks-pw-1"


@pytest.mark.django_db(transaction=True)
def test_the_hostile_scenario_s_attacks_are_refused_by_a_running_server(
    app_server, board, alice, bob, victor, mallory, staff
):
    """What `make chaos` runs in its "hostile" scenario, here against one test server: each
    attack must be refused (or named for what it is), and none writes anything but the one
    move the borrowed-name token makes."""
    from activity import live
    from boards import services
    from boards.models import Role
    from chaos import hostile, scenarios
    from tests.conftest import make_user

    assert "hostile" in scenarios.FAULTS  # a run without --only includes it
    streamer = make_user("stella")
    services.membership_set(
        actor=as_actor(alice), board_id=board.pk, user_id=streamer.pk, role=Role.VIEWER
    )
    for person in (alice, bob, victor, streamer):
        person.set_password(ATTACK_PASSWORD)
        person.save(update_fields=["password"])
    card = make_card(board)
    cast = hostile.Cast(board="PAY", admin="alice", editor="bob", viewer="victor",
                        streamer="stella", strangers=("mallory", "sam"), card=card.ref,
                        password=ATTACK_PASSWORD)  # fmt: skip
    port = app_server.port

    assert hostile.forged_inserts(board.pk) == {
        "event without a seq": True,
        "event at a forged place in the chain": True,
        "legacy seal over a forged event": True,
    }
    editor = hostile.browser(port, "bob", ATTACK_PASSWORD)
    moved, token = hostile.impersonate(port, cast, editor)
    assert (moved.status, moved.actor_name, moved.via) == (200, "bob", "alice")
    assert moved.label == moved.expected("bob") == "bob via token alice"
    assert moved.feed_shows_label and not moved.feed_names_admin

    answers = hostile.hostile_send(port, cast, editor, token)
    assert len(answers) == len(hostile.hostile_requests(cast))
    assert [(what, status) for what, status in answers if not 400 <= status < 500] == []

    probe = hostile.usernames_probe(port, cast, token)
    assert len(probe) == 3 and len(set(probe.values())) == 1, probe
    assert next(iter(probe.values()))[0] == 422

    status, seconds, sent = hostile.stream_after_logout(port, cast, live.HEARTBEAT + 5)
    assert status == 200 and seconds is not None, sent
    assert seconds < live.HEARTBEAT / 2  # at once, through the channel, not at a heartbeat

    opened, extra, retry_after = hostile.streams_over_the_cap(port, cast, live.STREAMS_PER_USER)
    assert opened == [200] * live.STREAMS_PER_USER
    assert extra == 429 and retry_after

    assert Event.objects.filter(actor=bob).count() == 1  # the token's move, nothing else
