"""Authorization matrix: every route x anonymous / non-member / viewer / editor / admin / staff.

Each route name the URL resolver knows has an entry in MATRIX with the exact status every kind
of caller gets; a route added without an entry fails `test_every_route_has_a_matrix_entry`.
Browser routes are tried with the session of each user (and as htmx where a fragment answers);
API routes with a token of each user (anonymous: none). Non-members get 404 on everything
board-scoped, exactly as for a board that does not exist. Along the way every GET is checked to
write no event, and every HTML answer to carry the nonce-based Content-Security-Policy.
"""

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from django.http import HttpResponseBase
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from activity.log import Actor
from activity.models import Event
from boards import services
from boards.models import Board, Card, Comment
from boards.tokens import token_create
from tests.conftest import column, make_card

pytestmark = pytest.mark.django_db

ROLES = ("anonymous", "non_member", "viewer", "editor", "admin", "staff")

# The admin's own routes (changelists, change forms, history, ...) are Django's, generated per
# model and guarded by is_staff + model permissions as a whole: the matrix covers the admin's
# front door (index and login) and skips the rest with this one rule.
SKIPPED_NAMESPACE = "admin:"
ADMIN_DOORS = {"admin:index", "admin:login"}


def walked_route_names() -> set[str]:
    """Every named route, with its namespaces (the admin's beyond ADMIN_DOORS left out)."""

    def walk(patterns, namespace: str = ""):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                inner = namespace + (f"{pattern.namespace}:" if pattern.namespace else "")
                yield from walk(pattern.url_patterns, inner)
            elif isinstance(pattern, URLPattern):
                yield namespace + (pattern.name or f"<unnamed {pattern.pattern}>")

    names = set(walk(get_resolver().url_patterns))
    return {n for n in names if not n.startswith(SKIPPED_NAMESPACE) or n in ADMIN_DOORS}


# --- the world the requests run in --------------------------------------------------------------


class World:
    """The PAY board with a card per request that changes one, and each role's credentials."""

    def __init__(self, board: Board, users: dict):
        self.board = board
        self.users = users
        self.card = make_card(board, title="Read me")
        self.tokens = {
            role: token_create(actor=Actor(user=user), user=user, name=f"{role}-token")[1]
            for role, user in users.items()
        }

    def fresh_card(self) -> Card:
        return make_card(self.board, title="Change me")

    def first_event_id(self) -> int:
        return Event.objects.filter(board=self.board).earliest("pk").pk

    def fresh_deployment(self) -> int:
        """A successful deployment's id (a rollback takes one each)."""
        admin = Actor(user=self.users["admin"])
        return services.deployment_record(
            actor=admin, board_id=self.board.pk, version="v0", environment="production",
            status="success", card_numbers=[],
        ).event.pk  # fmt: skip

    def fresh_incident(self) -> int:
        """An open incident's id (resolving takes one each)."""
        admin = Actor(user=self.users["admin"])
        return services.incident_open(actor=admin, board_id=self.board.pk, title="Down").pk

    def column_id(self, name: str = "To Do") -> int:
        return column(self.board, name).pk


@dataclass
class Call:
    method: str
    url: Callable[[World], str]
    expect: dict[str, int]
    data: Callable[[World], dict] | None = None
    htmx: bool = False
    api: bool = False  # token auth, JSON body

    def describe(self) -> str:
        return f"{self.method}{' (htmx)' if self.htmx else ''}"


def statuses(anonymous, non_member, viewer, editor, admin, staff) -> dict[str, int]:
    return dict(zip(ROLES, (anonymous, non_member, viewer, editor, admin, staff), strict=True))


LOGIN = 302  # anonymous browser requests are sent to the login page
BOARD_READ = statuses(LOGIN, 404, 200, 200, 200, 200)
SIGNED_IN = statuses(LOGIN, 200, 200, 200, 200, 200)
PUBLIC = statuses(200, 200, 200, 200, 200, 200)


def board_write(ok: int) -> dict[str, int]:
    """A change on the board: editors and above (staff act as admins); viewers 403."""
    return statuses(LOGIN, 404, 403, ok, ok, ok)


def api_read(ok: int = 200) -> dict[str, int]:
    return statuses(401, 404, ok, ok, ok, ok)


def api_write(ok: int) -> dict[str, int]:
    return statuses(401, 404, 403, ok, ok, ok)


def card_url(suffix: str = "", *, fresh: bool = False) -> Callable[[World], str]:
    def build(world: World) -> str:
        card = world.fresh_card() if fresh else world.card
        return f"/b/PAY/cards/{card.number}/{suffix}"

    return build


