"""API tokens: made, checked and revoked here; the secret itself is never stored."""

import hashlib
import hmac
import secrets
from datetime import timedelta
from typing import TYPE_CHECKING

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import CharField, StringAgg, Value
from django.db.models.functions import Cast

from activity import clock
from activity.log import Actor
from activity.models import Source
from boards.errors import ForbiddenError
from boards.models import TOKEN_NAME_MAX_LENGTH, ApiToken, Board, Membership, Role

if TYPE_CHECKING:
    from django.contrib.auth.models import User

PREFIX = "flux_"
# last_used_at is a hint for people, not an audit trail: write it at most once a minute.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def token_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@transaction.atomic
def token_create(
    *,
    actor: Actor,
    user: "User",
    name: str,
    role: str = Role.EDITOR,
    board_keys: list[str] | None = None,
) -> tuple[ApiToken, str]:
    """Make a token for `user` (themselves, or anyone when staff); returns it and its secret."""
    if actor.user is None or not (actor.user.pk == user.pk or actor.user.is_staff):
        raise ForbiddenError("You can only make tokens for yourself.")
    name = (name or "").strip()
    if not name or len(name) > TOKEN_NAME_MAX_LENGTH:
        raise ValidationError(
            {"name": f"Give the token a name of 1 to {TOKEN_NAME_MAX_LENGTH} characters."}
        )
    if role not in (Role.EDITOR, Role.VIEWER):
        raise ValidationError({"role": "A token's role is editor or viewer."})
    boards: list[Board] = []
    if board_keys:
        keys = {key.strip().upper() for key in board_keys}
        boards = list(Board.objects.filter(key__in=keys))
        if not user.is_staff:
            member_of = set(
                Membership.objects.filter(user=user, board__in=boards).values_list(
                    "board__key", flat=True
                )
            )
            boards = [board for board in boards if board.key in member_of]
        missing = keys - {board.key for board in boards}
        if missing:
            raise ValidationError(
                {"boards": f"Not a board of {user}: {', '.join(sorted(missing))}."}
            )
    secret = PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user,
        name=name,
        role=role,
        prefix=secret[:12],
        digest=token_digest(secret),
        created_at=clock.now(),
    )
    token.boards.set(boards)
    return token, secret


def token_revoke(*, actor: Actor, token_id: int) -> ApiToken:
    """Revoke a token (its owner or staff); later requests with it get 401."""
    token = ApiToken.objects.filter(pk=token_id).select_related("user").first()
    if token is None or actor.user is None:
        raise ForbiddenError("No such token.")
    if not (actor.user.is_staff or token.user_id == actor.user.pk):
        raise ForbiddenError("No such token.")
    if token.revoked_at is None:
        token.revoked_at = clock.now()
        token.save(update_fields=["revoked_at"])
    return token


def token_authenticate(secret: str) -> ApiToken | None:
    """The live token with that secret (and an active user), or None."""
    if not secret.startswith(PREFIX) or len(secret) > 200:
        return None
    digest = token_digest(secret)
    # The token's boards come along, aggregated, so acting as it costs no second query.
    candidates = (
        ApiToken.objects.select_related("user")
        .filter(prefix=secret[:12], revoked_at__isnull=True, user__is_active=True)
        .annotate(
            board_id_list=StringAgg(
                Cast("boards__id", CharField()),
                delimiter=Value(","),
                distinct=True,
                default=Value(""),
            )
        )
    )
    token = next((t for t in candidates if hmac.compare_digest(t.digest, digest)), None)
    if token is None:
        return None
    now = clock.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


def token_actor(token: ApiToken) -> Actor:
    """The actor a token acts as: its user (the log names them, and the token as `via`),
    narrowed to its boards and role."""
    listed = getattr(token, "board_id_list", None)
    if listed is None:
        board_ids = frozenset(token.boards.values_list("pk", flat=True))
    else:
        board_ids = frozenset(int(pk) for pk in listed.split(",") if pk)
    return Actor(
        user=token.user,
        source=Source.API,
        via=token.name,
        board_ids=board_ids or None,
        max_role=token.role,
    )
