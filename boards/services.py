"""Every write to the boards: one transaction each, each recording exactly one event.

A service checks the actor's role first, locks what it changes (FOR NO KEY UPDATE: rows that
only point at a locked row, such as events and projections, can still be written), validates
its input and then writes; anything it refuses raises before a row is touched
(`boards.errors`, or Django's `ValidationError` for bad input). A call that changes nothing
writes nothing and no event.
"""

import datetime
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import OuterRef, Subquery

from activity import clock, log
from activity.log import Actor
from activity.models import Event
from boards.errors import ConflictError, ForbiddenError, NotFoundError, WipLimitError
from boards.models import (
    DEFAULT_COLUMNS,
    DESCRIPTION_MAX_LENGTH,
    TITLE_MAX_LENGTH,
    Board,
    Card,
    Column,
    Comment,
    Label,
    LabelKind,
    Membership,
    Role,
    Stage,
)
from boards.permissions import role_require
from boards.ranking import rank_between, rank_needs_rebalance, ranks_spread

User = get_user_model()

# ---------------------------------------------------------------------------------------------
# Input cleaning: the rules live here so the browser, API and admin agree.


def _clean_text(value: str, *, field: str, max_length: int, required: bool = True) -> str:
    if not isinstance(value, str):
        raise ValidationError({field: "Must be text."})
    value = value.replace("\x00", "").strip()
    if required and not value:
        raise ValidationError({field: "This field cannot be empty."})
    if len(value) > max_length:
        raise ValidationError({field: f"At most {max_length} characters (this has {len(value)})."})
    return value


MAX_ID = 2**63 - 1


def _clean_id(value: Any, *, field: str, required: bool = True) -> int | None:
    """A database id from any caller: an int in range, or a clear ValidationError."""
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_ID:
        raise ValidationError({field: "Must be the id of an existing object."})
    return value


def _clean_choice(value: str, *, field: str, choices: type[Stage] | type[Role] | type[LabelKind]):
    try:
        return choices(value)
    except ValueError:
        allowed = ", ".join(choices.values)
        raise ValidationError({field: f"Must be one of: {allowed}."}) from None


def _clean_wip_limit(value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 10_000:
        raise ValidationError({"wip_limit": "A WIP limit is a whole number from 1 to 10000."})
    return value


def _clean_due_date(value: datetime.date | None) -> datetime.date | None:
    if value is None:
        return None
    if isinstance(value, datetime.datetime) or not isinstance(value, datetime.date):
        raise ValidationError({"due_date": "Must be a date."})
    return value


# ---------------------------------------------------------------------------------------------
# Snapshots: what an event carries so the change can be replayed without the present tables.


def column_snapshot(column: Column) -> dict[str, Any]:
    return {
        "id": column.pk,
        "name": column.name,
        "position": column.position,
        "stage": column.stage,
        "wip_limit": column.wip_limit,
        "wip_blocks": column.wip_blocks,
    }


def card_place(card: Card) -> dict[str, Any]:
    return {
        "column_id": card.column_id,
        "column": card.column.name,
        "stage": card.column.stage,
        "rank": card.rank,
    }


def card_snapshot(card: Card) -> dict[str, Any]:
    return {
        "id": card.pk,
        "ref": card.ref,
        "number": card.number,
        "title": card.title,
        "description": card.description,
        "due_date": card.due_date.isoformat() if card.due_date else None,
        "version": card.version,
        "archived": card.archived,
        **card_place(card),
        "created_by_id": card.created_by_id,
        "created_at": card.created_at.isoformat(),
        "entered_column_at": card.entered_column_at.isoformat(),
        **card_touched(card),
    }


def card_touched(card: Card) -> dict[str, Any]:
    """When a card row was last written: replay restores `updated_at` from this."""
    return {"updated_at": card.updated_at.isoformat()}


def label_snapshot(label: Label) -> dict[str, Any]:
    return {"id": label.pk, "name": label.name, "colour": label.colour, "kind": label.kind}


# ---------------------------------------------------------------------------------------------
# Boards and columns


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
    name = _clean_text(name, field="name", max_length=100)
    key = _clean_text(key, field="key", max_length=10).upper()
    description = _clean_text(description, field="description", max_length=5000, required=False)
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
        kind="board.created",
        payload={
            "board": {
                "id": board.pk,
                "name": name,
                "key": key,
                "description": description,
                "created_at": board.created_at.isoformat(),
            },
            "columns": [column_snapshot(c) for c in created],
            "membership": {"user_id": member.user_id, "role": member.role},
        },
    )
    return board


