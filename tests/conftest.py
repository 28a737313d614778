"""Shared fixtures: people with each role on a board made through the services.

Tests run on PostgreSQL (`make test`), and those marked `sqlite` run on the SQLite default too.
"""

import time
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User  # the user model (the default): for annotations
from django.db import connection
from django.db.backends.postgresql.operations import DatabaseOperations
from django.db.models import Max

from activity import dbtriggers
from activity.log import Actor
from activity.models import Event
from boards import services
from boards.models import Board, Card, Column, Role
from delivery.models import ProjectionCursor
from delivery.rollups import CURSOR, rollups_advance
from tests.servers import AppServer, database_url_for_servers


@pytest.fixture(scope="session", autouse=True)
def _flush_past_the_append_only_triggers():
    """Let test teardown empty the event log, which the database otherwise refuses.

    Transactional tests end with Django's flush (TRUNCATE on PostgreSQL, DELETE on SQLite).
    On PostgreSQL the test database's superuser sets session_replication_role to replica
    inside that one transaction, which skips the triggers; on SQLite the flush drops and
    re-creates them around the DELETEs. The application itself never does either.
    """
    from django.db.backends.sqlite3.base import DatabaseWrapper as SQLiteWrapper

    SQLiteOperations = SQLiteWrapper.ops_class

    original = DatabaseOperations.sql_flush
    original_sqlite = SQLiteOperations.sql_flush

    def sql_flush(self, style, tables, **kwargs):
        statements = original(self, style, tables, **kwargs)
        return ["SET LOCAL session_replication_role = replica", *statements] if statements else []

    def sql_flush_sqlite(self, style, tables, **kwargs):
        """SQLite has no such switch: drop the triggers, empty the tables, put them back."""
        statements = original_sqlite(self, style, tables, **kwargs)
        if not statements:
            return []
        drops = [sql for sql in dbtriggers.SQLITE if sql.startswith("DROP")]
        return [*drops, *statements, *dbtriggers.SQLITE]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DatabaseOperations, "sql_flush", sql_flush)
        patch.setattr(SQLiteOperations, "sql_flush", sql_flush_sqlite)
        yield


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """Users are made by the dozen here; real PBKDF2 would spend seconds per test."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def make_user(username: str, **extra) -> User:
    return get_user_model().objects.create_user(
        username=username, password="pw-" + username, **extra
    )


def as_actor(user) -> Actor:
    return Actor(user=user)


@pytest.fixture
def alice(db):
    """Creates the board, so she is its admin."""
    return make_user("alice")


@pytest.fixture
def bob(db):
    return make_user("bob")


@pytest.fixture
def victor(db):
    return make_user("victor")


@pytest.fixture
def mallory(db):
    """Signed in, but on no board."""
    return make_user("mallory")


@pytest.fixture
def staff(db):
    return make_user("sam", is_staff=True, is_superuser=True)


@pytest.fixture
def board(alice, bob, victor) -> Board:
    """PAY, with alice as admin, bob as editor and victor as viewer."""
    created = services.board_create(actor=as_actor(alice), name="Payments", key="PAY")
    services.membership_set(
        actor=as_actor(alice), board_id=created.pk, user_id=bob.pk, role=Role.EDITOR
    )
    services.membership_set(
        actor=as_actor(alice), board_id=created.pk, user_id=victor.pk, role=Role.VIEWER
    )
    return created


def column(board: Board, name: str) -> Column:
    return board.columns.get(name=name)


def make_card(board: Board, *, title: str = "A card", column_name: str = "To Do", by=None) -> Card:
    actor = as_actor(by or board.memberships.get(role=Role.ADMIN).user)
    return services.card_create(
        actor=actor, board_id=board.pk, column_id=column(board, column_name).pk, title=title
    )


def column_titles(board: Board, name: str) -> list[str]:
    return list(
        Card.objects.filter(column=column(board, name), archived=False)
        .order_by("rank")
        .values_list("title", flat=True)
    )


def rollups_settle(*, timeout: float = 30.0) -> None:
    """Bring the projections up to the last event written.

    On PostgreSQL the rollups read an event only once every transaction that began before it
    has finished, on the whole server; another session's open transaction (another test run
    on the same server) holds the horizon back for a moment. So this applies what it can,
    and while the cursor is still below the newest event, polls again; `timeout` only
    decides failure. On SQLite one run applies everything.
    """
    deadline = time.monotonic() + timeout
    while True:
        rollups_advance()
        if connection.vendor != "postgresql":
            return
        newest = Event.objects.aggregate(newest=Max("txid"))["newest"]
        cursor = ProjectionCursor.objects.filter(name=CURSOR).first()
        if newest is None or cursor is None or cursor.txid_watermark > newest:
            return
        assert time.monotonic() < deadline, (
            f"the rollups did not reach the last event within {timeout:.0f} s (the commit "
            "horizon stayed below it: a transaction left open on the server?)"
        )
        time.sleep(0.05)


@pytest.fixture(scope="session")
def servers(django_db_setup, django_db_blocker) -> Iterator[list[AppServer]]:
    """Two Flux processes sharing the test database and Redis, started once per session."""
    with django_db_blocker.unblock():
        url = database_url_for_servers()
    started: list[AppServer] = []
    try:
        for _ in range(2):
            started.append(AppServer(database_url=url, redis_url=settings.REDIS_URL))
        yield started
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="session")
def app_server(servers: list[AppServer]) -> AppServer:
    return servers[0]


@pytest.fixture(scope="session")
def other_server(servers: list[AppServer]) -> AppServer:
    """A second web process: what one process writes must reach viewers of the other."""
    return servers[1]
