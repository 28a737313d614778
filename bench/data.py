"""Bench data, written in bulk but valid for the app.

Boards, columns and memberships are made by the services. Cards and their events are written
with COPY (ids reserved from the sequences first, so events can name cards and a move can
name its deployment's event): every card has a `card.created` event, every move a
`card.moved` event with the places and versions the services would write, every deployment a
`deployment.recorded` event naming its cards, and each card keeps one rank from a board-wide
`boards.ranking.ranks_spread`, so ranks never collide in any column at any moment and
replaying the log gives the tables. Events are committed in transactions of EVENTS_PER_COMMIT
(each gets its own txid, as the commit-safe rollup reader expects).

Events join their board's hash chain as the application's would: each one's seq and hash
are computed here with activity.chain's functions, from the board's chain head on. The
database takes an event only as its board's chain head (activity.dbtriggers), so a batch is
COPYed into a temporary table and then, on the server, row by row, the head is moved to
the row's seq and hash and the row inserted: COPY's speed for the data, one statement
checked per row.
"""

import datetime
import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.contrib.auth import get_user_model
from django.db import connection
from tqdm import tqdm

from activity.chain import event_content, link
from activity.events import CardCreated, CardMoved, CardPlace, DeploymentRecorded, Payload
from activity.log import Actor
from activity.models import ChainHead, Event
from boards import services
from boards.models import Board, Column, Role
from boards.ranking import ranks_spread

if TYPE_CHECKING:
    from django.contrib.auth.models import User

STAGES = ["todo", "in_progress", "review", "staging", "deployed"]
EVENTS_PER_COMMIT = 2000
CARDS_PER_COMMIT = 5000
PASSWORD = "bench-password-1"
HOUR = datetime.timedelta(hours=1)


def user_make(username: str) -> "User":
    User = get_user_model()
    user = User.objects.filter(username=username).first()
    return user or User.objects.create_user(username=username, password=PASSWORD)


def board_make(*, key: str, name: str, owner, editors: Iterable = ()) -> Board:
    board = services.board_create(actor=Actor(user=owner), name=name, key=key)
    for user in editors:
        services.membership_set(
            actor=Actor(user=owner), board_id=board.pk, user_id=user.pk, role=Role.EDITOR
        )
    return board


def _reserve(table: str, count: int) -> int:
    """Reserve `count` ids of `table`'s sequence; returns the first."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT setval(pg_get_serial_sequence(%s, 'id'),"
            " nextval(pg_get_serial_sequence(%s, 'id')) + %s - 1)",
            [table, table, count],
        )
        return cursor.fetchone()[0] - count + 1


EVENT_COLUMNS = "id, occurred_at, actor_id, actor_name, source, board_id, card_id, kind, payload"
CARD_COLUMNS = (
    "id, board_id, column_id, number, title, description, rank, version, archived,"
    " created_at, updated_at, entered_column_at"
)


class _Copier:
    """Buffers rows and COPYs them in a transaction of their own every `per_commit` rows."""

    def __init__(self, table: str, columns: str, per_commit: int, bar=None):
        self.sql = f"COPY {table} ({columns}) FROM STDIN"
        self.table, self.per_commit, self.bar = table, per_commit, bar
        self.rows: list[tuple] = []
        self.next_id, self.last_id = 0, -1

    def new_id(self) -> int:
        if self.next_id > self.last_id:
            self.next_id = _reserve(self.table, 10_000)
            self.last_id = self.next_id + 10_000 - 1
        self.next_id += 1
        return self.next_id - 1

    def add(self, row: tuple) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.per_commit:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        connection.ensure_connection()
        raw = connection.connection
        with raw.transaction(), raw.cursor() as cursor, cursor.copy(self.sql) as copy:
            for row in self.rows:
                copy.write_row(row)
        if self.bar is not None:
            self.bar.update(len(self.rows))
        self.rows = []


_STAGE = "bench_event_stage"
_STAGE_CREATE = f"""
    CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (
        id bigint, occurred_at timestamptz, actor_id integer, actor_name text, source text,
        board_id bigint, card_id bigint, kind text, payload jsonb, seq bigint, hash text
    ) ON COMMIT DELETE ROWS
