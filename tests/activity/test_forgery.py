"""Rows written past the application: the database refuses them, verification names them,
replay does not apply them (security review: a plain INSERT of a forged deployment)."""

import importlib
import json
from types import SimpleNamespace

import pytest
from django.apps import apps
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import Max

from activity import dbtriggers, events
from activity.chain import LEGACY_FIELDS, chain_verify, legacy_digest
from activity.models import ChainHead, Event, LegacySeal
from history.replay import board_replay, board_verify, events_between, seq_latest
from tests.activity.test_chain import behind_the_apps_back, verify_output
from tests.conftest import column, make_card

pytestmark = pytest.mark.django_db(transaction=True)

FORGED_RELEASE = events.DeploymentRecorded(
    deployment={
        "version": "v666", "environment": "production", "status": "success", "url": "",
        "started_at": None, "finished_at": None, "commits": [], "cards": [],
    },
    moves_to=None,
).to_payload()  # fmt: skip

COLUMNS = "id, occurred_at, actor_name, source, board_id, kind, payload"


def insert_sql(*, seq: bool = False) -> str:
    extra = ", seq, hash" if seq else ""
    marks = ", %s, %s" if seq else ""
    return (
        f"INSERT INTO activity_event ({COLUMNS}{extra}) VALUES "
        f"(%s, %s, 'mallory', 'api', %s, %s, %s{marks})"
    )


def forged_row(board, event_id: int = -1, *, kind=events.EventKind.DEPLOYMENT_RECORDED,
               payload=None) -> list:  # fmt: skip
    newest = Event.objects.filter(board=board).order_by("-seq").first()
    assert newest is not None
    return [event_id, newest.occurred_at, board.pk, kind, json.dumps(payload or FORGED_RELEASE)]


def raw(sql: str, params) -> None:
    """A plain statement, triggers on: what any role with INSERT on the table can do."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)


@pytest.mark.sqlite
def test_a_plain_insert_without_a_seq_is_refused(board):
    before = Event.objects.count()
    with pytest.raises(DatabaseError, match="chained"):
        raw(insert_sql(), forged_row(board))
    assert Event.objects.count() == before


@pytest.mark.sqlite
def test_an_insert_that_is_not_the_boards_chain_head_is_refused(board):
    head = ChainHead.objects.get(board=board)
    at_head = bytes(head.head).hex()
    for seq, digest in [(head.seq + 1, "0" * 64), (head.seq + 1, at_head), (head.seq, "0" * 64),
                        (head.seq + 1, "")]:  # fmt: skip
        with pytest.raises(DatabaseError, match="chained"):
            raw(insert_sql(seq=True), [*forged_row(board), seq, digest])
    # The head's own place is taken by the event that put it there.
    with pytest.raises(IntegrityError):
        raw(insert_sql(seq=True), [*forged_row(board), head.seq, at_head])
    assert not Event.objects.filter(actor_name="mallory").exists()
    assert chain_verify(board_id=board.pk).problems == []


@pytest.mark.sqlite
def test_a_seq_less_row_written_with_the_triggers_off_is_named_and_not_replayed(board, bob):
    make_card(board, title="real")
    forged_card = events.CardCreated(
        card={"id": 999_999, "ref": "PAY-99", "number": 99, "title": "forged",
              "description": "", "due_date": None, "version": 1, "archived": False,
              "column_id": column(board, "To Do").pk, "column": "To Do", "stage": "todo",
              "rank": "a"},
    ).to_payload()  # fmt: skip
    behind_the_apps_back(insert_sql(), forged_row(board, -1))
    behind_the_apps_back(
        insert_sql(), forged_row(board, -2, kind=events.EventKind.CARD_CREATED, payload=forged_card)
    )
    output, code = verify_output("--board", "PAY")
    assert code == 1
    assert "PAY chain: event #-1: not in the chain" in output
    assert "PAY chain: event #-2: not in the chain" in output
    rows = list(
        events_between(board_id=board.pk, after_seq=0, upto_seq=seq_latest(board_id=board.pk))
    )
    assert {row[7] for row in rows}.isdisjoint({-1, -2})
    assert 999_999 not in board_replay(board_id=board.pk).cards
    verification = board_verify(board_id=board.pk)
    assert [p.event_id for p in verification.chain] == [-2, -1]
    assert verification.differences == [] and verification.snapshots == []


@pytest.mark.sqlite
def test_a_chained_row_with_an_id_never_given_is_named(board):
    head = ChainHead.objects.get(board=board)
    behind_the_apps_back(insert_sql(seq=True), [*forged_row(board, -7), head.seq + 1, "0" * 64])
    output, code = verify_output()
    assert code == 1
    assert f"event #-7 (seq {head.seq + 1}): an id the database never gives" in output


def seal_now() -> None:
    """What migration 0010 does: seal every board's seq-less events as they are. It ran before
    the seal's triggers existed, so here it runs with them off (as behind_the_apps_back)."""
    migration = importlib.import_module("activity.migrations.0010_seal_legacy_and_refuse_unchained")
    editor = SimpleNamespace(connection=SimpleNamespace(alias="default"))
    drops = [sql for sql in dbtriggers.SQLITE_SEAL if sql.startswith("DROP")]
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL session_replication_role = replica")
        else:
            for statement in drops:
                cursor.execute(statement)
        migration.seal_legacy_events(apps, editor)
        if connection.vendor == "sqlite":
            for statement in dbtriggers.SQLITE_SEAL:
                cursor.execute(statement)


