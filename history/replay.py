"""Rebuild a board's state at any moment from its events alone (invariant 3, docs/architecture.md).

A board's events are applied in chain order (`Event.seq`, the board's commit order; events
from before the chain, without a seq, come first in id order, and only those sealed as the
board's legacy events: any other seq-less row was written past the application and is not
the board's history, see activity.chain). "The board at time T" is the
board after the last event recorded at or before T, so it is always a state the board really
passed through. `board_state_present` reads the boards tables into the same dataclasses, so
`board_state_diff(replayed, present)` lists every difference (`manage.py verify_activity`).

Snapshots (`BoardSnapshot`, append-only rows) hold the replayed state after some event; a
replay starts from the newest one at or before its target and applies only the events after
it. Reading never writes: `snapshots_catch_up` writes them every `SNAPSHOT_EVERY` events for
a whole board (`verify_activity --snapshots`, after the board verifies); beat's
`history.tasks.snapshots_advance_task` snapshots each board that has grown enough since its
newest one; a caller that is not serving a request may ask `board_replay(write_snapshot=True)`
to keep its target. A snapshot
is only an accelerator: it names the hash of the event it stands after, is ignored when that
event's hash differs, and `verify_activity` checks each against a replay from zero. A change
of the state's shape bumps `FORMAT`, which leaves older snapshots unused.
"""

import datetime
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import Max

from activity import events
from activity.chain import legacy_ids
from activity.events import EventKind
from activity.models import ChainHead, Event
from history.models import BoardSnapshot

FORMAT = 1
SNAPSHOT_EVERY = 1000
EVENT_FIELDS = ("seq", "hash", "kind", "payload", "occurred_at", "actor_id", "card_id", "id")


class BoardNotReplayable(LookupError):
    """The board has no events (yet) at that moment: it did not exist."""


@dataclass(slots=True)
class ColumnState:
    id: int
    name: str
    position: int
    stage: str
    wip_limit: int | None
    wip_blocks: bool


@dataclass(slots=True)
class LabelState:
    id: int
    name: str
    colour: str
    kind: str


@dataclass(slots=True)
class CardState:
    id: int
    number: int
    title: str
    description: str
    due_date: datetime.date | None
    column_id: int
    rank: str
    version: int
    archived: bool
    labels: set[int]
    assignees: set[int]
    created_by_id: int | None
    created_at: datetime.datetime
    updated_at: datetime.datetime
    entered_column_at: datetime.datetime


