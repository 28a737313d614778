"""The benchmarks: the board page, moves, the API, live fan-out, rollups and exports, each
returning Figures with its budgets."""

import datetime
import json
import random
import subprocess
import threading
import time
from collections import Counter
from urllib.parse import urlencode

from django.db import connection

from activity.chain import chain_append_raw, content_of
from activity.events import CardMoved, CardPlace, EventKind
from bench import data
from bench.report import single, timed
from bench.server import Client, Server

KANBOARD = {100: (16, 716_000), 500: (71, 3_400_000), 2000: (275, 13_300_000)}


def _ms(seconds: float) -> float:
    return seconds * 1000


def board_pages(server: Server, client: Client, boards: dict[int, str], repeat: int) -> list:
    figures = []
    for size, key in boards.items():
        times, sizes = [], []
        for index in range(repeat + 2):
            started = time.perf_counter()
            status, _, body = client.request("GET", f"/b/{key}/")
            elapsed = time.perf_counter() - started
            assert status == 200, status
            if index >= 2:  # two warm-ups
                times.append(_ms(elapsed))
                sizes.append(len(body))
        ms, size_limit = KANBOARD[size]
        p50 = timed("board page", f"{size} cards p50", "ms", times, limit=ms)
        p50.ratio, p50.baseline = (p50.median / ms, "Kanboard") if p50.median else (None, "")
        figures.append(p50)
        figures.append(single("board page", f"{size} cards HTML", "bytes", sizes[-1],
                              limit=size_limit / 5))  # fmt: skip
    return figures


def big_board(client: Client, key: str, small_key: str, owner, repeat: int, label: str) -> list:
    from django.test import Client as TestClient
    from django.test.utils import CaptureQueriesContext

    times, size = [], 0
    for index in range(repeat + 2):
        started = time.perf_counter()
        _status, _, body = client.request("GET", f"/b/{key}/")
        if index >= 2:
            times.append(_ms(time.perf_counter() - started))
        size = len(body)
    test_client = TestClient(HTTP_HOST="127.0.0.1")
    test_client.force_login(owner)
    counts = {}
    for board_key in (key, small_key):
        test_client.get(f"/b/{board_key}/")
        with CaptureQueriesContext(connection) as queries:
            response = test_client.get(f"/b/{board_key}/")
        assert response.status_code == 200
        counts[board_key] = len(queries)
    return [
        timed("big board", f"{label} server p50", "ms", times, limit=150),
        single("big board", f"{label} SQL queries", "queries", counts[key], limit=12),
        single(
            "big board",
            "100 cards SQL queries",
            "queries",
            counts[small_key],
            limit=counts[key],
            note="same as big",
        ),
        single("big board", f"{label} HTML", "bytes", size, limit=1_500_000),
    ]