@transaction.atomic
def board_update(
    *, actor: Actor, board_id: int, name: str | None = None, description: str | None = None
) -> Board:
    """Rename or describe a board (board admins). One event, none if nothing changed."""
    board = _board_locked(board_id)
    role_require(actor=actor, board=board, at_least=Role.ADMIN)
    changes: dict[str, dict[str, Any]] = {}
    if name is not None:
        name = _clean_text(name, field="name", max_length=100)
        if name != board.name:
            changes["name"] = {"old": board.name, "new": name}
            board.name = name
    if description is not None:
        description = _clean_text(description, field="description", max_length=5000, required=False)
        if description != board.description:
            changes["description"] = {"old": board.description, "new": description}
            board.description = description
    if changes:
        board.save(update_fields=list(changes))
        log.record(actor=actor, board=board, kind="board.updated", payload={"changes": changes})
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
    board = _board_locked(board_id)
    role_require(actor=actor, board=board, at_least=Role.ADMIN)
    name = _clean_text(name, field="name", max_length=50)
    stage = _clean_choice(stage, field="stage", choices=Stage)
    wip_limit = _clean_wip_limit(wip_limit)
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
    log.record(
        actor=actor, board=board, kind="column.created", payload={"column": column_snapshot(column)}
    )
    return column


_UNSET: Any = object()


@transaction.atomic
def column_update(
    *,
    actor: Actor,
    column_id: int,
    name: str = _UNSET,
    stage: str = _UNSET,
    position: int = _UNSET,
    wip_limit: int | None = _UNSET,
    wip_blocks: bool = _UNSET,
) -> Column:
    """Change a column's name, stage, position or WIP limit (board admins). One event."""
    column = _locked(Column.objects.select_related("board"), column_id)
    board = column.board
    role_require(actor=actor, board=board, at_least=Role.ADMIN)
    wanted: dict[str, Any] = {}
    if name is not _UNSET:
        wanted["name"] = _clean_text(name, field="name", max_length=50)
        clash = board.columns.filter(name=wanted["name"]).exclude(pk=column.pk).exists()
        if clash:
            raise ValidationError({"name": f"{board.key} already has a column named {name}."})
    if stage is not _UNSET:
        wanted["stage"] = _clean_choice(stage, field="stage", choices=Stage).value
    if position is not _UNSET:
        if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position <= 1000:
            raise ValidationError({"position": "A position is a whole number from 0 to 1000."})
        wanted["position"] = position
    if wip_limit is not _UNSET:
        wanted["wip_limit"] = _clean_wip_limit(wip_limit)
    if wip_blocks is not _UNSET:
        wanted["wip_blocks"] = bool(wip_blocks)
    changes = {
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
            kind="column.updated",
            payload={"column_id": column.pk, "changes": changes},
        )
    return column


# ---------------------------------------------------------------------------------------------
# Members and labels


@transaction.atomic
def membership_set(*, actor: Actor, board_id: int, user_id: int, role: str) -> Membership:
    """Give a user a role on a board, or change it (board admins). One event."""
    board = _board_locked(board_id)
    role_require(actor=actor, board=board, at_least=Role.ADMIN)
    role = _clean_choice(role, field="role", choices=Role)
    user = User.objects.filter(pk=_clean_id(user_id, field="user"), is_active=True).first()
    if user is None:
        raise ValidationError({"user": "No active user with that id."})
    membership = Membership.objects.filter(board=board, user=user).first()
    old_role = membership.role if membership else None
    if old_role == role:
        return membership
    if old_role == Role.ADMIN:
        _keep_an_admin(board=board, leaving=membership)
    if membership is None:
        membership = Membership.objects.create(board=board, user=user, role=role)
    else:
        membership.role = role
        membership.save(update_fields=["role"])
    log.record(
        actor=actor,
        board=board,
        kind="membership.set",
        payload={"user_id": user.pk, "username": user.get_username(), "old": old_role, "new": role},
    )
    return membership


def _keep_an_admin(*, board: Board, leaving: Membership) -> None:
    if not board.memberships.filter(role=Role.ADMIN).exclude(pk=leaving.pk).exists():
        raise ValidationError({"user": "A board keeps at least one admin."})


@transaction.atomic
def membership_remove(*, actor: Actor, board_id: int, user_id: int) -> None:
    """Take a user off a board (board admins); the last admin cannot leave. One event."""
    board = _board_locked(board_id)
    role_require(actor=actor, board=board, at_least=Role.ADMIN)
    user_id = _clean_id(user_id, field="user")
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
        kind="membership.removed",
        payload={"user_id": user_id, "username": username, "old": membership.role},
    )


@transaction.atomic
def label_create(
    *, actor: Actor, board_id: int, name: str, colour: str = "#64748b", kind: str = "general"
) -> Label:
    """Add a label to a board (editors). Release labels name a version. One event."""
    board = _board_locked(board_id)
    role_require(actor=actor, board=board, at_least=Role.EDITOR)
    name = _clean_text(name, field="name", max_length=50)
    kind = _clean_choice(kind, field="kind", choices=LabelKind)
    label = Label(board=board, name=name, colour=colour, kind=kind)
    label.full_clean(exclude=["board"], validate_unique=False, validate_constraints=False)
    if board.labels.filter(name=name).exists():
        raise ValidationError({"name": f"{board.key} already has a label named {name}."})
    label.save()
    log.record(
        actor=actor, board=board, kind="label.created", payload={"label": label_snapshot(label)}
    )
    return label


