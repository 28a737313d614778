"""The stack the chaos run brings up, and its scenarios, one after the other on the same data."""

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench import env
from chaos import checks, processes
from chaos.report import Scenario, traffic_figures

if TYPE_CHECKING:
    from bench.server import Server
    from chaos.hostile import Cast
    from chaos.traffic import BoardInfo, Traffic

FAULTS = ["hostile", "redis", "pg", "worker", "beat"]
OWNER = "chaos-owner"
PASSWORD = "chaos-password-1"


@dataclass(frozen=True)
class Timing:
    load: float  # seconds of clean load
    lead: float  # load before a fault
    redis_down: float
    tail: float  # load after a fault
    backlog: int  # delivered cards written at once for the worker scenario (~5 events each)
    beat_load: float


FULL = Timing(load=120, lead=5, redis_down=30, tail=15, backlog=24_000, beat_load=20)
QUICK = Timing(load=30, lead=3, redis_down=10, tail=8, backlog=12_000, beat_load=10)
BROWSERS, API_CLIENTS, CARDS_PER_BOARD = 24, 8, 60
VISIBILITY_TIMEOUT = 15  # the chaos worker's; production's is CELERY_VISIBILITY_TIMEOUT
BEAT_EVERY = 10.0


class Stack:
    """Private PostgreSQL and Redis, uvicorn (3 workers), a Celery worker and beat."""

    def __init__(self, *, quick: bool):
        self.timing = QUICK if quick else FULL
        self.pg = processes.Postgres()
        self.redis = processes.Redis()
        # Started by open(); the scenarios reach them through the properties below.
        self._server: Server | None = None
        self._worker: processes.Celery | None = None
        self.beats: list[processes.Celery] = []
        self._traffic: Traffic | None = None
        self.boards: list[BoardInfo] = []
        self.settings: dict[str, str] = {}

    @property
    def server(self) -> "Server":
        return _running(self._server, "web server")

    @property
    def traffic(self) -> "Traffic":
        return _running(self._traffic, "traffic")

    @property
    def worker(self) -> processes.Celery:
        return _running(self._worker, "Celery worker")

    @worker.setter
    def worker(self, worker: processes.Celery) -> None:
        self._worker = worker

    def open(self) -> None:
        print(f"chaos: PostgreSQL on {self.pg.port}, Redis on {self.redis.port} (private)")
        self.pg.create()
        self.pg.start()
        self.redis.start()
        # bench.env's production-like settings, pointed at this run's own PostgreSQL and Redis.
        env.DATABASE_URL, env.REDIS_URL = self.pg.url, self.redis.url
        env.PRODUCTION.update({
            "DATABASE_URL": self.pg.url, "REDIS_URL": self.redis.url,
            "CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
            "ROLLUPS_EVERY_SECONDS": str(BEAT_EVERY), "LOG_FORMAT": "plain",
        })  # fmt: skip
        self.settings = {k: v for k, v in env.PRODUCTION.items() if k != "SECRET_KEY"}
        env.database_create()
        env.django_setup()
        env.migrate()
        self._data()
        self.celery_env = {**os.environ, **env.PRODUCTION}
        self.worker = processes.worker(self.celery_env, 1)
        self.worker.start()
        self.beats = [processes.beat(self.celery_env, 1)]
        self.beats[0].start()
        from bench.server import Server

        self._server = server = Server(workers=3, log_path=processes.HERE / "web.log")
        try:
            server.__enter__()
        except BaseException:
            server.__exit__(None, None, None)
            self._server = None
            raise
        from chaos.traffic import Traffic

        self._traffic = traffic = Traffic(server.port, self.boards, self.usernames, PASSWORD,
                                          self.token, API_CLIENTS)  # fmt: skip
        traffic.login()
        print(f"chaos: {BROWSERS} browser users and {API_CLIENTS} API clients on "
              f"{', '.join(b.key for b in self.boards)}")  # fmt: skip

    def _data(self) -> None:
        from activity.log import Actor
        from bench import data
        from boards import services
        from boards.tokens import token_create
        from chaos.traffic import STAGES, BoardInfo

        data.PASSWORD = PASSWORD
        self.owner = data.user_make(OWNER)
        users = [data.user_make(f"chaos-user-{i}") for i in range(BROWSERS)]
        self.usernames = [u.username for u in users]
        actor = Actor(user=self.owner)
        for key in ("CHA", "CHB"):
            board = data.board_make(key=key, name=f"Chaos {key}", owner=self.owner, editors=users)
            columns = {c.stage: c.pk for c in board.columns.order_by("position")}
            cards = {}
            for index in range(CARDS_PER_BOARD):
                column = columns[STAGES[index % len(STAGES)]]
                card = services.card_create(
                    actor=actor, board_id=board.pk, title=f"Chaos card {index}", column_id=column
                )
                cards[card.number] = card.pk
            self.boards.append(BoardInfo(key=key, columns=columns, cards=cards))
        _, self.token = token_create(actor=actor, user=self.owner, name="chaos CI")

    def close(self) -> None:
        for step in (self._stop_traffic, self._stop_server, self._stop_celery,
                     self.redis.stop, self.pg.stop, self.pg.destroy):  # fmt: skip
            try:
                step()
            except Exception as error:  # keep stopping the rest
                print(f"chaos: cleanup step {step.__name__} failed: {error}")

    def _stop_traffic(self) -> None:
        if self._traffic is not None:
            self._traffic.stop()
        from django.db import connections

        connections.close_all()

    def _stop_server(self) -> None:
        if self._server is not None:
            self._server.__exit__(None, None, None)

    def _stop_celery(self) -> None:
        for process in [*self.beats, self._worker]:
            if process is not None:
                process.stop()

    @property
    def board_ids(self) -> list[int]:
        from boards.models import Board

        return list(Board.objects.filter(key__in=[b.key for b in self.boards]).values_list(
            "pk", flat=True))  # fmt: skip


