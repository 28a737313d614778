"""Hostile input to every route: never a 500, a refusal that says why, and nothing to probe.

FUZZED names, for every route the URL resolver knows, the filters and form fields that route
reads (and its path segments that take free text or numbers). Two tests keep it complete, like
the authorization matrix: a route without an entry fails, and so does a parameter the route
reads that its entry does not fuzz, found
- for the API, in the OpenAPI schema (query and path parameters, body properties, nested);
- for pages, in the view's own source and the helpers it calls in its module
  (`request.GET.get("x")`, `request.POST["x"]`, "x" in request.POST), the fields of every form
  it makes (`XForm(...)`, a class-based view's `form_class`) and of `FeedFilter`.

Each route is then sent NUL, lone surrogates (raw in JSON, as the bytes a client can send in a
URL), huge and tiny dates and numbers and very long strings: first every value of a fixed list
in every parameter at once, then hypothesis mixes of them. The server runs as in production
(DEBUG off, `raise_request_exception=False`), so a crash is the 500 a client would see.
Examples are derandomized, as in the other fuzz tests; FUZZ_RANDOM=1 FUZZ_EXAMPLES=n explore
further.
"""

import ast
import dataclasses
import inspect
import json
import os
import re
import textwrap
from dataclasses import dataclass, field
from urllib.parse import quote

import pytest
from django.contrib import admin
from django.core.cache import cache
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from activity.log import Actor
from activity.models import Event
from boards import forms as board_forms
from boards.tokens import token_create
from flux import login as login_throttle
from flux.api import api
from history.timeline import FeedFilter
from tests.conftest import make_card
from tests.test_authz_matrix import walked_route_names

pytestmark = pytest.mark.django_db

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "4")),
    derandomize=not os.environ.get("FUZZ_RANDOM"),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --- what is sent -----------------------------------------------------------------------------

SURROGATE = "\ud800"
# Sent in every parameter of every route; hypothesis then mixes these and more.
HOSTILE: tuple[str, ...] = (
    "a\x00b",
    SURROGATE,
    "9999-12-31",
    "0001-01-01T00:00:00+23:59",
    "9999-12-31T23:59:59.999999-23:59",
    "2026-02-30",
    "-1",
    str(2**63),
    "9" * 5000,
    "²",
    "PAY-99999999999999999999",
    "x" * 20_000,
)
MORE: tuple[str, ...] = (
    "\x00",
    "x\udfffy",
    "0001-01-01",
    "0000-00-00",
    "275760-09-13",
    "0",
    str(-(2**70)),
    "1e309",
    "NaN",
    "١٢",
    " ",
    "\u202e<script>",
)
# Each alone in each parameter, so that no other parameter's refusal hides what it does.
ALONE = ("\x00", SURROGATE, "9999-12-31")
hostile = st.one_of(
    st.sampled_from(HOSTILE + MORE),
    st.text(max_size=20),  # lone surrogates included
    st.integers(-(2**80), 2**80).map(str),
    st.dates().map(str),
    st.lists(st.sampled_from(HOSTILE[:6]), min_size=1, max_size=3).map("".join),
)


def url_quote(value: str) -> str:
    """As a client can send it: a lone surrogate goes as the bytes UTF-8 would give it."""
    return quote(value.encode("utf-8", "surrogatepass"), safe="")


# --- the table --------------------------------------------------------------------------------


@dataclass
class Fuzz:
    """How to call a route and what to fuzz: `query`/`form` names (JSON body for the API; a
    dotted name like "commits.sha" is inside a list of objects), and `path` segments, each
    "{name}" in the url."""

    method: str
    url: str
    query: tuple[str, ...] = ()
    form: tuple[str, ...] = ()
    path: tuple[str, ...] = ()
    api: bool = False
    htmx: bool = False
    base: dict = field(default_factory=dict)  # valid values the fuzzed ones replace

    def names(self) -> set[str]:
        return {*self.query, *self.form, *self.path}


FEED = (*(f.name for f in dataclasses.fields(FeedFilter)), "before")
CARD_FILTER = ("q", "label", "assignee", "release")
EDIT = ("version", "title", "description", "due_date", "labels", "assignees")