@transaction.atomic
def label_update(
    *, actor: Actor, label_id: int, name: str = _UNSET, colour: str = _UNSET, kind: str = _UNSET
) -> Label:
    """Rename, recolour or re-kind a label (editors). One event, none if nothing changed."""
    label = _locked(Label.objects.select_related("board"), label_id)
    role_require(actor=actor, board=label.board, at_least=Role.EDITOR)
    before = label_snapshot(label)
    if name is not _UNSET:
        label.name = _clean_text(name, field="name", max_length=50)
        if label.board.labels.filter(name=label.name).exclude(pk=label.pk).exists():
            raise ValidationError({"name": f"{label.board.key} already has that label."})
    if colour is not _UNSET:
        label.colour = colour
    if kind is not _UNSET:
        label.kind = _clean_choice(kind, field="kind", choices=LabelKind).value
    label.full_clean(exclude=["board"], validate_unique=False, validate_constraints=False)
    after = label_snapshot(label)
    if after != before:
        label.save()
        log.record(
            actor=actor,
            board=label.board,
            kind="label.updated",
            payload={"old": before, "new": after},
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


# ---------------------------------------------------------------------------------------------
# Cards


@transaction.atomic
def card_create(
    *,
    actor: Actor,
    board_id: int,
    title: str,
    column_id: int | None = None,
    description: str = "",
    due_date: datetime.date | None = None,
) -> Card:
    """Create a card at the bottom of `column_id` (default: the first To Do column). One event."""
    board = _board_locked(board_id)
    role_require(actor=actor, board=board, at_least=Role.EDITOR)
    title = _clean_text(title, field="title", max_length=TITLE_MAX_LENGTH)
    description = _clean_text(
        description, field="description", max_length=DESCRIPTION_MAX_LENGTH, required=False
    )
    due_date = _clean_due_date(due_date)
    column_id = _clean_id(column_id, field="column", required=False)
    columns = Column.objects.select_for_update(of=("self",), no_key=True).filter(board=board)
    if column_id is None:
        column = columns.filter(stage=Stage.TODO).first() or columns.first()
    else:
        column = columns.filter(pk=column_id).first()
    if column is None:
        raise ValidationError({"column": f"{board.key} has no such column."})
    _wip_check(column=column)
    now = clock.now()
    board.last_card_number += 1
    board.save(update_fields=["last_card_number"])
    card = Card.objects.create(
        board=board,
        column=column,
        number=board.last_card_number,
        title=title,
        description=description,
        due_date=due_date,
        rank=_bottom_rank(column),
        created_by=actor.user if actor.user and actor.user.is_authenticated else None,
        created_at=now,
        updated_at=now,
        entered_column_at=now,
    )
    log.record(
        actor=actor,
        board=board,
        card=card,
        kind="card.created",
        payload={"card": card_snapshot(card)},
    )
    return card


@transaction.atomic
def card_update(
    *,
    actor: Actor,
    card_id: int,
    expected_version: int | None,
    title: str = _UNSET,
    description: str = _UNSET,
    due_date: datetime.date | None = _UNSET,
) -> Card:
    """Edit a card's title, description or due date; ConflictError if stale. One event.

    `expected_version` None applies the edit to the card as it is now (last writer wins).
    """
    card = _card_locked(card_id)
    role_require(actor=actor, board=card.board, at_least=Role.EDITOR)
    _version_check(card=card, expected_version=expected_version)
    wanted: dict[str, Any] = {}
    if title is not _UNSET:
        wanted["title"] = _clean_text(title, field="title", max_length=TITLE_MAX_LENGTH)
    if description is not _UNSET:
        wanted["description"] = _clean_text(
            description, field="description", max_length=DESCRIPTION_MAX_LENGTH, required=False
        )
    if due_date is not _UNSET:
        wanted["due_date"] = _clean_due_date(due_date)
    changes = {
        field: {"old": _jsonable(getattr(card, field)), "new": _jsonable(value)}
        for field, value in wanted.items()
        if getattr(card, field) != value
    }
    if not changes:
        return card
    for field, value in wanted.items():
        setattr(card, field, value)
    _bump(card, *wanted)
    log.record(
        actor=actor,
        board=card.board,
        card=card,
        kind="card.updated",
        payload={
            "ref": card.ref,
            "changes": changes,
            "version": card.version,
            **card_touched(card),
        },
    )
    return card


@transaction.atomic
def card_move(
    *,
    actor: Actor,
    card_id: int | None = None,
    board_key: str | None = None,
    number: int | None = None,
    to_column_id: int,
    expected_version: int | None,
    after_id: int | None = None,
    before_id: int | None = None,
    stay_if_in_column: bool = False,
    deployment_id: int | None = None,
) -> Card:
    """Move a card after `after_id` (or before `before_id`, or to the top) of `to_column_id`.

    The card is given by id, or by its board's key and its number (as in its ref).
    `deployment_id` names the recorded deployment that made the move (its event id), so a
    move into Deployed is not counted as a manual deployment of its own.

    Writes the card row only (a rare rebalance of a crowded gap rewrites its column) and one
    event; ConflictError if the caller's version is stale (None: take the card as it is now),
    WipLimitError if a blocking column is full. Moving a card to where it already is, or with
    `stay_if_in_column` to the column it is already in, changes nothing and writes no event.
    Reads and locks in two statements (the target column with its board and the actor's role,
    then the card with its neighbours' ranks and both columns' counts), so a move costs five
    statements in all. The moved card carries `moved_from` (its old column, with `count`)
    and its column a `count`, both after the move.
    """
    to_column_id = _clean_id(to_column_id, field="to_column")
    after_id = _clean_id(after_id, field="after", required=False)
    before_id = _clean_id(before_id, field="before", required=False)
    # Lock the target column first, then the card: a rebalance holds its column and then
    # rewrites that column's cards, so this order cannot deadlock with it.
    to_column = _column_locked_with_board(actor=actor, column_id=to_column_id)
    card = _card_locked_for_move(
        card_id=card_id,
        board_key=board_key,
        number=number,
        to_column=to_column,
        after_id=after_id,
        before_id=before_id,
    )
    board = to_column.board if to_column is not None else None
    if board is None or card.board_id != board.pk:
        # Not this board's column: say so to members only (others learn nothing of the card).
        card_board = Board.objects.get(pk=card.board_id)
        role_require(actor=actor, board=card_board, at_least=Role.EDITOR)
        raise ValidationError({"to_column": f"{card_board.key} has no such column."})
    board.role = role_require(
        actor=actor, board=board, at_least=Role.EDITOR, membership_role=board.membership_role
    )
    card.board = board
    card.column = card.from_column if card.column_id != to_column.pk else to_column
    # Where the card is and how full the columns are, for callers that show it (a move
    # that changes nothing returns here too). The counts were taken without the card.
    card.moved_from = card.column
    to_column.count = card.to_count + (1 if card.column_id == to_column.pk else 0)
    _version_check(card=card, expected_version=expected_version)
    if card.archived:
        raise ValidationError({"card": f"{card.ref} is archived; restore it first."})
    no_place_asked = after_id is None and before_id is None
    if stay_if_in_column and no_place_asked and to_column.pk == card.column_id:
        return card
    changed_column = card.column_id != to_column.pk
    blocks = to_column.wip_blocks and to_column.wip_limit is not None
    if changed_column and blocks and card.to_count >= to_column.wip_limit:
        raise WipLimitError(column=to_column)
    if after_id is not None and card.asked_rank is None:
        raise ValidationError({"after": "That neighbour is not an open card of the column."})
    if before_id is not None and card.asked_rank is None:
        raise ValidationError({"before": "That neighbour is not an open card of the column."})
    lower, upper = card.lower_rank, card.upper_rank
    if (
        card.column_id == to_column.pk
        and (lower is None or lower < card.rank)
        and (upper is None or card.rank < upper)
    ):
        return card
    before = card_place(card)
    card.moved_from = card.column
    card.column = to_column
    card.rank = rank_between(before=lower, after=upper)
    rebalanced = _rebalance_if_crowded(card=card)
    to_column.count = card.to_count + 1
    if changed_column:
        card.entered_column_at = clock.now()
        card.moved_from.count = card.from_count
    _bump(card, "column", "rank", *(["entered_column_at"] if changed_column else []))
    payload: dict[str, Any] = {
        "ref": card.ref,
        "from": before,
        "to": card_place(card),
        "version": card.version,
        "entered_column_at": card.entered_column_at.isoformat(),
        **card_touched(card),
    }
    if rebalanced:
        payload["rebalanced"] = rebalanced
    if deployment_id is not None:
        payload["deployment_id"] = deployment_id
    log.record(actor=actor, board=card.board, card=card, kind="card.moved", payload=payload)
    return card


def _column_locked_with_board(*, actor: Actor, column_id: int) -> Column | None:
    """The column, locked (alone: its board never changes), with its board and the actor's
    membership role on it (`board.membership_role`), in one statement; None if it is gone."""
    columns = Column.objects.select_for_update(of=("self",), no_key=True).select_related("board")
    user = actor.user
    if user is not None and user.is_authenticated:
        mine = Membership.objects.filter(board=OuterRef("board_id"), user=user).values("role")[:1]
        columns = columns.annotate(membership_role=Subquery(mine))
    column = columns.filter(pk=column_id).first()
    if column is not None:
        column.board.membership_role = getattr(column, "membership_role", None)
    return column


def _card_locked_for_move(
    *,
    card_id: int | None,
    board_key: str | None,
    number: int | None,
    to_column: Column | None,
    after_id: int | None,
    before_id: int | None,
) -> Card:
    """The card, locked alone (a join would be re-checked against stale rows when the card
    moved meanwhile), read with what a move needs from elsewhere as scalar subqueries: its
    column, the target column's ranks around the place asked for, and both columns' open
    counts without the card. Hand-written SQL: this is the hot path of every drag, and
    building the same query through the ORM costs more than running it."""
    if card_id is not None:
        where, params = "c.id = %s", [_clean_id(card_id, field="card")]
    else:
        if isinstance(number, bool) or not isinstance(number, int) or not 0 < number <= MAX_ID:
            raise NotFoundError("Card not found.")
        if to_column is None or to_column.board.key != str(board_key).upper():
            # Not a column of the card's board: the caller refuses the move (to members only).
            card = Card.objects.filter(board__key=str(board_key).upper(), number=number).first()
            if card is None:
                raise NotFoundError("Card not found.")
            return card
        where, params = "c.board_id = %s AND c.number = %s", [to_column.board_id, number]
    target = to_column.pk if to_column is not None else 0
    others = "FROM boards_card o WHERE o.column_id = %s AND NOT o.archived AND o.id <> c.id"
    named = f"(SELECT o.rank {others} AND o.id = %s)"
    if after_id is not None:
        lower, lower_params = named, [target, after_id]
        upper = f"(SELECT o.rank {others} AND o.rank > {named} ORDER BY o.rank LIMIT 1)"
        upper_params, asked = [target, target, after_id], "lower_rank"
    elif before_id is not None:
        upper, upper_params = named, [target, before_id]
        lower = f"(SELECT o.rank {others} AND o.rank < {named} ORDER BY o.rank DESC LIMIT 1)"
        lower_params, asked = [target, target, before_id], "upper_rank"
    else:
        lower, lower_params, asked = "NULL", [], ""
        upper = f"(SELECT o.rank {others} ORDER BY o.rank LIMIT 1)"
        upper_params = [target]
    source = ", ".join(
        f"(SELECT s.{field} FROM boards_column s WHERE s.id = c.column_id) AS from_{field}"
        for field in ("name", "stage", "position", "wip_limit", "wip_blocks")
    )
    count = (
        "(SELECT count(*) FROM boards_card o"
        " WHERE o.column_id = {} AND NOT o.archived AND o.id <> c.id)"
    )
    lock = " FOR NO KEY UPDATE OF c" if connection.features.has_select_for_update else ""
    sql = (
        f"SELECT c.*, {lower} AS lower_rank, {upper} AS upper_rank, {source},"
        f" {count.format('c.column_id')} AS from_count, {count.format('%s')} AS to_count"
        f" FROM boards_card c WHERE {where}{lock}"
    )
    params = [*lower_params, *upper_params, target, *params]
    found = list(Card.objects.raw(sql, params))
    if not found:
        raise NotFoundError("Card not found.")
    card = found[0]
    card.asked_rank = getattr(card, asked) if asked else None
    card.from_column = Column(
        pk=card.column_id,
        board_id=card.board_id,
        name=card.from_name,
        stage=card.from_stage,
        position=card.from_position,
        wip_limit=card.from_wip_limit,
        wip_blocks=bool(card.from_wip_blocks),
    )
    return card


@transaction.atomic
def card_archive(*, actor: Actor, card_id: int, expected_version: int | None = None) -> Card:
    """Archive a card (it leaves the board, and is never deleted). One event."""
    card = _card_locked(card_id)
    role_require(actor=actor, board=card.board, at_least=Role.EDITOR)
    if expected_version is not None:
        _version_check(card=card, expected_version=expected_version)
    if card.archived:
        return card
    card.archived = True
    _bump(card, "archived")
    log.record(
        actor=actor,
        board=card.board,
        card=card,
        kind="card.archived",
        payload={
            "ref": card.ref,
            "version": card.version,
            **card_place(card),
            **card_touched(card),
        },
    )
    return card


@transaction.atomic
def card_restore(*, actor: Actor, card_id: int, expected_version: int | None = None) -> Card:
    """Bring an archived card back, at the bottom of its column. One event."""
    column_id = Card.objects.filter(pk=card_id).values_list("column_id", flat=True).first()
    if column_id is not None:
        Column.objects.select_for_update(of=("self",), no_key=True).filter(pk=column_id).first()
    card = _card_locked(card_id)
    role_require(actor=actor, board=card.board, at_least=Role.EDITOR)
    if expected_version is not None:
        _version_check(card=card, expected_version=expected_version)
    if not card.archived:
        return card
    _wip_check(column=card.column)
    card.archived = False
    card.rank = _bottom_rank(card.column)
    _bump(card, "archived", "rank")
    log.record(
        actor=actor,
        board=card.board,
        card=card,
        kind="card.restored",
        payload={
            "ref": card.ref,
            "version": card.version,
            **card_place(card),
            **card_touched(card),
        },
    )
    return card


@transaction.atomic
def card_label_add(*, actor: Actor, card_id: int, label_id: int) -> Card:
    """Put a label of the card's board on the card. One event, none if already there."""
    card = _card_locked(card_id)
    role_require(actor=actor, board=card.board, at_least=Role.EDITOR)
    label_id = _clean_id(label_id, field="label")
    label = Label.objects.filter(pk=label_id, board_id=card.board_id).first()
    if label is None:
        raise ValidationError({"label": f"{card.board.key} has no such label."})
    if card.labels.filter(pk=label.pk).exists():
        return card
    card.labels.add(label)
    _bump(card)
    log.record(
        actor=actor,
        board=card.board,
        card=card,
        kind="card.labelled",
        payload={
            "ref": card.ref,
            "label": label_snapshot(label),
            "version": card.version,
            **card_touched(card),
        },
    )
    return card


@transaction.atomic
def card_label_remove(*, actor: Actor, card_id: int, label_id: int) -> Card:
    """Take a label off a card. One event, none if it was not there."""
    card = _card_locked(card_id)
    role_require(actor=actor, board=card.board, at_least=Role.EDITOR)
    label = card.labels.filter(pk=_clean_id(label_id, field="label")).first()
    if label is None:
        return card
    card.labels.remove(label)
    _bump(card)
    log.record(
        actor=actor,
        board=card.board,
        card=card,
        kind="card.unlabelled",
        payload={
            "ref": card.ref,
            "label": label_snapshot(label),
            "version": card.version,
            **card_touched(card),
        },
    )
    return card


@transaction.atomic
def card_assign(*, actor: Actor, card_id: int, user_ids: Iterable[int]) -> Card:
    """Set who works on a card; every assignee must be a member of its board. One event."""
    card = _card_locked(card_id)
    role_require(actor=actor, board=card.board, at_least=Role.EDITOR)
    wanted = {_clean_id(user_id, field="assignees") for user_id in user_ids}
    eligible = set(
        User.objects.filter(pk__in=wanted, is_active=True)
        .filter(memberships__board=card.board)
        .values_list("pk", flat=True)
    ) | set(
        User.objects.filter(pk__in=wanted, is_active=True, is_staff=True).values_list(
            "pk", flat=True
        )
    )
    if wanted - eligible:
        raise ValidationError({"assignees": "Assignees must be members of the board."})
    current = set(card.assignees.values_list("pk", flat=True))
    if wanted == current:
        return card
    card.assignees.set(wanted)
    _bump(card)
    names = dict(User.objects.filter(pk__in=wanted | current).values_list("pk", "username"))
    log.record(
        actor=actor,
        board=card.board,
        card=card,
        kind="card.assigned",
        payload={
            "ref": card.ref,
            "old": sorted(current),
            "new": sorted(wanted),
            "names": {str(pk): name for pk, name in names.items()},
            "version": card.version,
            **card_touched(card),
        },
    )
    return card


@transaction.atomic
def comment_add(*, actor: Actor, card_id: int, body: str) -> Comment:
    """Comment on a card (editors). One event."""
    card = _card_locked(card_id)
    role_require(actor=actor, board=card.board, at_least=Role.EDITOR)
    body = _clean_text(body, field="body", max_length=10_000)
    comment = Comment.objects.create(
        card=card,
        author=actor.user if actor.user and actor.user.is_authenticated else None,
        author_name=actor.display_name,
        body=body,
        created_at=clock.now(),
    )
    log.record(
        actor=actor,
        board=card.board,
        card=card,
        kind="comment.added",
        payload={"ref": card.ref, "comment_id": comment.pk, "body": body},
    )
    return comment


# ---------------------------------------------------------------------------------------------
# Helpers


def _get_or_404(queryset, pk: int):
    if isinstance(pk, bool) or not isinstance(pk, int) or not 0 < pk <= MAX_ID:
        raise NotFoundError(f"{queryset.model._meta.verbose_name.capitalize()} not found.")
    try:
        return queryset.get(pk=pk)
    except queryset.model.DoesNotExist:
        raise NotFoundError(
            f"{queryset.model._meta.verbose_name.capitalize()} not found."
        ) from None


def _board_locked(board_id: int) -> Board:
    return _get_or_404(Board.objects.select_for_update(no_key=True), board_id)


def _locked(queryset, pk: int):
    """Lock one row by id, then read it with its relations.

    The lock takes the row alone: PostgreSQL re-checks a locked row that changed meanwhile
    against the *old* versions of any joined, unlocked rows, so a join in the locking query
    can make a card that was just moved to another column vanish from the result.
    """
    _get_or_404(queryset.model.objects.select_for_update(no_key=True).only("pk"), pk)
    return queryset.get(pk=pk)


def _card_locked(card_id: int) -> Card:
    return _locked(Card.objects.select_related("board", "column"), card_id)


def _open_cards(column: Column):
    return Card.objects.filter(column=column, archived=False)


def _bottom_rank(column: Column) -> str:
    last = _open_cards(column).order_by("-rank").values_list("rank", flat=True).first()
    return rank_between(before=last, after=None)


def _version_check(*, card: Card, expected_version: int | None) -> None:
    if expected_version is None:
        return
    if isinstance(expected_version, bool) or not isinstance(expected_version, int):
        raise ValidationError({"expected_version": "The card version you saw is required."})
    if card.version != expected_version:
        raise ConflictError(card=card)


def _wip_check(*, column: Column) -> None:
    blocks = column.wip_blocks and column.wip_limit is not None
    if blocks and _open_cards(column).count() >= column.wip_limit:
        raise WipLimitError(column=column)


def _bump(card: Card, *fields: str) -> None:
    card.version += 1
    card.updated_at = clock.now()
    card.save(update_fields=[*fields, "version", "updated_at"])


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime.date) else value


