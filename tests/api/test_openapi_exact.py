"""The OpenAPI document is exact: it declares every status and header the API answers with, and
the API really answers with every status it declares.

For every operation of the document, requests are sent to the whole application (PostgreSQL,
Redis, every middleware, DEBUG off, `raise_request_exception=False`) to draw each status it
declares: those of the operation's own code from PROBES, and those of the machinery around
every route (401, 413, 429, 503; 400 and 422 for bodies, query strings and Idempotency-Keys)
from the operation's shape, as `flux.openapi` declares them. Every answer must have the status
its probe expects, declared for the operation, with a declared media type, every header
declared for that status (but SITE_HEADERS) and every required header present. Then every
status declared must have been drawn.

So a route added without probes fails (`test_every_api_route_is_an_operation_with_probes`), a
status answered but not declared fails, and so does a status declared but never answered.

The 503 is real: the application's database connection is pointed, for one request, at a
port where nothing listens, as when PostgreSQL is down. Redis away is no 503 (nor 429): the
rate limit lets requests through uncounted (`test_redis_away_is_no_503`).
"""

import json
import re
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple, cast

import pytest
from django.conf import settings
from django.db import connections
from django.http import HttpResponse, HttpResponseBase
from django.test import Client, override_settings

from activity.log import Actor
from boards import services
from boards.models import IDEMPOTENCY_KEY_MAX_LENGTH, Board, Card
from boards.tokens import token_create
from flux.middleware import DATABASE_RETRY_AFTER
from tests.conftest import column, make_card
from tests.test_authz_matrix import walked_route_names

pytestmark = pytest.mark.django_db

PREFIX = "/api/v1"

# Headers every answer of the site may carry, not part of the API's contract: the body's
# media type and length (OpenAPI describes them by `content`), and Django's defences for
# browsers (framing, sniffing, referrers, CSP, HSTS over HTTPS), which no API client acts on.
SITE_HEADERS = {
    "content-type",
    "content-length",
    "x-frame-options",
    "x-content-type-options",
    "referrer-policy",
    "cross-origin-opener-policy",
    "content-security-policy",
    "strict-transport-security",
}

# API routes that are no operation of the document: the document itself, its docs page, and
# the root (a 404 that points at the docs).
NOT_OPERATIONS = {"api:openapi-json", "api:openapi-view", "api:api-root"}

# (operation, status) declared but drawn by another test, with the reason. Empty: every
# declared status is drawn here.
COVERED_ELSEWHERE: dict[tuple[str, int], str] = {}

# A value for each path parameter that names something, for the probes every operation gets.
PATH_SAMPLES = {"key": "PAY", "ref": "PAY-1"}


# --- the world the requests run in --------------------------------------------------------------


class Sent(NamedTuple):
    method: str
    path: str
    data: bytes | str
    headers: dict[str, str]


