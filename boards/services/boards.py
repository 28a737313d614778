"""Boards and their columns."""

from collections.abc import Iterable
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from activity import clock, events, log
from activity.log import Actor
from boards.errors import ForbiddenError
from boards.models import (
    BOARD_DESCRIPTION_MAX_LENGTH,
    BOARD_KEY_MAX_LENGTH,
    BOARD_NAME_MAX_LENGTH,
    COLUMN_NAME_MAX_LENGTH,
    DEFAULT_COLUMNS,
    Board,
    Column,
    Membership,
    Role,
    Stage,
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
    wip_limit_clean,
)
from boards.services.snapshots import column_snapshot


@transaction.atomic
def board_create(
    *,
    actor: Actor,
    name: str,
    key: str,
    description: str = "",
    columns: Iterable[tuple[str, Stage]] = DEFAULT_COLUMNS,
) -> Board:
    """Create a board with its pipeline columns; the creator becomes its admin. One event."""
    if actor.user is None or not actor.user.is_authenticated:
        raise ForbiddenError("Only a signed-in user can create a board.")
    name = text_clean(name, field="name", max_length=BOARD_NAME_MAX_LENGTH)
    key = text_clean(key, field="key", max_length=BOARD_KEY_MAX_LENGTH).upper()
    description = text_clean(
        description, field="description", max_length=BOARD_DESCRIPTION_MAX_LENGTH, required=False
    )
    board = Board(name=name, key=key, description=description, created_at=clock.now())
    board.full_clean(validate_unique=False, validate_constraints=False)
    taken = ValidationError({"key": f"The key {key} is taken."})
    if Board.objects.filter(key=key).exists():
        raise taken
    try:
        with transaction.atomic():
            board.save()
    except IntegrityError:  # taken by a concurrent request since the check above
        raise taken from None
    created = [
        Column.objects.create(board=board, name=col_name, position=position, stage=stage)
        for position, (col_name, stage) in enumerate(columns)
    ]
    member = Membership.objects.create(board=board, user=actor.user, role=Role.ADMIN)
    log.record(
        actor=actor,
        board=board,
        event=events.BoardCreated(
            board={
                "id": board.pk,
                "name": name,
                "key": key,
                "description": description,
                "created_at": board.created_at.isoformat(),
            },
            columns=[column_snapshot(c) for c in created],
            membership={"user_id": member.user_id, "role": member.role},
        ),
    )
    return board


@transaction.atomic
def board_update(
    *, actor: Actor, board_id: int, name: str | None = None, description: str | None = None
) -> Board:
    """Rename or describe a board (board admins). One event, none if nothing changed."""
    board = board_lock(board_id)
    role_require(actor=actor, board=board, at_least=Role.ADMIN)
    changes: dict[str, events.Change] = {}
    if name is not None:
        name = text_clean(name, field="name", max_length=BOARD_NAME_MAX_LENGTH)
        if name != board.name:
            changes["name"] = {"old": board.name, "new": name}
            board.name = name
    if description is not None:
        description = text_clean(
            description,
            field="description",
            max_length=BOARD_DESCRIPTION_MAX_LENGTH,
            required=False,
        )
        if description != board.description:
            changes["description"] = {"old": board.description, "new": description}
            board.description = description
    if changes:
        board.save(update_fields=list(changes))
        log.record(actor=actor, board=board, event=events.BoardUpdated(changes=changes))
    return board


@transaction.atomic
def column_create(
    *,
    actor: Actor,
    board_id: int,
    name: str,
    stage: str,
    position: int | None = None,
    wip_limit: int | None = None,
    wip_blocks: bool = False,
) -> Column:
    """Add a column (board admins), at `position` or at the end. One event."""
    board = board_lock(board_id)
    role_require(actor=actor, board=board, at_least=Role.ADMIN)
    name = text_clean(name, field="name", max_length=COLUMN_NAME_MAX_LENGTH)
    stage = choice_clean(stage, field="stage", choices=Stage)
    wip_limit = wip_limit_clean(wip_limit)
    if board.columns.filter(name=name).exists():
        raise ValidationError({"name": f"{board.key} already has a column named {name}."})
    if position is None:
        last = board.columns.order_by("-position").values_list("position", flat=True).first()
        position = 0 if last is None else last + 1
    elif not isinstance(position, int) or not 0 <= position <= 1000:
        raise ValidationError({"position": "A position is a whole number from 0 to 1000."})
    column = Column.objects.create(
        board=board,
        name=name,
        stage=stage,
        position=position,
        wip_limit=wip_limit,
        wip_blocks=bool(wip_blocks),
    )
    log.record(actor=actor, board=board, event=events.ColumnCreated(column=column_snapshot(column)))
    return column


@transaction.atomic
def column_update(
    *,
    actor: Actor,
    column_id: int,
    name: str = UNSET,
    stage: str = UNSET,
    position: int = UNSET,
    wip_limit: int | None = UNSET,
    wip_blocks: bool = UNSET,
) -> Column:
    """Change a column's name, stage, position or WIP limit (board admins). One event."""
    column = row_lock(Column.objects.select_related("board"), column_id)
    board = column.board
    role_require(actor=actor, board=board, at_least=Role.ADMIN)
    wanted: dict[str, Any] = {}
    if name is not UNSET:
        wanted["name"] = text_clean(name, field="name", max_length=COLUMN_NAME_MAX_LENGTH)
        clash = board.columns.filter(name=wanted["name"]).exclude(pk=column.pk).exists()
        if clash:
            raise ValidationError({"name": f"{board.key} already has a column named {name}."})
    if stage is not UNSET:
        wanted["stage"] = choice_clean(stage, field="stage", choices=Stage).value
    if position is not UNSET:
        if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position <= 1000:
            raise ValidationError({"position": "A position is a whole number from 0 to 1000."})
        wanted["position"] = position
    if wip_limit is not UNSET:
        wanted["wip_limit"] = wip_limit_clean(wip_limit)
    if wip_blocks is not UNSET:
        wanted["wip_blocks"] = bool(wip_blocks)
    changes: dict[str, events.Change] = {
        field: {"old": getattr(column, field), "new": value}
        for field, value in wanted.items()
        if getattr(column, field) != value
    }
    if changes:
        for field, change in changes.items():
            setattr(column, field, change["new"])
        column.save(update_fields=list(changes))
        log.record(
            actor=actor,
            board=board,
            event=events.ColumnUpdated(column_id=column.pk, changes=changes),
        )
    return column