# Every route name, with every parameter it reads (a route that reads none has an entry too).
FUZZED: dict[str, list[Fuzz]] = {
    "healthz": [Fuzz("GET", "/healthz")],
    "readyz": [Fuzz("GET", "/readyz")],
    "login": [Fuzz("POST", "/accounts/login/", form=("username", "password"))],
    "logout": [Fuzz("POST", "/accounts/logout/")],
    "password_change": [
        Fuzz(
            "POST",
            "/accounts/password_change/",
            form=("old_password", "new_password1", "new_password2"),
        )
    ],
    "password_change_done": [Fuzz("GET", "/accounts/password_change/done/")],
    "tokens": [Fuzz("POST", "/settings/tokens/", form=("name", "role", "boards", "revoke"))],
    "admin:index": [Fuzz("GET", "/admin/")],
    "admin:login": [Fuzz("POST", "/admin/login/", form=("username", "password"))],
    "boards:list": [Fuzz("GET", "/")],
    "boards:detail": [Fuzz("GET", "/b/PAY/", query=CARD_FILTER)],
    "boards:card": [
        Fuzz("GET", "/b/PAY/cards/{number}/", query=CARD_FILTER, path=("number",)),
        Fuzz("POST", "/b/PAY/cards/1/", form=EDIT, query=CARD_FILTER),
    ],
    "boards:card-move": [
        Fuzz("GET", "/b/PAY/cards/{number}/move", query=CARD_FILTER, path=("number",)),
        Fuzz("POST", "/b/PAY/cards/1/move", form=("to_column", "after", "before", "version")),
    ],
    "boards:card-archive": [
        Fuzz("POST", "/b/PAY/cards/{number}/archive", path=("number",), query=CARD_FILTER)
    ],
    "boards:card-restore": [
        Fuzz("POST", "/b/PAY/cards/{number}/restore", path=("number",), query=CARD_FILTER)
    ],
    "boards:card-comment": [
        Fuzz("POST", "/b/PAY/cards/{number}/comments", form=("body",), path=("number",))
    ],
    "boards:column-cards": [
        Fuzz(
            "GET",
            "/b/PAY/columns/{column_id}/cards",
            query=("after", *CARD_FILTER),
            path=("column_id",),
            htmx=True,
        ),
        Fuzz("POST", "/b/PAY/columns/{column_id}/cards", form=("title",), path=("column_id",)),
    ],
    "boards:columns": [Fuzz("GET", "/b/PAY/columns/", query=("ids", *CARD_FILTER), htmx=True)],
    "boards:live": [],  # fuzzed by test_the_live_stream_survives_hostile_input (committed data)
    "boards:live-changes": [Fuzz("GET", "/b/PAY/live/changes", query=("after",))],
    "delivery:insights": [Fuzz("GET", "/b/PAY/insights/", query=("days",))],
    "delivery:board-csv": [
        Fuzz("GET", "/b/PAY/insights/deployments.csv", query=("release", "since", "until"))
    ],
    "delivery:services": [Fuzz("GET", "/services/", query=("release",))],
    "delivery:services-csv": [
        Fuzz("GET", "/services/deployments.csv", query=("release", "since", "until"))
    ],
    "history:history": [Fuzz("GET", "/b/PAY/history/", query=("at", "t", "event"))],
    "history:activity": [
        Fuzz("GET", "/b/PAY/activity/", query=FEED),
        Fuzz("GET", "/b/PAY/activity/", query=FEED, htmx=True),
    ],
    "history:user-activity": [
        Fuzz("GET", "/people/{username}/activity/", query=FEED, path=("username",)),
    ],
    "api:api-root": [Fuzz("GET", "/api/v1/", api=True)],
    "api:openapi-json": [Fuzz("GET", "/api/v1/openapi.json", api=True)],
    "api:openapi-view": [Fuzz("GET", "/api/v1/docs", api=True)],
    "api:board_list": [Fuzz("GET", "/api/v1/boards", api=True)],
    "api:board_detail": [Fuzz("GET", "/api/v1/boards/{key}", path=("key",), api=True)],
    "api:card_list": [
        Fuzz(
            "GET",
            "/api/v1/boards/{key}/cards",
            path=("key",),
            query=(*CARD_FILTER, "column", "stage", "archived", "limit", "offset"),
            api=True,
        )
    ],
    "api:card_create": [
        Fuzz(
            "POST",
            "/api/v1/boards/{key}/cards",
            path=("key",),
            form=("title", "description", "column", "due_date", "labels", "assignees"),
            api=True,
            base={"title": "Fuzzed"},
        )
    ],
    "api:card_detail": [Fuzz("GET", "/api/v1/cards/{ref}", path=("ref",), api=True)],
    "api:card_patch": [
        Fuzz(
            "PATCH",
            "/api/v1/cards/{ref}",
            path=("ref",),
            form=("title", "description", "due_date", "expected_version"),
            api=True,
        )
    ],
    "api:card_move": [
        Fuzz(
            "POST",
            "/api/v1/cards/{ref}/move",
            path=("ref",),
            form=("to", "after", "before", "expected_version"),
            api=True,
            base={"to": "in_progress"},
        )
    ],
    "api:deployment_create": [
        Fuzz(
            "POST",
            "/api/v1/deployments",
            form=(
                "board",
                "version",
                "environment",
                "status",
                "cards",
                "commits",
                "commits.sha",
                "commits.timestamp",
                "commits.message",
                "url",
                "started_at",
                "finished_at",
                "hotfix",
                "fixes_incidents",
            ),
            api=True,
            base={"board": "PAY", "version": "v9", "environment": "prod", "status": "success"},
        )
    ],
    "api:deployment_patch": [
        Fuzz(
            "PATCH",
            "/api/v1/deployments/{deployment_id}",
            path=("deployment_id",),
            form=("status", "rolled_back_at"),
            api=True,
            base={"status": "rolled_back"},
        )
    ],
    "api:incident_create": [
        Fuzz(
            "POST",
            "/api/v1/incidents",
            form=("board", "title", "started_at", "caused_by"),
            api=True,
            base={"board": "PAY", "title": "Fuzzed"},
        )
    ],
    "api:incident_patch": [
        Fuzz(
            "PATCH",
            "/api/v1/incidents/{incident_id}",
            path=("incident_id",),
            form=("status", "resolved_at", "fixed_by"),
            api=True,
            base={"status": "resolved"},
        )
    ],
    "api:event_list": [
        Fuzz(
            "GET", "/api/v1/boards/{key}/events", path=("key",), query=("after", "limit"), api=True
        )
    ],
    "api:deployments_csv": [
        Fuzz(
            "GET",
            "/api/v1/deployments.csv",
            query=("board", "since", "until", "release"),
            api=True,
        )
    ],
}
VALID_PATH = {"number": "1", "column_id": "1", "username": "alice", "key": "PAY", "ref": "PAY-1",
              "deployment_id": "1", "incident_id": "1"}  # fmt: skip
