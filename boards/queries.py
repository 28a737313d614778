"""Every read the views and API need, permission-filtered, in a fixed number of SQL queries."""

from dataclasses import dataclass, field

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, Prefetch, Q, QuerySet

from activity.log import Actor
from boards.errors import NotFoundError
from boards.models import Board, Card, Column, Label, Role, Stage
from boards.permissions import role_of, role_require


def boards_visible_to(*, user: AbstractBaseUser) -> QuerySet[Board]:
    """The boards a user may read: all for staff, else those they are a member of."""
    if not user.is_authenticated or not user.is_active:
        return Board.objects.none()
    if user.is_staff:
        return Board.objects.all()
    return Board.objects.filter(memberships__user=user)


def board_list_for_user(*, user: AbstractBaseUser) -> list[Board]:
    """The user's boards, each with `open_by_stage` {stage: open card count}, in one query."""
    counts = {
        f"open_{stage.value}": Count(
            "cards", filter=Q(cards__archived=False, cards__column__stage=stage.value)
        )
        for stage in Stage
    }
    boards = list(boards_visible_to(user=user).annotate(**counts).order_by("name"))
    for board in boards:
        board.open_by_stage = [(stage, getattr(board, f"open_{stage.value}")) for stage in Stage]
    return boards


def board_get_for_user(*, user: AbstractBaseUser, key: str, at_least: Role = Role.VIEWER) -> Board:
    """The board with that key if the user has at least that role; NotFoundError otherwise."""
    board = Board.objects.filter(key=key.upper()).first()
    if board is None:
        raise NotFoundError("Board not found.")
    board.role = role_require(actor=Actor(user=user), board=board, at_least=at_least)
    return board


@dataclass
class ColumnView:
    column: Column
    cards: list[Card] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.cards)

    @property
    def over_limit(self) -> bool:
        return self.column.wip_limit is not None and self.count > self.column.wip_limit


def board_view(*, board: Board, user: AbstractBaseUser) -> dict:
    """The board page's context: columns in pipeline order with their open cards, in 4 queries."""
    columns = [
        ColumnView(column=c) for c in Column.objects.filter(board=board).order_by("position", "id")
    ]
    by_id = {view.column.pk: view for view in columns}
    cards = (
        Card.objects.filter(board=board, archived=False)
        .order_by("column_id", "rank")
        .prefetch_related(
            Prefetch("labels", queryset=Label.objects.order_by("kind", "name")),
            "assignees",
        )
    )
    for card in cards:
        card.board = board  # refs need the key; no query per card
        by_id[card.column_id].cards.append(card)
    role = getattr(board, "role", None) or role_of(actor=Actor(user=user), board=board)
    return {
        "board": board,
        "columns": columns,
        "role": role,
        "can_edit": role is not None and role.level >= Role.EDITOR.level,
    }


def card_get_for_user(*, user: AbstractBaseUser, board_key: str, number: int) -> Card:
    """A card by ref parts if the user may read its board; NotFoundError otherwise."""
    board = board_get_for_user(user=user, key=board_key)
    card = Card.objects.filter(board=board, number=number).select_related("column").first()
    if card is None:
        raise NotFoundError("Card not found.")
    card.board = board
    return card
