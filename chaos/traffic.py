"""Simulated users: browser-like htmx clients and CI clients of the API, and what they were told.

A browser user works like static/js/board.js: it reads the board page (each card's column and
`data-version`), moves a card with a form-encoded POST to /b/<KEY>/cards/<n>/move (to_column,
version, after) with HX-Request and the CSRF token, edits a card through the card dialog's
form, and redraws from the columns each answer carries. An API user moves cards and records
deployments with a bearer token and an Idempotency-Key, retrying a 503 or a dropped
connection with the same key, as CI would.

Every answer is a `Record`; every change a client was told succeeded goes into the `Ledger`,
which the checks compare with the activity log afterwards.
"""

import html
import json
import random
import re
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from urllib.parse import urlencode

from bench.server import Client

STAGES = ["todo", "in_progress", "review", "staging", "deployed"]
EXPECTED_REFUSALS = {409, 422}  # a stale version, a full column, a neighbour that moved


@dataclass(frozen=True)
class Record:
    at: float  # time.monotonic() when sent
    ms: float
    who: str  # "browser" or "api"
    op: str  # page, move, dialog, edit, api-move, api-list, deploy
    status: int  # 0: no answer (connection refused, reset, timed out)
    retry_after: bool = False
    error: str = ""

    @property
    def clean_503(self) -> bool:
        return self.status == 503 and self.retry_after

    @property
    def is_error(self) -> bool:
        """Neither a success nor an expected refusal (a 409 conflict or WIP refusal, a 422)."""
        return not (200 <= self.status < 400 or self.status in EXPECTED_REFUSALS)


@dataclass
class Ledger:
    """What the clients were told succeeded."""

    moves: list[tuple[int, int]] = field(default_factory=list)  # (card id, new version)
    edits: list[tuple[int, str]] = field(default_factory=list)  # (card id, new title)
    deployments: list[tuple[int, str]] = field(default_factory=list)  # (event id, version)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, item: tuple) -> None:
        with self.lock:
            getattr(self, kind).append(item)

    def counts(self) -> dict[str, int]:
        return {"moves": len(self.moves), "edits": len(self.edits),
                "deployments": len(self.deployments)}  # fmt: skip


@dataclass
class BoardInfo:
    key: str
    columns: dict[str, int]  # stage -> column id
    cards: dict[int, int]  # card number -> card id


TOKEN = re.compile(
    r'<ol class="cards" data-column="(\d+)"'
    r'|<li class="card[^"]*" id="card-(\d+)" data-card="\d+" data-ref="[^"]*-(\d+)"'
    r' data-version="(\d+)"'
)


def columns_in(page: str) -> dict[int, list[tuple[int, int, int]]]:
    """The columns an answer shows: column id -> [(card id, number, version)], top to bottom."""
    found: dict[int, list[tuple[int, int, int]]] = {}
    current = None
    for match in TOKEN.finditer(page):
        if match.group(1):
            current = int(match.group(1))
            found[current] = []
        elif current is not None:
            found[current].append((int(match.group(2)), int(match.group(3)),
                                   int(match.group(4))))  # fmt: skip
    return found


class Traffic:
    """The simulated users, started and stopped together; their records and ledger."""

    def __init__(self, port: int, boards: list[BoardInfo], users: list[str], password: str,
                 token: str, api_clients: int, seed: int = 9):  # fmt: skip
        self.port, self.boards = port, boards
        self.records: list[Record] = []
        self.ledger = Ledger()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.actors: list = []
        for index, username in enumerate(users):
            self.actors.append(BrowserUser(self, index, username, password,
                                           boards[index % len(boards)], seed))  # fmt: skip
        for index in range(api_clients):
            self.actors.append(ApiUser(self, index, token, boards[index % len(boards)], seed))

    def login(self) -> None:
        for actor in self.actors:
            actor.prepare()

    def start(self) -> None:
        self.stopping.clear()
        self.threads = [threading.Thread(target=a.loop, daemon=True) for a in self.actors]
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(90)
        self.threads = []

    def record(self, record: Record) -> None:
        with self.lock:
            self.records.append(record)

    def between(self, start: float, end: float) -> list[Record]:
        with self.lock:
            return [r for r in self.records if start <= r.at < end]


