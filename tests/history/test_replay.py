"""Invariant 3: replaying a board's events reproduces its state, now and at any past moment."""

import contextlib
import datetime
import itertools
import time
from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from activity import clock
from activity.events import EventKind
from activity.models import Event
from boards import ranking, services
from boards.errors import FluxError
from boards.models import Board, Card, Label, Role, Stage
from history import replay
from history.models import BoardSnapshot
from history.replay import (
    BoardNotReplayable,
    board_changes,
    board_replay,
    board_state_diff,
    board_state_present,
    snapshots_catch_up,
)
from tests.conftest import as_actor, column, make_card, make_user

pytestmark = pytest.mark.django_db(transaction=True)

START = datetime.datetime(2026, 9, 1, 9, 0, tzinfo=datetime.UTC)
_keys = itertools.count(1)


def assert_replay_equals_present(board: Board, **options) -> None:
    replayed = board_replay(board_id=board.pk, **options)
    assert board_state_diff(replayed, board_state_present(board_id=board.pk)) == []


# Each operation picks its targets by index, so any list of them is a valid history.
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("create"), st.integers(0, 9), st.text(min_size=1, max_size=12)),
        st.tuples(st.just("move"), st.integers(0, 40), st.integers(0, 9), st.integers(-1, 40)),
        st.tuples(st.just("update"), st.integers(0, 40), st.text(max_size=12), st.booleans()),
        st.tuples(st.just("archive"), st.integers(0, 40)),
        st.tuples(st.just("restore"), st.integers(0, 40)),
        st.tuples(st.just("label"), st.integers(0, 40), st.integers(0, 5)),
        st.tuples(st.just("unlabel"), st.integers(0, 40), st.integers(0, 5)),
        st.tuples(st.just("assign"), st.integers(0, 40), st.sets(st.integers(0, 2))),
        st.tuples(st.just("comment"), st.integers(0, 40)),
        st.tuples(st.just("label_new"), st.text(min_size=1, max_size=8), st.booleans()),
        st.tuples(st.just("label_edit"), st.integers(0, 5), st.text(min_size=1, max_size=8)),
        st.tuples(st.just("column_new"), st.sampled_from(list(Stage)), st.integers(0, 9)),
        st.tuples(st.just("column_edit"), st.integers(0, 9), st.integers(0, 9), st.booleans()),
        st.tuples(st.just("board_edit"), st.text(min_size=1, max_size=20)),
        st.tuples(st.just("member"), st.integers(0, 2), st.sampled_from(list(Role))),
        st.tuples(st.just("unmember"), st.integers(1, 2)),
        st.tuples(st.just("deploy"), st.lists(st.integers(1, 40), max_size=3), st.booleans()),
        st.tuples(st.just("edit"), st.integers(0, 40), st.text(min_size=1, max_size=8)),
        st.tuples(st.just("capture")),
    ),
    min_size=20,
    max_size=70,
)


CARD_OPERATIONS = {
    "move", "update", "archive", "restore", "label", "unlabel", "assign", "comment", "edit",
}  # fmt: skip


def pick(items: list, index: int):
    return items[index % len(items)] if items else None