class World:
    """The PAY board (alice admin, bob editor, victor viewer) and a client that speaks JSON."""

    def __init__(self, board: Board, users: dict):
        self.board = board
        self.users = users
        self.client = Client(raise_request_exception=False)
        self.tokens = {role: self.token_new(role) for role in ("editor", "viewer")}
        self.idempotency_key = ""
        self.last: Sent | None = None
        make_card(board, title="Read me")  # PAY-1, which PATH_SAMPLES name

    def token_new(self, role: str = "editor") -> str:
        user = self.users[role]
        return token_create(actor=Actor(user=user), user=user, name=f"{role}-{uuid.uuid4()}")[1]

    def call(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        token: str | None = "editor",
        raw: bytes | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> HttpResponseBase:
        """One request to the API; `token` is a role of the world's or a secret (None: none)."""
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {self.tokens.get(token, token)}"
        if method == "POST" and self.idempotency_key:
            sent.setdefault("Idempotency-Key", self.idempotency_key)
        data = raw if raw is not None else (json.dumps(body) if body is not None else "")
        self.last = Sent(method, PREFIX + path, data, sent)
        return self.again()

    def again(self) -> HttpResponseBase:
        """The last request, sent (again) exactly as it was."""
        assert self.last is not None
        method, path, data, headers = self.last
        return self.client.generic(
            method, path, data, content_type="application/json", headers=headers
        )

    def ref(self, column_name: str = "To Do") -> str:
        return make_card(self.board, title="probe", column_name=column_name).ref

    def admin(self) -> Actor:
        return Actor(user=self.users["admin"])

    def wip_full(self, column_name: str) -> None:
        """The column at a blocking WIP limit: no card may enter it."""
        target = column(self.board, column_name)
        count = Card.objects.filter(column=target, archived=False).count()
        if count == 0:
            make_card(self.board, title="filler", column_name=column_name)
        services.column_update(
            actor=self.admin(), column_id=target.pk, wip_limit=max(count, 1), wip_blocks=True
        )

    def deployment(self, status: str = "success") -> int:
        return services.deployment_record(
            actor=self.admin(), board_id=self.board.pk, version="v0", environment="production",
            status=status, card_numbers=[],
        ).event.pk  # fmt: skip

    def incident(self) -> int:
        return services.incident_open(actor=self.admin(), board_id=self.board.pk, title="Down").pk

    def rolled_back(self) -> int:
        deployment = self.deployment()
        services.deployment_roll_back(actor=self.admin(), deployment_id=deployment)
        return deployment

    def resolved(self) -> int:
        incident = self.incident()
        services.incident_resolve(actor=self.admin(), incident_id=incident)
        return incident


@pytest.fixture
def world(board, alice, bob, victor, mallory) -> World:
    return World(board, {"admin": alice, "editor": bob, "viewer": victor, "outsider": mallory})


# --- what each operation's own code answers -----------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One request that must draw `status`; `says` must be in the problem's detail."""

    status: int
    send: Callable[[World], HttpResponseBase]
    says: str = ""


def deployment(**fields) -> dict:
    return {"board": "PAY", "version": "v1", "environment": "production", "status": "success"} | (
        fields
    )


def _create_in_full_column(w: World) -> HttpResponseBase:
    w.wip_full("To Do")
    return w.call("POST", "/boards/PAY/cards", {"title": "one too many"})


def _deploy_into_full_column(w: World) -> HttpResponseBase:
    ref = w.ref("Staging")
    w.wip_full("Deployed")
    return w.call("POST", "/deployments", deployment(cards=[ref]))


def _move_into_full_column(w: World) -> HttpResponseBase:
    ref = w.ref()
    w.wip_full("Staging")
    return w.call("POST", f"/cards/{ref}/move", {"to": "Staging"})


PROBES: dict[str, list[Probe]] = {
    "board_list": [Probe(200, lambda w: w.call("GET", "/boards"))],
    "board_detail": [
        Probe(200, lambda w: w.call("GET", "/boards/PAY")),
        Probe(404, lambda w: w.call("GET", "/boards/NOPE")),
        Probe(404, lambda w: w.call("GET", "/boards/%00")),  # names nothing, as /cards/%00
        Probe(404, lambda w: w.call("GET", "/boards/PAY", token=w.token_new("outsider"))),
    ],
    "card_list": [
        Probe(200, lambda w: w.call("GET", "/boards/PAY/cards?stage=todo")),
        Probe(404, lambda w: w.call("GET", "/boards/NOPE/cards")),
        Probe(422, lambda w: w.call("GET", "/boards/PAY/cards?limit=0")),
        Probe(422, lambda w: w.call("GET", "/boards/PAY/cards?column=Nowhere"), "no column"),
    ],
    "card_create": [
        Probe(201, lambda w: w.call("POST", "/boards/PAY/cards", {"title": "From CI"})),
        Probe(403, lambda w: w.call("POST", "/boards/PAY/cards", {"title": "x"}, token="viewer")),
        Probe(404, lambda w: w.call("POST", "/boards/NOPE/cards", {"title": "x"})),
        Probe(409, _create_in_full_column, "WIP limit"),
        Probe(422, lambda w: w.call("POST", "/boards/PAY/cards", {"title": ""})),
        Probe(422, lambda w: w.call("POST", "/boards/PAY/cards", {"title": "x", "column": "?"})),
    ],
    "card_detail": [
        Probe(200, lambda w: w.call("GET", f"/cards/{w.ref()}")),
        Probe(404, lambda w: w.call("GET", "/cards/PAY-999")),
        Probe(404, lambda w: w.call("GET", "/cards/%00")),
    ],
    "card_patch": [
        Probe(200, lambda w: w.call("PATCH", f"/cards/{w.ref()}", {"title": "CI"})),
        Probe(403, lambda w: w.call("PATCH", f"/cards/{w.ref()}", {"title": "x"}, token="viewer")),
        Probe(404, lambda w: w.call("PATCH", "/cards/PAY-999", {"title": "x"})),
        Probe(
            409,
            lambda w: w.call("PATCH", f"/cards/{w.ref()}", {"title": "x", "expected_version": 2}),
            "changed this card first",
        ),
        Probe(422, lambda w: w.call("PATCH", f"/cards/{w.ref()}", {"title": None}), "null"),
    ],
    "card_move": [
        Probe(200, lambda w: w.call("POST", f"/cards/{w.ref()}/move", {"to": "In Progress"})),
        Probe(
            403,
            lambda w: w.call("POST", f"/cards/{w.ref()}/move", {"to": "Staging"}, token="viewer"),
        ),
        Probe(404, lambda w: w.call("POST", "/cards/PAY-999/move", {"to": "Staging"})),
        Probe(
            409,
            lambda w: w.call(
                "POST", f"/cards/{w.ref()}/move", {"to": "Staging", "expected_version": 2}
            ),
            "changed this card first",
        ),
        Probe(409, _move_into_full_column, "WIP limit"),
        Probe(422, lambda w: w.call("POST", f"/cards/{w.ref()}/move", {"to": "Nowhere"})),
    ],
    "deployment_create": [
        Probe(201, lambda w: w.call("POST", "/deployments", deployment(cards=[w.ref()]))),
        Probe(403, lambda w: w.call("POST", "/deployments", deployment(), token="viewer")),
        Probe(404, lambda w: w.call("POST", "/deployments", deployment(board="NOPE"))),
        Probe(409, _deploy_into_full_column, "WIP limit"),
        Probe(422, lambda w: w.call("POST", "/deployments", deployment(cards=["PAY-999"]))),
        Probe(422, lambda w: w.call("POST", "/deployments", deployment(status="maybe"))),
    ],
    "deployment_patch": [
        Probe(
            200,
            lambda w: w.call("PATCH", f"/deployments/{w.deployment()}", {"status": "rolled_back"}),
        ),
        Probe(
            403,
            lambda w: w.call(
                "PATCH", f"/deployments/{w.deployment()}", {"status": "rolled_back"}, token="viewer"
            ),
        ),
        Probe(404, lambda w: w.call("PATCH", "/deployments/999999", {"status": "rolled_back"})),
        Probe(
            409,
            lambda w: w.call("PATCH", f"/deployments/{w.rolled_back()}", {"status": "rolled_back"}),
        ),
        Probe(
            409,
            lambda w: w.call(
                "PATCH", f"/deployments/{w.deployment('failed')}", {"status": "rolled_back"}
            ),
        ),
        Probe(422, lambda w: w.call("PATCH", "/deployments/x", {"status": "rolled_back"})),
        Probe(422, lambda w: w.call("PATCH", f"/deployments/{w.deployment()}", {"status": "ok"})),
    ],
    "incident_create": [
        Probe(201, lambda w: w.call("POST", "/incidents", {"board": "PAY", "title": "Down"})),
        Probe(
            403,
            lambda w: w.call("POST", "/incidents", {"board": "PAY", "title": "x"}, token="viewer"),
        ),
        Probe(404, lambda w: w.call("POST", "/incidents", {"board": "NOPE", "title": "x"})),
        Probe(422, lambda w: w.call("POST", "/incidents", {"board": "PAY", "title": ""})),
        Probe(
            422,
            lambda w: w.call("POST", "/incidents", {"board": "PAY", "title": "x", "caused_by": 9}),
        ),
    ],
    "incident_patch": [
        Probe(200, lambda w: w.call("PATCH", f"/incidents/{w.incident()}", {"status": "resolved"})),
        Probe(
            403,
            lambda w: w.call(
                "PATCH", f"/incidents/{w.incident()}", {"status": "resolved"}, token="viewer"
            ),
        ),
        Probe(404, lambda w: w.call("PATCH", "/incidents/999999", {"status": "resolved"})),
        Probe(
            409,
            lambda w: w.call("PATCH", f"/incidents/{w.resolved()}", {"status": "resolved"}),
            "already resolved",
        ),
        Probe(422, lambda w: w.call("PATCH", f"/incidents/{w.incident()}", {"status": "open"})),
    ],
    "event_list": [
        Probe(200, lambda w: w.call("GET", "/boards/PAY/events?limit=2")),
        Probe(404, lambda w: w.call("GET", "/boards/NOPE/events")),
        Probe(422, lambda w: w.call("GET", "/boards/PAY/events?limit=0")),
    ],
    "deployments_csv": [
        Probe(200, lambda w: w.call("GET", "/deployments.csv?board=PAY")),
        Probe(200, lambda w: w.call("GET", "/deployments.csv")),
        Probe(404, lambda w: w.call("GET", "/deployments.csv?board=NOPE")),
        Probe(422, lambda w: w.call("GET", "/deployments.csv?since=yesterday")),
    ],
}


# --- what the machinery around every route answers ----------------------------------------------


@contextmanager
def database_away() -> Iterator[None]:
    """The application's database connection pointed, for the while, at a port where nothing
    listens (bound here, never listening: connecting is refused at once), as when PostgreSQL
    is down. The test's own connection, and its transaction, are left as they were."""
    real = connections["default"]
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        options = {k: v for k, v in real.settings_dict.get("OPTIONS", {}).items() if k != "pool"}
        away = real.__class__(
            {**real.settings_dict, "HOST": "127.0.0.1", "PORT": closed.getsockname()[1],
             "OPTIONS": options},
            alias=real.alias,
        )  # fmt: skip
        connections[real.alias] = away
        try:
            yield
        finally:
            connections[real.alias] = real
            away.close()


def rate_limited(w: World, method: str, path: str) -> HttpResponseBase:
    """A token over a limit of one request a minute (a minute that ends between the two
    requests lets the second through: then the next pair is tried)."""
    token = w.token_new()
    response = None
    with override_settings(API_RATE_LIMIT_PER_MINUTE=1):
        for _ in range(3):
            w.call("GET", "/boards", token=token)
            response = w.call(method, path, {}, token=token)
            if response.status_code == 429:
                break
    assert response is not None
    return response


def machinery_probes(method: str, path: str, operation: dict) -> list[Probe]:
    """What every operation of this shape is answered with before its own code runs."""
    parameters = operation.get("parameters", [])
    query = any(p["in"] == "query" for p in parameters)
    big = b"x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)
    fields = "&".join(f"f{i}=1" for i in range(settings.DATA_UPLOAD_MAX_NUMBER_FIELDS + 1))
    long_key = "k" * (IDEMPOTENCY_KEY_MAX_LENGTH + 1)

    def with_database_away(w: World) -> HttpResponseBase:
        with database_away():
            return w.call(method, path, {})

    def key_reused(w: World) -> HttpResponseBase:
        key = str(uuid.uuid4())
        w.call(method, path, {}, headers={"Idempotency-Key": key})
        return w.call(method, path, {"other": 1}, headers={"Idempotency-Key": key})

    probes = [
        Probe(401, lambda w: w.call(method, path, {}, token=None)),
        Probe(401, lambda w: w.call(method, path, {}, token="flux_revoked-or-never-made")),
        Probe(413, lambda w: w.call(method, path, raw=big), "larger than"),
        Probe(503, with_database_away, "cannot reach its database"),
    ]
    if settings.API_RATE_LIMIT_PER_MINUTE:  # as the document reads it: no limit, no 429
        probes.append(Probe(429, lambda w: rate_limited(w, method, path), "requests a minute"))
    if "requestBody" in operation:
        probes.append(Probe(400, lambda w: w.call(method, path, raw="{not json"), "parse"))
    if query:
        probes.append(Probe(400, lambda w: w.call(method, f"{path}?{fields}"), "query string"))
    if method == "POST":
        probes += [
            Probe(400, lambda w: w.call(method, path, {}, headers={"Idempotency-Key": long_key})),
            Probe(422, key_reused, "different request"),
        ]
    return probes


# --- the document -----------------------------------------------------------------------------


def operations(schema: dict) -> dict[str, tuple[str, str, dict]]:
    """Every operation of the document by its route's name: method, path, operation."""
    found = {}
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            # ninja names an operation "<app>_api_<function>"; its route is "api:<function>"
            name = re.sub(r"^\w+?_api_", "", operation["operationId"])
            found[name] = (method.upper(), path.removeprefix(PREFIX), operation)
    return found


def sample_path(path: str, operation: dict) -> str:
    """The path with each parameter given a value that names something (an id: 1)."""
    for parameter in operation.get("parameters", []):
        if parameter["in"] != "path":
            continue
        name = parameter["name"]
        if parameter["schema"].get("type") == "integer":
            value = "1"
        else:
            assert name in PATH_SAMPLES, f"PATH_SAMPLES needs a value for {{{name}}}"
            value = PATH_SAMPLES[name]
        path = path.replace(f"{{{name}}}", value)
    return path


def resolved(schema: dict, item: dict) -> dict:
    if "$ref" in item:
        kind, name = item["$ref"].split("/")[-2:]
        return schema["components"][kind][name]
    return item


@pytest.fixture
def schema(client) -> dict:
    """The document as a client reads it."""
    response = client.get(f"{PREFIX}/openapi.json")
    assert response.status_code == 200
    return response.json()


# --- the tests ----------------------------------------------------------------------------------


def test_every_api_route_is_an_operation_with_probes(schema):
    routes = {name for name in walked_route_names() if name.startswith("api:")} - NOT_OPERATIONS
    documented = {f"api:{name}" for name in operations(schema)}
    assert routes == documented, (
        f"routes missing from the document: {sorted(routes - documented)}; "
        f"operations without a route: {sorted(documented - routes)}"
    )
    probed = {f"api:{name}" for name in PROBES}
    assert documented <= probed, f"operations without PROBES: {sorted(documented - probed)}"
    assert probed <= documented, f"PROBES for no operation: {sorted(probed - documented)}"


def _check(schema: dict, name: str, operation: dict, probe: Probe, response) -> None:
    """The answer is the one the probe expects, and declared with every header it carries."""
    where = f"{name} -> {response.status_code}"
    assert response.status_code == probe.status, f"{name}: expected {probe.status}, {where}"
    declared = operation["responses"].get(str(response.status_code))
    assert declared is not None, f"{where}, which the document does not declare"
    declared = resolved(schema, declared)
    media = response["Content-Type"].split(";")[0]
    assert media in declared.get("content", {}), f"{where} as {media}, not declared"
    if response.status_code >= 400:
        problem = response.json()
        assert media == "application/problem+json"
        assert problem["status"] == response.status_code, where
        assert probe.says in problem["detail"], f"{where}: {problem['detail']!r}"
    headers = {
        header: resolved(schema, spec) for header, spec in declared.get("headers", {}).items()
    }
    known = SITE_HEADERS | {header.lower() for header in headers}
    undeclared = {header for header in response.headers if header.lower() not in known}
    assert not undeclared, f"{where} with headers the document does not declare: {undeclared}"
    missing = {h for h, spec in headers.items() if spec.get("required") and h not in response}
    assert not missing, f"{where} without the headers the document requires: {missing}"


@pytest.mark.parametrize("name", sorted(PROBES))
def test_every_answer_is_declared_and_every_declared_status_is_answered(name, schema, world):
    if name not in operations(schema):
        pytest.fail(f"PROBES names {name}, which is no operation of the document")
    method, path, operation = operations(schema)[name]
    drawn: set[int] = set()
    probes = PROBES[name] + machinery_probes(method, sample_path(path, operation), operation)
    for probe in probes:
        kept = method == "POST" and probe.status < 500 and probe.status not in (401, 403, 413, 429)
        own = probe in PROBES[name]
        world.idempotency_key = str(uuid.uuid4()) if kept and own else ""
        response = probe.send(world)
        _check(schema, name, operation, probe, response)
        drawn.add(response.status_code)
        if world.idempotency_key and probe.status != 404:
            # Sent again with its key: the stored answer, marked as a replay.
            replay = world.again()
            assert replay["Idempotent-Replay"] == "true", f"{name}: no replay of {probe.status}"
            assert cast(HttpResponse, replay).content == cast(HttpResponse, response).content
            _check(schema, name, operation, probe, replay)
    elsewhere = {status for (op, status) in COVERED_ELSEWHERE if op == name}
    never = {int(status) for status in operation["responses"]} - drawn - elsewhere
    assert not never, f"{name} declares {sorted(never)}, which no request drew from it"


def test_the_503_is_the_database_away_with_retry_after(world):
    with database_away():
        response = world.call("GET", "/boards")
    assert response.status_code == 503
    assert response["Retry-After"] == str(DATABASE_RETRY_AFTER)
    assert world.call("GET", "/boards").status_code == 200  # and back once it is


def test_redis_away_is_no_503(world, settings):
    """The rate limit counts in Redis; while Redis is away it lets requests through."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        away = {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{closed.getsockname()[1]}/0",
        }
        settings.CACHES = {**settings.CACHES, "default": away}
        settings.API_RATE_LIMIT_PER_MINUTE = 1  # were it counted, the second would be a 429
        statuses = [world.call("GET", "/boards").status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
