"""`record(...)`: the one way an event is written.

Every service in `boards.services` calls `record` inside its own transaction, so the change
and its event commit or roll back together (invariant 1 in DESIGN.md).
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db import transaction

from activity import clock
from activity.models import Event, Source

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
    return Event.objects.create(
        occurred_at=clock.now(),
        actor=user,
        actor_name=actor.display_name[:150],
        source=actor.source,
        board=board,
        card=card,
        kind=kind,
        payload=payload,
    )