def _running[T](part: T | None, name: str) -> T:
    """A part of the stack that `Stack.open` starts: the scenarios run only once it has."""
    if part is None:
        raise RuntimeError(f"the chaos {name} is not running: Stack.open starts it")
    return part


def run_all(stack: Stack, only: list[str]) -> list[Scenario]:
    results = [load(stack)]
    for name in FAULTS:
        if name in only:
            print(f"chaos: {name} ...")
            results.append(globals()[name](stack))
    results.append(final(stack))
    return results


def _traffic(stack: Stack, seconds: float, during=None) -> tuple[float, float, dict]:
    """Run the users for `seconds` (calling `during(started)` in between); returns the start,
    the end and whatever `during` returned."""
    started = time.monotonic()
    stack.traffic.start()
    result = during(started) if during else {}
    remaining = seconds - (time.monotonic() - started)
    if remaining > 0:
        time.sleep(remaining)
    stack.traffic.stop()
    checks.fresh_connection()
    return started, time.monotonic(), result or {}


def _ledger(scenario: Scenario, stack: Stack) -> dict:
    ledger = checks.ledger_check(stack.traffic.ledger, stack.board_ids)
    scenario.figures["accepted changes"] = ledger["accepted"]
    scenario.figures["lost / duplicated"] = f"{ledger['lost']} / {ledger['duplicated']}"
    scenario.figures["applied, answer lost"] = ledger["applied_unacknowledged"]
    scenario.check("every accepted change in the log exactly once",
                   ledger["lost"] == 0 and ledger["duplicated"] == 0)  # fmt: skip
    scenario.check("no card version written twice", ledger["versions_written_twice"] == 0)
    return ledger


