"""The attacks of the chaos run's "hostile" scenario, each against a running Flux.

Each attack is a function of the server's port and the people it plays (`Cast`) that returns
what it saw; `chaos.scenarios.hostile` runs them while the load runs and judges the results,
and tests/test_chaos.py runs them against a test server. They are what a member of a board,
or anyone with a role on the database, may try:

- a forged row: a plain INSERT into `activity_event` (no seq, or a seq and hash that are not
  the board's chain head) or into the legacy seal; the database must refuse each;
- a token named after the board's admin, made by an editor and used to move a card: the log
  must say "<editor> via token <admin>", never the admin;
- hostile input (NUL, lone surrogates raw in JSON and as URL bytes, invalid UTF-8, year 9999
  and other impossible dates and numbers) on pages and API routes: a 4xx, never a 5xx;
- probing usernames through a new card's assignees: a name no one has, a person on no board
  and a staff member must read the same;
- a live stream whose session logs out: it must end;
- more live streams than one person may hold: the one over the cap is a 429 with Retry-After.
"""

import html
import http.client
import json
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

from django.db import DatabaseError, connection, transaction

from bench.server import Client

SURROGATE = "\ud800"


def url_bytes(value: str) -> str:
    """As a client can put it in a URL: a lone surrogate as the bytes UTF-8 would give it."""
    return quote(value.encode("utf-8", "surrogatepass"), safe="")


@dataclass(frozen=True)
class Cast:
    """Who plays the attacks on which board (every password is `password`)."""

    board: str  # the board's key
    admin: str  # the board's admin: the name the editor's token borrows
    editor: str  # a member who may write: makes the token, probes, sends hostile input
    viewer: str  # a member whose session logs out under an open stream
    streamer: str  # a member who opens one stream more than the cap
    strangers: tuple[str, ...]  # people on no board (one of them staff)
    card: str  # a card's ref on the board
    password: str


# --- forged rows --------------------------------------------------------------------------------

FORGED_RELEASE: dict[str, object] = {
    "deployment": {
        "version": "v666-forged",
        "environment": "production",
        "status": "success",
        "url": "",
        "started_at": None,
        "finished_at": None,
        "commits": [],
        "cards": [],
    },
    "moves_to": None,
}


def _refused(sql: str, params: list) -> bool:
    """A plain statement, triggers on (what any role with INSERT on the table can do):
    True when the database refused it."""
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, params)
    except DatabaseError:
        return True
    return False


def forged_inserts(board_id: int) -> dict[str, bool]:
    """Each forged INSERT, and whether the database refused it."""
    from activity.events import EventKind
    from activity.models import ChainHead

    head = ChainHead.objects.filter(board_id=board_id).values_list("seq", "head").first()
    seq, digest = (head[0], bytes(head[1]).hex()) if head else (0, "")
    event = (
        "INSERT INTO activity_event (id, occurred_at, actor_name, source, board_id, kind, payload"
        "{extra}) VALUES (%s, now(), 'chaos-owner', 'api', %s, %s, %s{marks})"
    )
    row = [-(10**9) - board_id, board_id, EventKind.DEPLOYMENT_RECORDED, json.dumps(FORGED_RELEASE)]
    seal = (
        "INSERT INTO activity_legacyseal (board_id, count, digest, ids, sealed_at)"
        " VALUES (%s, 1, %s, %s, now())"
    )
    return {
        "event without a seq": _refused(event.format(extra="", marks=""), row),
        "event at a forged place in the chain": _refused(
            event.format(extra=", seq, hash", marks=", %s, %s"), [*row, seq + 1, digest or "0" * 64]
        ),
        "legacy seal over a forged event": _refused(
            seal, [board_id, "0" * 64, json.dumps([[row[0], row[0]]])]
        ),
    }


# --- a token named after the admin --------------------------------------------------------------

SECRET = re.compile(r'id="new-token" readonly value="([^"]+)"')


def browser(port: int, username: str, password: str) -> Client:
    """A person signed in through the login page (session and CSRF cookies)."""
    client = Client(port)
    client.login(username, password)
    return client


def _form_post(client: Client, path: str, values: dict | list) -> tuple[int, dict, bytes]:
    body = urlencode(
        [
            *(values.items() if isinstance(values, dict) else values),
            ("csrfmiddlewaretoken", client.cookies["csrftoken"]),
        ]
    )
    return client.request(
        "POST",
        path,
        body=body.encode(),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Referer": f"http://127.0.0.1:{client.port}{path}",
        },
    )


