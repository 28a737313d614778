"""Locks, lookups and checks the services share."""

import datetime
from typing import Any

from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.db.models import Model, QuerySet

from activity import clock
from boards.errors import ConflictError, NotFoundError, WipLimitError
from boards.models import (
    MAX_ID,
    Board,
    Card,
    Column,
)
from boards.ranking import rank_between


def row_get_or_404[M: Model](queryset: QuerySet[M], pk: int) -> M:
    if isinstance(pk, bool) or not isinstance(pk, int) or not 0 < pk <= MAX_ID:
        raise _not_found(queryset.model)
    try:
        return queryset.get(pk=pk)
    except ObjectDoesNotExist:  # the model's DoesNotExist: the only one `get` raises
        raise _not_found(queryset.model) from None


def _not_found(model: type[Model]) -> NotFoundError:
    return NotFoundError(f"{str(model._meta.verbose_name).capitalize()} not found.")


def board_lock(board_id: int) -> Board:
    return row_get_or_404(Board.objects.select_for_update(no_key=True), board_id)


def row_lock[M: Model](queryset: QuerySet[M], pk: int) -> M:
    """Lock one row by id, then read it with its relations.

    The lock takes the row alone: PostgreSQL re-checks a locked row that changed meanwhile
    against the *old* versions of any joined, unlocked rows, so a join in the locking query
    can make a card that was just moved to another column vanish from the result.
    """
    row_get_or_404(queryset.model._default_manager.select_for_update(no_key=True).only("pk"), pk)
    return queryset.get(pk=pk)


def card_lock(card_id: int) -> Card:
    return row_lock(Card.objects.select_related("board", "column"), card_id)


def cards_open(column: Column) -> QuerySet[Card]:
    return Card.objects.filter(column=column, archived=False)


def rank_bottom(column: Column) -> str:
    last = cards_open(column).order_by("-rank").values_list("rank", flat=True).first()
    return rank_between(before=last, after=None)


def version_check(*, card: Card, expected_version: int | None) -> None:
    if expected_version is None:
        return
    if isinstance(expected_version, bool) or not isinstance(expected_version, int):
        raise ValidationError({"expected_version": "The card version you saw is required."})
    if card.version != expected_version:
        raise ConflictError(card=card)


def wip_check(*, column: Column) -> None:
    blocking_limit = column.wip_limit if column.wip_blocks else None
    if blocking_limit is not None and cards_open(column).count() >= blocking_limit:
        raise WipLimitError(column=column)


def card_bump(card: Card, *fields: str) -> None:
    card.version += 1
    card.updated_at = clock.now()
    card.save(update_fields=[*fields, "version", "updated_at"])


def jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime.date) else value
