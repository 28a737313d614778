"""Tamper evidence: each board's events form a hash chain.

An event's content hash is sha256 over its canonical JSON (sorted keys, no spaces, UTC times
with microseconds, ids rather than names of rows, the payload as the database gives it
back). The board's chain head after event n is

    head(n) = sha256(head(n - 1) || content(n)),   head(0) = 32 zero bytes,

stored on the event (`hash`, hex) with its place (`seq`), and on the board's `ChainHead` row.
Appending costs one SQL statement: an upsert of the head row that computes the new head in
the database, locks the row until commit (so appends on one board serialize, and seq order
is the board's commit order) and returns the new seq and head. Boards have their own rows,
so they never wait for each other.

`chain_verify` recomputes every board's chain from its rows. An UPDATE of any hashed column
breaks the hash of that event; a DELETE leaves a gap in the seqs, or a head that the last
event no longer reaches; a forged INSERT lacks a seq (or duplicates one). Whoever rewrites a
board's whole chain from the edit onwards, head row included, is not caught by the database
alone: publish or copy the heads (`verify_activity` prints them) to anchor them elsewhere.

Events written before the chain existed have no seq: the chain starts at the first hashed
event, and an unhashed event after it is reported as forged.
"""

import datetime
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db import connections

if TYPE_CHECKING:
    from activity.models import Event

GENESIS = bytes(32)
CONTENT_VERSION = 1

_APPEND = {
    "postgresql": """
        INSERT INTO activity_chainhead AS h (board_id, seq, head)
        VALUES (%s, 1, sha256(%s::bytea || %s::bytea))
        ON CONFLICT (board_id) DO UPDATE SET seq = h.seq + 1, head = sha256(h.head || %s::bytea)
        RETURNING seq, head
    """,
    "sqlite": """
        INSERT INTO activity_chainhead (board_id, seq, head)
        VALUES (%s, 1, flux_chain(%s, %s))
        ON CONFLICT (board_id) DO UPDATE SET seq = seq + 1, head = flux_chain(head, %s)
        RETURNING seq, head
    """,
}


def link(previous: bytes, content: bytes) -> bytes:
    """The chain head after an event: sha256(previous head || content hash)."""
    return hashlib.sha256(bytes(previous) + bytes(content)).digest()


def sqlite_functions(sender, connection, **kwargs) -> None:
    """Give SQLite the `flux_chain(previous, content)` function PostgreSQL has as sha256(||)."""
    if connection.vendor == "sqlite":
        connection.connection.create_function("flux_chain", 2, link, deterministic=True)