def token_make(client: Client, name: str, board: str) -> str:
    """An editor's API token made on the tokens page, named `name`: its secret."""
    from django.urls import reverse

    status, _, page = _form_post(
        client, reverse("tokens"), [("name", name), ("role", "editor"), ("boards", board)]
    )
    found = SECRET.search(page.decode("utf-8", "replace"))
    if status != 200 or found is None:
        raise RuntimeError(f"the tokens page did not make the token ({status})")
    return found.group(1)


class Api:
    """A CI client with a bearer token (an Idempotency-Key on every POST)."""

    def __init__(self, port: int, token: str):
        self.client = Client(port)
        self.token = token

    def call(
        self, method: str, path: str, body: bytes | str | dict | None = None
    ) -> tuple[int, dict, dict]:
        """The status, the headers and the JSON answer (empty when it is not JSON)."""
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        if method == "POST":
            headers["Idempotency-Key"] = uuid.uuid4().hex
        if isinstance(body, dict):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        status, answer_headers, data = self.client.request(method, path, body=body, headers=headers)
        try:
            answer = json.loads(data or b"{}")
        except ValueError:
            answer = {}
        return status, answer_headers, answer if isinstance(answer, dict) else {}


@dataclass
class Impersonation:
    token_name: str
    status: int = 0  # of the move made with the token
    card_id: int = 0
    version: int = 0
    actor_name: str = ""  # what the log recorded
    via: str = ""
    label: str = ""  # how every surface names who did it (activity.describe.actor_label)
    feed_shows_label: bool = False  # the board's activity feed, filtered to the editor
    feed_names_admin: bool = False  # ... and whether it names the admin as the one who acted

    def expected(self, editor: str) -> str:
        from activity.describe import actor_label

        return actor_label(editor, self.token_name)


def impersonate(port: int, cast: Cast, editor_client: Client) -> tuple[Impersonation, str]:
    """The editor makes a token named after the admin and moves a card with it. Returns what
    the log says, and the token's secret (for the attacks that follow)."""
    from activity.describe import event_actor
    from activity.events import EventKind
    from activity.models import Event
    from boards.models import Card
    from chaos.traffic import STAGES

    result = Impersonation(token_name=cast.admin)
    secret = token_make(editor_client, cast.admin, cast.board)
    api = Api(port, secret)
    for _ in range(5):  # under load another client may move the card first: read it again
        status, _, card = api.call("GET", f"/api/v1/cards/{cast.card}")
        if status != 200:
            continue
        target = next(s for s in STAGES if s != card["stage"])
        status, _, moved = api.call("POST", f"/api/v1/cards/{cast.card}/move", {"to": target})
        result.status = status
        if status == 200 and moved["version"] != card["version"]:
            result.version = moved["version"]
            break
    if result.status != 200 or not result.version:
        return result, secret
    key, number = cast.card.rsplit("-", 1)
    result.card_id = Card.objects.get(board__key=key, number=int(number)).pk
    event = Event.objects.filter(
        kind=EventKind.CARD_MOVED, card_id=result.card_id, payload__version=result.version
    ).first()
    if event is not None:
        result.actor_name, result.via, result.label = (
            event.actor_name,
            event.via,
            event_actor(event),
        )
    status, _, page = editor_client.request(
        "GET", f"/b/{cast.board}/activity/?{urlencode({'person': cast.editor})}"
    )
    who = feed_actors(page.decode("utf-8", "replace")) if status == 200 else []
    result.feed_shows_label = result.expected(cast.editor) in who
    result.feed_names_admin = cast.admin in who
    return result, secret


FEED_ACTOR = re.compile(r'<span class="sentence"><strong>(.*?)</strong>', re.S)
TAG = re.compile(r"<[^>]+>")


def feed_actors(page: str) -> list[str]:
    """Who did each thing an activity feed lists, as it says it (templates/history/feed.html)."""
    return [html.unescape(TAG.sub("", found)).strip() for found in FEED_ACTOR.findall(page)]


# --- hostile input ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hostile:
    what: str
    method: str
    path: str
    body: bytes | None = None
    api: bool = False