@dataclass(slots=True)
class BoardState:
    id: int
    key: str
    name: str
    description: str
    created_at: datetime.datetime
    last_card_number: int = 0
    columns: dict[int, ColumnState] = field(default_factory=dict)
    labels: dict[int, LabelState] = field(default_factory=dict)
    members: dict[int, str] = field(default_factory=dict)  # user id: role
    cards: dict[int, CardState] = field(default_factory=dict)
    # Where in the log this state stands: after the event of chain position `seq` (0: only
    # events from before the chain), last changed at `at`.
    seq: int = 0
    at: datetime.datetime | None = None

    def columns_ordered(self) -> list[ColumnState]:
        return sorted(self.columns.values(), key=lambda column: (column.position, column.id))

    def open_cards(self, column_id: int) -> list[CardState]:
        """The column's open cards in board order."""
        cards = [c for c in self.cards.values() if c.column_id == column_id and not c.archived]
        return sorted(cards, key=lambda card: card.rank)

    def ref(self, card: CardState) -> str:
        return f"{self.key}-{card.number}"

    def to_json(self) -> dict[str, Any]:
        def card_json(card: CardState) -> list:
            return [
                card.id, card.number, card.title, card.description,
                card.due_date.isoformat() if card.due_date else None, card.column_id, card.rank,
                card.version, card.archived, sorted(card.labels), sorted(card.assignees),
                card.created_by_id, card.created_at.isoformat(), card.updated_at.isoformat(),
                card.entered_column_at.isoformat(),
            ]  # fmt: skip

        return {
            "board": [self.id, self.key, self.name, self.description, self.created_at.isoformat()],
            "last_card_number": self.last_card_number,
            "columns": [
                [c.id, c.name, c.position, c.stage, c.wip_limit, c.wip_blocks]
                for c in self.columns.values()
            ],
            "labels": [[lb.id, lb.name, lb.colour, lb.kind] for lb in self.labels.values()],
            "members": [[user_id, role] for user_id, role in self.members.items()],
            "cards": [card_json(card) for card in self.cards.values()],
            "seq": self.seq,
            "at": self.at.isoformat() if self.at else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "BoardState":
        board_id, key, name, description, created_at = data["board"]
        state = cls(
            id=board_id,
            key=key,
            name=name,
            description=description,
            created_at=_time(created_at),
            last_card_number=data["last_card_number"],
            seq=data["seq"],
            at=_time(data["at"]) if data["at"] else None,
        )
        for row in data["columns"]:
            state.columns[row[0]] = ColumnState(*row)
        for row in data["labels"]:
            state.labels[row[0]] = LabelState(*row)
        state.members = dict(data["members"])
        for row in data["cards"]:
            (pk, number, title, description, due, column_id, rank, version, archived) = row[:9]
            labels, assignees, created_by_id, created, updated, entered = row[9:]
            state.cards[pk] = CardState(
                pk, number, title, description, _date(due), column_id, rank, version, archived,
                set(labels), set(assignees), created_by_id, _time(created), _time(updated),
                _time(entered),
            )  # fmt: skip
        return state


def _time(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value)


def _date(value: str | None) -> datetime.date | None:
    return datetime.date.fromisoformat(value) if value else None


# --- Applying events ---------------------------------------------------------------------------

Row = tuple  # EVENT_FIELDS


def _touched(card: CardState, p: events.CardChange, occurred_at: datetime.datetime) -> None:
    card.version = p.version if p.version is not None else card.version + 1
    card.updated_at = _time(p.updated_at) if p.updated_at is not None else occurred_at


def _board_created(state: BoardState | None, p: events.BoardCreated, row: Row) -> BoardState:
    board = p.board
    created = board.get("created_at")
    state = BoardState(
        id=board["id"],
        key=board["key"],
        name=board["name"],
        description=board.get("description", ""),
        created_at=_time(created) if created else row[4],
    )
    for column in p.columns:
        _column_put(state, column)
    if p.membership:
        state.members[p.membership["user_id"]] = p.membership["role"]
    return state


def _board_updated(state: BoardState, p: events.BoardUpdated, row: Row) -> None:
    for name, change in p.changes.items():
        setattr(state, name, change["new"])


def _column_put(state: BoardState, c: events.ColumnSnapshot) -> None:
    state.columns[c["id"]] = ColumnState(
        c["id"],
        c["name"],
        c["position"],
        c["stage"],
        c.get("wip_limit"),
        c.get("wip_blocks", False),
    )


def _column_created(state: BoardState, p: events.ColumnCreated, row: Row) -> None:
    _column_put(state, p.column)


def _column_updated(state: BoardState, p: events.ColumnUpdated, row: Row) -> None:
    column = state.columns[p.column_id]
    for name, change in p.changes.items():
        setattr(column, name, change["new"])


def _membership_set(state: BoardState, p: events.MembershipSet, row: Row) -> None:
    state.members[p.user_id] = p.new


def _membership_removed(state: BoardState, p: events.MembershipRemoved, row: Row) -> None:
    state.members.pop(p.user_id, None)


def _label_put(state: BoardState, label: events.LabelSnapshot) -> None:
    state.labels[label["id"]] = LabelState(
        label["id"], label["name"], label["colour"], label["kind"]
    )


def _label_created(state: BoardState, p: events.LabelCreated, row: Row) -> None:
    _label_put(state, p.label)


def _label_updated(state: BoardState, p: events.LabelUpdated, row: Row) -> None:
    _label_put(state, p.new)


def _card_created(state: BoardState, p: events.CardCreated, row: Row) -> None:
    c, occurred_at = p.card, row[4]
    state.cards[c["id"]] = CardState(
        id=c["id"],
        number=c["number"],
        title=c["title"],
        description=c.get("description", ""),
        due_date=_date(c.get("due_date")),
        column_id=c["column_id"],
        rank=c["rank"],
        version=c.get("version", 1),
        archived=c.get("archived", False),
        labels=set(),
        assignees=set(),
        created_by_id=c["created_by_id"] if "created_by_id" in c else row[5],
        created_at=_time(c["created_at"]) if "created_at" in c else occurred_at,
        updated_at=_time(c["updated_at"]) if "updated_at" in c else occurred_at,
        entered_column_at=_time(c["entered_column_at"])
        if "entered_column_at" in c
        else occurred_at,
    )
    state.last_card_number = max(state.last_card_number, c["number"])


def _card_updated(state: BoardState, p: events.CardUpdated, row: Row) -> None:
    card = state.cards[row[6]]
    for name, change in p.changes.items():
        value = change["new"]
        setattr(card, name, _date(value) if name == "due_date" else value)
    _touched(card, p, row[4])


def _card_moved(state: BoardState, p: events.CardMoved, row: Row) -> None:
    card = state.cards[row[6]]
    to = p.to
    if to["column_id"] != card.column_id:
        card.entered_column_at = row[4]
    card.column_id, card.rank = to["column_id"], to["rank"]
    if p.entered_column_at is not None:
        card.entered_column_at = _time(p.entered_column_at)
    for other_id, rank in p.rebalanced.items():  # events from before `respread`
        state.cards[int(other_id)].rank = rank
    if p.respread:
        _respread(state, card)
    _touched(card, p, row[4])


def _respread(state: BoardState, card: CardState) -> None:
    """The move's re-spread, as `boards.services.moves` made it: the column's other open
    cards in their order, around this card at its new place, take `ranks_spread` in turn."""
    others = sorted(
        (
            other
            for other in state.cards.values()
            if other.column_id == card.column_id and not other.archived and other is not card
        ),
        key=lambda other: other.rank,
    )
    from boards.ranking import ranks_spread  # here: the rest of this module needs no boards

    fresh = ranks_spread(count=len(others) + 1)
    if card.rank not in fresh:
        raise events.MalformedEvent(f"a re-spread move's card rank {card.rank!r} is not a spread")
    fresh.remove(card.rank)  # the card's own (its `to.rank`), at its place in the order
    for other, rank in zip(others, fresh, strict=True):
        other.rank = rank


def _card_archived(state: BoardState, p: events.CardArchived, row: Row) -> None:
    card = state.cards[row[6]]
    card.archived = True
    _touched(card, p, row[4])


def _card_restored(state: BoardState, p: events.CardRestored, row: Row) -> None:
    card = state.cards[row[6]]
    card.archived = False
    card.column_id, card.rank = p.column_id, p.rank
    _touched(card, p, row[4])


def _card_labelled(state: BoardState, p: events.CardLabelled, row: Row) -> None:
    card = state.cards[row[6]]
    card.labels.add(p.label["id"])
    _touched(card, p, row[4])


def _card_unlabelled(state: BoardState, p: events.CardUnlabelled, row: Row) -> None:
    card = state.cards[row[6]]
    card.labels.discard(p.label["id"])
    _touched(card, p, row[4])


def _card_assigned(state: BoardState, p: events.CardAssigned, row: Row) -> None:
    card = state.cards[row[6]]
    card.assignees = set(p.new)
    _touched(card, p, row[4])


# Every kind that changes the board, and how. board.created returns the state it starts (a
# second one starts it afresh); the others change in place a state that exists, and before
# a board.created there is none to change.
APPLY: dict[EventKind, Callable[[Any, Any, Row], BoardState | None]] = {
    EventKind.BOARD_CREATED: _board_created,
    EventKind.BOARD_UPDATED: _board_updated,
    EventKind.COLUMN_CREATED: _column_created,
    EventKind.COLUMN_UPDATED: _column_updated,
    EventKind.MEMBERSHIP_SET: _membership_set,
    EventKind.MEMBERSHIP_REMOVED: _membership_removed,
    EventKind.LABEL_CREATED: _label_created,
    EventKind.LABEL_UPDATED: _label_updated,
    EventKind.CARD_CREATED: _card_created,
    EventKind.CARD_UPDATED: _card_updated,
    EventKind.CARD_MOVED: _card_moved,
    EventKind.CARD_ARCHIVED: _card_archived,
    EventKind.CARD_RESTORED: _card_restored,
    EventKind.CARD_LABELLED: _card_labelled,
    EventKind.CARD_UNLABELLED: _card_unlabelled,
    EventKind.CARD_ASSIGNED: _card_assigned,
}
# Kinds that change no board state: their effects (labels, moves) are events of their own.
IGNORED: frozenset[EventKind] = frozenset(
    {
        EventKind.COMMENT_ADDED,
        EventKind.DEPLOYMENT_RECORDED,
        EventKind.DEPLOYMENT_ROLLED_BACK,
        EventKind.INCIDENT_OPENED,
        EventKind.INCIDENT_RESOLVED,
    }
)
# What a handler raises when the payload read but does not fit the board replayed so far
# (a card or column it names is not there, a value of the wrong type).
_MISFITS = (KeyError, IndexError, TypeError, ValueError, AttributeError)


def state_apply(state: BoardState | None, row: Row) -> BoardState | None:
    """The state after one event row (EVENT_FIELDS); MalformedEvent, naming why, when the
    event cannot be read or applied."""
    kind = row[2]
    payload = events.read(kind, row[3])
    if kind not in IGNORED and (state is not None or kind == EventKind.BOARD_CREATED):
        apply = APPLY[kind]
        try:
            state = apply(state, payload, row) or state
        except _MISFITS as error:
            raise events.MalformedEvent(
                f"a {kind} event does not fit the board as replayed "
                f"({type(error).__name__}: {error})"
            ) from error
    if state is not None:
        state.seq = row[0] or state.seq
        state.at = row[4]
    return state


# --- Replaying ---------------------------------------------------------------------------------


def seq_at(*, board_id: int, at: datetime.datetime) -> int:
    """The chain position of the board's last event at or before `at` (0: none)."""
    found = Event.objects.filter(board_id=board_id, seq__isnull=False, occurred_at__lte=at)
    return found.aggregate(m=Max("seq"))["m"] or 0


def seq_latest(*, board_id: int) -> int:
    head = ChainHead.objects.filter(board_id=board_id).values_list("seq", flat=True).first()
    return head or 0


def events_between(
    *,
    board_id: int,
    after_seq: int,
    upto_seq: int,
    legacy_until: datetime.datetime | None = None,
    legacy: bool = True,
) -> Iterator[Row]:
    """The board's event rows in chain order: its sealed legacy ones (no seq) first when
    `after_seq` is 0 (up to `legacy_until` if the target is before the chain), then seqs
    after..upto. A seq-less row that is not sealed legacy is foreign: never yielded."""
    board_events = Event.objects.filter(board_id=board_id)
    if after_seq == 0 and legacy:
        sealed = legacy_ids(board_id=board_id)
        unchained = board_events.filter(seq__isnull=True, id__gt=0)
        if upto_seq == 0 and legacy_until is not None:
            unchained = unchained.filter(occurred_at__lte=legacy_until)
        rows = unchained.order_by("id").values_list(*EVENT_FIELDS).iterator(chunk_size=5000)
        yield from (row for row in rows if sealed(row[7]))
    if upto_seq > after_seq:
        chained = board_events.filter(seq__gt=after_seq, seq__lte=upto_seq).order_by("seq")
        yield from chained.values_list(*EVENT_FIELDS).iterator(chunk_size=5000)


def board_replay(
    *,
    board_id: int,
    at: datetime.datetime | None = None,
    seq: int | None = None,
    use_snapshots: bool = True,
    write_snapshot: bool = False,
) -> BoardState:
    """The board as it was after its event `seq`, or at time `at`, or now; from its events
    alone (and a snapshot of them, unless `use_snapshots` is False). BoardNotReplayable if
    the board did not exist yet. Writes nothing unless `write_snapshot` (never from a page
    view: a GET does not write), which keeps a snapshot at the target when the replay had
    to apply `SNAPSHOT_EVERY` or more events."""
    if seq is None:
        seq = seq_at(board_id=board_id, at=at) if at is not None else seq_latest(board_id=board_id)
    state, base = None, 0
    snapshot = None
    if use_snapshots and seq > 0:
        snapshot = (
            BoardSnapshot.objects.filter(board_id=board_id, format=FORMAT, seq__lte=seq)
            .order_by("-seq")
            .values_list("seq", "event_hash", "state")
            .first()
        )
    rows: Iterable[Row]
    if snapshot is not None:
        base = snapshot[0]
        rows = events_between(board_id=board_id, after_seq=base - 1, upto_seq=seq, legacy=False)
        rows = iter(rows)
        first = next(rows, None)
        if first is not None and first[0] == base and first[1] == snapshot[1]:
            state = BoardState.from_json(snapshot[2])
        else:  # the event it stands after is not what it was: replay from zero instead
            return board_replay(
                board_id=board_id, seq=seq, use_snapshots=False, write_snapshot=write_snapshot
            )
    else:
        rows = events_between(board_id=board_id, after_seq=0, upto_seq=seq, legacy_until=at)
    last_hash = None
    for row in rows:
        state = state_apply(state, row)
        last_hash = row[1]
    if state is None:
        raise BoardNotReplayable(f"Board {board_id} has no events up to seq {seq}.")
    state.seq = seq
    if write_snapshot and seq - base >= SNAPSHOT_EVERY and last_hash:
        snapshot_write(state=state, event_hash=last_hash)
    return state


def snapshot_write(*, state: BoardState, event_hash: str) -> None:
    """Keep this replayed state as a snapshot (once per board, format and seq)."""
    BoardSnapshot.objects.bulk_create(
        [
            BoardSnapshot(
                board_id=state.id,
                format=FORMAT,
                seq=state.seq,
                event_hash=event_hash,
                occurred_max=state.at or state.created_at,
                state=state.to_json(),
            )
        ],
        ignore_conflicts=True,
    )


def snapshots_catch_up(*, board_id: int, every: int = SNAPSHOT_EVERY) -> int:
    """Write the board's missing snapshots, one every `every` events; how many were written."""
    latest = seq_latest(board_id=board_id)
    have = set(
        BoardSnapshot.objects.filter(board_id=board_id, format=FORMAT).values_list("seq", flat=True)
    )
    wanted = [seq for seq in range(every, latest + 1, every) if seq not in have]
    if not wanted:
        return 0
    state = None
    written = 0
    for row in events_between(board_id=board_id, after_seq=0, upto_seq=wanted[-1]):
        state = state_apply(state, row)
        if row[0] in wanted and state is not None:
            snapshot_write(state=state, event_hash=row[1])
            written += 1
    return written


# --- The present, in the same shape ------------------------------------------------------------


def board_state_present(*, board_id: int) -> BoardState:
    """The board as its tables hold it now, comparable with a replay: 7 queries."""
    from boards.models import Board, Card, Column, Label, Membership

    board = Board.objects.get(pk=board_id)
    state = BoardState(
        id=board.pk,
        key=board.key,
        name=board.name,
        description=board.description,
        created_at=board.created_at,
        last_card_number=board.last_card_number,
        seq=seq_latest(board_id=board_id),
    )
    for col in Column.objects.filter(board_id=board_id):
        state.columns[col.pk] = ColumnState(
            col.pk, col.name, col.position, col.stage, col.wip_limit, col.wip_blocks
        )
    for lb in Label.objects.filter(board_id=board_id):
        state.labels[lb.pk] = LabelState(lb.pk, lb.name, lb.colour, lb.kind)
    state.members = dict(
        Membership.objects.filter(board_id=board_id).values_list("user_id", "role")
    )
    for c in Card.objects.filter(board_id=board_id).order_by("pk"):
        state.cards[c.pk] = CardState(
            c.pk, c.number, c.title, c.description, c.due_date, c.column_id, c.rank, c.version,
            c.archived, set(), set(), c.created_by_id, c.created_at, c.updated_at,
            c.entered_column_at,
        )  # fmt: skip
    for card_id, label_id in Card.labels.through.objects.filter(
        card__board_id=board_id
    ).values_list("card_id", "label_id"):
        state.cards[card_id].labels.add(label_id)
    for card_id, user_id in Card.assignees.through.objects.filter(
        card__board_id=board_id
    ).values_list("card_id", "user_id"):
        state.cards[card_id].assignees.add(user_id)
    return state


_Part = ColumnState | LabelState | CardState  # what board_state_diff compares field by field


def board_state_diff(
    replayed: BoardState, present: BoardState, *, names: tuple[str, str] = ("log", "tables")
) -> list[str]:
    """Every difference between two states of one board, in words; [] when equal."""
    a, b = names
    out: list[str] = []

    def differ(what: str, left: Any, right: Any) -> None:
        if left != right:
            out.append(f"{what}: {a} says {_show(left)}, {b} say {_show(right)}")

    for name in ("key", "name", "description", "created_at", "last_card_number"):
        differ(f"board {name}", getattr(replayed, name), getattr(present, name))
    tables: list[tuple[str, Mapping[int, _Part], Mapping[int, _Part], Iterable[str]]] = [
        ("column", replayed.columns, present.columns, ColumnState.__slots__),
        ("label", replayed.labels, present.labels, LabelState.__slots__),
        ("card", replayed.cards, present.cards, CardState.__slots__),
    ]
    for title, left, right, fields in tables:
        for pk in sorted(left.keys() | right.keys()):
            label = f"{title} {pk}"
            if title == "card":
                number = (replayed.cards.get(pk) or present.cards[pk]).number
                label = f"card {present.key}-{number} (id {pk})"
            if pk not in right:
                out.append(f"{label}: in the {a}, not in the {b}")
            elif pk not in left:
                out.append(f"{label}: in the {b}, not in the {a}")
            else:
                for name in fields:
                    if name != "id":
                        differ(f"{label} {name}", getattr(left[pk], name), getattr(right[pk], name))
    for user_id in sorted(replayed.members.keys() | present.members.keys()):
        differ(
            f"membership of user {user_id}",
            replayed.members.get(user_id),
            present.members.get(user_id),
        )
    return out


def _show(value: Any) -> str:
    if isinstance(value, set):
        return repr(sorted(value))
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- What changed between two moments ----------------------------------------------------------


@dataclass(frozen=True)
class CardChange:
    ref: str
    number: int
    title: str
    change: str  # "added", "moved", "removed", "edited"
    then_column: str = ""
    now_column: str = ""


def board_changes(*, then: BoardState, now: BoardState) -> list[CardChange]:
    """Cards opened, moved, closed or edited on the board between two states of it."""
    changes: list[CardChange] = []

    def column_name(state: BoardState, card: CardState | None) -> str:
        column = state.columns.get(card.column_id) if card is not None else None
        return column.name if column else ""

    for pk in sorted(then.cards.keys() | now.cards.keys()):
        old, new = then.cards.get(pk), now.cards.get(pk)
        was_open = old is not None and not old.archived
        is_open = new is not None and not new.archived
        card = new if new is not None else then.cards[pk]  # it is in one state or the other
        then_column, now_column = column_name(then, old), column_name(now, new)
        if is_open and not was_open:
            change = "added"
            then_column = ""
        elif was_open and not is_open:
            change = "removed"
            now_column = ""
        elif old is None or new is None or not (was_open and is_open):
            continue
        elif old.column_id != new.column_id:
            change = "moved"
        elif _visible(old) != _visible(new):
            change = "edited"
        else:
            continue
        changes.append(
            CardChange(now.ref(card), card.number, card.title, change, then_column, now_column)
        )
    order = {"added": 0, "moved": 1, "removed": 2, "edited": 3}
    return sorted(changes, key=lambda change: order[change.change])


def _visible(card: CardState) -> tuple:
    return (card.title, card.description, card.due_date, card.labels, card.assignees)


def users_named(ids: Iterable[int]) -> dict[int, str]:
    User = get_user_model()
    return dict(User.objects.filter(pk__in=set(ids)).values_list("pk", "username"))


# --- Verification ------------------------------------------------------------------------------


@dataclass
class BoardVerification:
    board_id: int
    key: str
    events: int
    head: str
    chain: list = field(default_factory=list)  # activity.chain.ChainProblem
    differences: list[str] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.chain or self.differences or self.snapshots)

    @property
    def problems(self) -> list[str]:
        return (
            [f"chain: {problem}" for problem in self.chain]
            + [f"replay: {difference}" for difference in self.differences]
            + [f"snapshot: {problem}" for problem in self.snapshots]
        )