def card_moves(server: Server, users: list, built, seconds: float) -> list:
    """16 browser-like clients move their own cards between columns for `seconds`."""
    from django.test import Client as TestClient
    from django.test.utils import CaptureQueriesContext

    from activity.models import Event
    from boards.models import Card

    key = built.board.key
    columns = [built.columns[s].pk for s in data.STAGES]
    places = {built.columns[s].pk: (built.columns[s].name, s) for s in data.STAGES}
    all_cards = [c for ids in built.open_cards.values() for c in ids]
    cards = {c.pk: c for c in Card.objects.filter(pk__in=all_cards)}
    owned = [all_cards[i :: len(users)] for i in range(len(users))]
    first_event = Event.objects.order_by("-pk").values_list("pk", flat=True).first()
    latencies: list[float] = []
    sizes: list[int] = []
    errors: Counter[str | int] = Counter()  # by exception name, or by HTTP status
    conflicts = 0
    done_moves: Counter = Counter()
    lock = threading.Lock()
    clients = []
    for user in users:
        client = Client(server.port)
        client.login(user.username, data.PASSWORD)
        client.request("GET", f"/b/{key}/")
        clients.append(client)

    def place(column_id: int, rank: str) -> CardPlace:
        name, stage = places[column_id]
        return {"column_id": column_id, "column": name, "stage": stage, "rank": rank}

    def work(index: int):
        nonlocal conflicts
        client, mine = clients[index], owned[index]
        state = {pk: [cards[pk].column_id, cards[pk].version] for pk in mine}
        rng = random.Random(index)
        while time.monotonic() < stop:
            pk = rng.choice(mine)
            column, version = state[pk]
            target = rng.choice([c for c in columns if c != column])
            values = {"to_column": target, "version": version}
            neighbours = [other for other in mine if state[other][0] == target and other != pk]
            if neighbours:
                values["after"] = rng.choice(neighbours)
            started = time.perf_counter()
            try:
                # As a drag or Alt+arrow sends it: the page has placed the card already.
                status, _, body = client.htmx_post(
                    f"/b/{key}/cards/{cards[pk].number}/move",
                    values,
                    current=f"/b/{key}/",
                    headers={"X-Flux-Placed": "1"},
                )
            except OSError as error:
                with lock:
                    errors[type(error).__name__] += 1
                continue
            elapsed = _ms(time.perf_counter() - started)
            with lock:
                if 200 <= status < 300:
                    latencies.append(elapsed)
                    sizes.append(len(body))
                    done_moves[pk] += 1
                    state[pk] = [target, version + 1]
                elif status == 409:
                    conflicts += 1
                    fresh = Card.objects.filter(pk=pk).values_list("column_id", "version").get()
                    state[pk] = list(fresh)
                else:
                    errors[status] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(clients))]
    stop = time.monotonic() + seconds  # after the logins
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    # The log must hold exactly one card.moved event per successful move, none lost or doubled.
    logged = Counter(
        Event.objects.filter(pk__gt=first_event or 0, board=built.board, kind=EventKind.CARD_MOVED)
        .values_list("card_id", flat=True)
    )  # fmt: skip
    lost = sum(max(0, n - logged[pk]) for pk, n in done_moves.items())
    extra = sum(max(0, n - done_moves[pk]) for pk, n in logged.items())
    versions_ok = all(
        len(set(v)) == len(v)
        for v in _versions_by_card(built.board, first_event or 0).values()
    )  # fmt: skip
    # Statements per move, counted in-process on the same request.
    test_client = TestClient(HTTP_HOST="127.0.0.1")
    test_client.force_login(users[0])
    pk = owned[0][0]
    card = Card.objects.get(pk=pk)
    target = next(c for c in columns if c != card.column_id)
    with CaptureQueriesContext(connection) as queries:
        response = test_client.post(
            f"/b/{key}/cards/{card.number}/move",
            {"to_column": target, "version": card.version},
            headers={"HX-Request": "true", "X-Flux-Placed": "1"},
        )
    assert response.status_code < 300, response.status_code
    rate = len(latencies) / wall
    return [
        single("card move http", "moves/s (16 clients)", "moves/s", rate, limit=300, op=">="),
        timed("card move http", "latency p50", "ms", latencies, limit=15),
        timed("card move http", "latency p95", "ms", latencies, limit=40, on="p95"),
        single("card move http", "SQL statements per move", "queries", len(queries), limit=8),
        single("card move http", "response size", "bytes", max(sizes, default=None), limit=10_240),
        single(
            "card move http",
            "errors",
            "count",
            sum(errors.values()),
            limit=0,
            note=", ".join(f"{k}: {v}" for k, v in errors.items())
            + (f" conflicts: {conflicts}" if conflicts else ""),
        ),
        single(
            "card move http",
            "events lost + duplicated",
            "count",
            lost + extra + (0 if versions_ok else 1),
            limit=0,
        ),
    ]


def _versions_by_card(board, after: int) -> dict:
    from activity.models import Event

    found: dict = {}
    for card_id, payload in Event.objects.filter(
        pk__gt=after, board=board, kind=EventKind.CARD_MOVED
    ).values_list("card_id", "payload"):
        found.setdefault(card_id, []).append(payload["version"])
    return found


