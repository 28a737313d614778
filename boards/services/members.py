"""Who is on a board, and with which role."""

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction

from activity import events, log
from activity.log import Actor
from boards.models import (
    Board,
    Membership,
    Role,
)
from boards.permissions import role_require
from boards.services.common import (
    board_lock,
)
from boards.services.inputs import (
    choice_clean,
    id_clean,
)

User = get_user_model()


@transaction.atomic
def membership_set(*, actor: Actor, board_id: int, user_id: int, role: str) -> Membership:
    """Give a user a role on a board, or change it (board admins). One event."""
    board = board_lock(board_id)
    role_require(actor=actor, board=board, at_least=Role.ADMIN)
    role = choice_clean(role, field="role", choices=Role)
    user = User.objects.filter(pk=id_clean(user_id, field="user"), is_active=True).first()
    if user is None:
        raise ValidationError({"user": "No active user with that id."})
    membership = Membership.objects.filter(board=board, user=user).first()
    old_role = membership.role if membership else None
    if membership is None:
        membership = Membership.objects.create(board=board, user=user, role=role)
    elif old_role == role:
        return membership
    else:
        if old_role == Role.ADMIN:
            _keep_an_admin(board=board, leaving=membership)
        membership.role = role
        membership.save(update_fields=["role"])
    log.record(
        actor=actor,
        board=board,
        event=events.MembershipSet(
            user_id=user.pk, username=user.get_username(), old=old_role, new=role
        ),
    )
    return membership


def _keep_an_admin(*, board: Board, leaving: Membership) -> None:
    if not board.memberships.filter(role=Role.ADMIN).exclude(pk=leaving.pk).exists():
        raise ValidationError({"user": "A board keeps at least one admin."})


@transaction.atomic
def membership_remove(*, actor: Actor, board_id: int, user_id: int) -> None:
    """Take a user off a board (board admins); the last admin cannot leave. One event."""
    board = board_lock(board_id)
    role_require(actor=actor, board=board, at_least=Role.ADMIN)
    user_id = id_clean(user_id, field="user")
    membership = Membership.objects.filter(board=board, user_id=user_id).first()
    if membership is None:
        return
    if membership.role == Role.ADMIN:
        _keep_an_admin(board=board, leaving=membership)
    username = membership.user.get_username()
    membership.delete()
    log.record(
        actor=actor,
        board=board,
        event=events.MembershipRemoved(user_id=user_id, username=username, old=membership.role),
    )