def _rebuild(scenario: Scenario, since: float) -> None:
    caught = checks.wait_caught_up(120)
    scenario.figures["catch-up s"] = (
        round(time.monotonic() - since, 1) if caught is not None else None
    )
    scenario.check("rollups caught up", caught is not None)
    equal, detail = checks.rebuild_compare()
    scenario.figures["projection rows"] = detail["rows"]
    scenario.check("rollups equal `rollups --rebuild`", equal)
    for table, difference in detail["differences"].items():
        scenario.notes.append(f"{table} differs from the rebuild: {difference}")


def _integrity(scenario: Scenario, stack: Stack) -> None:
    place = checks.board_integrity(stack.boards, (OWNER, PASSWORD), stack.server.port)
    scenario.check("every card in exactly one place (ranks ordered, shown once)",
                   place["misordered"] == 0 and place["misplaced"] == 0)  # fmt: skip
    if place["misordered"] or place["misplaced"]:
        scenario.notes.append(f"integrity: {place}")
    ok, output = checks.verify_activity([b.key for b in stack.boards])
    scenario.check("verify_activity clean", ok)
    if not ok:
        scenario.notes.extend(line for line in output.splitlines() if "ok," not in line)


def load(stack: Stack) -> Scenario:
    seconds = stack.timing.load
    print(f"chaos: load, {BROWSERS + API_CLIENTS} users for {seconds:.0f} s ...")
    scenario = Scenario(f"load ({BROWSERS}+{API_CLIENTS} users, {seconds:.0f} s)")
    started, ended, _ = _traffic(stack, seconds)
    figures = traffic_figures(stack.traffic.between(started, ended))
    scenario.figures.update(figures)
    scenario.figures["requests/s"] = round(figures["requests"] / (ended - started), 1)
    scenario.check("error rate 0 (no 5xx, no dropped connection)", figures["errors"] == 0)
    _ledger(scenario, stack)
    _integrity(scenario, stack)
    return scenario


def _cast(stack: Stack) -> "Cast":
    """The hostile scenario's people on the first board: an editor who attacks, a viewer and
    a streamer (members), and two people on no board, one of them staff."""
    from activity.log import Actor
    from bench import data
    from boards import services
    from boards.models import Board, Role
    from chaos.hostile import Cast

    board = stack.boards[0]
    board_id = Board.objects.get(key=board.key).pk
    roles = {
        "chaos-mallory": Role.EDITOR,
        "chaos-viewer": Role.VIEWER,
        "chaos-streamer": Role.VIEWER,
    }
    for username, role in roles.items():
        user = data.user_make(username)
        services.membership_set(
            actor=Actor(user=stack.owner), board_id=board_id, user_id=user.pk, role=role
        )
    data.user_make("chaos-outsider")
    staff = data.user_make("chaos-staff")
    staff.is_staff = True
    staff.save(update_fields=["is_staff"])
    return Cast(
        board=board.key,
        admin=OWNER,
        editor="chaos-mallory",
        viewer="chaos-viewer",
        streamer="chaos-streamer",
        strangers=("chaos-outsider", "chaos-staff"),
        card=f"{board.key}-1",
        password=PASSWORD,
    )


def _attack[T](scenario: Scenario, name: str, attack: Callable[[], T]) -> T | None:
    """Run one attack; one that fails to run is a failed check, and the others still run."""
    try:
        return attack()
    except Exception as error:
        scenario.check(f"{name}: ran", False)
        scenario.notes.append(f"{name}: {type(error).__name__}: {error}")
        return None


