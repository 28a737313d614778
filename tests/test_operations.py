"""Operations: request ids in the logs and the events, JSON log lines, /healthz and /readyz."""

import io
import itertools
import json
import logging
import re
from types import SimpleNamespace

import pytest
from django.db import connection
from django.test import Client

from activity import log as activity_log
from activity.events import EventKind
from activity.models import Event
from flux import views as flux_views
from flux.logging import JsonFormatter
from tests.conftest import column

pytestmark = pytest.mark.django_db


@pytest.fixture
def log_lines():
    """What the configured console handler (JSON, with the request-id filter) writes."""
    handler = next(
        h for h in logging.getLogger().handlers if isinstance(h.formatter, JsonFormatter)
    )
    assert isinstance(handler, logging.StreamHandler)
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.INFO)

    def lines() -> list[dict]:
        return [json.loads(line) for line in buffer.getvalue().splitlines() if line]

    yield lines
    handler.setStream(previous)
    logging.getLogger().setLevel(level)


# --- request ids -------------------------------------------------------------------------------


def test_every_response_carries_a_fresh_request_id(client):
    first, second = client.get("/healthz"), client.get("/healthz")
    assert re.fullmatch(r"[0-9a-f]{32}", first["X-Request-ID"])
    assert first["X-Request-ID"] != second["X-Request-ID"]


@pytest.mark.parametrize(
    ("incoming", "kept"),
    [
        ("ci-run-42.step:7", True),
        ("a" * 64, True),
        ("a" * 65, False),
        ("two words", False),
        ("line\nbreak", False),
        ("<script>", False),
        ("", False),
    ],
)
def test_a_sane_incoming_request_id_is_kept_anything_else_replaced(client, incoming, kept):
    response = client.get("/healthz", headers={"X-Request-ID": incoming} if incoming else {})
    assert (response["X-Request-ID"] == incoming) is kept
    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", response["X-Request-ID"])


def test_the_events_a_request_writes_carry_its_request_id(client, board, bob):
    client.force_login(bob)
    response = client.post(
        f"/b/PAY/columns/{column(board, 'To Do').pk}/cards",
        {"title": "Traced"},
        headers={"HX-Request": "true", "X-Request-ID": "trace-me-1"},
    )
    assert response.status_code == 200
    assert response["X-Request-ID"] == "trace-me-1"
    event = Event.objects.get(kind=EventKind.CARD_CREATED, card__title="Traced")
    assert event.request_id == "trace-me-1"


def test_the_request_and_client_ids_last_only_as_long_as_the_request(client):
    client.get("/healthz", headers={"X-Request-ID": "short-lived", "X-Flux-Client": "tab-1"})
    assert activity_log.request_id.get() == ""
    assert activity_log.client_id.get() == ""


# --- structured logs ---------------------------------------------------------------------------


def test_each_log_line_is_json_with_the_request_id(client, board, bob, log_lines, monkeypatch):
    from flux import middleware

    # Each request reads the clock as it starts and as it ends: 12.3 ms apart here.
    readings = itertools.cycle([100.0, 100.0123])
    monkeypatch.setattr(middleware, "time", SimpleNamespace(perf_counter=lambda: next(readings)))
    client.force_login(bob)
    response = client.get("/b/PAY/", headers={"X-Flux-Client": "tab_A-1"})
    client.get("/b/NOPE/")  # a 404 logs a warning from django.request too
    lines = log_lines()
    request_id = response["X-Request-ID"]
    (access,) = [line for line in lines if line["request_id"] == request_id]
    assert access["logger"] == "flux.request"
    assert access["message"] == "GET /b/PAY/ 200"
    assert access["status"] == 200
    assert access["user_id"] == bob.pk
    assert access["client_id"] == "tab_A-1"
    assert access["duration_ms"] == 12.3
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", access["time"])
    not_found = [line for line in lines if line["logger"] == "django.request"]
    assert not_found
    assert all(line["request_id"] for line in not_found)


def test_a_malformed_client_id_is_dropped(client, log_lines):
    for bad in ["x" * 65, "tab 1", "tab;1", "ü"]:
        client.get("/healthz", headers={"X-Flux-Client": bad})
    assert all("client_id" not in line for line in log_lines())


def test_an_exception_is_logged_as_one_json_line_with_its_traceback(log_lines):
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("flux.test").exception("it failed")
    (line,) = [line for line in log_lines() if line["logger"] == "flux.test"]
    assert line["level"] == "ERROR"
    assert "ValueError: boom" in line["exc"]
    assert line["request_id"] == ""


# --- health and readiness ----------------------------------------------------------------------


def test_readyz_checks_the_database_migrations_and_redis():
    response = Client().get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"database", "migrations", "redis"}
    assert all(check["ok"] for check in body["checks"].values())
    assert response["Cache-Control"].startswith("max-age=0")


def test_readyz_is_503_when_redis_is_unreachable(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = Client().get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["redis"] == {"ok": False, "error": "ConnectionError"}
    assert body["checks"]["database"]["ok"]


def test_readyz_is_503_while_a_migration_is_not_applied(monkeypatch):
    monkeypatch.setattr(flux_views, "_migrations_seen_applied", False)
    with connection.cursor() as cursor:  # undone with the test's transaction
        cursor.execute(
            "DELETE FROM django_migrations WHERE id = (SELECT MAX(id) FROM django_migrations)"
        )
    response = Client().get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["migrations"] == {"ok": False, "error": "RuntimeError"}


def test_health_and_readiness_need_no_login_and_no_https(settings):
    settings.SECURE_SSL_REDIRECT = True
    client = Client()
    for path in ["/healthz", "/readyz"]:
        assert client.get(path).status_code == 200
    assert client.get("/").status_code == 301  # everything else goes to HTTPS
