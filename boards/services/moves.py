"""Moving a card: the hot path of every drag, and of every deployment that delivers."""

from dataclasses import dataclass
from typing import Literal

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import OuterRef, Subquery

from activity import clock, events, log
from activity.log import Actor
from boards import sql
from boards.errors import NotFoundError, WipLimitError
from boards.models import (
    MAX_ID,
    Board,
    Card,
    Column,
    Membership,
    Role,
)
from boards.permissions import role_require
from boards.ranking import rank_between, rank_needs_rebalance, ranks_spread
from boards.services.common import (
    card_bump,
    cards_open,
    version_check,
)
from boards.services.inputs import (
    id_clean,
)
from boards.services.snapshots import card_change, card_place


@dataclass(frozen=True, slots=True)
class MoveResult:
    """Where a move left the card, and how full its two columns are now (open cards)."""

    card: Card
    from_column: Column
    from_count: int
    to_column: Column
    to_count: int
    moved: bool  # False: the card already was where asked; nothing written, no event
    actor_role: Role  # the mover's role on the board, as checked (what the page may offer)

    @property
    def changed_column(self) -> bool:
        return self.from_column.pk != self.to_column.pk


@transaction.atomic
def card_move(
    *,
    actor: Actor,
    to_column_id: int,
    expected_version: int | None,
    card_id: int | None = None,
    card_ref: tuple[str, int] | None = None,
    after_id: int | None = None,
    before_id: int | None = None,
    stay_if_in_column: bool = False,
    deployment_id: int | None = None,
) -> MoveResult:
    """Move a card after `after_id` (or before `before_id`, or to the top) of `to_column_id`.

    The card is given by id, or by `card_ref`: its board's key and its number (as in PAY-42).
    `deployment_id` names the recorded deployment that made the move (its event id), so a
    move into Deployed is not counted as a manual deployment of its own.

    Writes the card row only (a rare rebalance of a crowded gap rewrites its column) and one
    event; ConflictError if the caller's version is stale (None: take the card as it is now),
    WipLimitError if a blocking column is full. Moving a card to where it already is, or with
    `stay_if_in_column` to the column it is already in, changes nothing and writes no event.
    Reads and locks in two statements (the target column with its board and the actor's role,
    then the card with its neighbours' ranks and both columns' counts), so a move costs five
    statements in all.
    """
    to_column_id = id_clean(to_column_id, field="to_column")
    after_id = id_clean(after_id, field="after", required=False)
    before_id = id_clean(before_id, field="before", required=False)
    # Lock the target column first, then the card: a rebalance holds its column and then
    # rewrites that column's cards, so this order cannot deadlock with it.
    to_column, membership_role = _column_locked_with_role(actor=actor, column_id=to_column_id)
    found = _card_locked_for_move(
        card_id=card_id, card_ref=card_ref, to_column=to_column, after_id=after_id,
        before_id=before_id,
    )  # fmt: skip
    card = found.card
    if to_column is None or card.board_id != to_column.board.pk:
        # Not this board's column: say so to members only (others learn nothing of the card).
        card_board = Board.objects.get(pk=card.board_id)
        role_require(actor=actor, board=card_board, at_least=Role.EDITOR)
        raise ValidationError({"to_column": f"{card_board.key} has no such column."})
    board = to_column.board
    role = role_require(
        actor=actor, board=board, at_least=Role.EDITOR, membership_role=membership_role
    )
    card.board = board
    from_column = found.from_column
    card.column = from_column if card.column_id != to_column.pk else to_column
    # The counts were taken without the card.
    unchanged = MoveResult(
        card=card,
        from_column=card.column,
        from_count=found.from_count + 1,
        to_column=to_column,
        to_count=found.to_count + (1 if card.column_id == to_column.pk else 0),
        moved=False,
        actor_role=role,
    )
    version_check(card=card, expected_version=expected_version)
    if card.archived:
        raise ValidationError({"card": f"{card.ref} is archived; restore it first."})
    no_place_asked = after_id is None and before_id is None
    if stay_if_in_column and no_place_asked and to_column.pk == card.column_id:
        return unchanged
    changed_column = card.column_id != to_column.pk
    blocking_limit = to_column.wip_limit if to_column.wip_blocks else None
    if changed_column and blocking_limit is not None and found.to_count >= blocking_limit:
        raise WipLimitError(column=to_column)
    if after_id is not None and found.lower_rank is None:
        raise ValidationError({"after": "That neighbour is not an open card of the column."})
    if before_id is not None and found.upper_rank is None:
        raise ValidationError({"before": "That neighbour is not an open card of the column."})
    lower, upper = found.lower_rank, found.upper_rank
    if (
        card.column_id == to_column.pk
        and (lower is None or lower < card.rank)
        and (upper is None or card.rank < upper)
    ):
        return unchanged
    before = card_place(card)
    card.column = to_column
    card.rank = rank_between(before=lower, after=upper)
    respread = _rebalance_if_crowded(card=card)
    if changed_column:
        card.entered_column_at = clock.now()
    card_bump(card, "column", "rank", *(["entered_column_at"] if changed_column else []))
    event = events.CardMoved(
        from_=before,
        to=card_place(card),
        entered_column_at=card.entered_column_at.isoformat(),
        respread=respread,
        deployment_id=deployment_id,
        **card_change(card),
    )
    log.record(actor=actor, board=card.board, card=card, event=event)
    return MoveResult(
        card=card,
        from_column=from_column,
        from_count=found.from_count if changed_column else found.to_count + 1,
        to_column=to_column,
        to_count=found.to_count + 1,
        moved=True,
        actor_role=role,
    )


