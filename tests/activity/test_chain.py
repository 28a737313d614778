"""Tamper evidence: each board's events form a hash chain that verify_activity recomputes."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction
from django.test.utils import CaptureQueriesContext

from activity.chain import chain_verify
from activity.events import EventKind
from activity.log import Actor
from activity.models import ChainHead, Event
from boards import services
from tests.conftest import as_actor, column, make_card, make_user

pytestmark = pytest.mark.django_db(transaction=True)


def behind_the_apps_back(sql: str, params=()) -> None:
    """What a database superuser can do: switch the triggers off for one transaction."""
    from activity import dbtriggers

    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL session_replication_role = replica")
            cursor.execute(sql, params)
        else:
            for statement in dbtriggers.SQLITE:
                if statement.startswith("DROP"):
                    cursor.execute(statement)
            cursor.execute(sql, params)
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            for statement in dbtriggers.SQLITE:
                cursor.execute(statement)


def some_history(board, bob):
    cards = [make_card(board, title=f"card {i}") for i in range(4)]
    for card in cards[:3]:
        services.card_move(
            actor=as_actor(bob),
            card_id=card.pk,
            to_column_id=column(board, "In Progress").pk,
            expected_version=None,
        )
    return cards


def verify_output(*args) -> tuple[str, int]:
    from io import StringIO

    out = StringIO()
    try:
        call_command("verify_activity", *args, stdout=out)
    except CommandError as error:
        return out.getvalue() + str(error), error.returncode
    return out.getvalue(), 0


@pytest.mark.sqlite
def test_each_event_extends_its_boards_chain_and_verifies(board, bob):
    some_history(board, bob)
    seqs = list(Event.objects.filter(board=board).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))
    assert all(len(h) == 64 for h in Event.objects.values_list("hash", flat=True))
    head = ChainHead.objects.get(board=board)
    last = Event.objects.filter(board=board).order_by("-seq").first()
    assert last is not None
    assert (head.seq, bytes(head.head).hex()) == (last.seq, last.hash)
    report = chain_verify(board_id=board.pk)
    assert report.problems == [] and report.length == len(seqs)


@pytest.mark.sqlite
def test_an_update_with_the_triggers_off_is_detected_and_located(board, bob):
    cards = some_history(board, bob)
    forged = Event.objects.filter(card=cards[1], kind=EventKind.CARD_MOVED).get()
    behind_the_apps_back(
        "UPDATE activity_event SET actor_name = 'mallory' WHERE id = %s", [forged.pk]
    )
    report = chain_verify(board_id=board.pk)
    assert report.first_broken is not None
    assert report.first_broken.event_id == forged.pk
    assert len(report.problems) == 1  # later events still link to the stored hash
    output, code = verify_output("--board", "PAY")
    assert code == 1
    assert f"event #{forged.pk} (seq {forged.seq})" in output


@pytest.mark.sqlite
def test_a_payload_edit_that_also_rewrites_its_hash_is_caught_at_the_next_event(board, bob):
    cards = some_history(board, bob)
    forged = Event.objects.filter(card=cards[0], kind=EventKind.CARD_MOVED).get()
    assert forged.seq is not None
    behind_the_apps_back("UPDATE activity_event SET hash = %s WHERE id = %s", ["0" * 64, forged.pk])
    report = chain_verify(board_id=board.pk)
    assert report.first_broken is not None
    assert report.first_broken.event_id == forged.pk
    following = Event.objects.filter(board=board, seq=forged.seq + 1).get()
    assert [p.event_id for p in report.problems] == [forged.pk, following.pk]


@pytest.mark.sqlite
def test_a_delete_with_the_triggers_off_is_detected_and_located(board, bob):
    cards = some_history(board, bob)
    deleted = Event.objects.filter(card=cards[1], kind=EventKind.CARD_MOVED).get()
    assert deleted.seq is not None
    after = Event.objects.filter(board=board, seq=deleted.seq + 1).get()
    behind_the_apps_back("DELETE FROM activity_event WHERE id = %s", [deleted.pk])
    report = chain_verify(board_id=board.pk)
    assert report.first_broken is not None
    assert report.first_broken.event_id == after.pk
    assert f"skips seq {deleted.seq}" in report.first_broken.message
    output, code = verify_output()
    assert code == 1 and f"event #{after.pk}" in output


@pytest.mark.sqlite
def test_deleting_the_newest_event_is_detected_by_the_head(board, bob):
    some_history(board, bob)
    newest = Event.objects.filter(board=board).order_by("-seq").first()
    assert newest is not None
    behind_the_apps_back("DELETE FROM activity_event WHERE id = %s", [newest.pk])
    report = chain_verify(board_id=board.pk)
    assert report.first_broken is not None
    assert "deleted at the end" in report.first_broken.message


@pytest.mark.sqlite
def test_a_forged_insert_outside_the_chain_is_reported(board, bob):
    some_history(board, bob)
    behind_the_apps_back(
        "INSERT INTO activity_event (occurred_at, actor_name, source, board_id, kind, payload)"
        " SELECT occurred_at, 'mallory', source, board_id, 'card.forged', payload"
        " FROM activity_event WHERE board_id = %s ORDER BY id DESC LIMIT 1",
        [board.pk],
    )
    forged = Event.objects.get(kind="card.forged")
    first_broken = chain_verify(board_id=board.pk).first_broken
    assert first_broken is not None
    assert first_broken.event_id == forged.pk


@pytest.mark.sqlite
def test_the_chain_head_only_moves_forward(board):
    with pytest.raises(DatabaseError, match="only moves forward"), transaction.atomic():
        ChainHead.objects.filter(board=board).update(seq=1)
    with pytest.raises(DatabaseError, match="only moves forward"), transaction.atomic():
        ChainHead.objects.filter(board=board).delete()


def test_the_chain_costs_one_statement_per_event(board, bob):
    card = make_card(board, title="counted")
    target = column(board, "In Review").pk
    with CaptureQueriesContext(connection) as queries:
        services.card_move(
            actor=as_actor(bob), card_id=card.pk, to_column_id=target, expected_version=None
        )
    chain = [q for q in queries.captured_queries if "activity_chainhead" in q["sql"]]
    assert len(chain) == 1


def test_concurrent_appends_on_one_board_keep_its_chain_valid(board, bob):
    cards = [make_card(board, title=f"card {i}") for i in range(16)]
    other = services.board_create(actor=Actor(user=make_user("olga")), name="Other", key="OTH")
    other_cards = [make_card(other, title=f"other {i}") for i in range(4)]
    barrier = threading.Barrier(8)
    columns = [column(board, name).pk for name in ("In Progress", "In Review", "Staging")]

    def work(index):
        try:
            barrier.wait()
            for round_ in range(3):
                card = cards[(index * 2 + round_) % len(cards)]
                services.card_update(
                    actor=as_actor(bob),
                    card_id=card.pk,
                    expected_version=None,
                    title=f"t{index}-{round_}",
                )
                services.card_move(
                    actor=as_actor(bob),
                    card_id=cards[index * 2].pk,
                    to_column_id=columns[round_],
                    expected_version=None,
                )
                services.card_update(
                    actor=Actor(user=other.memberships.get().user),
                    card_id=other_cards[index % 4].pk,
                    expected_version=None,
                    title=f"o{index}-{round_}",
                )
        finally:
            connection.close()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    for each in (board, other):
        report = chain_verify(board_id=each.pk)
        assert report.problems == []
        assert report.length == Event.objects.filter(board=each).count()
    output, code = verify_output()
    assert code == 0, output
