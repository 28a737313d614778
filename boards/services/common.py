"""Locks, lookups and checks the services share."""

import datetime
from typing import Any

from django.core.exceptions import ValidationError

from activity import clock
from boards.errors import ConflictError, NotFoundError, WipLimitError
from boards.models import (
    MAX_ID,
    Board,
    Card,
    Column,
)
from boards.ranking import rank_between


def row_get_or_404(queryset, pk: int):
    if isinstance(pk, bool) or not isinstance(pk, int) or not 0 < pk <= MAX_ID:
        raise NotFoundError(f"{queryset.model._meta.verbose_name.capitalize()} not found.")
    try:
        return queryset.get(pk=pk)
    except queryset.model.DoesNotExist:
        raise NotFoundError(
            f"{queryset.model._meta.verbose_name.capitalize()} not found."
        ) from None


def board_lock(board_id: int) -> Board:
    return row_get_or_404(Board.objects.select_for_update(no_key=True), board_id)


def row_lock(queryset, pk: int):
    """Lock one row by id, then read it with its relations.

    The lock takes the row alone: PostgreSQL re-checks a locked row that changed meanwhile
    against the *old* versions of any joined, unlocked rows, so a join in the locking query
    can make a card that was just moved to another column vanish from the result.
    """
    row_get_or_404(queryset.model.objects.select_for_update(no_key=True).only("pk"), pk)
    return queryset.get(pk=pk)


def card_lock(card_id: int) -> Card:
    return row_lock(Card.objects.select_related("board", "column"), card_id)


def cards_open(column: Column):
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
    blocks = column.wip_blocks and column.wip_limit is not None
    if blocks and cards_open(column).count() >= column.wip_limit:
        raise WipLimitError(column=column)


def card_bump(card: Card, *fields: str) -> None:
    card.version += 1
    card.updated_at = clock.now()
    card.save(update_fields=[*fields, "version", "updated_at"])


def jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime.date) else value
