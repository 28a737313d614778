"""Celery tasks: replay snapshots written as boards grow, so time travel stays fast.

Page views never write (a GET writes nothing), so without this a board's snapshots would be
only those `verify_activity --snapshots` wrote. Beat runs `snapshots_advance_task` every
SNAPSHOTS_EVERY_SECONDS (flux/settings.py); each run writes one snapshot at the chain head of
every board whose chain has grown `SNAPSHOT_EVERY` events or more past its newest snapshot.
Idempotent: a snapshot is written once per board, format and seq (two runs at once write it
once), and a run with nothing due costs one query.
"""

import logging

from celery import shared_task
from django.db.models import F, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce

from activity.models import ChainHead, Event
from history.models import BoardSnapshot
from history.replay import FORMAT, SNAPSHOT_EVERY, board_replay, snapshot_write

logger = logging.getLogger(__name__)


def boards_due(*, every: int = SNAPSHOT_EVERY) -> list[tuple[int, int]]:
    """(board id, chain head seq) of each board `every` events or more past its newest
    snapshot (or past its start, without one): one query."""
    newest = (
        BoardSnapshot.objects.filter(board_id=OuterRef("board_id"), format=FORMAT)
        .order_by("-seq")
        .values("seq")[:1]
    )
    heads = ChainHead.objects.annotate(last=Coalesce(Subquery(newest), Value(0)))
    return list(
        heads.filter(seq__gte=F("last") + every).order_by("board_id").values_list("board_id", "seq")
    )


def snapshot_take(*, board_id: int, seq: int) -> None:
    """Replay the board to its event `seq` (from its newest snapshot) and keep that state."""
    event_hash = Event.objects.filter(board_id=board_id, seq=seq).values_list("hash", flat=True)
    state = board_replay(board_id=board_id, seq=seq)
    snapshot_write(state=state, event_hash=event_hash.get())


def snapshots_advance(*, every: int = SNAPSHOT_EVERY) -> int:
    """A snapshot at the chain head of every board due; how many boards got one. A board that
    cannot be replayed (a malformed event: `verify_activity` names it) is logged and skipped,
    and the others still get theirs."""
    written = 0
    for board_id, seq in boards_due(every=every):
        try:
            snapshot_take(board_id=board_id, seq=seq)
        except Exception:
            logger.exception("no snapshot of board %s at seq %s: it does not replay", board_id, seq)
            continue
        written += 1
    return written


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def snapshots_advance_task(every: int = SNAPSHOT_EVERY) -> int:
    """Write the snapshots due (idempotent; safe to run twice at once)."""
    return snapshots_advance(every=every)
