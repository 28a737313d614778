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

The database takes an event only as its board's newest link (activity.dbtriggers: its seq
and hash must be the board's `ChainHead`, which `chain_append` moves on just before the
insert), so a row without a seq cannot be inserted at all while the triggers stand.

Events written before the chain existed have no seq. Migration 0010 sealed them
(`LegacySeal`: per board their count, their ids and `legacy_digest` of their content); a
seq-less event that is not a sealed one is reported as foreign and is not the board's
history (replay skips it), and a board without a seal has no legacy events at all.
"""

import bisect
import datetime
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
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
    via: str = "",
) -> bytes:
    """sha256 of an event's canonical JSON (its id and txid are not known before insert and
    are not covered; its place in the chain is). `via` (the token that acted for the person)
    is in the document only when there is one, so events without it, those written before
    it existed included, hash exactly as they always have."""
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
    if via:
        document["via"] = via
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
        via=event.via,
    )


def chain_append(event: "Event", *, using: str = "default") -> None:
    """Give a new event its seq and hash, moving its board's head on: one SQL statement.

    The caller's transaction holds the head's row lock until it ends (activity.log.record
    only writes inside one), so the seq order of a board's events is its commit order.
    """
    connection = connections[using]
    with connection.cursor() as cursor:
        event.seq, event.hash = chain_append_raw(
            cursor, vendor=connection.vendor, board_id=event.board_id, content=event_content(event)
        )


def chain_append_raw(cursor: Any, *, vendor: str, board_id: int, content: bytes) -> tuple[int, str]:
    """Move a board's head on by an event of this content hash (`event_content`), on any
    DB-API cursor ("%s" parameters) inside the transaction that then inserts the event with
    the seq and hash returned: the only way in for an event (activity.dbtriggers)."""
    cursor.execute(_APPEND[vendor], [board_id, GENESIS, content, content])
    seq, head = cursor.fetchone()
    return seq, bytes(head).hex()


# --- Legacy events: sealed once --------------------------------------------------------------

# What a legacy event's digest covers. Never change this or legacy_line: seals were computed
# with them (migration 0010) and are recomputed with them by every verification.
LEGACY_FIELDS = (
    "id", "board_id", "card_id", "kind", "occurred_at", "actor_id", "actor_name", "source",
    "payload", "request_id",
)  # fmt: skip


def legacy_line(row: tuple) -> bytes:
    """One legacy event (a row of LEGACY_FIELDS) as the canonical line its seal digests."""
    document = dict(zip(LEGACY_FIELDS, row, strict=True))
    document["occurred_at"] = _utc(document["occurred_at"])
    document["payload"] = canonical_payload(document["payload"])
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode() + b"\n"


def legacy_digest(rows: Iterable[tuple]) -> tuple[int, str, list[list[int]]]:
    """The seal of a board's legacy events (rows of LEGACY_FIELDS in id order): their count,
    the sha256 of their lines, and their ids as [first, last] runs."""
    digest, count = hashlib.sha256(), 0
    runs: list[list[int]] = []
    for row in rows:
        digest.update(legacy_line(row))
        count += 1
        if runs and runs[-1][1] == row[0] - 1:
            runs[-1][1] = row[0]
        else:
            runs.append([row[0], row[0]])
    return count, digest.hexdigest(), runs


def _in_runs(event_id: int, runs: list[list[int]]) -> bool:
    index = bisect.bisect_right(runs, event_id, key=lambda run: run[0]) - 1
    return index >= 0 and runs[index][0] <= event_id <= runs[index][1]


def legacy_ids(*, board_id: int) -> Callable[[int], bool]:
    """Whether an event id is one of the board's sealed legacy events."""
    from activity.models import LegacySeal

    runs = LegacySeal.objects.filter(board_id=board_id).values_list("ids", flat=True).first()
    runs = sorted(runs or [])
    return lambda event_id: _in_runs(event_id, runs)


def legacy_verify(*, board_id: int, batch: int = 5000) -> list["ChainProblem"]:
    """Every seq-less event of the board that is not a sealed legacy one, each named; a sealed
    one missing; the seal's digest when a sealed event was edited."""
    from activity.models import Event, LegacySeal

    problems: list[ChainProblem] = []
    seal = LegacySeal.objects.filter(board_id=board_id).values_list("count", "digest", "ids")
    count, digest, runs = seal.first() or (0, "", [])
    runs = sorted(runs)
    present: set[int] = set()
    rows = Event.objects.filter(board_id=board_id, seq__isnull=True).order_by("id")

    def sealed() -> Iterator[tuple]:  # the sealed rows, streamed; the others are problems
        for row in rows.values_list(*LEGACY_FIELDS).iterator(chunk_size=batch):
            if row[0] > 0 and _in_runs(row[0], runs):
                present.add(row[0])
                yield row
                continue
            why = "a sealed legacy event" if runs else "legacy events (the board has none)"
            problems.append(
                ChainProblem(
                    board_id, row[0], None,
                    f"not in the chain and not {why}: written behind the application's back",
                )
            )  # fmt: skip

    now_count, now_digest, now_runs = legacy_digest(sealed())
    if not runs:
        return problems
    for first, last in runs:
        for event_id in range(first, last + 1):
            if event_id not in present:
                problems.append(
                    ChainProblem(board_id, event_id, None, "a sealed legacy event is missing")
                )
    if (now_count, now_digest) != (count, digest) and now_runs == runs:
        problems.append(
            ChainProblem(
                board_id, None, None,
                f"the {count} sealed legacy events no longer match their seal's digest: "
                "one of them was edited",
                what="the legacy seal",
            )
        )  # fmt: skip
    return problems


# --- Verification ------------------------------------------------------------------------------

VERIFY_FIELDS = (
    "id", "seq", "hash", "board_id", "card_id", "kind", "occurred_at", "actor_id",
    "actor_name", "source", "payload", "request_id", "via",
)  # fmt: skip


@dataclass(frozen=True)
class ChainProblem:
    board_id: int
    event_id: int | None
    seq: int | None
    message: str
    what: str = "the chain head"  # what the problem is about when it names no event

    def __str__(self) -> str:
        where = f"event #{self.event_id}" if self.event_id is not None else self.what
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
    problems += legacy_verify(board_id=board_id, batch=batch)
    head, expected, last_seq = GENESIS, 1, 0
    rows = events.filter(seq__isnull=False).order_by("seq").values_list(*VERIFY_FIELDS)
    for row in rows.iterator(chunk_size=batch):
        record = dict(zip(VERIFY_FIELDS, row, strict=True))
        seq = record["seq"]
        if record["id"] <= 0:
            problem(record["id"], seq, "an id the database never gives: written behind its back")
        if seq == expected - 1:
            problem(record["id"], seq, f"a second event at seq {seq}: a duplicate place")
        elif seq < expected:
            problem(record["id"], seq, f"seq {seq} is not after seq {expected - 1}: out of order")
        elif seq != expected:
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
            via=record["via"],
        )
        head = link(head, content)
        if head.hex() != record["hash"]:
            problem(record["id"], seq, "its content or its place does not match its hash")
            try:  # later events link to the stored hash: check them against it
                stored_hash = bytes.fromhex(record["hash"] or "")
            except ValueError:
                stored_hash = b""
            head = stored_hash if len(stored_hash) == 32 else head
        expected, last_seq = max(expected, seq + 1), max(last_seq, seq)
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