def hostile(stack: Stack) -> Scenario:
    """The attacks of chaos.hostile, one after the other while the load runs."""
    from activity import live
    from activity.models import Event
    from boards.models import Board
    from chaos import hostile as attacks

    t = stack.timing
    scenario = Scenario("hostile (attacks under load)")
    cast = _cast(stack)
    board_id = Board.objects.get(key=cast.board).pk
    port = stack.server.port
    found: dict = {}

    def attack(started):
        time.sleep(t.lead)
        found["forged"] = _attack(scenario, "forged rows", lambda: attacks.forged_inserts(board_id))
        editor = _attack(
            scenario, "editor's login", lambda: attacks.browser(port, cast.editor, cast.password)
        )
        if editor is not None:
            made = _attack(
                scenario,
                "token named after the admin",
                lambda: attacks.impersonate(port, cast, editor),
            )
            if made is not None:
                found["impersonation"], token = made
                if found["impersonation"].version:  # an accepted change, like any other
                    moved = found["impersonation"]
                    stack.traffic.ledger.add("moves", (moved.card_id, moved.version))
                found["input"] = _attack(
                    scenario,
                    "hostile input",
                    lambda: attacks.hostile_send(port, cast, editor, token),
                )
                found["probe"] = _attack(
                    scenario, "username probe", lambda: attacks.usernames_probe(port, cast, token)
                )
        found["logout"] = _attack(
            scenario,
            "stream after logout",
            lambda: attacks.stream_after_logout(port, cast, live.HEARTBEAT + 5),
        )
        found["cap"] = _attack(
            scenario,
            "streams over the cap",
            lambda: attacks.streams_over_the_cap(port, cast, live.STREAMS_PER_USER),
        )

    started, ended, _ = _traffic(stack, 0, attack)
    figures = traffic_figures(stack.traffic.between(started, ended))
    scenario.figures.update(figures)
    scenario.check("error rate 0 for the users meanwhile", figures["errors"] == 0)
    _hostile_judge(scenario, cast, found)
    checks.fresh_connection()
    written = Event.objects.filter(actor__username=cast.editor).count()
    scenario.figures["events by the attacker"] = written
    scenario.check("the attacks wrote nothing but the token's one move", written == 1)
    _ledger(scenario, stack)
    _integrity(scenario, stack)
    return scenario


def _hostile_judge(scenario: Scenario, cast: "Cast", found: dict) -> None:
    """Each attack's figures and checks (an attack that did not run has its failed check)."""
    from activity import live

    if found.get("forged") is not None:
        refused = found["forged"]
        scenario.figures["forged INSERTs refused"] = f"{sum(refused.values())} / {len(refused)}"
        scenario.check("every forged INSERT refused by the database", all(refused.values()))
        scenario.notes.extend(f"forged INSERT accepted: {w}" for w, ok in refused.items() if not ok)
    if found.get("impersonation") is not None:
        moved = found["impersonation"]
        expected = moved.expected(cast.editor)
        scenario.figures["token move logged as"] = (
            moved.label or f"- (move answered {moved.status})"
        )
        scenario.check(
            f'the token\'s move is logged as "{expected}", never the admin',
            moved.version > 0
            and (moved.actor_name, moved.via) == (cast.editor, cast.admin)
            and moved.label == expected,
        )
        scenario.check(
            "the activity feed says so, naming no one else",
            moved.feed_shows_label and not moved.feed_names_admin,
        )
    if found.get("input") is not None:
        answers = found["input"]
        statuses: dict[str, int] = {}
        for _, status in answers:
            statuses[str(status or "no answer")] = statuses.get(str(status or "no answer"), 0) + 1
        scenario.figures["hostile requests"] = len(answers)
        scenario.figures["hostile answers"] = dict(sorted(statuses.items()))
        scenario.check(
            "hostile input: every answer a 4xx, none a 5xx",
            all(400 <= status < 500 for _, status in answers),
        )
        scenario.notes.extend(
            f"hostile input: {what} answered {status or 'nothing'}"
            for what, status in answers
            if not 400 <= status < 500
        )
    if found.get("probe") is not None:
        probe = found["probe"]
        scenario.figures["username probe answers"] = len(set(probe.values()))
        scenario.check(
            "assignee probe: a name no one has and strangers read the same",
            len(set(probe.values())) == 1
            and all(400 <= status < 500 for status, _ in probe.values()),
        )
        if len(set(probe.values())) != 1:
            scenario.notes.append(f"assignee probe: {probe}")
    if found.get("logout") is not None:
        status, seconds, sent = found["logout"]
        scenario.figures["stream ended after logout s"] = (
            round(seconds, 2) if seconds is not None else None
        )
        scenario.check(
            "a stream whose session logged out ended at once (not at its next heartbeat)",
            status == 200 and seconds is not None and seconds < live.HEARTBEAT / 2,
        )
        if seconds is None:
            scenario.notes.append(f"stream after logout: status {status}, events {sent}")
    if found.get("cap") is not None:
        opened, extra, retry_after = found["cap"]
        scenario.figures["streams opened / cap"] = (
            f"{sum(s == 200 for s in opened)} / {live.STREAMS_PER_USER}"
        )
        scenario.figures["stream over the cap"] = f"{extra}, Retry-After {retry_after}"
        scenario.check(
            f"{live.STREAMS_PER_USER} streams open, the next one a 429 with Retry-After",
            all(s == 200 for s in opened) and extra == 429 and bool(retry_after),
        )


