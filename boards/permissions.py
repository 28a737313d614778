"""Who may do what on a board. Used by both services (writes) and queries (reads)."""

import enum
from typing import Final, Literal

from activity.log import Actor
from activity.models import Source
from boards.errors import ForbiddenError, NotFoundError
from boards.models import Board, Membership, Role


class _Unknown(enum.Enum):
    """The type of _UNKNOWN: a sentinel the type checker can tell apart from a role or None."""

    UNKNOWN = enum.auto()


_UNKNOWN: Final = _Unknown.UNKNOWN
_MembershipRole = str | None | Literal[_Unknown.UNKNOWN]


def role_of(
    *, actor: Actor, board: Board, membership_role: _MembershipRole = _UNKNOWN
) -> Role | None:
    """The actor's effective role on the board: staff and the system act as admins.

    `membership_role` is the user's Membership.role when the caller already read it (None:
    no membership); otherwise it is looked up.
    """
    user = actor.user
    if user is None:
        return Role.ADMIN if actor.source == Source.SYSTEM else None
    if not user.is_authenticated or not user.is_active:
        return None
    if actor.board_ids is not None and board.pk not in actor.board_ids:
        return None
    if user.is_staff:
        role = Role.ADMIN
    else:
        if membership_role is _UNKNOWN:
            membership_role = (
                Membership.objects.filter(board=board, user=user)
                .values_list("role", flat=True)
                .first()
            )
        if not membership_role:
            return None
        role = Role(membership_role)
    if actor.max_role is not None and Role(actor.max_role).level < role.level:
        return Role(actor.max_role)
    return role


def role_require(
    *, actor: Actor, board: Board, at_least: Role, membership_role: _MembershipRole = _UNKNOWN
) -> Role:
    """The actor's role; NotFoundError for non-members (the board stays hidden), else Forbidden."""
    role = role_of(actor=actor, board=board, membership_role=membership_role)
    if role is None:
        raise NotFoundError("Board not found.")
    if role.level < at_least.level:
        raise ForbiddenError(f"You need the {at_least.label.lower()} role on {board.key} for that.")
    return role