LISTS = {"labels", "assignees", "cards", "boards"}  # sent as lists (JSON arrays, repeated keys)


# --- finding what each route reads ---------------------------------------------------------------


def _patterns(patterns=None, namespace=""):
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(pattern, URLResolver):
            inner = namespace + (f"{pattern.namespace}:" if pattern.namespace else "")
            yield from _patterns(pattern.url_patterns, inner)
        elif isinstance(pattern, URLPattern) and pattern.name:
            yield namespace + pattern.name, pattern


READS = re.compile(
    r"""(?:GET|POST|query)\s*(?:\.get(?:list)?\(|\[)\s*["']([\w-]+)["']"""
    r"""|["']([\w-]+)["']\s+in\s+request\.(?:GET|POST)"""
)
# A form made from what the request sent (one made to be shown reads nothing).
FORM_CALL = re.compile(r"\b(\w+Form)\(\s*request\.(?:GET|POST)")


def _functions_reached(function) -> list:
    """The view and every function of its module it calls, directly or not."""
    module = inspect.getmodule(function)
    seen, todo = [], [function]
    while todo:
        current = inspect.unwrap(todo.pop())
        if current in seen:
            continue
        seen.append(current)
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(current)))
        except (OSError, TypeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and inspect.isfunction(getattr(module, node.id, None)):
                todo.append(getattr(module, node.id))
    return seen


def parameters_read(name: str, pattern: URLPattern) -> set[str]:
    """The names a page's view reads from the request, as far as its source says."""
    callback = pattern.callback
    view_class = getattr(callback, "view_class", None)
    found: set[str] = set()
    if name == "admin:login":
        form = admin.site.login_form
        assert form is not None
        return set(form.base_fields)
    if view_class is not None:
        form = getattr(view_class, "form_class", None) or getattr(
            view_class, "authentication_form", None
        )
        return set(form.base_fields) if form is not None else set()
    module = getattr(inspect.getmodule(callback), "__name__", "")
    if module.split(".")[0] not in {"boards", "history", "delivery"}:
        return found  # Django's own (the admin index)
    for function in _functions_reached(callback):
        source = inspect.getsource(function)
        found |= {a or b for a, b in READS.findall(source)}
        for form_name in FORM_CALL.findall(source):
            form = getattr(board_forms, form_name, None)
            if form is not None:
                found |= set(form.base_fields)
        if "FeedFilter.parse" in source:
            found |= {f.name for f in dataclasses.fields(FeedFilter)}
    return found


def _schema_properties(schema: dict, components: dict, prefix: str = "") -> set[str]:
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[1]]
    names = set()
    for prop, sub in schema.get("properties", {}).items():
        names.add(prefix + prop)
        for option in [sub, sub.get("items", {}), *sub.get("anyOf", [])]:
            items = option.get("items", option)
            if "$ref" in items:
                names |= _schema_properties(items, components, f"{prefix}{prop}.")
    return names