def edit_data(world: World) -> dict:
    card = Card.objects.get(board=world.board, number=world.card.number)
    return {"version": card.version, "title": "Edited", "description": "", "due_date": ""}


def move_call(htmx: bool, ok: int) -> Call:
    cards: list[Card] = []

    def url(world: World) -> str:
        cards.append(world.fresh_card())
        return f"/b/PAY/cards/{cards[-1].number}/move"

    def data(world: World) -> dict:
        return {"to_column": world.column_id("In Progress"), "version": cards[-1].version}

    return Call("POST", url, board_write(ok), data=data, htmx=htmx)


def api_card_ref(world: World) -> str:
    return f"/api/v1/cards/PAY-{world.fresh_card().number}"


MATRIX: dict[str, list[Call]] = {
    # --- project ---
    "healthz": [Call("GET", lambda w: "/healthz", PUBLIC)],
    "readyz": [Call("GET", lambda w: "/readyz", PUBLIC)],
    "login": [
        # A signed-in user sees the form too (to switch accounts).
        Call("GET", lambda w: "/accounts/login/", PUBLIC),
    ],
    "logout": [
        Call("GET", lambda w: "/accounts/logout/", statuses(LOGIN, 405, 405, 405, 405, 405)),
        Call("POST", lambda w: "/accounts/logout/", statuses(302, 302, 302, 302, 302, 302)),
    ],
    "password_change": [Call("GET", lambda w: "/accounts/password_change/", SIGNED_IN)],
    "password_change_done": [Call("GET", lambda w: "/accounts/password_change/done/", SIGNED_IN)],
    "tokens": [
        Call("GET", lambda w: "/settings/tokens/", SIGNED_IN),
        Call(
            "POST",
            lambda w: "/settings/tokens/",
            statuses(LOGIN, 200, 200, 200, 200, 200),
            data=lambda w: {"name": "ci", "role": "viewer"},
        ),
    ],
    "admin:index": [Call("GET", lambda w: "/admin/", statuses(302, 302, 302, 302, 302, 200))],
    "admin:login": [
        # Signed-in non-staff see the form with "not authorized"; staff go on to the index.
        Call("GET", lambda w: "/admin/login/", statuses(200, 200, 200, 200, 200, 302)),
    ],
    # --- boards ---
    "boards:list": [
        Call("GET", lambda w: "/", SIGNED_IN),
        Call("GET", lambda w: "/", SIGNED_IN, htmx=True),
    ],
    "boards:detail": [
        Call("GET", lambda w: "/b/PAY/", BOARD_READ),
        Call("GET", lambda w: "/b/PAY/", BOARD_READ, htmx=True),
        Call("POST", lambda w: "/b/PAY/", statuses(LOGIN, 405, 405, 405, 405, 405)),
    ],
    "boards:card": [
        Call("GET", card_url(), BOARD_READ),
        Call("GET", card_url(), BOARD_READ, htmx=True),
        Call("POST", card_url(), board_write(302), data=edit_data),
        Call("POST", card_url(), board_write(200), data=edit_data, htmx=True),
    ],
    "boards:card-move": [
        Call("GET", card_url("move"), board_write(200)),
        Call("GET", card_url("move"), board_write(200), htmx=True),
        move_call(htmx=False, ok=302),
        move_call(htmx=True, ok=200),
    ],
    "boards:card-archive": [
        Call("GET", card_url("archive"), statuses(LOGIN, 405, 405, 405, 405, 405)),
        Call("POST", card_url("archive", fresh=True), board_write(302)),
        Call("POST", card_url("archive", fresh=True), board_write(200), htmx=True),
    ],
    "boards:card-restore": [
        Call("GET", card_url("restore"), statuses(LOGIN, 405, 405, 405, 405, 405)),
        # Restoring a card that is not archived is a no-op answer, not an error.
        Call("POST", card_url("restore", fresh=True), board_write(302)),
        Call("POST", card_url("restore", fresh=True), board_write(200), htmx=True),
    ],
    "boards:card-comment": [
        Call("GET", card_url("comments"), statuses(LOGIN, 405, 405, 405, 405, 405)),
        Call("POST", card_url("comments"), board_write(302), data=lambda w: {"body": "Hi"}),
        Call(
            "POST", card_url("comments"), board_write(200), data=lambda w: {"body": "Hi"}, htmx=True
        ),
    ],
    "boards:column-cards": [
        Call("GET", lambda w: f"/b/PAY/columns/{w.column_id()}/cards", BOARD_READ, htmx=True),
        Call(
            "POST",
            lambda w: f"/b/PAY/columns/{w.column_id()}/cards",
            board_write(302),
            data=lambda w: {"title": "New"},
        ),
        Call(
            "POST",
            lambda w: f"/b/PAY/columns/{w.column_id()}/cards",
            board_write(200),
            data=lambda w: {"title": "New"},
            htmx=True,
        ),
    ],
    "boards:columns": [
        Call("GET", lambda w: "/b/PAY/columns/", BOARD_READ, htmx=True),
        Call("GET", lambda w: f"/b/PAY/columns/?ids={w.column_id()}", BOARD_READ, htmx=True),
        Call("GET", lambda w: "/b/PAY/columns/?ids=x", statuses(LOGIN, 404, 400, 400, 400, 400)),
    ],
    # The live stream (Server-Sent Events) and its polling fallback.
    "boards:live": [Call("GET", lambda w: "/b/PAY/live/", BOARD_READ)],
    "boards:live-changes": [
        Call("GET", lambda w: "/b/PAY/live/changes", BOARD_READ),
        Call("GET", lambda w: "/b/PAY/live/changes?after=1", BOARD_READ),
    ],
    # --- activity (insights, services, exports) ---
    "delivery:insights": [Call("GET", lambda w: "/b/PAY/insights/", BOARD_READ)],
    "delivery:board-csv": [Call("GET", lambda w: "/b/PAY/insights/deployments.csv", BOARD_READ)],
    # History: time travel, the board's activity feed, one person's activity.
    "history:history": [
        Call("GET", lambda w: "/b/PAY/history/", BOARD_READ),
        Call("GET", lambda w: "/b/PAY/history/?t=1900000000", BOARD_READ, htmx=True),
        Call("GET", lambda w: "/b/PAY/history/?at=nonsense", BOARD_READ),
        Call("GET", lambda w: f"/b/PAY/history/?event={w.first_event_id()}", BOARD_READ),
    ],
    "history:activity": [
        Call("GET", lambda w: "/b/PAY/activity/", BOARD_READ),
        Call("GET", lambda w: "/b/PAY/activity/?before=999", BOARD_READ, htmx=True),
    ],
    "history:user-activity": [
        # bob (the editor) is visible to those who share a board with him, and to staff.
        Call("GET", lambda w: "/people/bob/activity/", statuses(LOGIN, 404, 200, 200, 200, 200)),
        Call("GET", lambda w: "/people/nobody/activity/", statuses(LOGIN, *[404] * 5)),
    ],
    "delivery:services": [
        Call("GET", lambda w: "/services/", SIGNED_IN),
        Call("GET", lambda w: "/services/?release=v1", SIGNED_IN, htmx=True),
    ],
    "delivery:services-csv": [Call("GET", lambda w: "/services/deployments.csv", SIGNED_IN)],
    # --- API (tokens; a session alone is not enough: see test_a_session_does_not_open_the_api)
    "api:api-root": [Call("GET", lambda w: "/api/v1/", statuses(*[404] * 6), api=True)],
    "api:openapi-json": [Call("GET", lambda w: "/api/v1/openapi.json", PUBLIC, api=True)],
    "api:openapi-view": [Call("GET", lambda w: "/api/v1/docs", PUBLIC, api=True)],
    "api:board_list": [
        Call("GET", lambda w: "/api/v1/boards", statuses(401, 200, 200, 200, 200, 200), api=True)
    ],
    "api:board_detail": [Call("GET", lambda w: "/api/v1/boards/PAY", api_read(), api=True)],
    "api:card_list": [Call("GET", lambda w: "/api/v1/boards/PAY/cards", api_read(), api=True)],
    "api:card_create": [
        Call(
            "POST",
            lambda w: "/api/v1/boards/PAY/cards",
            api_write(201),
            data=lambda w: {"title": "From CI"},
            api=True,
        )
    ],
    "api:card_detail": [Call("GET", api_card_ref, api_read(), api=True)],
    "api:card_patch": [
        Call("PATCH", api_card_ref, api_write(200), data=lambda w: {"title": "CI"}, api=True)
    ],
    "api:card_move": [
        Call(
            "POST",
            lambda w: api_card_ref(w) + "/move",
            api_write(200),
            data=lambda w: {"to": "in_progress"},
            api=True,
        )
    ],
    "api:deployment_create": [
        Call(
            "POST",
            lambda w: "/api/v1/deployments",
            api_write(201),
            data=lambda w: {
                "board": "PAY",
                "version": "v1",
                "environment": "prod",
                "status": "success",
                "cards": [],
            },
            api=True,
        )
    ],
    "api:deployment_patch": [
        Call(
            "PATCH",
            lambda w: f"/api/v1/deployments/{w.fresh_deployment()}",
            api_write(200),
            data=lambda w: {"status": "rolled_back"},
            api=True,
        )
    ],
    "api:incident_create": [
        Call(
            "POST",
            lambda w: "/api/v1/incidents",
            api_write(201),
            data=lambda w: {"board": "PAY", "title": "Checkout down"},
            api=True,
        )
    ],
    "api:incident_patch": [
        Call(
            "PATCH",
            lambda w: f"/api/v1/incidents/{w.fresh_incident()}",
            api_write(200),
            data=lambda w: {"status": "resolved"},
            api=True,
        )
    ],
    "api:event_list": [Call("GET", lambda w: "/api/v1/boards/PAY/events", api_read(), api=True)],
    "api:deployments_csv": [
        Call(
            "GET",
            lambda w: "/api/v1/deployments.csv",
            statuses(401, 200, 200, 200, 200, 200),
            api=True,
        ),
        Call("GET", lambda w: "/api/v1/deployments.csv?board=PAY", api_read(), api=True),
    ],
}