def run(op, *, board: Board, people: list, admin) -> None:
    """One service call chosen by `op`; refusals (bad input, WIP, permissions) are fine."""
    actor = as_actor(admin)
    cards = list(Card.objects.filter(board=board).order_by("pk"))
    columns = list(board.columns.order_by("position", "pk"))
    labels = list(Label.objects.filter(board=board).order_by("pk"))
    card = pick(cards, op[1]) if op[0] in CARD_OPERATIONS else None
    match op:
        case ("create", col, title):
            services.card_create(
                actor=actor, board_id=board.pk, title=title, column_id=pick(columns, col).pk
            )
        case ("move", _, col, after):
            if card is None:
                return
            target = pick(columns, col)
            neighbour = pick(cards, after) if after >= 0 else None
            after_id = None
            if (
                neighbour is not None
                and neighbour.column_id == target.pk
                and not neighbour.archived
            ):
                after_id = neighbour.pk if neighbour.pk != card.pk else None
            services.card_move(
                actor=actor,
                card_id=card.pk,
                to_column_id=target.pk,
                expected_version=card.version,
                after_id=after_id,
            )
        case ("update", _, text, with_due):
            if card is not None:
                services.card_update(
                    actor=actor,
                    card_id=card.pk,
                    expected_version=None,
                    description=text,
                    due_date=datetime.date(2026, 10, len(text) + 1) if with_due else None,
                )
        case ("archive", _):
            if card is not None:
                services.card_archive(actor=actor, card_id=card.pk)
        case ("restore", _):
            if card is not None:
                services.card_restore(actor=actor, card_id=card.pk)
        case ("label", _, index):
            if card is not None and labels:
                services.card_label_add(
                    actor=actor, card_id=card.pk, label_id=pick(labels, index).pk
                )
        case ("unlabel", _, index):
            if card is not None and labels:
                services.card_label_remove(
                    actor=actor, card_id=card.pk, label_id=pick(labels, index).pk
                )
        case ("assign", _, who):
            if card is not None:
                ids = [people[i].pk for i in who]
                services.card_assign(actor=actor, card_id=card.pk, user_ids=ids)
        case ("comment", _):
            if card is not None:
                services.comment_add(actor=actor, card_id=card.pk, body="looks good")
        case ("label_new", name, release):
            services.label_create(
                actor=actor, board_id=board.pk, name=name, kind="release" if release else "general"
            )
        case ("label_edit", index, name):
            if labels:
                services.label_update(
                    actor=actor, label_id=pick(labels, index).pk, name=name, colour="#123456"
                )
        case ("column_new", stage, position):
            services.column_create(
                actor=actor,
                board_id=board.pk,
                name=f"Extra {len(columns)}",
                stage=stage,
                position=position,
            )
        case ("column_edit", index, position, blocks):
            services.column_update(
                actor=actor,
                column_id=pick(columns, index).pk,
                position=position,
                wip_limit=position + 1 if blocks else None,
                wip_blocks=blocks,
            )
        case ("board_edit", name):
            services.board_update(actor=actor, board_id=board.pk, name=name, description=name)
        case ("member", index, role):
            if index:
                services.membership_set(
                    actor=actor, board_id=board.pk, user_id=people[index].pk, role=role
                )
        case ("unmember", index):
            services.membership_remove(actor=actor, board_id=board.pk, user_id=people[index].pk)
        case ("deploy", numbers, production):
            services.deployment_record(
                actor=actor,
                board_id=board.pk,
                version=f"v{len(numbers)}.{next(_keys)}",
                environment="production" if production else "staging",
                status="success",
                card_numbers=[n for n in numbers if n <= board.last_card_number],
            )
        case ("edit", _, title):
            if card is not None:
                services.card_details_set(
                    actor=actor,
                    card_id=card.pk,
                    expected_version=card.version,
                    title=title,
                    description=card.description,
                    due_date=None,
                    label_ids=[label.pk for label in labels[:1]],
                    assignee_ids=[admin.pk],
                )


@pytest.mark.sqlite
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(operations=OPERATIONS)
def test_replay_equals_the_tables_and_every_captured_past_after_any_history(
    operations, transactional_db
):
    admin = make_user(f"admin{next(_keys)}")
    people = [admin, make_user(f"p{next(_keys)}"), make_user(f"q{next(_keys)}")]
    with clock.frozen_at(START):
        board = services.board_create(actor=as_actor(admin), name="Replayed", key=f"R{next(_keys)}")
    captured: list[tuple[datetime.datetime, replay.BoardState]] = []
    for step, op in enumerate(operations, start=1):
        moment = START + datetime.timedelta(minutes=step)
        if op[0] == "capture":
            captured.append((moment, board_state_present(board_id=board.pk)))
            continue
        board.refresh_from_db()
        with clock.frozen_at(moment), contextlib.suppress(ValidationError, FluxError):
            run(op, board=board, people=people, admin=admin)
    assert_replay_equals_present(board, use_snapshots=False)
    for moment, then in captured:
        assert board_state_diff(board_replay(board_id=board.pk, at=moment), then) == []
        # Half a minute later nothing had happened yet: still the same board.
        later = moment + datetime.timedelta(seconds=30)
        assert board_state_diff(board_replay(board_id=board.pk, at=later), then) == []
    with pytest.raises(BoardNotReplayable):
        board_replay(board_id=board.pk, at=START - datetime.timedelta(seconds=1))


def test_a_rebalanced_column_replays_to_the_same_ranks(board, bob, monkeypatch):
    """Squeezing cards into one gap makes long keys; the rebalance rewrites the column."""
    monkeypatch.setattr(ranking, "REBALANCE_AT", 5)  # sooner than the real 48 characters
    top, bottom = make_card(board, title="top"), make_card(board, title="bottom")
    movers = [make_card(board, title=f"mover {i}") for i in range(2)]
    for i in range(40):
        mover = movers[i % 2]
        services.card_move(
            actor=as_actor(bob),
            card_id=mover.pk,
            to_column_id=column(board, "To Do").pk,
            expected_version=None,
            after_id=top.pk,
        )
    assert Event.objects.filter(kind=EventKind.CARD_MOVED, payload__has_key="respread").exists()
    assert bottom.pk
    assert_replay_equals_present(board, use_snapshots=False)