def raw_moves(built, seconds: float, clients: int = 16) -> float:
    """The same transaction in raw psycopg (lock, update, insert event, commit), in a loop."""
    import psycopg

    from bench.env import DATABASE_URL

    columns = [built.columns[s].pk for s in data.STAGES]
    places = {built.columns[s].pk: (built.columns[s].name, s) for s in data.STAGES}
    all_cards = [c for ids in built.open_cards.values() for c in ids]
    owned = [all_cards[i::clients] for i in range(clients)]
    counts = [0] * clients
    stop = time.monotonic() + seconds

    def place(column_id: int, rank: str) -> CardPlace:
        name, stage = places[column_id]
        return {"column_id": column_id, "column": name, "stage": stage, "rank": rank}

    def work(index: int):
        rng = random.Random(index)
        with psycopg.connect(DATABASE_URL) as conn:
            while time.monotonic() < stop:
                pk = rng.choice(owned[index])
                with conn.transaction():
                    row = conn.execute(
                        "SELECT column_id, version, rank FROM boards_card WHERE id = %s FOR UPDATE",
                        [pk],
                    ).fetchone()
                    assert row is not None, pk  # one of the bench's own cards
                    column, version, rank = row
                    target = rng.choice([c for c in columns if c != column])
                    conn.execute(
                        "UPDATE boards_card SET column_id = %s, version = version + 1,"
                        " updated_at = now(), entered_column_at = now() WHERE id = %s",
                        [target, pk],
                    )
                    moved = CardMoved(
                        from_=place(column, rank), to=place(target, rank), version=version + 1
                    )
                    payload, at = moved.to_payload(), datetime.datetime.now(datetime.UTC)
                    # An event joins its board's chain, as record() does (the database
                    # refuses one that does not): one statement moves the head on.
                    content = content_of(
                        board_id=built.board.pk, card_id=pk, kind=moved.kind, occurred_at=at,
                        actor_id=None, actor_name="raw", source="system", payload=payload,
                        request_id="",
                    )  # fmt: skip
                    cursor = conn.cursor()
                    seq, head = chain_append_raw(
                        cursor, vendor="postgresql", board_id=built.board.pk, content=content
                    )
                    conn.execute(
                        "INSERT INTO activity_event (occurred_at, actor_name, source, board_id,"
                        " card_id, kind, payload, seq, hash)"
                        " VALUES (%s, 'raw', 'system', %s, %s, %s, %s, %s, %s)",
                        [at, built.board.pk, pk, moved.kind, json.dumps(payload), seq, head],
                    )
                counts[index] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.monotonic() - started)


def api_moves(server: Server, token: str, builts: dict[int, data.Built], repeat: int) -> list:
    figures = []
    client = Client(server.port)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    for size, built in builts.items():
        cards = built.open_cards["todo"][: repeat + 2] or []
        times = []
        from boards.models import Card

        numbers = dict(Card.objects.filter(pk__in=cards).values_list("pk", "number"))
        for index, pk in enumerate(cards):
            body = json.dumps({"to": "in_progress"}).encode()
            started = time.perf_counter()
            status, _, _ = client.request(
                "POST", f"/api/v1/cards/{built.board.key}-{numbers[pk]}/move", body=body,
                headers=headers,
            )  # fmt: skip
            elapsed = _ms(time.perf_counter() - started)
            assert status == 200, status
            if index >= 2:
                times.append(elapsed)
        figures.append(timed("api move", f"{size} cards/column p50", "ms", times, limit=5))
    return figures