def _utc(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_payload(payload: Any) -> Any:
    """The payload as it reads back from the database (jsonb reorders keys; JSON has no
    tuples or int keys): what the content hash is computed over."""
    return json.loads(json.dumps(payload))


def content_of(
    *,
    board_id: int,
    card_id: int | None,
    kind: str,
    occurred_at: datetime.datetime,
    actor_id: int | None,
    actor_name: str,
    source: str,
    payload: Any,
    request_id: str,
) -> bytes:
    """sha256 of an event's canonical JSON (its id and txid are not known before insert and
    are not covered; its place in the chain is)."""
    document = {
        "v": CONTENT_VERSION,
        "board": board_id,
        "card": card_id,
        "kind": kind,
        "at": _utc(occurred_at),
        "actor": actor_id,
        "actor_name": actor_name,
        "source": source,
        "payload": payload,
        "request_id": request_id,
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).digest()


def event_content(event: "Event") -> bytes:
    return content_of(
        board_id=event.board_id,
        card_id=event.card_id,
        kind=event.kind,
        occurred_at=event.occurred_at,
        actor_id=event.actor_id,
        actor_name=event.actor_name,
        source=event.source,
        payload=canonical_payload(event.payload),
        request_id=event.request_id,
    )


def chain_append(event: "Event", *, using: str = "default") -> None:
    """Give a new event its seq and hash, moving its board's head on: one SQL statement.

    The caller's transaction holds the head's row lock until it ends (activity.log.record
    only writes inside one), so the seq order of a board's events is its commit order.
    """
    connection = connections[using]
    content = event_content(event)
    with connection.cursor() as cursor:
        cursor.execute(_APPEND[connection.vendor], [event.board_id, GENESIS, content, content])
        seq, head = cursor.fetchone()
    event.seq, event.hash = seq, bytes(head).hex()


# --- Verification ------------------------------------------------------------------------------

VERIFY_FIELDS = (
    "id", "seq", "hash", "board_id", "card_id", "kind", "occurred_at", "actor_id",
    "actor_name", "source", "payload", "request_id",
)  # fmt: skip


@dataclass(frozen=True)
class ChainProblem:
    board_id: int
    event_id: int | None
    seq: int | None
    message: str

    def __str__(self) -> str:
        where = f"event #{self.event_id}" if self.event_id is not None else "the chain head"
        at = f" (seq {self.seq})" if self.seq is not None else ""
        return f"{where}{at}: {self.message}"


@dataclass(frozen=True)
class ChainReport:
    board_id: int
    length: int
    head: str
    problems: list[ChainProblem]

    @property
    def first_broken(self) -> ChainProblem | None:
        return self.problems[0] if self.problems else None


def chain_verify(*, board_id: int, batch: int = 5000) -> ChainReport:
    """Recompute a board's chain from its rows; every problem, the first broken event first."""
    from activity.models import ChainHead, Event

    problems: list[ChainProblem] = []

    def problem(event_id, seq, message):
        problems.append(ChainProblem(board_id, event_id, seq, message))

    events = Event.objects.filter(board_id=board_id)
    first_hashed = events.filter(seq__isnull=False).order_by("seq").values_list("id", flat=True)
    first_id = first_hashed.first()
    if first_id is not None:
        for event_id in events.filter(seq__isnull=True, id__gt=first_id).values_list(
            "id", flat=True
        ):
            problem(event_id, None, "not in the chain: written behind the application's back")
    head, expected, last_seq = GENESIS, 1, 0
    rows = events.filter(seq__isnull=False).order_by("seq").values_list(*VERIFY_FIELDS)
    for row in rows.iterator(chunk_size=batch):
        record = dict(zip(VERIFY_FIELDS, row, strict=True))
        seq = record["seq"]
        if seq != expected:
            missing = f"seq {expected}" if seq == expected + 1 else f"seqs {expected}-{seq - 1}"
            problem(record["id"], seq, f"the chain skips {missing}: events deleted before it")
        content = content_of(
            board_id=record["board_id"],
            card_id=record["card_id"],
            kind=record["kind"],
            occurred_at=record["occurred_at"],
            actor_id=record["actor_id"],
            actor_name=record["actor_name"],
            source=record["source"],
            payload=record["payload"],
            request_id=record["request_id"],
        )
        head = link(head, content)
        if head.hex() != record["hash"]:
            problem(record["id"], seq, "its content or its place does not match its hash")
            head = bytes.fromhex(record["hash"]) if len(record["hash"]) == 64 else head
        expected, last_seq = seq + 1, seq
    stored = ChainHead.objects.filter(board_id=board_id).values_list("seq", "head").first()
    if stored is None:
        if last_seq:
            problem(None, None, "the board's chain head is missing")
    else:
        stored_seq, stored_head = stored[0], bytes(stored[1])
        if stored_seq != last_seq:
            problem(
                None,
                stored_seq,
                f"the head is at seq {stored_seq} but the last event is seq {last_seq}: "
                "events deleted at the end",
            )
        elif stored_head != head:
            problem(None, stored_seq, "the head does not match the last event's hash")
    return ChainReport(board_id=board_id, length=last_seq, head=head.hex(), problems=problems)
