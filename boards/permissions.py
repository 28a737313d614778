"""Who may do what on a board. Used by both services (writes) and queries (reads)."""

from activity.log import Actor
from activity.models import Source
from boards.errors import ForbiddenError, NotFoundError
from boards.models import Board, Membership, Role


def role_of(*, actor: Actor, board: Board) -> Role | None:
    """The actor's effective role on the board: staff and the system act as admins."""
    user = actor.user
    if user is None:
        return Role.ADMIN if actor.source == Source.SYSTEM else None
    if not user.is_authenticated or not user.is_active:
        return None
    if user.is_staff:
        return Role.ADMIN
    role = Membership.objects.filter(board=board, user=user).values_list("role", flat=True).first()
    return Role(role) if role else None


def role_require(*, actor: Actor, board: Board, at_least: Role) -> Role:
    """The actor's role; NotFoundError for non-members (the board stays hidden), else Forbidden."""
    role = role_of(actor=actor, board=board)
    if role is None:
        raise NotFoundError("Board not found.")
    if role.level < at_least.level:
        raise ForbiddenError(f"You need the {at_least.label.lower()} role on {board.key} for that.")
    return role