class BrowserUser:
    """One person on one board, in a browser tab (htmx)."""

    def __init__(self, traffic: Traffic, index: int, username: str, password: str,
                 board: BoardInfo, seed: int):  # fmt: skip
        self.traffic, self.index, self.username, self.password = traffic, index, username, password
        self.board = board
        self.rng = random.Random(seed * 1000 + index)
        self.client = Client(traffic.port)
        self.view: dict[int, list[tuple[int, int, int]]] = {}
        self.edits = 0
        self.home = f"/b/{board.key}/"

    def prepare(self) -> None:
        self.client.login(self.username, self.password)
        self.load()

    def _send(self, op: str, method: str, path: str, *, body: bytes | None = None,
              headers: dict | None = None) -> tuple[int, str]:  # fmt: skip
        started = time.monotonic()
        try:
            status, answer_headers, data = self.client.request(method, path, body=body,
                                                               headers=headers)  # fmt: skip
        except OSError as error:
            self.client.conn.close()
            self.traffic.record(Record(started, (time.monotonic() - started) * 1000, "browser",
                                       op, 0, error=type(error).__name__))  # fmt: skip
            return 0, ""
        retry_after = any(k.lower() == "retry-after" for k in answer_headers)
        self.traffic.record(Record(started, (time.monotonic() - started) * 1000, "browser", op,
                                   status, retry_after))  # fmt: skip
        return status, data.decode("utf-8", "replace")

    def _htmx(self) -> dict:
        page = f"http://127.0.0.1:{self.client.port}{self.home}"
        token = self.client.cookies.get("csrftoken", "")
        return {"HX-Request": "true", "HX-Current-URL": page, "X-CSRFToken": token}

    def load(self) -> None:
        status, page = self._send("page", "GET", self.home)
        if status == 200:
            self.view = columns_in(page)

    def redraw(self, page: str) -> None:
        self.view.update(columns_in(page))

    def loop(self) -> None:
        while not self.traffic.stopping.is_set():
            roll = self.rng.random()
            cards = [(column, card) for column, cards in self.view.items() for card in cards]
            if roll < 0.06 or len(cards) < 2:
                self.load()
            elif roll < 0.85:
                self.move(*self.rng.choice(cards))
            else:
                self.edit(*self.rng.choice(cards))
            time.sleep(self.rng.uniform(0.05, 0.3))

    def move(self, column: int, card: tuple[int, int, int]) -> None:
        card_id, number, version = card
        target = self.rng.choice([c for c in self.view if c != column])
        values = {"to_column": target, "version": version}
        neighbours = self.view.get(target) or []
        if neighbours and self.rng.random() < 0.7:
            values["after"] = self.rng.choice(neighbours)[0]
        body = urlencode(values).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded", **self._htmx()}
        status, page = self._send("move", "POST", f"{self.home}cards/{number}/move", body=body,
                                  headers=headers)  # fmt: skip
        if 200 <= status < 300:
            self.traffic.ledger.add("moves", (card_id, version + 1))
        if status in (200, 409, 422):
            self.redraw(page)
        else:  # what happened is unknown: read the board again, as a person would reload
            self.load()

    def edit(self, column: int, card: tuple[int, int, int]) -> None:
        card_id, number, _ = card
        path = f"{self.home}cards/{number}/"
        status, dialog = self._send("dialog", "GET", path, headers=self._htmx())
        if status != 200:
            return
        form = _dialog_form(dialog)
        if form is None:
            return
        self.edits += 1
        title = f"Chaos {self.board.key}-{number} by {self.username} #{self.edits}"
        form = [(k, v) for k, v in form if k != "title"] + [("title", title)]
        form.append(("csrfmiddlewaretoken", self.client.cookies.get("csrftoken", "")))
        headers = {"Content-Type": "application/x-www-form-urlencoded", **self._htmx()}
        status, page = self._send("edit", "POST", path, body=urlencode(form).encode(),
                                  headers=headers)  # fmt: skip
        if status == 200:
            self.traffic.ledger.add("edits", (card_id, title))
            self.redraw(page)
        elif status not in EXPECTED_REFUSALS:
            self.load()


INPUT = re.compile(r"<input\b[^>]*>")
ATTR = re.compile(r'(\w[\w-]*)(?:="([^"]*)")?')
TEXTAREA = re.compile(r'<textarea[^>]*name="description"[^>]*>(.*?)</textarea>', re.S)


def _dialog_form(dialog: str) -> list[tuple[str, str]] | None:
    """The card form's fields as the browser would submit them (checked boxes only)."""
    start = dialog.find('<form class="card-form"')
    if start < 0:
        return None
    end = dialog.find("</form>", start)
    form_html = dialog[start:end]
    fields: list[tuple[str, str]] = []
    for tag in INPUT.findall(form_html):
        attrs = {k: html.unescape(v or "") for k, v in ATTR.findall(tag[6:])}
        name = attrs.get("name")
        if not name or name == "csrfmiddlewaretoken":
            continue
        if attrs.get("type") == "checkbox" and "checked" not in attrs:
            continue
        fields.append((name, attrs.get("value", "")))
    match = TEXTAREA.search(form_html)
    fields.append(("description", html.unescape(match.group(1)).lstrip("\n") if match else ""))
    return fields