def _neighbour_ranks(
    *, column: Column, moving: Card, after_id: int | None, before_id: int | None
) -> tuple[str | None, str | None]:
    """The ranks the moved card must fall between, read under the column's lock."""
    others = (
        _open_cards(column).exclude(pk=moving.pk).order_by("rank").values_list("rank", flat=True)
    )
    if after_id is not None:
        lower = others.filter(pk=after_id).first()
        if lower is None:
            raise ValidationError({"after": "That neighbour is not an open card of the column."})
        return lower, others.filter(rank__gt=lower).first()
    if before_id is not None:
        upper = others.filter(pk=before_id).first()
        if upper is None:
            raise ValidationError({"before": "That neighbour is not an open card of the column."})
        return others.filter(rank__lt=upper).order_by("-rank").first(), upper
    return None, others.first()


def _rebalance_if_crowded(*, card: Card) -> dict[str, str]:
    """Re-spread the column's ranks when the new key got long; {card id: new rank} or {}."""
    if not rank_needs_rebalance(card.rank):
        return {}
    # Lock the rows to rewrite (in id order, like every other locker of many cards): a card
    # moving out of the column meanwhile is waited for, then no longer matches.
    locked = (
        _open_cards(card.column).exclude(pk=card.pk).select_for_update(no_key=True).order_by("pk")
    )
    others = sorted(locked.only("pk", "rank", "column_id"), key=lambda other: other.rank)
    position = sum(1 for other in others if other.rank < card.rank)
    ordered = [*others[:position], card, *others[position:]]
    fresh = ranks_spread(count=len(ordered))
    # Two passes so no intermediate state breaks the unique (column, rank) constraint:
    # "~" sorts after every base-62 digit and appears in no real key.
    for item, rank in zip(ordered, fresh, strict=True):
        item.rank = "~" + rank
    Card.objects.bulk_update(ordered, ["rank"])
    for other in others:
        other.rank = other.rank[1:]
    Card.objects.bulk_update(others, ["rank"])
    card.rank = fresh[position]
    return {str(other.pk): other.rank for other in others}