def api_deployments(server: Server, token: str, built, repeat: int) -> list:
    from boards.models import Card

    client = Client(server.port)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    staging = built.open_cards["staging"]
    numbers = dict(Card.objects.filter(pk__in=staging).values_list("pk", "number"))
    times = []
    for index in range(repeat):
        group = staging[index * 20 : index * 20 + 20]
        if len(group) < 20:
            break
        body = json.dumps({
            "board": built.board.key, "version": f"bench-{index}", "environment": "production",
            "status": "success", "cards": [f"{built.board.key}-{numbers[pk]}" for pk in group],
            "commits": [{"sha": f"{index:08x}", "message": "bench"}],
        }).encode()  # fmt: skip
        started = time.perf_counter()
        status, _, _ = client.request("POST", "/api/v1/deployments", body=body, headers=headers)
        times.append(_ms(time.perf_counter() - started))
        assert status == 201, status
    return [timed("api deployment", "20 cards", "ms", times, limit=100, on="p95")]


def export_csv(server: Server, token: str, expected_rows: int) -> list:
    """Every board's deployment history over HTTP (the API, as a CI job would fetch it)."""
    from boards.models import Board
    from delivery.export import ExportFilter, copy_query

    client = Client(server.port)
    peak = {"rss": 0.0}
    before = max(server.rss_mb().values(), default=0)
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak["rss"] = max(peak["rss"], max(server.rss_mb().values(), default=0))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.perf_counter()
    status, _, body = client.request(
        "GET", "/api/v1/deployments.csv", headers={"Authorization": f"Bearer {token}"}
    )
    elapsed = time.perf_counter() - started
    done.set()
    watcher.join()
    assert status == 200, status
    rows = body.count(b"\r\n") - 1
    del body
    statement, params = copy_query(
        scope=ExportFilter(board_ids=frozenset(Board.objects.values_list("pk", flat=True)))
    )
    select = statement.removeprefix("COPY (").rsplit(") TO STDOUT", 1)[0]
    import psycopg

    from bench.env import DATABASE_URL

    with psycopg.ClientCursor(psycopg.connect(DATABASE_URL)) as cursor:
        inlined = cursor.mogrify(select, params).replace("\n", " ")
    started = time.perf_counter()
    subprocess.run(["psql", DATABASE_URL, "-q", "-c", f"\\copy ({inlined}) to stdout csv"],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    psql = time.perf_counter() - started
    rate = rows / elapsed
    figure = single("csv export", f"{rows:,} rows", "rows/s", rate, limit=200_000, op=">=")
    figure.ratio, figure.baseline = (psql / elapsed), "psql \\copy (goal >= 0.5)"
    return [
        figure,
        single(
            "csv export",
            "server peak RSS",
            "MB",
            peak["rss"],
            limit=150,
            note=f"{before:.0f} MB before",
        ),
        single("csv export", "psql \\copy baseline", "rows/s", rows / psql),
        single("csv export", "rows match", "rows", rows, limit=expected_rows, op=">="),
    ]


def rollups(events: int, incremental_builder) -> list:
    from delivery.rollups import events_pending, rollups_advance, rollups_rebuild

    started = time.perf_counter()
    rollups_rebuild()
    rebuild = time.perf_counter() - started
    incremental_builder()
    deadline = time.monotonic() + 60
    while events_pending() < 1000 and time.monotonic() < deadline:
        time.sleep(0.1)  # another transaction on the server holds the commit horizon
    pending = events_pending()
    started = time.perf_counter()
    applied = rollups_advance()
    incremental = time.perf_counter() - started
    scale = 1_000_000 / max(1, events)
    return [
        single(
            "rollups",
            f"rebuild of {events:,} events",
            "s",
            rebuild,
            limit=30 / scale if scale > 1 else 30,
            note=f"{events / rebuild:,.0f} events/s",
        ),
        single(
            "rollups",
            f"incremental, {applied} new events",
            "s",
            incremental,
            limit=0.5,
            note=f"{pending} pending",
        ),
    ]


def live_fanout(server: Server, users: list, built, viewers: int) -> list:
    """One change to `viewers` open SSE streams: time until each sees its "change" event."""
    import http.client

    probe = Client(server.port)
    probe.login(users[0].username, data.PASSWORD)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", f"/b/{built.board.key}/live/", headers={
        "Cookie": "; ".join(f"{k}={v}" for k, v in probe.cookies.items()),
        "Accept": "text/event-stream"})  # fmt: skip
    response = conn.getresponse()
    if response.status == 404:
        return [single("live fan-out", f"{viewers} viewers p95", "ms", None, limit=500,
                       note="not available (404)")]  # fmt: skip
    conn.close()
    sessions = []
    for user in users:
        client = Client(server.port)
        client.login(user.username, data.PASSWORD)
        sessions.append(client.cookies)
    received: list[float] = []
    ready = threading.Barrier(viewers + 1, timeout=60)
    changed = {"card": built.open_cards["todo"][0], "at": 0.0}
    lock = threading.Lock()
    stop = threading.Event()

    def viewer(index: int):
        cookies = sessions[index % len(sessions)]
        stream = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        stream.request("GET", f"/b/{built.board.key}/live/", headers={
            "Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items()),
            "Accept": "text/event-stream"})  # fmt: skip
        reply = stream.getresponse()
        ready.wait()
        name = None
        try:
            while not stop.is_set():
                line = reply.fp.readline()
                if not line:
                    return
                text = line.decode().strip()
                if text.startswith("event:"):
                    name = text.split(":", 1)[1].strip()
                elif text.startswith("data:") and name == "change":
                    payload = json.loads(text.split(":", 1)[1])
                    # Matched by card, not event id: the fastest streams see the change
                    # before card_move has even returned its id here.
                    if payload.get("card") == changed["card"]:
                        with lock:
                            received.append(_ms(time.perf_counter() - changed["at"]))
                        return
        except (OSError, ValueError):
            return
        finally:
            stream.close()

    threads = [threading.Thread(target=viewer, args=(i,), daemon=True) for i in range(viewers)]
    for thread in threads:
        thread.start()
    ready.wait()
    time.sleep(1.0)  # every stream has subscribed
    from activity.log import Actor
    from boards import services
    from boards.models import Card

    card = Card.objects.get(pk=changed["card"])
    changed["at"] = time.perf_counter()
    services.card_move(actor=Actor(user=users[0]), card_id=card.pk,
                       to_column_id=built.columns["review"].pk,
                       expected_version=card.version)  # fmt: skip
    deadline = time.monotonic() + 10
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stop.set()
    figure = timed("live fan-out", f"{viewers} viewers", "ms", received, limit=500, on="p95",
                   note=f"{len(received)}/{viewers} received")  # fmt: skip
    return [figure]