def test_snapshots_only_accelerate(board, bob, monkeypatch):
    monkeypatch.setattr(replay, "SNAPSHOT_EVERY", 10)
    cards = [make_card(board, title=f"card {i}") for i in range(8)]
    moments = []
    for round_ in range(4):
        for card in cards:
            services.card_move(
                actor=as_actor(bob),
                card_id=card.pk,
                to_column_id=column(board, ["In Progress", "In Review", "To Do"][round_ % 3]).pk,
                expected_version=None,
            )
        newest = Event.objects.order_by("-id").first()
        assert newest is not None
        moments.append((newest.seq, board_state_present(board_id=board.pk)))
    assert snapshots_catch_up(board_id=board.pk, every=10) >= 3
    assert snapshots_catch_up(board_id=board.pk, every=10) == 0  # written once
    for seq, then in moments:
        from_zero = board_replay(board_id=board.pk, seq=seq, use_snapshots=False)
        fast = board_replay(board_id=board.pk, seq=seq)
        assert board_state_diff(fast, from_zero) == [] and board_state_diff(fast, then) == []
    # A replay reads only; asked to, one that applied many events keeps a snapshot there.
    newest = Event.objects.order_by("-seq").first()
    assert newest is not None and newest.seq is not None
    latest = newest.seq
    before = BoardSnapshot.objects.count()
    board_replay(board_id=board.pk, seq=latest, use_snapshots=False)
    assert BoardSnapshot.objects.count() == before
    board_replay(board_id=board.pk, seq=latest, use_snapshots=False, write_snapshot=True)
    assert BoardSnapshot.objects.filter(seq=latest).exists()


def test_a_tampered_snapshot_is_caught_by_verify(board, bob, monkeypatch):
    monkeypatch.setattr(replay, "SNAPSHOT_EVERY", 5)
    for i in range(6):
        make_card(board, title=f"card {i}")
    snapshots_catch_up(board_id=board.pk, every=5)
    snapshot = BoardSnapshot.objects.first()
    assert snapshot is not None
    state = dict(snapshot.state, last_card_number=99)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET session_replication_role = replica")
        cursor.execute(
            "UPDATE activity_boardsnapshot SET state = %s WHERE id = %s",
            [__import__("json").dumps(state), snapshot.pk],
        )
        if connection.vendor == "postgresql":
            cursor.execute("SET session_replication_role = origin")
    verification = replay.board_verify(board_id=board.pk)
    assert verification.snapshots and not verification.ok


def test_changes_since_list_added_moved_and_removed_cards(board, bob):
    staying = make_card(board, title="staying")
    moving = make_card(board, title="moving")
    leaving = make_card(board, title="leaving")
    then = board_replay(board_id=board.pk)
    make_card(board, title="new")
    services.card_move(
        actor=as_actor(bob),
        card_id=moving.pk,
        to_column_id=column(board, "Staging").pk,
        expected_version=None,
    )
    services.card_archive(actor=as_actor(bob), card_id=leaving.pk)
    changes = board_changes(then=then, now=board_state_present(board_id=board.pk))
    assert [(c.change, c.title, c.then_column, c.now_column) for c in changes] == [
        ("added", "new", "", "To Do"),
        ("moved", "moving", "To Do", "Staging"),
        ("removed", "leaving", "To Do", ""),
    ]
    assert staying.pk


def test_verify_activity_succeeds_on_the_demo_data():
    call_command("seed_demo", "--days", "20", "--cards", "25", stdout=StringIO())
    out = StringIO()
    call_command("verify_activity", stdout=out)
    assert "The activity log verifies." in out.getvalue()
    for board in Board.objects.all():
        assert_replay_equals_present(board, use_snapshots=False)


def test_replay_of_a_long_history_uses_a_snapshot_and_is_quick(board, bob):
    card = make_card(board, title="busy")
    targets = [column(board, name).pk for name in ("In Progress", "In Review")]
    for i in range(replay.SNAPSHOT_EVERY + 50):
        services.card_update(
            actor=as_actor(bob), card_id=card.pk, expected_version=None, title=f"t{i}"
        )
        if i % 100 == 0:
            services.card_move(
                actor=as_actor(bob),
                card_id=card.pk,
                to_column_id=targets[i % 2],
                expected_version=None,
            )
    snapshots_catch_up(board_id=board.pk)
    started = time.perf_counter()
    state = board_replay(board_id=board.pk)
    assert time.perf_counter() - started < 0.3
    assert state.cards[card.pk].title == f"t{replay.SNAPSHOT_EVERY + 49}"
    assert_replay_equals_present(board)
