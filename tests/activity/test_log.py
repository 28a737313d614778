"""Invariant 2: the event log is append-only, refused by the model and by the database."""

import pytest
from django.db import DatabaseError, connection, transaction

from activity import events
from activity.events import EventKind
from activity.log import Actor, NotInTransactionError, record
from activity.models import AppendOnlyError, Event
from tests.conftest import make_card

pytestmark = pytest.mark.django_db


@pytest.fixture
def event(board):
    make_card(board, title="Ship refunds")
    return Event.objects.filter(kind=EventKind.CARD_CREATED).get()


def raw(sql: str, params=()) -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)


@pytest.mark.sqlite
def test_raw_sql_update_is_refused_by_the_database(event):
    with pytest.raises(DatabaseError, match="append-only"):
        raw("UPDATE activity_event SET kind = 'card.forged' WHERE id = %s", [event.pk])
    assert Event.objects.get(pk=event.pk).kind == EventKind.CARD_CREATED


@pytest.mark.sqlite
def test_raw_sql_delete_is_refused_by_the_database(event):
    count = Event.objects.count()
    with pytest.raises(DatabaseError, match="append-only"):
        raw("DELETE FROM activity_event WHERE id = %s", [event.pk])
    with pytest.raises(DatabaseError, match="append-only"):
        raw("DELETE FROM activity_event")
    assert Event.objects.count() == count


@pytest.mark.django_db(transaction=True)
def test_truncate_is_refused_by_postgresql(event):
    """Committed rows, as in production: TRUNCATE is the trigger's to refuse."""
    count = Event.objects.count()
    with pytest.raises(DatabaseError, match="TRUNCATE refused"):
        raw("TRUNCATE activity_event CASCADE")
    with pytest.raises(DatabaseError, match="TRUNCATE refused"):
        raw("TRUNCATE boards_board CASCADE")  # cascades into the log
    assert Event.objects.count() == count


@pytest.mark.sqlite
def test_the_model_refuses_updates_and_deletes(event):
    event.kind = "card.forged"
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        event.delete()
    with pytest.raises(AppendOnlyError):
        Event.objects.filter(pk=event.pk).update(kind="card.forged")
    with pytest.raises(AppendOnlyError):
        Event.objects.all().delete()
    assert Event.objects.get(pk=event.pk).kind == EventKind.CARD_CREATED


def test_postgresql_stamps_each_event_with_its_transaction_id(board):
    with transaction.atomic():
        make_card(board, title="one")
        make_card(board, title="two")
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_current_xact_id()::text::bigint")
            (txid,) = cursor.fetchone()
    assert set(
        Event.objects.filter(kind=EventKind.CARD_CREATED).values_list("txid", flat=True)
    ) == {txid}


@pytest.mark.django_db(transaction=True)
def test_an_event_cannot_be_written_outside_a_transaction(board, alice):
    with pytest.raises(NotInTransactionError):
        record(
            actor=Actor(user=alice),
            board=board,
            event=events.CommentAdded(ref="PAY-1", comment_id=1, body="outside"),
        )


@pytest.mark.sqlite
def test_replacing_an_event_by_id_is_refused(event):
    with pytest.raises(DatabaseError, match="append-only"):
        raw(
            "INSERT OR REPLACE INTO activity_event "
            "(id, occurred_at, actor_name, source, board_id, kind, payload) "
            "SELECT id, occurred_at, 'mallory', source, board_id, 'card.forged', payload "
            "FROM activity_event WHERE id = %s"
            if connection.vendor == "sqlite"
            else "INSERT INTO activity_event "
            "(id, occurred_at, actor_name, source, board_id, kind, payload) "
            "SELECT id, occurred_at, 'mallory', source, board_id, 'card.forged', payload "
            "FROM activity_event WHERE id = %s ON CONFLICT (id) DO UPDATE SET kind = 'card.forged'",
            [event.pk],
        )
    assert Event.objects.get(pk=event.pk).kind == EventKind.CARD_CREATED


@pytest.mark.sqlite
def test_saving_an_event_with_an_existing_id_never_updates_it(event, board, alice):
    forged = Event(
        pk=event.pk, occurred_at=event.occurred_at, actor_name="mallory", source="web",
        board=board, kind="card.forged", payload={},
    )  # fmt: skip
    with pytest.raises(DatabaseError), transaction.atomic():
        forged.save()
    assert Event.objects.get(pk=event.pk).kind == EventKind.CARD_CREATED