@transaction.atomic
def card_edit(
    *,
    actor: Actor,
    card_id: int,
    expected_version: int,
    title: str,
    description: str,
    due_date: datetime.date | None,
    label_ids: Iterable[int],
    assignee_ids: Iterable[int],
) -> Card:
    """Apply a whole card form at once: all its changes or none, one event per kind of change."""
    card_update(
        actor=actor,
        card_id=card_id,
        expected_version=expected_version,
        title=title,
        description=description,
        due_date=due_date,
    )
    card_labels_set(actor=actor, card_id=card_id, label_ids=label_ids)
    return card_assign(actor=actor, card_id=card_id, user_ids=assignee_ids)


@transaction.atomic
def card_labels_set(*, actor: Actor, card_id: int, label_ids: Iterable[int]) -> Card:
    """Make the card's labels exactly these: one event per label put on or taken off."""
    card = _card_locked(card_id)
    wanted = {_clean_id(label_id, field="labels") for label_id in label_ids}
    current = set(card.labels.values_list("pk", flat=True))
    for label_id in sorted(wanted - current):
        card = card_label_add(actor=actor, card_id=card_id, label_id=label_id)
    for label_id in sorted(current - wanted):
        card = card_label_remove(actor=actor, card_id=card_id, label_id=label_id)
    return card


