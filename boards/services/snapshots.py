"""What an event carries of a row, so the change can be replayed without the present tables."""

from typing import Any

from activity import events
from boards.models import (
    Card,
    Column,
    Label,
)


def column_snapshot(column: Column) -> events.ColumnSnapshot:
    return {
        "id": column.pk,
        "name": column.name,
        "position": column.position,
        "stage": column.stage,
        "wip_limit": column.wip_limit,
        "wip_blocks": column.wip_blocks,
    }


def card_place(card: Card) -> events.CardPlace:
    return {
        "column_id": card.column_id,
        "column": card.column.name,
        "stage": card.column.stage,
        "rank": card.rank,
    }


def card_snapshot(card: Card) -> events.CardSnapshot:
    return {
        "id": card.pk,
        "ref": card.ref,
        "number": card.number,
        "title": card.title,
        "description": card.description,
        "due_date": card.due_date.isoformat() if card.due_date else None,
        "version": card.version,
        "archived": card.archived,
        "column_id": card.column_id,
        "column": card.column.name,
        "stage": card.column.stage,
        "rank": card.rank,
        "created_by_id": card.created_by_id,
        "created_at": card.created_at.isoformat(),
        "entered_column_at": card.entered_column_at.isoformat(),
        "updated_at": card.updated_at.isoformat(),
    }


def card_change(card: Card) -> dict[str, Any]:
    """What every event about a change to a card carries (`events.CardChange`): its ref, and
    the row's new version and `updated_at`, which replay restores."""
    return {"ref": card.ref, "version": card.version, "updated_at": card.updated_at.isoformat()}


def label_snapshot(label: Label) -> events.LabelSnapshot:
    return {"id": label.pk, "name": label.name, "colour": label.colour, "kind": label.kind}