def api_parameters() -> dict[str, set[str]]:
    """Every API operation's parameters and body properties, by route name."""
    schema = api.get_openapi_schema()
    components = schema.get("components", {}).get("schemas", {})
    found = {}
    for operations in schema["paths"].values():
        for operation in operations.values():
            # Headers (X-Request-ID, Idempotency-Key) are the middleware's, not the route's:
            # tests/api/test_openapi_exact.py and the schema fuzz send them.
            names = {p["name"] for p in operation.get("parameters", []) if p["in"] != "header"}
            body = operation.get("requestBody", {}).get("content", {})
            for media in body.values():
                names |= _schema_properties(media["schema"], components)
            # ninja names an operation "<app>_api_<function>"; its route is "api:<function>"
            function = re.sub(r"^\w+?_api_", "", operation["operationId"])
            found["api:" + function] = names
    return found


def test_every_route_is_fuzzed():
    walked = walked_route_names()
    missing = sorted(walked - FUZZED.keys())
    stale = sorted(FUZZED.keys() - walked)
    assert not missing, f"routes the hostile-input fuzz does not know: {missing}"
    assert not stale, f"fuzz entries for routes that no longer exist: {stale}"


def test_every_parameter_of_every_route_is_fuzzed():
    fuzzed = {name: set().union(*(f.names() for f in calls)) for name, calls in FUZZED.items()}
    fuzzed["boards:live"] = set(LIVE_PARAMETERS)
    problems = []
    operations = api_parameters()
    for name, pattern in _patterns():
        if name not in FUZZED:
            continue
        if name.startswith("api:"):
            wanted = operations.get(name, set())
        else:
            wanted = parameters_read(name, pattern)
            wanted |= set(re.findall(r"<(?:\w+:)?(\w+)>", str(pattern.pattern))) - {"key"}
        if unfuzzed := sorted(wanted - fuzzed[name]):
            problems.append(f"{name} reads {unfuzzed}, which FUZZED does not send it")
    assert not problems, "\n".join(problems)


def test_the_completeness_check_sees_parameters():
    """The check above must find what it is there for, or it would pass by finding nothing."""
    patterns = dict(_patterns())
    assert {"person", "since", "until", "card", "kind"} <= parameters_read(
        "history:activity", patterns["history:activity"]
    )
    assert {"q", "label"} <= parameters_read("boards:detail", patterns["boards:detail"])
    assert {"to_column", "version"} <= parameters_read(
        "boards:card-move", patterns["boards:card-move"]
    )
    assert {"ids"} <= parameters_read("boards:columns", patterns["boards:columns"])
    operations = api_parameters()
    assert {"key", "labels", "assignees", "title"} <= operations["api:card_create"]
    assert "commits.sha" in operations["api:deployment_create"]


