"""Security a user or an attacker can see: CSRF, cookies and HSTS, session rotation, login
throttling, oversized bodies, and stored XSS shown inert everywhere."""

import asyncio
import csv
import io
import json
import re
import secrets
from types import SimpleNamespace

import pytest
from django.conf import settings as django_settings
from django.contrib.sessions.backends.db import SessionStore
from django.http import StreamingHttpResponse
from django.test import Client
from django.urls import reverse

from activity.log import Actor
from activity.models import Event, Source
from boards import services
from boards.models import Card
from boards.tokens import token_create
from flux import login as login_throttle
from tests.conftest import as_actor, column, make_card, rollups_settle
from tests.test_authz_matrix import MATRIX, World, perform

pytestmark = pytest.mark.django_db


# --- CSRF --------------------------------------------------------------------------------------


def browser_posts():
    """Every state-changing browser request in the authorization matrix, with the role that
    may make it and the status it then gets."""
    for name, calls in sorted(MATRIX.items()):
        for call in calls:
            if call.method != "GET" and not call.api:
                role = next(r for r in ("editor", "viewer", "non_member") if r in call.expect)
                if call.expect[role] < 400:
                    yield pytest.param(name, call, role, id=f"{name}-{call.describe()}")


@pytest.fixture
def world(board, alice, bob, victor, mallory, staff) -> World:
    users = {"non_member": mallory, "viewer": victor, "editor": bob, "admin": alice}
    return World(board, users | {"staff": staff})


def csrf_client(world: World, role: str) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.users[role])
    client.get("/")  # the page sets the CSRF cookie, as a browser's first visit does
    return client


@pytest.mark.parametrize(("name", "call", "role"), list(browser_posts()))
def test_a_state_changing_request_without_the_csrf_token_is_refused(name, call, role, world):
    client = csrf_client(world, role)
    answer = perform(call, role, world, client)
    assert answer.status == 403, f"{name}: {answer.status}"
    assert answer.events_written == 0
    assert not answer.rows_changed


@pytest.mark.parametrize(("name", "call", "role"), list(browser_posts()))
def test_with_the_token_in_the_htmx_header_it_goes_through(name, call, role, world):
    """htmx sends the token as X-CSRFToken (hx-headers on <body>); the same works for forms."""
    client = csrf_client(world, role)
    token = client.cookies[django_settings.CSRF_COOKIE_NAME].value
    client.defaults["HTTP_X_CSRFTOKEN"] = token
    answer = perform(call, role, world, client)
    assert answer.status == call.expect[role], name


def test_the_board_page_gives_htmx_the_csrf_token(world):
    client = Client()
    client.force_login(world.users["editor"])
    html = client.get("/b/PAY/").content.decode()
    assert re.search(r"<body hx-headers='\{\"X-CSRFToken\": \"[A-Za-z0-9]{32,}\"\}'>", html)


def test_the_login_form_itself_needs_the_csrf_token(bob):
    client = Client(enforce_csrf_checks=True)
    response = client.post(reverse("login"), {"username": "bob", "password": "pw-bob"})
    assert response.status_code == 403
    assert "_auth_user_id" not in client.session


# --- cookies, HSTS, session rotation -----------------------------------------------------------


def test_production_cookies_are_secure_httponly_and_same_site(bob):
    client = Client()
    response = client.post(reverse("login"), {"username": "bob", "password": "pw-bob"}, secure=True)
    assert response.status_code == 302
    session = response.cookies[django_settings.SESSION_COOKIE_NAME]
    assert session["secure"] and session["httponly"]
    assert session["samesite"] == "Lax"
    csrf = client.get("/", secure=True).cookies.get(django_settings.CSRF_COOKIE_NAME)
    if csrf is not None:  # only set when the token was rotated
        assert csrf["secure"] and csrf["httponly"] and csrf["samesite"] == "Lax"
    assert django_settings.CSRF_COOKIE_SECURE and django_settings.CSRF_COOKIE_HTTPONLY


