"""Time travel stays fast without a page ever writing: beat asks a worker for the replay
snapshots of the boards that grew, and the worker writes one at each such board's head."""

import json
import logging
import time

import pytest
from celery.contrib.testing.worker import start_worker
from django.conf import settings

from activity.events import EventKind
from activity.models import Event
from boards import services
from boards.models import Board
from history.models import BoardSnapshot
from history.replay import board_replay, board_state_diff, board_state_present, seq_latest
from history.tasks import boards_due, snapshots_advance, snapshots_advance_task
from tests.activity.test_chain import behind_the_apps_back
from tests.conftest import as_actor, make_card

pytestmark = pytest.mark.django_db(transaction=True)

TASK = "history.tasks.snapshots_advance_task"


def grow(board: Board, cards: int) -> int:
    """`cards` new cards (an event each); the board's chain head after them."""
    for index in range(cards):
        make_card(board, title=f"card {index}")
    return seq_latest(board_id=board.pk)


def snapshot_seqs(board: Board) -> list[int]:
    return list(
        BoardSnapshot.objects.filter(board=board).order_by("seq").values_list("seq", flat=True)
    )


@pytest.mark.sqlite
def test_a_board_that_grew_enough_gets_one_snapshot_at_its_head(board, alice):
    quiet = services.board_create(actor=as_actor(alice), name="Quiet", key="QUI")
    head = grow(board, 12)
    assert boards_due(every=10) == [(board.pk, head)]
    assert snapshots_advance(every=10) == 1
    assert snapshot_seqs(board) == [head] and snapshot_seqs(quiet) == []
    snapshot = BoardSnapshot.objects.get(board=board)
    assert snapshot.event_hash == Event.objects.get(board=board, seq=head).hash
    # The snapshot is the replay from zero, and the board now replays from it.
    from_zero = board_replay(board_id=board.pk, seq=head, use_snapshots=False)
    assert board_state_diff(board_replay(board_id=board.pk), from_zero) == []
    assert board_state_diff(from_zero, board_state_present(board_id=board.pk)) == []
    # Nothing due until the board grows `every` events past it.
    assert snapshots_advance(every=10) == 0
    grow(board, 9)
    assert snapshots_advance(every=10) == 0
    later = grow(board, 1)
    assert snapshots_advance(every=10) == 1
    assert snapshot_seqs(board) == [head, later]


@pytest.mark.sqlite
def test_a_board_that_does_not_replay_is_named_and_the_others_still_get_theirs(
    board, alice, caplog
):
    other = services.board_create(actor=as_actor(alice), name="Other", key="OTH")
    grow(board, 12)
    other_head = grow(other, 12)
    created = Event.objects.filter(board=board, kind=EventKind.CARD_CREATED).first()
    assert created is not None
    behind_the_apps_back(
        "UPDATE activity_event SET payload = %s WHERE id = %s", [json.dumps({}), created.pk]
    )
    with caplog.at_level(logging.ERROR, logger="history.tasks"):
        assert snapshots_advance(every=10) == 1
    assert snapshot_seqs(board) == [] and snapshot_seqs(other) == [other_head]
    assert f"no snapshot of board {board.pk} at seq" in caplog.text


def test_beat_schedules_the_task_by_a_name_the_worker_knows():
    from flux.celery import app

    entries = [e for e in app.conf.beat_schedule.values() if e["task"] == TASK]
    assert [e["schedule"] for e in entries] == [settings.SNAPSHOTS_EVERY_SECONDS]
    app.loader.import_default_modules()  # what a worker does at start: autodiscovery
    assert TASK in app.tasks


@pytest.mark.skipif(not settings.REDIS_URL, reason="a real worker on the Redis broker")
def test_a_real_worker_writes_the_snapshots_beat_asks_for(board):
    from flux.celery import app

    assert not app.conf.task_always_eager
    app.control.purge()  # tasks other tests enqueued without a worker
    head = grow(board, 12)
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        # What beat sends (by name, through Redis), with a step this small board reaches.
        app.send_task(TASK, kwargs={"every": 10})
        deadline = time.monotonic() + 10
        while not BoardSnapshot.objects.filter(board=board).exists():
            assert time.monotonic() < deadline, "the worker wrote no snapshot within 10 s"
            time.sleep(0.05)
    assert snapshot_seqs(board) == [head]
    assert snapshots_advance_task.name == TASK
