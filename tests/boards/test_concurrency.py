"""Invariant 4 under real concurrency: threads with their own PostgreSQL connections."""

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection, transaction

from activity.events import EventKind
from activity.models import Event
from boards import services
from boards.errors import ConflictError
from boards.models import Card
from tests.conftest import as_actor, column, make_card

pytestmark = pytest.mark.django_db(transaction=True)


def in_thread(work):
    """Run `work` on a fresh connection, closed afterwards, like a separate web process."""

    def run(*args):
        try:
            return work(*args)
        finally:
            connection.close()

    return run


def assert_strict_order(board):
    for col in board.columns.all():
        ranks = list(
            Card.objects.filter(column=col, archived=False)
            .order_by("rank")
            .values_list("rank", flat=True)
        )
        assert len(ranks) == len(set(ranks)), f"duplicate rank in {col.name}"
        assert ranks == sorted(ranks)


def test_many_threads_moving_cards_of_one_column_lose_and_duplicate_nothing(board, bob):
    cards = [make_card(board, title=f"card {i}") for i in range(24)]
    targets = [column(board, name).pk for name in ("To Do", "In Review", "Staging")]
    rng = random.Random(7)
    plans = [
        (card.pk, rng.choice(targets), rng.choice([None, *[c.pk for c in cards]]))
        for card in cards
        for _ in range(3)
    ]
    barrier = threading.Barrier(8)

    @in_thread
    def mover(chunk):
        barrier.wait()
        done = 0
        for card_id, to_column_id, after_id in chunk:
            for _attempt in range(20):
                current = Card.objects.get(pk=card_id)
                after = after_id
                if after is not None:
                    neighbour = Card.objects.get(pk=after)
                    if neighbour.column_id != to_column_id or after == card_id:
                        after = None
                try:
                    services.card_move(
                        actor=as_actor(bob),
                        card_id=card_id,
                        to_column_id=to_column_id,
                        expected_version=current.version,
                        after_id=after,
                    )
                except ConflictError:
                    continue
                except Exception as error:  # a neighbour moved away meanwhile: plan again
                    if "neighbour" in str(error):
                        continue
                    raise
                done += 1
                break
        return done

    chunks = [plans[i::8] for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(mover, chunks))

    assert Card.objects.filter(board=board).count() == 24
    assert Card.objects.filter(board=board, archived=False).count() == 24
    assert_strict_order(board)
    moves = Event.objects.filter(board=board, kind=EventKind.CARD_MOVED)
    versions = sum(c.version - 1 for c in Card.objects.filter(board=board))
    assert moves.count() == versions  # one event for every move that changed a card
    for card in Card.objects.filter(board=board):
        last = moves.filter(card=card).order_by("-id").first()
        if last is not None:
            assert last.payload["to"]["column_id"] == card.column_id
            assert last.payload["to"]["rank"] == card.rank


def test_the_same_card_moved_at_once_succeeds_once_and_conflicts_for_the_rest(board, bob):
    card = make_card(board, title="contested")
    for i in range(5):
        make_card(board, title=f"filler {i}")
    destinations = [column(board, n).pk for n in ("In Progress", "In Review", "Staging")] * 3
    barrier = threading.Barrier(len(destinations))
    seen_version = card.version

    @in_thread
    def attempt(to_column_id):
        barrier.wait()
        try:
            services.card_move(
                actor=as_actor(bob),
                card_id=card.pk,
                to_column_id=to_column_id,
                expected_version=seen_version,
            )
        except ConflictError:
            return "conflict"
        return "moved"

    with ThreadPoolExecutor(len(destinations)) as pool:
        outcomes = list(pool.map(attempt, destinations))

    assert outcomes.count("moved") == 1
    assert outcomes.count("conflict") == len(destinations) - 1
    card.refresh_from_db()
    assert card.version == seen_version + 1
    assert Event.objects.filter(card=card, kind=EventKind.CARD_MOVED).count() == 1
    assert_strict_order(board)