def browser(server: Server, user, key: str) -> list:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return [single("browser", "5,000 cards interactive", "ms", None, note="no playwright")]
    client = Client(server.port)
    client.login(user.username, data.PASSWORD)
    times_dcl, times_ready = [], []
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path="/usr/bin/chromium",
                                     args=["--no-sandbox", "--headless"])  # fmt: skip
        context = chromium.new_context()
        context.add_cookies([{"name": k, "value": v, "domain": "127.0.0.1", "path": "/"}
                             for k, v in client.cookies.items()])  # fmt: skip
        for _ in range(3):
            page = context.new_page()
            page.goto(f"http://127.0.0.1:{server.port}/b/{key}/", wait_until="domcontentloaded")
            page.wait_for_function(
                "() => window.Sortable && document.querySelector('.board.editable .cards')"
                " && window.Sortable.get(document.querySelector('.board.editable .cards'))",
                timeout=30_000,
            )
            ready = page.evaluate("() => performance.now()")
            dcl = page.evaluate(
                "() => performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd"
            )
            times_dcl.append(dcl)
            times_ready.append(ready)
            page.close()
        chromium.close()
    return [
        timed("browser", "5,000 cards DOMContentLoaded", "ms", times_dcl, limit=1500),
        timed("browser", "5,000 cards first drag possible", "ms", times_ready, limit=1500),
    ]


def query_string(values: dict) -> str:
    return urlencode(values)