def test_https_responses_carry_hsts_for_a_year_with_subdomains(client):
    response = client.get("/healthz", secure=True)
    hsts = response["Strict-Transport-Security"]
    assert re.fullmatch(r"max-age=(\d+); includeSubDomains; preload", hsts)
    assert int(hsts.split("=")[1].split(";")[0]) >= 31_536_000
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"
    assert response["Referrer-Policy"] == "same-origin"


def test_logging_in_gives_a_new_session_key(bob):
    """Session fixation: a key planted before login is worthless after it."""
    client = Client()
    planted = client.session
    planted["planted"] = True
    planted.save()
    before = planted.session_key
    assert before is not None
    client.cookies[django_settings.SESSION_COOKIE_NAME] = before
    response = client.post(reverse("login"), {"username": "bob", "password": "pw-bob"})
    assert response.status_code == 302
    after = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    assert after != before
    assert not SessionStore().exists(before)
    assert client.session["_auth_user_id"] == str(bob.pk)
    stolen = Client()
    stolen.cookies[django_settings.SESSION_COOKIE_NAME] = before
    assert stolen.get("/").status_code == 302  # the old key signs nobody in


def test_logging_out_ends_the_session_on_the_server(bob):
    client = Client()
    client.post(reverse("login"), {"username": "bob", "password": "pw-bob"})
    key = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    client.post(reverse("logout"))
    assert not SessionStore().exists(key)


# --- login throttling --------------------------------------------------------------------------


@pytest.fixture
def addresses():
    """Random client addresses, their throttle counters (and bob's) cleared before and after:
    the counters live in the real Redis, shared with other runs of the suite."""
    used: list[str] = []

    def address() -> str:
        used.append(f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.{len(used) + 1}")
        return used[-1]

    def clear():
        from django.core.cache import cache

        names = ["bob", "alice", "victor", "nobody"]
        cache.delete_many([login_throttle._key("user", n) for n in names])
        cache.delete_many([login_throttle._key("addr", a) for a in used])

    clear()
    yield address
    clear()


def attempt(username: str, password: str, address: str, path: str = "/accounts/login/"):
    client = Client()
    response = client.post(path, {"username": username, "password": password}, REMOTE_ADDR=address)
    return response, client


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def test_five_wrong_passwords_lock_the_username_from_any_address(bob, addresses, settings):
    settings.LOGIN_FAILURES_PER_USERNAME = 5
    for _ in range(5):
        response, _client = attempt("bob", "wrong", addresses())
        assert response.status_code == 200
        assert "correct username and password" in response.content.decode()
    response, client = attempt("BOB", "pw-bob", addresses())  # right password, other address
    assert response.status_code == 429
    assert "Too many failed login attempts. Try again in" in response.content.decode()
    assert 0 < int(response["Retry-After"]) <= settings.LOGIN_LOCKOUT_SECONDS
    assert not signed_in(client)


def test_one_address_trying_many_usernames_is_locked_out(bob, alice, addresses, settings):
    settings.LOGIN_FAILURES_PER_ADDRESS = 3
    address = addresses()
    for name in ["alice", "victor", "nobody"]:
        assert attempt(name, "guess", address)[0].status_code == 200
    response, client = attempt("bob", "pw-bob", address)
    assert response.status_code == 429
    assert not signed_in(client)
    response, client = attempt("bob", "pw-bob", addresses())  # bob elsewhere is fine
    assert response.status_code == 302
    assert signed_in(client)


def test_a_successful_login_clears_the_usernames_failures(bob, addresses, settings):
    settings.LOGIN_FAILURES_PER_USERNAME = 3
    for _ in range(2):
        attempt("bob", "wrong", addresses())
    assert attempt("bob", "pw-bob", addresses())[0].status_code == 302
    for _ in range(2):
        attempt("bob", "wrong", addresses())
    response, client = attempt("bob", "pw-bob", addresses())
    assert response.status_code == 302
    assert signed_in(client)


def test_the_lockout_ends_with_its_window(bob, addresses, settings, monkeypatch):
    """The window runs from the first failure; the throttle's clock is moved, not waited for
    (a window of minutes, so the cache entry itself outlives the test)."""
    settings.LOGIN_FAILURES_PER_USERNAME = 2
    settings.LOGIN_LOCKOUT_SECONDS = 600
    now = [1_800_000_000.0]
    monkeypatch.setattr(login_throttle, "time", SimpleNamespace(time=lambda: now[0]))
    attempt("bob", "wrong", addresses())
    now[0] += 100
    attempt("bob", "wrong", addresses())
    response = attempt("bob", "pw-bob", addresses())[0]
    assert response.status_code == 429
    assert response["Retry-After"] == "500"
    now[0] += 499  # one second before the window ends
    assert attempt("bob", "pw-bob", addresses())[0].status_code == 429
    now[0] += 1
    response, client = attempt("bob", "pw-bob", addresses())
    assert response.status_code == 302
    assert signed_in(client)


def test_the_admin_login_is_throttled_too(staff, addresses, settings):
    settings.LOGIN_FAILURES_PER_ADDRESS = 2
    address = addresses()
    for _ in range(2):
        attempt("sam", "wrong", address, path="/admin/login/")
    response, client = attempt("sam", "pw-sam", address, path="/admin/login/")
    assert "Too many failed login attempts" in response.content.decode()
    assert not signed_in(client)
    from django.core.cache import cache

    cache.delete(login_throttle._key("user", "sam"))


UNREACHABLE_REDIS = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens on port 1
    }
}


