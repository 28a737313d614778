"""A board's labels (a release label names a version)."""

from django.core.exceptions import ValidationError
from django.db import transaction

from activity import events, log
from activity.log import Actor
from boards.models import (
    LABEL_NAME_MAX_LENGTH,
    Label,
    LabelKind,
    Role,
)
from boards.permissions import role_require
from boards.services.common import (
    board_lock,
    row_lock,
)
from boards.services.inputs import (
    UNSET,
    choice_clean,
    text_clean,
)
from boards.services.snapshots import label_snapshot


@transaction.atomic
def label_create(
    *, actor: Actor, board_id: int, name: str, colour: str = "#64748b", kind: str = "general"
) -> Label:
    """Add a label to a board (editors). Release labels name a version. One event."""
    board = board_lock(board_id)
    role_require(actor=actor, board=board, at_least=Role.EDITOR)
    name = text_clean(name, field="name", max_length=LABEL_NAME_MAX_LENGTH)
    kind = choice_clean(kind, field="kind", choices=LabelKind)
    label = Label(board=board, name=name, colour=colour, kind=kind)
    label.full_clean(exclude=["board"], validate_unique=False, validate_constraints=False)
    if board.labels.filter(name=name).exists():
        raise ValidationError({"name": f"{board.key} already has a label named {name}."})
    label.save()
    log.record(actor=actor, board=board, event=events.LabelCreated(label=label_snapshot(label)))
    return label


@transaction.atomic
def label_update(
    *, actor: Actor, label_id: int, name: str = UNSET, colour: str = UNSET, kind: str = UNSET
) -> Label:
    """Rename, recolour or re-kind a label (editors). One event, none if nothing changed."""
    label = row_lock(Label.objects.select_related("board"), label_id)
    role_require(actor=actor, board=label.board, at_least=Role.EDITOR)
    before = label_snapshot(label)
    if name is not UNSET:
        label.name = text_clean(name, field="name", max_length=LABEL_NAME_MAX_LENGTH)
        if label.board.labels.filter(name=label.name).exclude(pk=label.pk).exists():
            raise ValidationError({"name": f"{label.board.key} already has that label."})
    if colour is not UNSET:
        label.colour = colour
    if kind is not UNSET:
        label.kind = choice_clean(kind, field="kind", choices=LabelKind).value
    label.full_clean(exclude=["board"], validate_unique=False, validate_constraints=False)
    after = label_snapshot(label)
    if after != before:
        label.save()
        log.record(
            actor=actor,
            board=label.board,
            event=events.LabelUpdated(old=before, new=after),
        )
    return label


def label_get_or_create(
    *, actor: Actor, board_id: int, name: str, kind: str = "general", colour: str = "#64748b"
) -> Label:
    """The board's label of that name, created (one event) when missing."""
    label = Label.objects.filter(board_id=board_id, name=name.strip()).first()
    if label is not None:
        return label
    try:
        return label_create(actor=actor, board_id=board_id, name=name, kind=kind, colour=colour)
    except ValidationError:
        # Made by a concurrent request since the read above (label_create locks the board).
        label = Label.objects.filter(board_id=board_id, name=name.strip()).first()
        if label is None:
            raise
        return label