# --- sending it ------------------------------------------------------------------------------


@pytest.fixture
def world(board, alice, bob, settings):
    settings.API_RATE_LIMIT_PER_MINUTE = 0
    settings.LOGIN_FAILURES_PER_USERNAME = 10**6
    settings.LOGIN_FAILURES_PER_ADDRESS = 10**6
    card = make_card(board, title="Fuzz me", by=alice)
    assert card.number == 1
    _, secret = token_create(actor=Actor(user=alice), user=alice, name="fuzz")
    client = Client(raise_request_exception=False)
    client.force_login(alice)
    yield {"alice": alice, "secret": secret, "column_id": card.column_id, "client": client}
    # The failed logins counted in the real Redis would lock later tests out (the test
    # client always comes from 127.0.0.1); only the throttle's own keys go, so the broker's
    # keys in the same database are left alone.
    cache.delete_many(
        [login_throttle._key("addr", "127.0.0.1")]
        + [login_throttle._key("user", name) for name in ("alice", "bob", "victor", "sam")]
    )


def send(target: Fuzz, values: dict[str, object], world: dict):
    """One request as a client would make it: the browser's signed in as alice (the board's
    admin, who may do everything), the API's with her token."""
    path = {**VALID_PATH, "column_id": str(world["column_id"])}
    path |= {k: str(v) for k, v in values.items() if k in target.path}
    url = target.url.format(**{k: url_quote(v) for k, v in path.items()})
    query = [(k, v) for k, v in values.items() if k in target.query]
    if query:
        url += "?" + "&".join(
            f"{url_quote(k)}={url_quote(str(item))}"
            for k, v in query
            for item in (v if isinstance(v, list) else [v])
        )
    form = {k: v for k, v in values.items() if k in target.form}
    headers = {"HX-Request": "true"} if target.htmx else {}
    client = world["client"]
    if target.api:
        headers["Authorization"] = f"Bearer {world['secret']}"
        document = _nest({**target.base, **form})
        return client.generic(
            target.method,
            url,
            json.dumps(document) if target.method != "GET" else "",
            content_type="application/json",
            headers=headers,
        )
    if "_auth_user_id" not in client.session:  # signed out by /logout, or in as someone else
        client.force_login(world["alice"])
    if target.method == "GET":
        return client.get(url, headers=headers)
    body = "&".join(
        f"{url_quote(k)}={url_quote(str(item))}"
        for k, v in form.items()
        for item in (v if isinstance(v, list) else [v])
    )
    return client.generic(
        target.method,
        url,
        body,
        content_type="application/x-www-form-urlencoded",
        headers=headers,
    )


def _nest(form: dict) -> dict:
    """Names like "commits.sha" become fields of one object in a list."""
    body, inner = {}, {}
    for key, value in form.items():
        if "." in key:
            inner[key.split(".", 1)[1]] = value
        else:
            body[key] = value
    if inner:
        body["commits"] = [inner]
    return body


def check(response, target: Fuzz, values: dict) -> None:
    where = f"{target.method} {target.url} {values!r:.300}"
    if hasattr(response, "streaming_content"):
        b"".join(response.streaming_content)
    status = response.status_code
    assert status < 500, f"{where}: {status}"
    if status >= 400 and status not in (401, 404, 405):
        if target.api:
            detail = json.loads(response.content).get("detail", "")
        else:
            detail = response.content.decode()
        assert detail.strip(), f"{where}: {status} without a word of why"


def _value(name: str, value: str) -> object:
    return [value] if name in LISTS else value


TARGETS = [(name, i) for name, calls in FUZZED.items() for i in range(len(calls))]


@pytest.mark.parametrize(("name", "index"), TARGETS)
def test_every_hostile_value_in_every_parameter(name, index, world):
    """Each value of HOSTILE in all the route's parameters at once, and in each alone."""
    target = FUZZED[name][index]
    for value in HOSTILE:
        values = {p: _value(p, value) for p in target.names()}
        check(send(target, values, world), target, values)
    for parameter in sorted(target.names()):
        for value in ALONE:
            values = {parameter: _value(parameter, value)}
            check(send(target, values, world), target, values)