SEAL_INSERT = (
    "INSERT INTO activity_legacyseal (board_id, count, digest, ids, sealed_at)"
    " VALUES (%s, %s, %s, %s, %s)"
)


def unused_id() -> int:
    """An id past every event's (SQLite's sequence outlives the flush between tests)."""
    return (Event.objects.aggregate(top=Max("id"))["top"] or 0) + 1000


@pytest.mark.sqlite
def test_a_plain_insert_into_the_legacy_seal_is_refused(board):
    """Sealing a forged seq-less row by adding the board's seal: refused at the INSERT, and
    the row stays named. (Before migration 0011 the INSERT was accepted and the forged
    release verified as a legacy event.)"""
    forged = unused_id()
    behind_the_apps_back(insert_sql(), forged_row(board, forged))
    _, digest, runs = legacy_digest(Event.objects.filter(pk=forged).values_list(*LEGACY_FIELDS))
    sealed_at = Event.objects.get(pk=forged).occurred_at
    with pytest.raises(DatabaseError, match="activity_legacyseal is sealed: INSERT refused"):
        raw(SEAL_INSERT, [board.pk, 1, digest, json.dumps(runs), sealed_at])
    assert not LegacySeal.objects.exists()
    output, code = verify_output("--board", "PAY")
    assert code == 1
    assert f"event #{forged}: not in the chain and not legacy events" in output


@pytest.mark.sqlite
def test_the_legacy_seal_cannot_be_changed_or_removed(board):
    comment = events.CommentAdded(ref="PAY-1", comment_id=1, body="from before the chain")
    sealed = unused_id()
    legacy = forged_row(board, sealed, kind=comment.kind, payload=comment.to_payload())
    behind_the_apps_back(insert_sql(), legacy)
    seal_now()
    assert LegacySeal.objects.get(board=board).ids == [[sealed, sealed]]
    # A forged row next to the sealed one, then the seal stretched over it: refused.
    behind_the_apps_back(insert_sql(), [sealed + 1, *legacy[1:]])
    stretch = f"UPDATE activity_legacyseal SET ids = '[[{sealed}, {sealed + 1}]]', count = 2"
    for sql, operation in [(stretch, "UPDATE"), ("DELETE FROM activity_legacyseal", "DELETE")]:
        with pytest.raises(DatabaseError, match=f"activity_legacyseal is sealed: {operation}"):
            raw(sql, [])
    with pytest.raises(DatabaseError, match="activity_legacyseal is sealed"):
        LegacySeal.objects.filter(board=board).update(count=2)
    assert LegacySeal.objects.get(board=board).ids == [[sealed, sealed]]
    output, code = verify_output("--board", "PAY")
    assert code == 1
    assert f"event #{sealed + 1}: not in the chain and not a sealed legacy event" in output


def test_truncating_the_legacy_seal_is_refused_by_postgresql(board):
    if connection.vendor != "postgresql":
        pytest.skip("TRUNCATE is PostgreSQL's")
    with pytest.raises(DatabaseError, match="activity_legacyseal is sealed: TRUNCATE refused"):
        raw("TRUNCATE activity_legacyseal", [])


@pytest.mark.sqlite
def test_sealed_legacy_events_verify_and_any_other_seq_less_row_is_named(board):
    comment = events.CommentAdded(ref="PAY-1", comment_id=1, body="from before the chain")
    legacy = forged_row(board, 10_001, kind=comment.kind, payload=comment.to_payload())
    behind_the_apps_back(insert_sql(), legacy)
    behind_the_apps_back(insert_sql(), [10_002, *legacy[1:]])
    seal_now()
    seal = LegacySeal.objects.get(board=board)
    assert (seal.count, seal.ids) == (2, [[10_001, 10_002]])
    assert verify_output()[1] == 0
    assert [r[7] for r in events_between(board_id=board.pk, after_seq=0, upto_seq=0)] == [
        10_001, 10_002,
    ]  # fmt: skip

    behind_the_apps_back(insert_sql(), [10_000, *legacy[1:]])
    behind_the_apps_back("UPDATE activity_event SET actor_name = 'eve' WHERE id = 10002")
    behind_the_apps_back("DELETE FROM activity_event WHERE id = 10001")
    output, code = verify_output()
    assert code == 1
    assert "event #10000: not in the chain and not a sealed legacy event" in output
    assert "event #10001: a sealed legacy event is missing" in output
    assert [r[7] for r in events_between(board_id=board.pk, after_seq=0, upto_seq=0)] == [10_002]


@pytest.mark.sqlite
def test_an_edited_sealed_legacy_event_breaks_the_seal(board):
    comment = events.CommentAdded(ref="PAY-1", comment_id=1, body="from before the chain")
    behind_the_apps_back(insert_sql(), forged_row(board, 10_001, kind=comment.kind,
                                                  payload=comment.to_payload()))  # fmt: skip
    seal_now()
    behind_the_apps_back("UPDATE activity_event SET actor_name = 'eve' WHERE id = 10001")
    output, code = verify_output()
    assert code == 1
    assert "PAY chain: the legacy seal: the 1 sealed legacy events no longer match" in output


def test_an_event_of_a_board_that_does_not_exist_is_named(board):
    """PostgreSQL only: SQLite's foreign keys hold even with the triggers off."""
    behind_the_apps_back(
        insert_sql(), [-9, *forged_row(board)[1:2], 987_654, *forged_row(board)[3:]]
    )
    output, code = verify_output()
    assert code == 1
    assert "event #-9 (seq None): names board 987654, which does not exist" in output
