"""Robustness the chaos run (`make chaos`) relies on, in fast tests: a database that goes away
answers 503 with Retry-After and writes nothing; tasks survive a worker's death.

The database "going away" is simulated with Django's own query hook (execute_wrapper), which
raises what psycopg raises when PostgreSQL restarts under a connection.
"""

import psycopg
import pytest
from django.conf import settings
from django.db import IntegrityError, OperationalError, connection
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


@pytest.mark.skipif(
    settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql"
    or "pool" not in settings.DATABASES["default"].get("OPTIONS", {}),
    reason="the connection pool is PostgreSQL's",
)
def test_pooled_connections_are_checked_before_use_so_a_restart_breaks_no_request():
    from psycopg_pool import ConnectionPool

    pool = settings.DATABASES["default"]["OPTIONS"]["pool"]
    assert pool["check"] is ConnectionPool.check_connection
    assert pool["timeout"] <= 10  # a request waits this long at most, then gets a 503


def test_a_task_whose_worker_dies_is_delivered_again():
    import delivery.tasks  # noqa: F401 - registers the task
    from flux.celery import app

    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    options = conf.broker_transport_options
    # Longer than the longest rollup, short enough for a lost task to come back soon, and
    # looked for often.
    assert 300 <= options["visibility_timeout"] <= 3600
    assert options["unacked_restore_interval"] * options["unacked_restore_throttle"] <= 30
    # The worker waits out a Redis outage instead of exiting after 100 attempts.
    assert conf.broker_connection_max_retries is None
    task = app.tasks["delivery.tasks.rollups_advance_task"]
    assert task.acks_late and task.reject_on_worker_lost