def _column_locked_with_role(*, actor: Actor, column_id: int) -> tuple[Column | None, str | None]:
    """The column, locked (alone: its board never changes), with its board and the actor's
    membership role on it, in one statement; (None, None) if it is gone."""
    columns = Column.objects.select_for_update(of=("self",), no_key=True).select_related("board")
    user = actor.user
    if user is not None and user.is_authenticated:
        mine = Membership.objects.filter(board=OuterRef("board_id"), user=user).values("role")[:1]
        columns = columns.annotate(membership_role=Subquery(mine))
    column = columns.filter(pk=column_id).first()
    return column, getattr(column, "membership_role", None)


@dataclass(frozen=True, slots=True)
class _CardForMove:
    card: Card
    from_column: Column
    from_count: int  # open cards of its column, without it
    to_count: int  # open cards of the target column, without it
    lower_rank: str | None  # the ranks it must fall between in the target column
    upper_rank: str | None


def _card_locked_for_move(
    *,
    card_id: int | None,
    card_ref: tuple[str, int] | None,
    to_column: Column | None,
    after_id: int | None,
    before_id: int | None,
) -> _CardForMove:
    """The card, locked, with its column, the target column's ranks around the place asked
    for and both columns' open counts (`boards.sql.card_for_move`)."""
    by: Literal["id", "number"]
    key: list[int]
    if card_id is not None:
        by, key = "id", [id_clean(card_id, field="card")]
    else:
        board_key, number = card_ref if card_ref is not None else ("", 0)
        if isinstance(number, bool) or not isinstance(number, int) or not 0 < number <= MAX_ID:
            raise NotFoundError("Card not found.")
        if to_column is None or to_column.board.key != str(board_key).upper():
            # Not a column of the card's board: the caller refuses the move (to members only).
            card = Card.objects.filter(board__key=str(board_key).upper(), number=number).first()
            if card is None:
                raise NotFoundError("Card not found.")
            return _CardForMove(card, Column(pk=card.column_id), 0, 0, None, None)
        by, key = "number", [to_column.board_id, number]
    place: Literal["after", "before", "top"] = (
        "after" if after_id is not None else "before" if before_id is not None else "top"
    )
    row = sql.card_for_move(
        by=by,
        key=key,
        place=place,
        target_column_id=to_column.pk if to_column is not None else 0,
        neighbour_id=after_id if after_id is not None else before_id,
        lock=connection.features.has_select_for_update,
    )
    if row is None:
        raise NotFoundError("Card not found.")
    card = row.card
    from_column = Column(
        pk=card.column_id,
        board_id=card.board_id,
        name=row.from_name,
        stage=row.from_stage,
        position=row.from_position,
        wip_limit=row.from_wip_limit,
        wip_blocks=bool(row.from_wip_blocks),
    )
    return _CardForMove(
        card, from_column, row.from_count, row.to_count, row.lower_rank, row.upper_rank
    )


def _rebalance_if_crowded(*, card: Card) -> bool:
    """Re-spread the column's ranks when the new key got long: its open cards, in order, take
    `ranks_spread` in turn. True if it did (the event says only that: replay recomputes the
    same ranks from the column's order, see `events.CardMoved.respread`)."""
    if not rank_needs_rebalance(card.rank):
        return False
    # Lock the rows to rewrite (in id order, like every other locker of many cards): a card
    # moving out of the column meanwhile is waited for, then no longer matches.
    locked = (
        cards_open(card.column).exclude(pk=card.pk).select_for_update(no_key=True).order_by("pk")
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
    return True
