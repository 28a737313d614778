"""Hand-written SQL, each statement a named query with bound parameters only.

The ORM writes everything else. What is here is on a hot path where building the same query
through the ORM costs more than running it; each statement is fixed text, chosen from a small
table built once at import, never assembled from a caller's values.
"""

from dataclasses import dataclass
from typing import Literal

from boards.models import Card

# --- A card about to move ----------------------------------------------------------------------
# The card row, locked alone (a join would be re-checked against stale rows when the card moved
# meanwhile), with what a move needs from elsewhere as scalar subqueries: its column, the target
# column's ranks around the place asked for, and both columns' open counts without the card.

_OTHERS = "FROM boards_card o WHERE o.column_id = %s AND NOT o.archived AND o.id <> c.id"
_NAMED = f"(SELECT o.rank {_OTHERS} AND o.id = %s)"
_AFTER_NAMED = f"(SELECT o.rank {_OTHERS} AND o.rank > {_NAMED} ORDER BY o.rank LIMIT 1)"
_BEFORE_NAMED = f"(SELECT o.rank {_OTHERS} AND o.rank < {_NAMED} ORDER BY o.rank DESC LIMIT 1)"
_TOP = f"(SELECT o.rank {_OTHERS} ORDER BY o.rank LIMIT 1)"
# place -> (the lower rank's subquery, the upper rank's)
_PLACES = {
    "after": (_NAMED, _AFTER_NAMED),
    "before": (_BEFORE_NAMED, _NAMED),
    "top": ("NULL", _TOP),
}
_FROM_COLUMN = ", ".join(
    f"(SELECT s.{field} FROM boards_column s WHERE s.id = c.column_id) AS from_{field}"
    for field in ("name", "stage", "position", "wip_limit", "wip_blocks")
)
_COUNT = "(SELECT count(*) FROM boards_card o WHERE o.column_id = {} AND NOT o.archived"
_COUNT += " AND o.id <> c.id)"
_WHERE = {"id": "c.id = %s", "number": "c.board_id = %s AND c.number = %s"}
_LOCK = {True: " FOR NO KEY UPDATE OF c", False: ""}

CARD_FOR_MOVE = {
    (place, by, lock): (
        f"SELECT c.*, {lower} AS lower_rank, {upper} AS upper_rank, {_FROM_COLUMN},"
        f" {_COUNT.format('c.column_id')} AS from_count, {_COUNT.format('%s')} AS to_count"
        f" FROM boards_card c WHERE {_WHERE[by]}{_LOCK[lock]}"
    )
    for place, (lower, upper) in _PLACES.items()
    for by in _WHERE
    for lock in _LOCK
}


@dataclass(frozen=True, slots=True)
class CardForMoveRow:
    card: Card
    lower_rank: str | None
    upper_rank: str | None
    from_name: str
    from_stage: str
    from_position: int
    from_wip_limit: int | None
    from_wip_blocks: bool
    from_count: int
    to_count: int


def card_for_move(
    *,
    by: Literal["id", "number"],
    key: list[int],
    place: Literal["after", "before", "top"],
    target_column_id: int,
    neighbour_id: int | None,
    lock: bool,
) -> CardForMoveRow | None:
    """The card (by id, or by board id and number), locked when `lock`, with its move context."""
    target, neighbour = target_column_id, neighbour_id
    params_by_place: dict[str, list[int | None]] = {
        "after": [target, neighbour, target, target, neighbour],
        "before": [target, target, neighbour, target, neighbour],
        "top": [target],
    }
    params = params_by_place[place]
    found = list(Card.objects.raw(CARD_FOR_MOVE[place, by, lock], [*params, target, *key]))
    if not found:
        return None
    row = found[0]
    fields = [field for field in CardForMoveRow.__dataclass_fields__ if field != "card"]
    return CardForMoveRow(card=row, **{field: getattr(row, field) for field in fields})