def redis(stack: Stack) -> Scenario:
    t = stack.timing
    scenario = Scenario(f"redis killed {t.redis_down:.0f} s")
    marks = {}

    def outage(started):
        time.sleep(t.lead)
        marks["down"] = time.monotonic()
        stack.redis.kill()
        time.sleep(t.redis_down)
        stack.redis.start()
        marks["up"] = time.monotonic()
        time.sleep(t.tail)

    started, ended, _ = _traffic(stack, 0, outage)
    records = stack.traffic.between(started, ended)
    scenario.figures.update(traffic_figures(records))
    during = traffic_figures(stack.traffic.between(marks["down"], marks["up"]))
    scenario.figures["while down: pages served"] = during["pages served"]
    scenario.figures["while down: writes accepted"] = during["writes accepted"]
    scenario.figures["while down: move p50/p95 ms"] = (
        f"{during['move p50 ms']} / {during['move p95 ms']}"
    )
    board_ops = [r for r in records if r.op in ("page", "move", "edit", "api-move", "deploy")]
    scenario.check("zero 5xx on board pages and moves", not any(r.status >= 500 for r in board_ops))
    scenario.check("error rate 0", scenario.figures["errors"] == 0)
    scenario.check("board served and moves accepted while Redis was down",
                   during["pages served"] > 0 and during["writes accepted"] > 0)  # fmt: skip
    survived = stack.worker.alive()
    scenario.check("the Celery worker survived the outage", survived)
    if not survived:  # restart it, as the container's restart policy would, and go on
        scenario.notes.append("the worker exited during the outage; see var/chaos/worker-1.log")
        stack.worker = processes.worker(stack.celery_env, 3)
        stack.worker.start()
    _ledger(scenario, stack)
    _rebuild(scenario, marks["up"])
    return scenario


def pg(stack: Stack) -> Scenario:
    t = stack.timing
    scenario = Scenario("postgres restarted")
    marks = {}

    def restart(started):
        time.sleep(t.lead)
        marks["down"] = time.monotonic()
        stack.pg.restart()
        marks["up"] = time.monotonic()
        time.sleep(t.tail)

    started, ended, _ = _traffic(stack, 0, restart)
    records = stack.traffic.between(started, ended)
    figures = traffic_figures(records)
    scenario.figures.update(figures)
    failed = [r for r in records if r.is_error]
    unclean = [r for r in failed if not r.clean_503]
    last_failure = max((r.at + r.ms / 1000 for r in failed), default=marks["up"])
    recovery = max(0.0, last_failure - marks["up"])
    later_ok = [r for r in records if r.at > last_failure and 200 <= r.status < 300]
    scenario.figures["restart took s"] = round(marks["up"] - marks["down"], 1)
    scenario.figures["recovery s"] = round(recovery, 1)
    scenario.figures["unclean failures"] = len(unclean)
    scenario.check("requests in flight failed cleanly (503 + Retry-After only)", not unclean)
    scenario.check(
        "recovered by itself within 10 s of the restart", recovery <= 10 and bool(later_ok)
    )
    _ledger(scenario, stack)
    _integrity(scenario, stack)
    return scenario