def board_verify(*, board_id: int) -> BoardVerification:
    """Check a board's log: its hash chain, a replay from zero against the tables, and every
    snapshot against the replay from zero at its place. An event that cannot be read or
    applied is a problem reported (its id and why), never an exception."""
    from activity.chain import chain_verify
    from boards.models import Board

    key = Board.objects.filter(pk=board_id).values_list("key", flat=True).get()
    chain = chain_verify(board_id=board_id)
    result = BoardVerification(board_id=board_id, key=key, events=chain.length, head=chain.head)
    result.chain = chain.problems
    snapshots = dict(
        BoardSnapshot.objects.filter(board_id=board_id, format=FORMAT).values_list("seq", "state")
    )
    latest = seq_latest(board_id=board_id)
    state = None
    for row in events_between(board_id=board_id, after_seq=0, upto_seq=latest):
        try:
            state = state_apply(state, row)
        except events.MalformedEvent as error:
            # What follows builds on this event: comparing past it would only list its echoes.
            at = f" (seq {row[0]})" if row[0] is not None else ""
            result.differences.append(
                f"event #{row[7]}{at} cannot be replayed, so the replay stops there: {error}"
            )
            return result
        if row[0] in snapshots and BoardState.from_json(snapshots.pop(row[0])) != state:
            result.snapshots.append(f"the snapshot after seq {row[0]} differs from a replay")
    result.snapshots += [f"the snapshot after seq {seq} has no event" for seq in sorted(snapshots)]
    if state is None:
        result.differences.append("the board has no board.created event")
        return result
    state.seq = latest
    result.differences = board_state_diff(state, board_state_present(board_id=board_id))
    return result
