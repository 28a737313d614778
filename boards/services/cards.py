"""Cards: create, edit, archive and restore, labels and assignees."""

import datetime
from collections.abc import Iterable
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction

from activity import clock, events, log
from activity.log import Actor
from boards.models import (
    DESCRIPTION_MAX_LENGTH,
    TITLE_MAX_LENGTH,
    Card,
    Column,
    Label,
    Role,
    Stage,
)
from boards.permissions import role_require
from boards.services.common import (
    board_lock,
    card_bump,
    card_lock,
    jsonable,
    rank_bottom,
    version_check,
    wip_check,
)
from boards.services.inputs import (
    UNSET,
    due_date_clean,
    id_clean,
    text_clean,
)
from boards.services.snapshots import (
    card_change,
    card_place,
    card_snapshot,
    label_snapshot,
)

User = get_user_model()


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
    board = board_lock(board_id)
    role_require(actor=actor, board=board, at_least=Role.EDITOR)
    title = text_clean(title, field="title", max_length=TITLE_MAX_LENGTH)
    description = text_clean(
        description, field="description", max_length=DESCRIPTION_MAX_LENGTH, required=False
    )
    due_date = due_date_clean(due_date)
    column_id = id_clean(column_id, field="column", required=False)
    columns = Column.objects.select_for_update(of=("self",), no_key=True).filter(board=board)
    if column_id is None:
        column = columns.filter(stage=Stage.TODO).first() or columns.first()
    else:
        column = columns.filter(pk=column_id).first()
    if column is None:
        raise ValidationError({"column": f"{board.key} has no such column."})
    wip_check(column=column)
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
        rank=rank_bottom(column),
        created_by=actor.user if actor.user and actor.user.is_authenticated else None,
        created_at=now,
        updated_at=now,
        entered_column_at=now,
    )
    log.record(
        actor=actor,
        board=board,
        card=card,
        event=events.CardCreated(card=card_snapshot(card)),
    )
    return card


@transaction.atomic
def card_update(
    *,
    actor: Actor,
    card_id: int,
    expected_version: int | None,
    title: str = UNSET,
    description: str = UNSET,
    due_date: datetime.date | None = UNSET,
) -> Card:
    """Edit a card's title, description or due date; ConflictError if stale. One event.

    `expected_version` None applies the edit to the card as it is now (last writer wins).
    """
    card = card_lock(card_id)
    role_require(actor=actor, board=card.board, at_least=Role.EDITOR)
    version_check(card=card, expected_version=expected_version)
    wanted: dict[str, Any] = {}
    if title is not UNSET:
        wanted["title"] = text_clean(title, field="title", max_length=TITLE_MAX_LENGTH)
    if description is not UNSET:
        wanted["description"] = text_clean(
            description, field="description", max_length=DESCRIPTION_MAX_LENGTH, required=False
        )
    if due_date is not UNSET:
        wanted["due_date"] = due_date_clean(due_date)
    changes: dict[str, events.Change] = {
        field: {"old": jsonable(getattr(card, field)), "new": jsonable(value)}
        for field, value in wanted.items()
        if getattr(card, field) != value
    }
    if not changes:
        return card
    for field, value in wanted.items():
        setattr(card, field, value)
    card_bump(card, *wanted)
    log.record(
        actor=actor,
        board=card.board,
        card=card,
        event=events.CardUpdated(changes=changes, **card_change(card)),
    )
    return card


@transaction.atomic
def card_archive(*, actor: Actor, card_id: int, expected_version: int | None = None) -> Card:
    """Archive a card (it leaves the board, and is never deleted). One event."""
    card = card_lock(card_id)
    role_require(actor=actor, board=card.board, at_least=Role.EDITOR)
    if expected_version is not None:
        version_check(card=card, expected_version=expected_version)
    if card.archived:
        return card
    card.archived = True
    card_bump(card, "archived")
    log.record(
        actor=actor,
        board=card.board,
        card=card,
        event=events.CardArchived(**card_place(card), **card_change(card)),
    )
    return card