# --- running a call ----------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    response: HttpResponseBase
    events_written: int
    url: str = ""
    rows_changed: bool = False
    notes: list[str] = field(default_factory=list)


def _row_counts() -> tuple[int, ...]:
    return (Card.objects.count(), Comment.objects.count(), Board.objects.count())


def perform(call: Call, role: str, world: World, client: Client) -> Answer:
    url = call.url(world)
    data = call.data(world) if call.data else None
    headers = {}
    if call.htmx:
        headers["HX-Request"] = "true"
    if call.api and role != "anonymous":
        headers["Authorization"] = f"Bearer {world.tokens[role]}"
    events, rows = Event.objects.count(), _row_counts()
    if call.api and data is not None:
        response = client.generic(
            call.method, url, json.dumps(data), content_type="application/json", headers=headers
        )
    elif call.method == "GET":
        response = client.get(url, headers=headers)
    else:
        response = client.generic(
            call.method,
            url,
            _urlencode(data or {}),
            content_type="application/x-www-form-urlencoded",
            headers=headers,
        )
    if response.get("Content-Type", "").startswith("text/event-stream"):
        response.close()  # a live stream never ends by itself; its status is what counts
    elif hasattr(response, "streaming_content"):
        b"".join(response.streaming_content)
    return Answer(
        status=response.status_code,
        response=response,
        events_written=Event.objects.count() - events,
        rows_changed=_row_counts() != rows,
        url=url,
    )