def test_with_redis_down_people_can_still_log_in(bob, settings):
    """The throttle fails open: a cache outage must not lock everyone out."""
    settings.CACHES = UNREACHABLE_REDIS
    response, client = attempt("bob", "wrong", "10.0.0.1")
    assert response.status_code == 200
    response, client = attempt("bob", "pw-bob", "10.0.0.1")
    assert response.status_code == 302
    assert signed_in(client)


def test_with_redis_down_the_api_still_answers(board, bob, settings):
    settings.CACHES = UNREACHABLE_REDIS
    _, secret = token_create(actor=Actor(user=bob), user=bob, name="ci")
    response = Client().get("/api/v1/boards/PAY", headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 200


# --- oversized bodies --------------------------------------------------------------------------


def test_an_oversized_form_post_is_refused_with_413_and_writes_nothing(board, bob, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    client = Client()
    client.force_login(bob)
    events = Event.objects.count()
    response = client.post(
        f"/b/PAY/columns/{column(board, 'To Do').pk}/cards", {"title": "x" * 20_000}
    )
    assert response.status_code == 413
    assert "larger than 10000 bytes" in response.content.decode()
    assert Event.objects.count() == events
    assert not Card.objects.filter(board=board).exists()


def test_an_oversized_api_body_is_a_413_problem(board, bob, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    _, secret = token_create(actor=Actor(user=bob), user=bob, name="ci")
    body = json.dumps({"title": "big", "description": "x" * 20_000})
    events = Event.objects.count()
    response = Client().post(
        "/api/v1/boards/PAY/cards",
        body,
        content_type="application/json",
        headers={"Authorization": f"Bearer {secret}", "Idempotency-Key": "big-1"},
    )
    assert response.status_code == 413
    assert response["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 413
    assert problem["title"] == "Request body too large"
    assert Event.objects.count() == events


def asgi_request(path: str, chunks: list[bytes], headers: list[tuple[bytes, bytes]]):
    """Speak ASGI to flux.asgi.application as uvicorn would; return (status, body, chunks read)."""
    from flux.asgi import application

    sent: list[dict] = []
    pending = list(chunks)
    read = 0

    async def receive():
        nonlocal read
        if not pending:
            await asyncio.sleep(3600)  # the client waits for an answer
        read += 1
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    asyncio.run(asyncio.wait_for(application(scope, receive, send), 20))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], body, read


def test_under_asgi_a_declared_oversized_body_is_refused_before_reading_it(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    headers = [(b"content-type", b"application/json"), (b"content-length", b"5000000")]
    status, body, read = asgi_request("/api/v1/deployments", [b"{" * 1000] * 5000, headers)
    assert status == 413
    assert json.loads(body)["status"] == 413
    assert read == 0


def test_under_asgi_a_chunked_body_is_cut_off_at_the_limit(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    headers = [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")]
    status, body, read = asgi_request("/api/v1/deployments", [b" " * 600] * 100, headers)
    assert status == 413
    assert json.loads(body)["title"] == "Request body too large"
    assert read == 2  # stopped at the chunk that crossed the limit


# --- stored XSS --------------------------------------------------------------------------------

SCRIPT = "<script>alert('xss')</script>"
IMG = "<img src=x onerror=alert('xss')>"
ATTRIBUTE_BREAK = "\" onmouseover=\"alert('xss')"


def assert_inert(html: str, where: str) -> None:
    for raw in ("<script>alert(", "<img src=x", '" onmouseover="alert'):
        assert raw not in html, f"{where}: {raw!r} reached the page unescaped"
    assert not re.search(r"href\s*=\s*[\"']?\s*javascript:", html, re.IGNORECASE), where


@pytest.fixture
def hostile(transactional_db, alice, bob, staff):
    """A board whose every user-written text is markup, deployed, with the rollups run."""
    board = services.board_create(
        actor=as_actor(alice), name=f"Pay {SCRIPT}", key="XSS", description=IMG
    )
    services.membership_set(actor=as_actor(alice), board_id=board.pk, user_id=bob.pk, role="editor")
    card = make_card(board, title=f"{SCRIPT}{ATTRIBUTE_BREAK}", column_name="Staging")
    card = services.card_details_set(
        actor=as_actor(bob),
        card_id=card.pk,
        expected_version=card.version,
        title=card.title,
        description=f"{SCRIPT}\n\n{IMG}\n\n[click](javascript:alert('xss'))",
        due_date=None,
        label_ids=[],
        assignee_ids=[],
    )
    label = services.label_create(actor=as_actor(bob), board_id=board.pk, name=IMG[:50])
    services.card_label_add(actor=as_actor(bob), card_id=card.pk, label_id=label.pk)
    services.comment_add(actor=as_actor(bob), card_id=card.pk, body=f"{SCRIPT} {IMG}")
    services.deployment_record(
        actor=Actor(user=bob, source=Source.API, via="ci"),
        board_id=board.pk,
        version="<b>1</b>",
        environment="production",
        status="success",
        card_numbers=[card.number],
    )
    rollups_settle()
    return card


def pages(card: Card) -> dict[str, tuple[str, dict]]:
    key, number = card.board.key, card.number
    return {
        "board list": ("/", {}),
        "board": (f"/b/{key}/", {}),
        "board (htmx)": (f"/b/{key}/", {"HX-Request": "true"}),
        "dialog": (f"/b/{key}/cards/{number}/", {}),
        "dialog (htmx) with history": (f"/b/{key}/cards/{number}/", {"HX-Request": "true"}),
        "move form": (f"/b/{key}/cards/{number}/move", {}),
        "insights": (f"/b/{key}/insights/", {}),
        "history (time travel)": (f"/b/{key}/history/", {}),
        "activity feed": (f"/b/{key}/activity/", {}),
        "person's activity": ("/people/bob/activity/", {}),
        "services": ("/services/", {}),
        "release search": ("/services/?release=%3Cb%3E1%3C%2Fb%3E", {"HX-Request": "true"}),
    }


def test_markup_in_every_text_is_shown_inert_on_every_page(hostile, bob):
    client = Client()
    client.force_login(bob)
    for where, (url, headers) in pages(hostile).items():
        response = client.get(url, headers=headers)
        assert response.status_code == 200, where
        assert_inert(response.content.decode(), where)
    board_html = client.get("/b/XSS/").content.decode()
    assert "&lt;script&gt;alert(" in board_html  # shown, as text
    dialog = client.get(f"/b/XSS/cards/{hostile.number}/").content.decode()
    assert "&lt;img src=x onerror" in dialog  # the comment and the label, as text
    assert "[click](javascript:" in dialog  # in the edit box, as text


def test_markup_is_inert_in_the_admin(hostile, staff):
    client = Client()
    client.force_login(staff)
    board = hostile.board
    urls = {
        "boards": reverse("admin:boards_board_changelist"),
        "board": reverse("admin:boards_board_change", args=[board.pk]),
        "cards": reverse("admin:boards_card_changelist"),
        "card": reverse("admin:boards_card_change", args=[hostile.pk]),
        "labels": reverse("admin:boards_label_changelist"),
        "events": reverse("admin:activity_event_changelist"),
    }
    for where, url in urls.items():
        response = client.get(url)
        assert response.status_code == 200, where
        assert_inert(response.content.decode(), f"admin {where}")


def test_the_csv_export_is_an_attachment_never_rendered_as_html(hostile, bob):
    client = Client()
    client.force_login(bob)
    for url in ["/b/XSS/insights/deployments.csv", "/services/deployments.csv"]:
        response = client.get(url)
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/csv")
        assert response["Content-Disposition"].startswith("attachment;")
        assert response["X-Content-Type-Options"] == "nosniff"
        assert isinstance(response, StreamingHttpResponse)
        rows = list(csv.DictReader(io.StringIO(response.getvalue().decode())))
        assert any(SCRIPT in value for row in rows for value in row.values())  # data, intact


def test_a_formula_in_a_title_is_neutralised_in_the_csv(transactional_db, alice):
    board = services.board_create(actor=as_actor(alice), name="Formula", key="FRM")
    card = make_card(board, title='=HYPERLINK("http://evil","x")', column_name="Staging")
    services.deployment_record(
        actor=as_actor(alice),
        board_id=board.pk,
        version="1",
        environment="production",
        status="success",
        card_numbers=[card.number],
    )
    rollups_settle()
    client = Client()
    client.force_login(alice)
    response = client.get("/b/FRM/insights/deployments.csv")
    assert isinstance(response, StreamingHttpResponse)
    text = response.getvalue().decode()
    assert '=HYPERLINK("http' not in text.replace("'=HYPERLINK", "")


# --- Caller-chosen request ids -------------------------------------------------------------


@pytest.mark.parametrize(
    "incoming",
    [
        "x" * 65,
        "two words",
        "line\nbreak",
        "<script>alert(1)</script>",
        "caf\u00e9",
        "../../etc/passwd;rm",
        '"quoted"',
    ],
)
def test_an_unsafe_request_id_is_never_stored_on_events(client, board, bob, incoming):
    """Only a short token of [A-Za-z0-9._:-] is kept; anything else is replaced by a fresh id
    before any event is written, and that is what the response echoes."""
    client.force_login(bob)
    response = client.post(
        f"/b/PAY/columns/{column(board, 'To Do').pk}/cards",
        {"title": "Traced"},
        headers={"HX-Request": "true", "X-Request-ID": incoming},
    )
    assert response.status_code == 200
    stored = Event.objects.get(card__title="Traced").request_id
    assert stored != incoming
    assert re.fullmatch(r"[0-9a-f]{32}", stored)
    assert response["X-Request-ID"] == stored


def test_a_safe_request_id_is_kept_on_events(client, board, bob):
    client.force_login(bob)
    client.post(
        f"/b/PAY/columns/{column(board, 'To Do').pk}/cards",
        {"title": "Traced"},
        headers={"HX-Request": "true", "X-Request-ID": "ci-42.step_7"},
    )
    assert Event.objects.get(card__title="Traced").request_id == "ci-42.step_7"
