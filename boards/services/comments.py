"""Comments on cards."""

from django.db import transaction

from activity import clock, events, log
from activity.log import Actor
from boards.models import (
    COMMENT_MAX_LENGTH,
    Comment,
    Role,
)
from boards.permissions import role_require
from boards.services.common import (
    card_lock,
)
from boards.services.inputs import (
    text_clean,
)


@transaction.atomic
def comment_add(*, actor: Actor, card_id: int, body: str) -> Comment:
    """Comment on a card (editors). One event."""
    card = card_lock(card_id)
    role_require(actor=actor, board=card.board, at_least=Role.EDITOR)
    body = text_clean(body, field="body", max_length=COMMENT_MAX_LENGTH)
    comment = Comment.objects.create(
        card=card,
        author=actor.user if actor.user and actor.user.is_authenticated else None,
        # The person, never the token acting for them (the comment's event names the token).
        author_name=actor.display_name,
        body=body,
        created_at=clock.now(),
    )
    log.record(
        actor=actor,
        board=card.board,
        card=card,
        event=events.CommentAdded(ref=card.ref, comment_id=comment.pk, body=body),
    )
    return comment