def test_concurrent_inserts_into_one_gap_all_land_in_strict_order(board, bob):
    anchor = make_card(board, title="anchor")
    make_card(board, title="tail")
    newcomers = [make_card(board, title=f"new {i}", column_name="In Progress") for i in range(16)]
    barrier = threading.Barrier(8)
    todo = column(board, "To Do").pk

    @in_thread
    def insert(chunk):
        barrier.wait()
        for card in chunk:
            services.card_move(
                actor=as_actor(bob),
                card_id=card.pk,
                to_column_id=todo,
                expected_version=card.version,
                after_id=anchor.pk,
            )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(insert, [newcomers[i::8] for i in range(8)]))

    titles = list(
        Card.objects.filter(column_id=todo, archived=False)
        .order_by("rank")
        .values_list("title", flat=True)
    )
    assert titles[0] == "anchor"
    assert titles[-1] == "tail"
    assert sorted(titles[1:-1]) == sorted(c.title for c in newcomers)
    assert Event.objects.filter(board=board, kind=EventKind.CARD_MOVED).count() == 16
    assert_strict_order(board)


def test_moves_into_different_columns_of_one_board_wait_only_for_the_log(board, bob):
    """A move locks its target column and card, not the board: while another move on the
    board is still open, a second one reads and locks what it needs without waiting, and
    waits only to append its event after the first one's (the board's hash chain),
    which it does as soon as the first commits."""
    first = make_card(board, title="first")
    second = make_card(board, title="second")
    holding, release = threading.Event(), threading.Event()

    @in_thread
    def slow_move():
        with transaction.atomic():
            services.card_move(
                actor=as_actor(bob),
                card_id=first.pk,
                to_column_id=column(board, "Staging").pk,
                expected_version=first.version,
            )
            holding.set()
            assert release.wait(20)

    moved: list = []

    @in_thread
    def second_move():
        moved.append(
            services.card_move(
                actor=as_actor(bob),
                card_id=second.pk,
                to_column_id=column(board, "In Review").pk,
                expected_version=second.version,
            )
        )

    threads = [threading.Thread(target=slow_move), threading.Thread(target=second_move)]
    threads[0].start()
    try:
        assert holding.wait(20)
        threads[1].start()
        # The second move gets as far as appending its event, and waits there, on the head.
        waiting = ""
        for _ in range(100):
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT query FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database()"
                )
                rows = cursor.fetchall()
            if rows:
                waiting = rows[0][0]
                break
            threads[1].join(0.05)
        assert "activity_chainhead" in waiting
        assert not moved
        release.set()
        threads[1].join(10)
        assert moved and moved[0].to_column.name == "In Review"
    finally:
        release.set()
        for thread in threads:
            thread.join()


def test_a_deployment_and_people_moving_its_cards_at_once_never_deadlock(board, alice, bob):
    """A deployment locks every row it will move before its first event, in the same order as
    a person's move (column, card, then the board's log), so the two cannot wait on each other
    in a circle, whichever starts first."""
    cards = [make_card(board, title=f"release card {n}") for n in range(6)]
    review = column(board, "In Review").pk
    errors: list[BaseException] = []

    @in_thread
    def deploy(round_number):
        try:
            services.deployment_record(
                actor=as_actor(alice),
                board_id=board.pk,
                version=f"v{round_number}",
                environment="production",
                status="success",
                card_numbers=[card.number for card in cards],
            )
        except BaseException as error:
            errors.append(error)

    @in_thread
    def shuffle(card):
        try:
            for _ in range(3):
                services.card_move(
                    actor=as_actor(bob), card_id=card.pk, to_column_id=review, expected_version=None
                )
        except BaseException as error:
            errors.append(error)

    for round_number in range(3):
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = [pool.submit(deploy, round_number)]
            futures += [pool.submit(shuffle, card) for card in reversed(cards)]
            for future in futures:
                future.result(timeout=60)
    assert errors == []
    assert Event.objects.filter(kind=EventKind.DEPLOYMENT_RECORDED).count() == 3