def worker(stack: Stack) -> Scenario:
    from bench import data
    from delivery.models import ProjectionCursor
    from delivery.rollups import CURSOR, events_pending
    from delivery.tasks import rollups_advance_task

    scenario = Scenario("worker SIGKILL mid-rollup")
    for beat in stack.beats:  # only a redelivery may finish the work
        beat.stop()
    checks.wait_caught_up(60)
    board = data.board_make(key="BULK", name="Chaos backlog", owner=stack.owner)
    data.board_fill(board, data.History(delivered=stack.timing.backlog), owner=stack.owner)
    pending = events_pending()
    scenario.figures["backlog events"] = pending

    def applied() -> int:
        return ProjectionCursor.objects.filter(name=CURSOR).values_list(
            "events_applied", flat=True).first() or 0  # fmt: skip

    base = applied()
    task = rollups_advance_task.apply_async()
    started = time.monotonic()
    while applied() == base and time.monotonic() - started < 120:
        time.sleep(0.02)
    stack.worker.kill()
    killed = time.monotonic()
    done_at_kill = applied() - base
    left = events_pending()
    scenario.figures["applied when killed"] = done_at_kill
    scenario.figures["left when killed"] = left
    scenario.check("killed in the middle of the rollup", done_at_kill > 0 and left > 0)
    stack.worker = processes.worker(stack.celery_env, 2)
    stack.worker.start()
    caught = checks.wait_caught_up(VISIBILITY_TIMEOUT + 120)
    scenario.figures["recovery s"] = round(time.monotonic() - killed, 1) if caught else None
    log = stack.worker.log_text()
    redelivered = f"rollups_advance_task[{task.id}] received" in log
    scenario.figures["visibility timeout s"] = VISIBILITY_TIMEOUT
    scenario.check(f"task {task.id[:8]} redelivered to the new worker", redelivered)
    _rebuild(scenario, killed)
    scenario.figures["catch-up s"] = scenario.figures.pop("recovery s")
    scenario.notes.append("the BULK backlog board is written in bulk by bench.data; "
                          "verify_activity runs on the load boards")  # fmt: skip
    return scenario


def beat(stack: Stack) -> Scenario:
    scenario = Scenario("two beats at once")
    for process in stack.beats:
        process.stop()
    fast = {**stack.celery_env, "ROLLUPS_EVERY_SECONDS": "2"}
    stack.beats = [processes.beat(fast, 1), processes.beat(fast, 2)]
    sent_before = [b.log_text().count("Sending due task") for b in stack.beats]
    for process in stack.beats:
        process.start()
    started, ended, _ = _traffic(stack, stack.timing.beat_load)
    scenario.figures.update(traffic_figures(stack.traffic.between(started, ended)))
    _rebuild(scenario, ended)
    sent = [b.log_text().count("Sending due task") - n for b, n in zip(stack.beats, sent_before,
                                                                       strict=True)]  # fmt: skip
    scenario.figures["tasks sent by each beat"] = " / ".join(map(str, sent))
    scenario.check("both beats were sending", all(n >= 2 for n in sent))
    scenario.check("error rate 0", scenario.figures["errors"] == 0)
    _ledger(scenario, stack)
    return scenario


def final(stack: Stack) -> Scenario:
    scenario = Scenario("final state")
    checks.fresh_connection()
    scenario.figures["requests"] = len(stack.traffic.records)
    scenario.figures.update(stack.traffic.ledger.counts())
    _ledger(scenario, stack)
    _integrity(scenario, stack)
    return scenario