# ---------------------------------------------------------------------------------------------
# Deployments

DEPLOY_STAGE = {"production": Stage.DEPLOYED, "staging": Stage.STAGING}
STAGE_ORDER = {stage.value: index for index, stage in enumerate(Stage)}
CARD_REF_RE = re.compile(r"\b([A-Z][A-Z0-9]{1,9})-(\d{1,9})\b")


@dataclass(frozen=True)
class Commit:
    sha: str
    timestamp: datetime.datetime | None = None
    message: str = ""


@dataclass(frozen=True)
class DeploymentResult:
    event: Event
    cards: list[Card]
    moved: list[Card]


def card_refs_in(text: str, *, board_key: str) -> list[int]:
    """Numbers of the board's card refs named in `text` ("fixes PAY-42" gives [42])."""
    return [int(number) for key, number in CARD_REF_RE.findall(text) if key == board_key]


@transaction.atomic
def deployment_record(
    *,
    actor: Actor,
    board_id: int,
    version: str,
    environment: str,
    status: str,
    card_numbers: Iterable[int] | None = None,
    commits: Iterable[Commit] = (),
    url: str = "",
    started_at: datetime.datetime | None = None,
    finished_at: datetime.datetime | None = None,
) -> DeploymentResult:
    """Record one deployment event; a successful one to production (or staging) also labels
    its cards with the release and moves them to Deployed (or Staging).

    Cards come from `card_numbers`, or else from the refs named in the commit messages.
    Unknown cards are refused before anything is written.
    """
    board = _board_locked(board_id)
    role_require(actor=actor, board=board, at_least=Role.EDITOR)
    version = _clean_text(version, field="version", max_length=50)
    environment = _clean_text(environment, field="environment", max_length=50).lower()
    if status not in ("success", "failed"):
        raise ValidationError({"status": "A deployment's status is success or failed."})
    commits = list(commits)
    for field, moment in [("started_at", started_at), ("finished_at", finished_at)] + [
        ("commits", commit.timestamp) for commit in commits
    ]:
        if moment is not None and (moment.tzinfo is None or not 1970 <= moment.year <= 2200):
            raise ValidationError({field: "Times need a UTC offset and a year from 1970 to 2200."})
    if card_numbers is None:
        card_numbers = [n for c in commits for n in card_refs_in(c.message, board_key=board.key)]
    numbers = list(dict.fromkeys(card_numbers))  # named twice, deployed once
    cards = list(Card.objects.filter(board=board, number__in=numbers).select_related("column"))
    missing = sorted(set(numbers) - {card.number for card in cards})
    if missing:
        refs = ", ".join(f"{board.key}-{n}" for n in missing)
        raise ValidationError({"cards": f"{board.key} has no cards {refs}."})
    for card in cards:
        card.board = board
    cards.sort(key=lambda card: numbers.index(card.number))
    stage = DEPLOY_STAGE.get(environment)
    delivers = status == "success" and stage is not None
    target = board.columns.filter(stage=stage).order_by("position").first() if delivers else None
    if delivers and cards:
        # Every row the moves below will lock is locked now, before the first event: an event
        # takes the board's chain head until commit (activity.chain), so a lock taken after it
        # could deadlock with a person's move, which locks column, then card, then the head.
        if target is not None:
            Column.objects.select_for_update(of=("self",), no_key=True).filter(pk=target.pk).get()
        locked = Card.objects.select_for_update(of=("self",), no_key=True)
        list(locked.filter(pk__in=[card.pk for card in cards]).order_by("pk").values_list("pk"))
    # The deployment is recorded first, so the moves it makes can name it.
    event = log.record(
        actor=actor,
        board=board,
        kind="deployment.recorded",
        payload={
            "deployment": {
                "version": version,
                "environment": environment,
                "status": status,
                "url": url,
                "started_at": started_at.isoformat() if started_at else None,
                "finished_at": finished_at.isoformat() if finished_at else None,
                "commits": [
                    {
                        "sha": c.sha,
                        "timestamp": c.timestamp.isoformat() if c.timestamp else None,
                        "message": c.message,
                    }
                    for c in commits
                ],
                "cards": [{"id": c.pk, "ref": c.ref, "number": c.number} for c in cards],
            },
            "moves_to": target.name if target is not None else None,
        },
    )
    moved: list[Card] = []
    if delivers and cards:
        label = label_get_or_create(
            actor=actor, board_id=board.pk, name=version, kind=LabelKind.RELEASE, colour="#059669"
        )
        for card in cards:
            card_label_add(actor=actor, card_id=card.pk, label_id=label.pk)
            # Deployments move cards forward only: a staging deployment that names a card
            # already in Deployed leaves it there.
            forward = target is not None and STAGE_ORDER[card.column.stage] < STAGE_ORDER[stage]
            if forward and not card.archived:
                after = card_move(
                    actor=actor,
                    card_id=card.pk,
                    to_column_id=target.pk,
                    expected_version=None,
                    stay_if_in_column=True,
                    deployment_id=event.pk,
                )
                if after.column_id != card.column_id:
                    moved.append(after)
    return DeploymentResult(event=event, cards=cards, moved=moved)