@pytest.mark.parametrize(("name", "index"), [t for t in TARGETS if FUZZED[t[0]][t[1]].names()])
@FUZZ
@given(data=st.data())
def test_hypothesis_mixes_of_hostile_values(name, index, world, data):
    target = FUZZED[name][index]
    values = data.draw(
        st.fixed_dictionaries(
            {},
            optional={
                p: (st.lists(hostile, max_size=3) if p in LISTS else hostile)
                for p in sorted(target.names())
            },
        )
    )
    check(send(target, values, world), target, values)


LIVE_PARAMETERS = ("last", "client")


def test_the_live_stream_survives_hostile_input(transactional_db, world):
    """The stream is async: it reads committed data, and never ends, so only its start."""
    client = Client(raise_request_exception=False)
    client.force_login(world["alice"])
    for value in HOSTILE:
        response = client.get(f"/b/PAY/live/?last={url_quote(value)}&client={url_quote(value)}")
        assert response.status_code < 500, value
        response.close()


# --- the findings, one test each ---------------------------------------------------------------


@pytest.fixture
def browser(world):
    client = Client(raise_request_exception=False)
    client.force_login(world["alice"])
    return client


@pytest.fixture
def editor_api(bob, world):
    _, secret = token_create(actor=Actor(user=bob), user=bob, name="editor")
    return Client(raise_request_exception=False, headers={"Authorization": f"Bearer {secret}"})


@pytest.mark.parametrize("page", ["/b/PAY/activity/", "/people/alice/activity/"])
@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("person=%00", "NUL"),
        ("card=a%00", "NUL"),
        ("until=9999-12-31", "between 1970-01-01 and 9998-12-31"),
        ("since=0001-01-01", "between 1970-01-01 and 9998-12-31"),
    ],
)
def test_a_feed_filter_that_cannot_be_met_is_refused_in_words(browser, page, query, says):
    response = browser.get(f"{page}?{query}")
    assert response.status_code == 422
    assert says in response.content.decode()


def test_a_card_filter_in_other_digits_finds_nothing_instead_of_crashing(browser):
    assert browser.get("/b/PAY/activity/?card=%C2%B2").status_code == 200  # "²".isdigit()


@pytest.mark.parametrize("name", ["%00", "a%00b", "x" * 300])
def test_a_person_no_one_can_be_is_not_found(browser, name):
    assert browser.get(f"/people/{name}/activity/").status_code == 404


@pytest.mark.parametrize("field", ["labels", "assignees"])
def test_a_lone_surrogate_in_a_new_card_is_refused_in_words(editor_api, field):
    before = Event.objects.count()
    body = json.dumps({"title": "x", field: [SURROGATE]})  # sent as the escape "\\ud800"
    response = editor_api.post("/api/v1/boards/PAY/cards", body, content_type="application/json")
    assert response.status_code == 422
    assert "lone surrogate" in response.json()["detail"]
    assert Event.objects.count() == before


def test_a_nul_in_api_text_is_refused_in_words(editor_api):
    response = editor_api.post(
        "/api/v1/boards/PAY/cards",
        {"title": "x", "labels": ["a\x00b"]},
        content_type="application/json",
    )
    assert response.status_code == 422
    assert "NUL" in response.json()["detail"]


def test_assigning_no_one_and_someone_elsewhere_read_the_same(editor_api, mallory, staff):
    """An editor's token cannot learn which names exist, nor who is staff."""
    details = []
    for name in ("ghost", mallory.username, staff.username):
        response = editor_api.post(
            "/api/v1/boards/PAY/cards",
            {"title": "x", "assignees": [name]},
            content_type="application/json",
        )
        assert response.status_code == 422, name
        details.append(response.json()["detail"].replace(name, "<name>"))
    assert len(set(details)) == 1, details
    assert "members of the board" in details[0]


def test_staff_who_are_not_members_cannot_be_assigned(board, bob, staff):
    """Staff may act on every board, but only a board's members work on its cards."""
    from django.core.exceptions import ValidationError

    from boards import services

    card = make_card(board, title="Who?", by=bob)
    with pytest.raises(ValidationError, match="members of the board"):
        services.card_assign(actor=Actor(user=bob), card_id=card.pk, user_ids=[staff.pk])
    assert not card.assignees.exists()