def hostile_requests(cast: Cast) -> list[Hostile]:
    """Pages and API routes, each sent what no client should send; every one must be a 4xx."""
    key, ref = cast.board, cast.card
    number = ref.rsplit("-", 1)[1]
    huge, year_9999 = "9" * 30, "9999-12-31"

    def form(**values: str) -> bytes:
        return "&".join(f"{k}={v}" for k, v in values.items()).encode()

    def api_json(text: str) -> bytes:  # written by hand: the escapes go as they are
        return text.encode()

    return [
        Hostile("feed: NUL person", "GET", f"/b/{key}/activity/?person=%00"),
        Hostile("feed: until year 9999", "GET", f"/b/{key}/activity/?until={year_9999}"),
        Hostile("feed: since year 1", "GET", f"/b/{key}/activity/?since=0001-01-01"),
        Hostile("person feed: NUL name", "GET", "/people/%00/activity/"),
        Hostile(
            "person feed: until year 9999",
            "GET",
            f"/people/{cast.admin}/activity/?until={year_9999}",
        ),
        Hostile("person feed: surrogate name", "GET", f"/people/{url_bytes(SURROGATE)}/activity/"),
        Hostile("card: huge number", "GET", f"/b/{key}/cards/{huge}/"),
        Hostile("feed: NUL card", "GET", f"/b/{key}/activity/?card=a%00"),
        Hostile("column: huge id", "GET", f"/b/{key}/columns/{huge}/cards?after=%00"),
        Hostile(
            "csv: year 9999",
            "GET",
            f"/b/{key}/insights/deployments.csv?since={year_9999}&until=0000-00-00",
        ),
        Hostile(
            "move: NUL column, year 9999 version",
            "POST",
            f"/b/{key}/cards/{number}/move",
            form(to_column="%00", version=year_9999),
        ),
        Hostile(
            "move: surrogate column",
            "POST",
            f"/b/{key}/cards/{number}/move",
            form(to_column=url_bytes(SURROGATE), version=huge),
        ),
        Hostile(
            "edit: invalid UTF-8 title, huge version",
            "POST",
            f"/b/{key}/cards/{number}/",
            form(title="%ED%A0%80", version=huge, due_date=year_9999),
        ),
        Hostile(
            "API card: surrogate label",
            "POST",
            f"/api/v1/boards/{key}/cards",
            api_json('{"title": "hostile", "labels": ["\\ud800"]}'),
            api=True,
        ),
        Hostile(
            "API card: surrogate assignee",
            "POST",
            f"/api/v1/boards/{key}/cards",
            api_json('{"title": "hostile", "assignees": ["\\ud800"]}'),
            api=True,
        ),
        Hostile(
            "API card: NUL title",
            "POST",
            f"/api/v1/boards/{key}/cards",
            api_json('{"title": "a\\u0000b"}'),
            api=True,
        ),
        Hostile(
            "API card: invalid UTF-8 body",
            "POST",
            f"/api/v1/boards/{key}/cards",
            b'{"title": "\xed\xa0\x80"}',
            api=True,
        ),
        Hostile(
            "API card: due year 275760",
            "POST",
            f"/api/v1/boards/{key}/cards",
            api_json('{"title": "hostile", "due_date": "275760-09-13"}'),
            api=True,
        ),
        Hostile(
            "API move: NUL column",
            "POST",
            f"/api/v1/cards/{ref}/move",
            api_json('{"to": "\\u0000"}'),
            api=True,
        ),
        Hostile(
            "API move: huge version",
            "POST",
            f"/api/v1/cards/{ref}/move",
            api_json(f'{{"to": "review", "expected_version": {huge}}}'),
            api=True,
        ),
        Hostile(
            "API deployment: surrogate version",
            "POST",
            "/api/v1/deployments",
            api_json(
                f'{{"board": "{key}", "version": "\\ud800", "environment": "production",'
                ' "status": "success"}'
            ),
            api=True,
        ),
        Hostile(
            "API deployment: year 10000 start",
            "POST",
            "/api/v1/deployments",
            api_json(
                f'{{"board": "{key}", "version": "v-hostile", "environment": "prod",'
                ' "status": "success",'
                ' "started_at": "9999-12-31T23:59:59.999999-23:59"}'
            ),
            api=True,
        ),
        Hostile(
            "API cards: huge limit", "GET", f"/api/v1/boards/{key}/cards?limit={huge}", api=True
        ),
        Hostile("API events: NUL after", "GET", f"/api/v1/boards/{key}/events?after=%00", api=True),
        Hostile("API card: huge ref", "GET", f"/api/v1/cards/{key}-{huge}", api=True),
        Hostile(
            "API csv: year 9999",
            "GET",
            f"/api/v1/deployments.csv?board={key}&since={year_9999}&until=0001-01-01",
            api=True,
        ),
        Hostile(
            "API rollback: huge id",
            "PATCH",
            f"/api/v1/deployments/{huge}",
            api_json('{"status": "rolled_back"}'),
            api=True,
        ),
    ]


SENDERS = 4  # hostile requests in flight at once (each its own connection)