@transaction.atomic
def card_restore(*, actor: Actor, card_id: int, expected_version: int | None = None) -> Card:
    """Bring an archived card back, at the bottom of its column. One event."""
    column_id = Card.objects.filter(pk=card_id).values_list("column_id", flat=True).first()
    if column_id is not None:
        Column.objects.select_for_update(of=("self",), no_key=True).filter(pk=column_id).first()
    card = card_lock(card_id)
    role_require(actor=actor, board=card.board, at_least=Role.EDITOR)
    if expected_version is not None:
        version_check(card=card, expected_version=expected_version)
    if not card.archived:
        return card
    wip_check(column=card.column)
    card.archived = False
    card.rank = rank_bottom(card.column)
    card_bump(card, "archived", "rank")
    log.record(
        actor=actor,
        board=card.board,
        card=card,
        event=events.CardRestored(**card_place(card), **card_change(card)),
    )
    return card


@transaction.atomic
def card_label_add(*, actor: Actor, card_id: int, label_id: int) -> Card:
    """Put a label of the card's board on the card. One event, none if already there."""
    card = card_lock(card_id)
    role_require(actor=actor, board=card.board, at_least=Role.EDITOR)
    label_id = id_clean(label_id, field="label")
    label = Label.objects.filter(pk=label_id, board_id=card.board_id).first()
    if label is None:
        raise ValidationError({"label": f"{card.board.key} has no such label."})
    if card.labels.filter(pk=label.pk).exists():
        return card
    card.labels.add(label)
    card_bump(card)
    log.record(
        actor=actor,
        board=card.board,
        card=card,
        event=events.CardLabelled(label=label_snapshot(label), **card_change(card)),
    )
    return card


@transaction.atomic
def card_label_remove(*, actor: Actor, card_id: int, label_id: int) -> Card:
    """Take a label off a card. One event, none if it was not there."""
    card = card_lock(card_id)
    role_require(actor=actor, board=card.board, at_least=Role.EDITOR)
    label = card.labels.filter(pk=id_clean(label_id, field="label")).first()
    if label is None:
        return card
    card.labels.remove(label)
    card_bump(card)
    log.record(
        actor=actor,
        board=card.board,
        card=card,
        event=events.CardUnlabelled(label=label_snapshot(label), **card_change(card)),
    )
    return card


@transaction.atomic
def card_assign(*, actor: Actor, card_id: int, user_ids: Iterable[int]) -> Card:
    """Set who works on a card; every assignee must be a member of its board. One event."""
    card = card_lock(card_id)
    role_require(actor=actor, board=card.board, at_least=Role.EDITOR)
    wanted = {id_clean(user_id, field="assignees") for user_id in user_ids}
    # Members only, staff included: the refusal is the same for an id that is no one's.
    eligible = set(
        User.objects.filter(pk__in=wanted, is_active=True)
        .filter(memberships__board=card.board)
        .values_list("pk", flat=True)
    )
    if wanted - eligible:
        raise ValidationError({"assignees": "Assignees must be members of the board."})
    current = set(card.assignees.values_list("pk", flat=True))
    if wanted == current:
        return card
    card.assignees.set(wanted)
    card_bump(card)
    names = dict(User.objects.filter(pk__in=wanted | current).values_list("pk", "username"))
    log.record(
        actor=actor,
        board=card.board,
        card=card,
        event=events.CardAssigned(
            old=sorted(current),
            new=sorted(wanted),
            names={str(pk): name for pk, name in names.items()},
            **card_change(card),
        ),
    )
    return card


@transaction.atomic
def card_details_set(
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
    """Make a card's fields, labels and assignees exactly these: every change or none."""
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
    card = card_lock(card_id)
    wanted = {id_clean(label_id, field="labels") for label_id in label_ids}
    current = set(card.labels.values_list("pk", flat=True))
    for label_id in sorted(wanted - current):
        card = card_label_add(actor=actor, card_id=card_id, label_id=label_id)
    for label_id in sorted(current - wanted):
        card = card_label_remove(actor=actor, card_id=card_id, label_id=label_id)
    return card
