"""`record(...)`: the one way an event is written.

Every service in `boards.services` calls `record` inside its own transaction, so the change
and its event commit or roll back together (invariant 1 in docs/architecture.md).
"""

import logging
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.db import models, transaction

from activity import clock, events, live
from activity.describe import actor_label
from activity.models import Event, Source

logger = logging.getLogger(__name__)

# Set by flux.middleware for the length of one request: the id that ties the request's log
# lines to the events it writes, and the browser tab that made it (live updates skip a
# tab's own changes, which it has already drawn).
request_id: ContextVar[str] = ContextVar("flux_request_id", default="")
client_id: ContextVar[str] = ContextVar("flux_client_id", default="")

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is making a change, and through which door (web, API, admin, system).

    The log names the person (`user`) and, separately, what acted for them (`via`: an API
    token's name), so a token can never pass for a person, whatever it is called. `name` is
    only for an actor without a person (`Actor.system("ci-pipeline")`); a person's actor is
    always named by their username.

    An API token narrows what its user may do: `board_ids` (None: all the user's boards)
    and `max_role` (None: the user's own role) carry that scope to the permission checks.
    """

    user: "User | AnonymousUser | None"
    source: Source = Source.WEB
    name: str = ""
    board_ids: frozenset[int] | None = None
    max_role: str | None = None
    via: str = ""

    def __post_init__(self) -> None:
        if self.name and self.user is not None:
            raise ValueError(
                "A person's actor is named by their username; say what acts for them in `via`."
            )

    @property
    def display_name(self) -> str:
        """The person's username, or the system actor's name: never a token's name."""
        if self.user is not None:
            return self.user.get_username()
        return self.name or "system"

    @property
    def label(self) -> str:
        """Who, in words: "maya", or "maya via token deploy-bot" (activity.describe)."""
        return actor_label(self.display_name, self.via)

    @classmethod
    def system(cls, name: str = "system") -> "Actor":
        return cls(user=None, source=Source.SYSTEM, name=name)


class NotInTransactionError(RuntimeError):
    """An event must be written in the same transaction as the change it describes."""


def record(
    *,
    actor: Actor,
    board: models.Model,
    event: events.Payload,
    card: models.Model | None = None,
) -> Event:
    """Append one event for a change made in the current transaction.

    `event` is an entry of the catalogue (`activity.events`): its class names the kind, its
    fields are the payload.
    """
    if not transaction.get_connection().in_atomic_block:
        raise NotInTransactionError(f"record({event.kind!r}) called outside a transaction")
    user = actor.user if actor.user is not None and actor.user.is_authenticated else None
    # `board` and `card` are a Board and a Card, which this layer may not name (it sits below
    # boards: tests/test_layers.py); the django-stubs plugin asks for those exact types.
    recorded = Event.objects.create(  # type: ignore[misc]
        occurred_at=clock.now(),
        actor=user,
        actor_name=actor.display_name[:150],
        via=actor.via[:150],
        source=actor.source,
        board=board,
        card=card,
        kind=event.kind,
        payload=event.to_payload(),
        request_id=request_id.get()[:64],
    )
    live.event_recorded(recorded, card=card, client=client_id.get())
    for listener in _listeners:
        listener(recorded)
    return recorded


def listener_add(listener: Callable[[Event], None]) -> None:
    """Call `listener(event)` for every event recorded from now on, inside its transaction.

    How the layers above the log (the delivery projections, notifications) learn of new
    events without the log knowing them: each registers from its AppConfig.ready(). A
    listener that wants to act after commit uses `once_on_commit`.
    """
    if listener not in _listeners:
        _listeners.append(listener)


_listeners: "list[Callable[[Event], None]]" = []


def once_on_commit(func: Callable[[], None]) -> None:
    """Run `func` after the current transaction commits, once however often it is asked."""
    pending = transaction.get_connection().run_on_commit
    if not any(callback is func for _, callback, _ in pending):
        transaction.on_commit(func)