"""
_CHAIN_IN = f"""
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT * FROM {_STAGE} ORDER BY board_id, seq LOOP
        UPDATE activity_chainhead SET seq = r.seq, head = decode(r.hash, 'hex')
        WHERE board_id = r.board_id;
        INSERT INTO activity_event ({EVENT_COLUMNS}, seq, hash)
        VALUES (r.id, r.occurred_at, r.actor_id, r.actor_name, r.source, r.board_id,
                r.card_id, r.kind, r.payload, r.seq, r.hash);
    END LOOP;
END
$$
"""


class _EventCopier(_Copier):
    """Chained events: rows of EVENT_COLUMNS gain their seq and hash from the board's chain
    head on, and each batch goes in through the staging table (see the module docstring)."""

    def __init__(self, board: Board, per_commit: int, bar=None):
        super().__init__("activity_event", EVENT_COLUMNS, per_commit, bar)
        self.sql = f"COPY {_STAGE} ({EVENT_COLUMNS}, seq, hash) FROM STDIN"
        head = ChainHead.objects.filter(board=board).values_list("seq", "head").first()
        self.seq, self.head = (head[0], bytes(head[1])) if head else (0, bytes(32))

    def add(self, row: tuple) -> None:
        _, at, actor_id, actor_name, source, board_id, card_id, kind, payload = row
        event = Event(
            occurred_at=at, actor_id=actor_id, actor_name=actor_name, source=source,
            board_id=board_id, card_id=card_id, kind=kind, payload=json.loads(payload),
        )  # fmt: skip
        self.seq, self.head = self.seq + 1, link(self.head, event_content(event))
        super().add((*row, self.seq, self.head.hex()))

    def flush(self) -> None:
        if not self.rows:
            return
        connection.ensure_connection()
        raw = connection.connection
        with raw.transaction(), raw.cursor() as cursor:
            cursor.execute(_STAGE_CREATE)
            with cursor.copy(self.sql) as copy:
                for row in self.rows:
                    copy.write_row(row)
            cursor.execute(_CHAIN_IN)
        if self.bar is not None:
            self.bar.update(len(self.rows))
        self.rows = []


@dataclass
class History:
    """What to put on a board: open cards per stage, and delivered cards with their way there."""

    open_per_stage: dict[str, int] = field(default_factory=dict)
    delivered: int = 0
    cards_per_deployment: int = 20
    redeployments: int = 0  # more successful deployments of already delivered cards
    cards_per_redeployment: int = 100
    start: datetime.datetime | None = None


@dataclass
class Built:
    board: Board
    columns: dict[str, Column]
    open_cards: dict[str, list[int]]  # stage -> card ids, top to bottom
    delivered_cards: list[int]
    events: int


def history_events(history: History) -> int:
    opened = sum(history.open_per_stage.values())
    deployments = -(-history.delivered // max(1, history.cards_per_deployment))
    return opened + history.delivered * 5 + deployments + history.redeployments


def board_fill(board: Board, history: History, *, owner, bar=None) -> Built:
    """Write `history` onto `board` (a new board made by board_make)."""
    columns = {column.stage: column for column in board.columns.order_by("position")}
    total = sum(history.open_per_stage.values()) + history.delivered
    ranks = ranks_spread(count=total) if total else []
    start = history.start or (
        datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=365)
    ).replace(microsecond=0)
    cards = _Copier("boards_card", CARD_COLUMNS, CARDS_PER_COMMIT)
    events = _EventCopier(board, EVENTS_PER_COMMIT, bar=bar)
    number = board.last_card_number
    rank_of = iter(ranks)
    open_cards: dict[str, list[tuple[str, int]]] = {stage: [] for stage in STAGES}  # (rank, id)
    plan = []  # (card id, number, rank, final stage, created_at)
    # Delivered cards first (the history), then the open ones (the present work).
    step = datetime.timedelta(seconds=max(1, 300 * 86400 // max(1, total)))
    moment = start
    delivered: list[tuple[int, int, str, datetime.datetime]] = []
    for _ in range(history.delivered):
        number += 1
        card_id, rank = cards.new_id(), next(rank_of)
        delivered.append((card_id, number, rank, moment))
        plan.append((card_id, number, rank, "deployed", moment))
        moment += step
    for stage, count in history.open_per_stage.items():
        for _ in range(count):
            number += 1
            card_id, rank = cards.new_id(), next(rank_of)
            plan.append((card_id, number, rank, stage, moment))
            open_cards[stage].append((rank, card_id))
            moment += step
    for card_id, card_number, rank, stage, created in plan:
        version = 5 if stage == "deployed" else 1
        final = created + 10 * HOUR if stage == "deployed" else created
        cards.add((card_id, board.pk, columns[stage].pk, card_number,
                   f"Bench card {card_number}", "", rank, version, False, created, final,
                   final))  # fmt: skip
    cards.flush()
    board.last_card_number = number
    board.save(update_fields=["last_card_number"])

    def place(stage: str, rank: str) -> CardPlace:
        column = columns[stage]
        return {"column_id": column.pk, "column": column.name, "stage": stage, "rank": rank}

    def emit(at, event: Payload, card_id=None, *, ci=False) -> int:
        event_id = events.new_id()
        events.add((event_id, at, None if ci else owner.pk, "ci" if ci else owner.username,
                    "api" if ci else "web", board.pk, card_id, event.kind,
                    json.dumps(event.to_payload())))  # fmt: skip
        return event_id

    def created_event(card_id, card_number, rank, stage, at):
        emit(at, CardCreated(card={
            "id": card_id, "ref": f"{board.key}-{card_number}", "number": card_number,
            "title": f"Bench card {card_number}", "description": "", "due_date": None,
            "version": 1, "archived": False, **place(stage, rank)}), card_id)  # fmt: skip

    count = 0
    per = max(1, history.cards_per_deployment)
    for group_start in range(0, len(delivered), per):
        group = delivered[group_start : group_start + per]
        for card_id, card_number, rank, at in group:
            created_event(card_id, card_number, rank, "todo", at)
            path = ["todo", "in_progress", "review", "staging"]
            for version, (before, after) in enumerate(itertools.pairwise(path), start=2):
                emit(at + (version * 2 - 3) * HOUR, CardMoved(
                    ref=f"{board.key}-{card_number}", from_=place(before, rank),
                    to=place(after, rank), version=version), card_id)  # fmt: skip
        deployed_at = group[-1][3] + 10 * HOUR
        count += 1
        deployment = emit(deployed_at, DeploymentRecorded(deployment={
            "version": f"v{count}", "environment": "production", "status": "success",
            "url": "", "started_at": None, "finished_at": None,
            "commits": [{"sha": f"{count:08x}", "message": f"release {count}",
                         "timestamp": (group[0][3] - HOUR).isoformat()}],
            "cards": [{"id": c, "ref": f"{board.key}-{n}", "number": n} for c, n, _, _ in group]},
            moves_to=columns["deployed"].name), ci=True)  # fmt: skip
        for card_id, card_number, rank, _ in group:
            emit(deployed_at, CardMoved(
                ref=f"{board.key}-{card_number}", from_=place("staging", rank),
                to=place("deployed", rank), version=5, deployment_id=deployment),
                card_id, ci=True)  # fmt: skip
    for index in range(history.redeployments):
        picks = (
            delivered[(index * 7919) % max(1, len(delivered)) :][: history.cards_per_redeployment]
            or delivered[: history.cards_per_redeployment]
        )
        at = moment + index * datetime.timedelta(minutes=1)
        count += 1
        emit(at, DeploymentRecorded(deployment={
            "version": f"v{count}", "environment": "production", "status": "success",
            "url": "", "started_at": None, "finished_at": None, "commits": [],
            "cards": [{"id": c, "ref": f"{board.key}-{n}", "number": n} for c, n, _, _ in picks]},
            moves_to=columns["deployed"].name), ci=True)  # fmt: skip
    for card_id, card_number, rank, stage, at in plan:
        if stage != "deployed":
            created_event(card_id, card_number, rank, stage, at)
    events.flush()
    return Built(
        board=board,
        columns=columns,
        open_cards={stage: [c for _, c in sorted(ids)] for stage, ids in open_cards.items()},
        delivered_cards=[c for c, _, _, _ in delivered],
        events=history_events(history),
    )


def board_with_cards(*, key: str, owner, editors=(), per_stage: dict[str, int], **extra) -> Built:
    board = board_make(key=key, name=f"Bench {key}", owner=owner, editors=editors)
    return board_fill(board, History(open_per_stage=per_stage, **extra), owner=owner)


def spread(total: int, stages=STAGES) -> dict[str, int]:
    """`total` open cards spread evenly over `stages`."""
    base, extra = divmod(total, len(stages))
    return {stage: base + (index < extra) for index, stage in enumerate(stages)}


def progress(total: int, desc: str):
    return tqdm(total=total, unit="event", desc=desc, disable=None, leave=False)