class ApiUser:
    """A CI pipeline: moves cards by stage and records deployments, through the REST API."""

    ATTEMPTS = 8

    def __init__(self, traffic: Traffic, index: int, token: str, board: BoardInfo, seed: int):
        self.traffic, self.index, self.board = traffic, index, board
        self.rng = random.Random(seed * 2000 + index)
        self.client = Client(traffic.port)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.known: dict[str, tuple[str, int]] = {}  # ref -> (stage, version)
        self.deployments = 0

    def prepare(self) -> None:
        self.refresh()

    def call(self, op: str, method: str, path: str, payload: dict | None = None
             ) -> tuple[int, dict]:  # fmt: skip
        """One API call; a 503 or a dropped connection is retried with the same key."""
        headers = dict(self.headers)
        if method == "POST":
            headers["Idempotency-Key"] = uuid.uuid4().hex
        body = json.dumps(payload).encode() if payload is not None else None
        for _ in range(self.ATTEMPTS):
            started = time.monotonic()
            try:
                status, answer_headers, data = self.client.request(method, path, body=body,
                                                                   headers=headers)  # fmt: skip
            except OSError as error:
                self.client.conn.close()
                self.traffic.record(Record(started, (time.monotonic() - started) * 1000, "api",
                                           op, 0, error=type(error).__name__))  # fmt: skip
                time.sleep(1)
                continue
            retry_after = {k.lower(): v for k, v in answer_headers.items()}.get("retry-after")
            self.traffic.record(Record(started, (time.monotonic() - started) * 1000, "api", op,
                                       status, retry_after is not None))  # fmt: skip
            if status == 503:
                time.sleep(min(float(retry_after or 1), 2.0))
                continue
            try:
                return status, json.loads(data or b"{}")
            except ValueError:
                return status, {}
        return 0, {}

    def refresh(self) -> None:
        status, page = self.call("api-list", "GET",
                                 f"/api/v1/boards/{self.board.key}/cards?limit=200")  # fmt: skip
        if status == 200:
            self.known = {c["ref"]: (c["stage"], c["version"]) for c in page["items"]}

    def loop(self) -> None:
        while not self.traffic.stopping.is_set():
            if len(self.known) < 4 or self.rng.random() < 0.05:
                self.refresh()
            elif self.rng.random() < 0.75:
                self.move()
            else:
                self.deploy()
            time.sleep(self.rng.uniform(0.1, 0.4))

    def move(self) -> None:
        ref = self.rng.choice(sorted(self.known))
        stage, version = self.known[ref]
        target = self.rng.choice([s for s in STAGES if s != stage])
        status, card = self.call("api-move", "POST", f"/api/v1/cards/{ref}/move",
                                 {"to": target, "expected_version": version})  # fmt: skip
        if status == 200:
            if card["version"] != version:
                number = int(ref.rsplit("-", 1)[1])
                self.traffic.ledger.add("moves", (self.board.cards[number], card["version"]))
            self.known[ref] = (card["stage"], card["version"])
        else:  # refused or unknown: read the board again before moving it
            self.known.pop(ref, None)

    def deploy(self) -> None:
        by_stage = defaultdict(list)
        for ref, (stage, _) in self.known.items():
            by_stage[stage].append(ref)
        pool = by_stage["staging"] + by_stage["review"] or sorted(self.known)
        cards = self.rng.sample(pool, min(len(pool), self.rng.randint(1, 3)))
        self.deployments += 1
        version = f"chaos-{self.index}-{self.deployments}-{uuid.uuid4().hex[:6]}"
        status = "failed" if self.rng.random() < 0.15 else "success"
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
        answer_status, answer = self.call("deploy", "POST", "/api/v1/deployments", {
            "board": self.board.key, "version": version, "environment": "production",
            "status": status, "cards": cards,
            "commits": [{"sha": uuid.uuid4().hex[:12], "message": f"ship {version}",
                         "timestamp": at}]})  # fmt: skip
        if answer_status == 201:
            self.traffic.ledger.add("deployments", (answer["id"], version))
        for ref in cards:  # labelled and maybe moved: versions changed
            self.known.pop(ref, None)