def _urlencode(data: dict) -> str:
    from urllib.parse import urlencode

    return urlencode(data, doseq=True)


def client_for(role: str, world: World) -> Client:
    client = Client()
    if role != "anonymous":
        client.force_login(world.users[role])
    return client


# --- CSP ---------------------------------------------------------------------------------------

SCRIPT_TAG = re.compile(r"<script\b([^>]*)>", re.IGNORECASE)
INLINE_HANDLER = re.compile(r"<[^>]+\son[a-z]+\s*=", re.IGNORECASE)


def csp_problems(response) -> list[str]:
    """What is wrong with an HTML response's Content-Security-Policy, if anything."""
    if not response.get("Content-Type", "").startswith("text/html"):
        return []
    policy = response.get("Content-Security-Policy", "")
    problems = []
    if not policy:
        return ["no Content-Security-Policy header"]
    directives = dict(
        [*part.strip().split(" ", 1), ""][:2] for part in policy.split(";") if part.strip()
    )
    script_src = directives.get("script-src", "")
    html = response.content.decode()
    # Django adds the nonce to the header only when the page used it (base.html loads htmx
    # with it); redirects, fragments and the API docs load scripts from 'self' only.
    if not script_src:
        problems.append("no script-src directive")
    for unsafe in ("'unsafe-inline'", "'unsafe-eval'"):
        if unsafe in policy:
            problems.append(f"{unsafe} in the policy")
    if "object-src 'none'" not in policy:
        problems.append("object-src is not 'none'")
    nonce = re.search(r"'nonce-([^']+)'", script_src)
    for attributes in SCRIPT_TAG.findall(html):
        has_src = re.search(r"\bsrc\s*=", attributes)
        is_data = re.search(r'type\s*=\s*"application/(ld\+)?json"', attributes)
        if not has_src and not is_data and (not nonce or nonce.group(1) not in attributes):
            problems.append(f"an inline script without the nonce: <script{attributes}>")
        if "nonce=" in attributes and (not nonce or nonce.group(1) not in attributes):
            problems.append(f"a script whose nonce is not the header's: <script{attributes}>")
    if INLINE_HANDLER.search(html):
        problems.append("an inline event handler attribute (on...=) the policy would block")
    return problems