def hostile_send(port: int, cast: Cast, editor_client: Client, token: str) -> list[tuple[str, int]]:
    """Each hostile request (pages in the editor's session, API routes with the token), and
    the status it got (0: no answer), in the order of `hostile_requests`."""

    def send(hostile: Hostile) -> tuple[str, int]:
        try:
            if hostile.api:
                status, _, _ = Api(port, token).call(hostile.method, hostile.path, hostile.body)
                return hostile.what, status
            page = Client(port)
            page.cookies = dict(editor_client.cookies)  # the same session, another connection
            headers = {}
            if hostile.method == "POST":
                headers = {
                    "Content-Type": "application/x-www-form-urlencoded",
                    "HX-Request": "true",
                    "X-CSRFToken": page.cookies["csrftoken"],
                }
            status, _, _ = page.request(
                hostile.method, hostile.path, body=hostile.body, headers=headers
            )
            return hostile.what, status
        except OSError:
            return hostile.what, 0

    with ThreadPoolExecutor(SENDERS) as pool:
        return list(pool.map(send, hostile_requests(cast)))


# --- probing usernames --------------------------------------------------------------------------


def usernames_probe(port: int, cast: Cast, token: str) -> dict[str, tuple[int, str]]:
    """A new card assigned to a name no one has, and to each stranger: the status and the
    answer's detail (the name itself replaced), per name."""
    api = Api(port, token)
    answers = {}
    nobody = f"chaos-nobody-{uuid.uuid4().hex[:8]}"
    for name in (nobody, *cast.strangers):
        status, _, problem = api.call(
            "POST", f"/api/v1/boards/{cast.board}/cards", {"title": "probe", "assignees": [name]}
        )
        answers[name] = (status, str(problem.get("detail", "")).replace(name, "<name>"))
    return answers


# --- live streams -------------------------------------------------------------------------------


@dataclass
class StreamReader:
    """One EventSource-like connection to a board's live stream (raw, to see it end)."""

    port: int
    path: str
    cookies: dict[str, str]
    status: int = 0
    retry_after: str | None = None
    events: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        cookie = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        self.connection.request(
            "GET",
            self.path,
            headers={"Host": "127.0.0.1", "Cookie": cookie, "Accept": "text/event-stream"},
        )
        self.response = self.connection.getresponse()
        self.status = self.response.status
        self.retry_after = self.response.getheader("Retry-After")
        if self.status != 200:
            self.response.read()

    def ends_within(self, timeout: float) -> bool:
        """Read until the server ends the stream (True) or `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if self.connection.sock is None:
                return True
            self.connection.sock.settimeout(left)
            try:
                line = self.response.readline()
            except TimeoutError:
                return False
            except (OSError, http.client.HTTPException):
                return True
            if not line:
                return True
            if line.startswith(b"event: "):
                self.events.append(line[7:].decode().strip())
        return False

    def first_event(self, timeout: float) -> str | None:
        """The stream's first event (a change, who is here), or None within `timeout`."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0 and self.connection.sock is not None:
            self.connection.sock.settimeout(left)
            try:
                line = self.response.readline()
            except (OSError, http.client.HTTPException):
                return None
            if not line:
                return None
            if line.startswith(b"event: "):
                self.events.append(line[7:].decode().strip())
                return self.events[-1]
        return None

    def close(self) -> None:
        self.connection.close()


def stream_after_logout(port: int, cast: Cast, timeout: float) -> tuple[int, float | None, list]:
    """A member opens the board's live stream, then logs that session out: the stream's
    status, the seconds until the server ended it (None: still open after `timeout`) and the
    events it sent."""
    from django.urls import reverse

    client = browser(port, cast.viewer, cast.password)
    stream = StreamReader(port, f"/b/{cast.board}/live/", dict(client.cookies))
    try:
        if stream.status != 200:
            return stream.status, None, []
        stream.first_event(10)  # it is running: what others do, or who is here, reaches it
        status, _, _ = _form_post(client, reverse("logout"), {})
        logged_out = time.monotonic()
        if status not in (200, 302):
            return stream.status, None, stream.events
        ended = stream.ends_within(timeout)
        return stream.status, (time.monotonic() - logged_out) if ended else None, stream.events
    finally:
        stream.close()


def streams_over_the_cap(port: int, cast: Cast, cap: int) -> tuple[list[int], int, str | None]:
    """One member opens `cap` streams and then one more: the first `cap` statuses, the
    extra one's status and its Retry-After. Every stream is closed again."""
    client = browser(port, cast.streamer, cast.password)
    streams: list[StreamReader] = []
    try:
        for _ in range(cap):
            streams.append(StreamReader(port, f"/b/{cast.board}/live/", dict(client.cookies)))
        extra = StreamReader(port, f"/b/{cast.board}/live/", dict(client.cookies))
        streams.append(extra)
        return [s.status for s in streams[:cap]], extra.status, extra.retry_after
    finally:
        for stream in streams:
            stream.close()
