"""Celery tasks: thin wrappers around delivery.rollups, and the listener that asks for them."""

import logging
import time

from celery import shared_task

from activity import events
from activity.events import EventKind
from activity.log import once_on_commit
from activity.models import Event
from boards.models import Stage
from delivery.rollups import rollups_advance

logger = logging.getLogger(__name__)

PAUSE_AFTER_BROKER_FAILURE = 10.0  # seconds
# The kinds that may change the delivery figures at once (a card reaching Deployed, a
# deployment, a rollback, an incident), and so are worth the rollups' running now.
DELIVERING_KINDS: frozenset[EventKind] = frozenset(
    {
        EventKind.DEPLOYMENT_RECORDED,
        EventKind.DEPLOYMENT_ROLLED_BACK,
        EventKind.INCIDENT_OPENED,
        EventKind.INCIDENT_RESOLVED,
        EventKind.CARD_MOVED,
    }
)
_paused_until = 0.0


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def rollups_advance_task() -> int:
    """Bring the delivery projections up to date (idempotent; safe to run twice at once)."""
    return rollups_advance()


def event_recorded(event: Event) -> None:
    """A card reached Deployed, or a deployment was recorded: catch the rollups up after
    commit (registered with `activity.log.listener_add` by the app's ready())."""
    if event.kind not in DELIVERING_KINDS:  # the periodic run applies the others
        return
    match events.read(event.kind, event.payload):
        case (
            events.DeploymentRecorded()
            | events.DeploymentRolledBack()
            | events.IncidentOpened()
            | events.IncidentResolved()
        ):
            once_on_commit(rollups_soon)
        case events.CardMoved(to=to) if to.get("stage") == Stage.DEPLOYED:
            once_on_commit(rollups_soon)


def rollups_soon() -> None:
    """Ask a worker to bring the rollups up to date, without holding the request up for long.

    One publish attempt, no retries: when Redis is down the request pays one failed connection
    (fractions of a second), and then, for a pause, nothing at all: this process does not try
    again until the pause is over. Nothing is lost either way: the periodic run (beat) applies
    every event committed meanwhile.
    """
    global _paused_until
    if time.monotonic() < _paused_until:
        return
    try:
        rollups_advance_task.apply_async(retry=False)
    except Exception:  # the broker is down: the periodic run catches up instead
        _paused_until = time.monotonic() + PAUSE_AFTER_BROKER_FAILURE
        logger.warning("could not enqueue the rollups; beat will catch up", exc_info=True)
