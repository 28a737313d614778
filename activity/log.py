"""`record(...)`: the one way an event is written.

Every service in `boards.services` calls `record` inside its own transaction, so the change
and its event commit or roll back together (invariant 1 in DESIGN.md).
"""

import logging
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db import transaction

from activity import clock, live
from activity.models import Event, Source

logger = logging.getLogger(__name__)

# Set by flux.middleware for the length of one request: the id that ties the request's log
# lines to the events it writes, and the browser tab that made it (live updates skip a
# tab's own changes, which it has already drawn).
request_id: ContextVar[str] = ContextVar("flux_request_id", default="")
client_id: ContextVar[str] = ContextVar("flux_client_id", default="")

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

    from boards.models import Board, Card


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is making a change, and through which door (web, API, admin, system).

    An API token narrows what its user may do: `board_ids` (None: all the user's boards)
    and `max_role` (None: the user's own role) carry that scope to the permission checks.
    """

    user: "AbstractBaseUser | None"
    source: Source = Source.WEB
    name: str = ""
    board_ids: frozenset[int] | None = None
    max_role: str | None = None

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        if self.user is not None:
            return self.user.get_username()
        return "system"

    @classmethod
    def system(cls, name: str = "system") -> "Actor":
        return cls(user=None, source=Source.SYSTEM, name=name)


class NotInTransactionError(RuntimeError):
    """An event must be written in the same transaction as the change it describes."""


def record(
    *,
    actor: Actor,
    board: "Board",
    kind: str,
    payload: dict[str, Any],
    card: "Card | None" = None,
) -> Event:
    """Append one event for a change made in the current transaction."""
    if not transaction.get_connection().in_atomic_block:
        raise NotInTransactionError(f"record({kind!r}) called outside a transaction")
    user = actor.user if actor.user is not None and actor.user.is_authenticated else None
    if _delivers(kind, payload):
        _once_on_commit(_rollups_soon)
    event = Event.objects.create(
        occurred_at=clock.now(),
        actor=user,
        actor_name=actor.display_name[:150],
        source=actor.source,
        board=board,
        card=card,
        kind=kind,
        payload=payload,
        request_id=request_id.get()[:64],
    )
    live.event_recorded(event, card=card, client=client_id.get())
    return event


def _delivers(kind: str, payload: dict[str, Any]) -> bool:
    """A card reached Deployed, or a deployment was recorded: the rollups should catch up."""
    if kind == "deployment.recorded":
        return True
    return kind == "card.moved" and payload.get("to", {}).get("stage") == "deployed"


def _once_on_commit(func) -> None:
    """Run `func` after the current transaction commits, once however often it is asked."""
    pending = transaction.get_connection().run_on_commit
    if not any(callback is func for _, callback, _ in pending):
        transaction.on_commit(func)


def _rollups_soon() -> None:
    """Ask a worker to bring the rollups up to date, without holding the request up for long.

    One publish attempt, no retries: when Redis is down the request pays one failed connection
    (fractions of a second), and then, for `pause` seconds, nothing at all: this process does
    not try again until the pause is over. Nothing is lost either way: the periodic run
    (beat) applies every event committed meanwhile.
    """
    import time

    from activity.tasks import rollups_advance_task

    pause = 10.0
    if time.monotonic() < getattr(_rollups_soon, "paused_until", 0.0):
        return
    try:
        rollups_advance_task.apply_async(retry=False)
    except Exception:  # the broker is down: the periodic run catches up instead
        _rollups_soon.paused_until = time.monotonic() + pause
        logger.warning("could not enqueue the rollups; beat will catch up", exc_info=True)