# --- the tests ---------------------------------------------------------------------------------


@pytest.fixture
def world(board, alice, bob, victor, mallory, staff) -> World:
    users = {
        "non_member": mallory,
        "viewer": victor,
        "editor": bob,
        "admin": alice,
        "staff": staff,
    }
    return World(board, users)


def test_every_route_has_a_matrix_entry():
    walked = walked_route_names()
    missing = sorted(walked - MATRIX.keys())
    stale = sorted(MATRIX.keys() - walked)
    assert not missing, f"routes without an authorization matrix entry: {missing}"
    assert not stale, f"matrix entries for routes that no longer exist: {stale}"


# Async views read the database on another connection: they see committed data only.
COMMITTED_DATA = {"boards:live"}


@pytest.mark.parametrize("name", sorted(MATRIX.keys() - COMMITTED_DATA))
def test_each_caller_gets_exactly_the_status_the_matrix_says(name, world):
    check_matrix_entry(name, world)


@pytest.mark.parametrize("name", sorted(COMMITTED_DATA))
def test_each_caller_of_an_async_route_gets_the_status_the_matrix_says(
    name, transactional_db, world
):
    check_matrix_entry(name, world)


def check_matrix_entry(name: str, world: World) -> None:
    failures = []
    for call in MATRIX[name]:
        for role in ROLES:
            client = client_for(role, world)
            answer = perform(call, role, world, client)
            where = f"{call.describe()} {answer.url} as {role}"
            if answer.status != call.expect[role]:
                failures.append(f"{where}: {answer.status}, expected {call.expect[role]}")
            if call.method == "GET" and (answer.events_written or answer.rows_changed):
                failures.append(f"{where}: a GET changed state ({answer.events_written} events)")
            if answer.status >= 400 and call.method != "GET" and answer.events_written:
                failures.append(f"{where}: refused but wrote {answer.events_written} events")
            if answer.status == LOGIN and role == "anonymous" and not call.api:
                location = answer.response["Location"]
                if name not in ADMIN_DOORS and not location.startswith("/accounts/login/"):
                    failures.append(f"{where}: redirected to {location}, not the login")
            failures += [f"{where}: {problem}" for problem in csp_problems(answer.response)]
    assert not failures, "\n".join(failures)


def without_secrets(response) -> str:
    """The page less what differs on every render (CSRF token, nonce)."""
    html = response.content.decode()
    html = re.sub(r'"X-CSRFToken": "[^"]+"', "", html)
    html = re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"', "", html)
    return re.sub(r'nonce="[^"]+"', "", html)


def test_a_non_member_cannot_tell_a_board_exists(world):
    """The 404 for a hidden board is the same page as for a board that does not exist."""
    client = client_for("non_member", world)
    hidden, missing = client.get("/b/PAY/"), client.get("/b/NOPE/")
    assert hidden.status_code == missing.status_code == 404
    assert without_secrets(hidden) == without_secrets(missing)
    api = {"Authorization": f"Bearer {world.tokens['non_member']}"}
    hidden, missing = (client.get(f"/api/v1/boards/{k}", headers=api) for k in ("PAY", "NOPE"))
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == missing.json()


def test_a_session_does_not_open_the_api(world):
    """The API is token-only: a signed-in browser session gets a 401 there (so a cross-site
    page cannot use a user's cookies against it, and the API needs no CSRF token)."""
    client = client_for("admin", world)
    assert client.get("/api/v1/boards/PAY").status_code == 401
    response = client.post(
        "/api/v1/boards/PAY/cards", {"title": "x"}, content_type="application/json"
    )
    assert response.status_code == 401
    assert not Card.objects.filter(title="x").exists()


def test_a_token_scoped_to_one_board_is_a_non_member_elsewhere(world, alice):
    from boards import services

    services.board_create(actor=Actor(user=alice), name="Checkout", key="CHK")
    _, secret = token_create(
        actor=Actor(user=alice), user=alice, name="pay-only", board_keys=["PAY"]
    )
    client = Client(headers={"Authorization": f"Bearer {secret}"})
    assert client.get("/api/v1/boards/PAY").status_code == 200
    assert client.get("/api/v1/boards/CHK").status_code == 404
