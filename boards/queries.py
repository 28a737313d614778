"""Every read the views and API need, permission-filtered, in a fixed number of SQL queries."""

import functools
import hashlib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

import markdown
import nh3
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.db.models import Count, F, OuterRef, Prefetch, Q, QuerySet, Subquery, Window
from django.db.models.functions import Coalesce, RowNumber
from django.template.loader import get_template
from django.utils.safestring import SafeString, mark_safe

from activity.describe import event_describe
from activity.log import Actor
from activity.models import Event
from boards.errors import NotFoundError
from boards.models import Board, Card, Column, Comment, Label, LabelKind, Membership, Role, Stage
from boards.permissions import role_require
from boards.templatetags.flux import age, overdue

if TYPE_CHECKING:
    from django.contrib.auth.models import User as UserModel
    from django_stubs_ext import WithAnnotations

User = get_user_model()

# A column shows this many cards at first and loads more on demand, so a Deployed column
# with years of history costs the same as a new one.
COLUMN_PAGE = 50


REF_RE = re.compile(r"([A-Z][A-Z0-9]{1,9})-([0-9]{1,9})")
RANK_RE = re.compile(r"[0-9A-Za-z]{1,255}")
DIGITS_RE = re.compile(r"([0-9]+)")


def natural_key(text: str) -> tuple[tuple[object, ...], str]:
    """A sort key that orders runs of digits as numbers: "2026.11.2" before "2026.11.11".

    Splitting on digit runs alternates text and digits, so parts at the same place are of
    the same kind and always compare. Digits compare by length then value (no int(): a name
    of thousands of digits must not raise); the name itself breaks ties ("v01" and "v1")."""
    parts = DIGITS_RE.split(text)
    key = tuple(
        (len(part.lstrip("0")), part.lstrip("0")) if i % 2 else part.casefold()
        for i, part in enumerate(parts)
    )
    return key, text


def ref_parse(text: str) -> tuple[str, int] | None:
    """("PAY", 42) for "PAY-42" or "pay-42"; None for anything else."""
    match = REF_RE.fullmatch(str(text).strip().upper())
    return (match[1], int(match[2])) if match else None


@dataclass(frozen=True)
class CardFilter:
    """What the board is narrowed to; empty fields match everything."""

    text: str = ""
    label: str = ""
    assignee: str = ""
    release: str = ""

    @property
    def active(self) -> bool:
        return any((self.text, self.label, self.assignee, self.release))

    def apply[C: Card](self, cards: QuerySet[C]) -> QuerySet[C]:
        if self.text:
            match = Q(title__icontains=self.text) | Q(description__icontains=self.text)
            if ref := ref_parse(self.text):
                match |= Q(board__key=ref[0], number=ref[1])
            cards = cards.filter(match)
        if self.label:
            cards = cards.filter(labels__name=self.label, labels__kind=LabelKind.GENERAL)
        if self.release:
            cards = cards.filter(labels__name=self.release, labels__kind=LabelKind.RELEASE)
        if self.assignee:
            cards = cards.filter(assignees__username=self.assignee)
        return cards


NO_FILTER = CardFilter()


def boards_visible(*, actor: Actor) -> QuerySet[Board]:
    """The boards an actor may read: all for staff, else their memberships; a token narrows it."""
    user = actor.user
    if user is None or not user.is_authenticated or not user.is_active:
        return Board.objects.none()
    boards = Board.objects.all() if user.is_staff else Board.objects.filter(memberships__user=user)
    if actor.board_ids is not None:
        boards = boards.filter(pk__in=actor.board_ids)
    return boards


def board_list(*, actor: Actor) -> list[Board]:
    """The actor's boards, each with `open_by_stage` [(stage, open cards)], in one query."""
    counts = {
        f"open_{stage.value}": Count(
            "cards", filter=Q(cards__archived=False, cards__column__stage=stage.value)
        )
        for stage in Stage
    }
    boards = list(boards_visible(actor=actor).annotate(**counts).order_by("name"))
    for board in boards:
        board.open_by_stage = [(stage, getattr(board, f"open_{stage.value}")) for stage in Stage]
    return boards


def board_get(
    *, actor: Actor, key: str, at_least: Role = Role.VIEWER, with_last_event: bool = False
) -> Board:
    """The board with that key if the actor has at least that role; NotFoundError otherwise.

    One query: the user's membership role comes along as a subquery, and so does the id of
    the board's newest event when asked (`last_event_id`: where a live stream starts).
    """
    boards = Board.objects.filter(key=str(key).upper())
    if with_last_event:
        # By the board's chain (seq): its (board, seq) index gives the newest at once, where
        # PostgreSQL would walk the whole log by id to find the board's newest id. Events
        # from before the chain existed have no seq; a board with only those falls back.
        events = Event.objects.filter(board=OuterRef("pk"))
        chained = events.filter(seq__isnull=False).order_by("-seq").values("id")[:1]
        newest = Coalesce(Subquery(chained), Subquery(events.order_by("-id").values("id")[:1]))
        boards = boards.annotate(last_event_id=newest)
    user = actor.user
    if user is not None and user.is_authenticated:
        mine = Membership.objects.filter(board=OuterRef("pk"), user=user).values("role")[:1]
        boards = boards.annotate(membership_role=Subquery(mine))
    board = boards.first()
    if board is None:
        raise NotFoundError("Board not found.")
    board.role = role_require(
        actor=actor,
        board=board,
        at_least=at_least,
        membership_role=getattr(board, "membership_role", None),
    )
    return board


class CardLists(TypedDict):
    """What `_card_rows` prefetches onto each card, as plain lists (`Prefetch(to_attr=...)`)."""

    label_list: list[Label]
    assignee_list: list["UserModel"]


# A card as a board's columns show it: its labels and assignees already in lists.
type CardRow = WithAnnotations[Card, CardLists]


@dataclass
class ColumnView:
    column: Column
    count: int = 0  # open cards matching the filter
    total: int = 0  # open cards, whatever the filter: what the WIP limit counts
    cards: list[CardRow] = field(default_factory=list)

    @property
    def over_limit(self) -> bool:
        return self.column.wip_limit is not None and self.total > self.column.wip_limit

    @property
    def more(self) -> int:
        return self.count - len(self.cards)

    @property
    def last_rank(self) -> str:
        return self.cards[-1].rank if self.cards else ""


def _card_rows(board: Board) -> QuerySet[CardRow]:
    """Open cards with their labels and assignees as plain lists (no queryset per card)."""
    return Card.objects.filter(board=board, archived=False).prefetch_related(
        Prefetch("labels", queryset=Label.objects.order_by("kind", "name"), to_attr="label_list"),
        Prefetch("assignees", queryset=User.objects.order_by("username"), to_attr="assignee_list"),
    )


def columns_read(
    *,
    board: Board,
    column_ids: list[int] | None = None,
    filters: CardFilter = NO_FILTER,
    limit: int = COLUMN_PAGE,
) -> list[ColumnView]:
    """Columns in pipeline order with their first `limit` cards and full counts: 5 queries."""
    columns = Column.objects.filter(board=board).order_by("position", "id")
    if column_ids is not None:
        columns = columns.filter(pk__in=column_ids)
    views = {column.pk: ColumnView(column=column) for column in columns}
    # Each filter matches a card through at most one row (label names are unique per board),
    # so no DISTINCT is needed and the window below numbers cards, not join rows.
    cards = filters.apply(_card_rows(board).filter(column_id__in=views))
    for row in cards.order_by().values("column_id").annotate(n=Count("pk")):
        views[row["column_id"]].count = views[row["column_id"]].total = row["n"]
    if filters.active:
        unfiltered = Card.objects.filter(board=board, archived=False, column_id__in=views)
        for row in unfiltered.order_by().values("column_id").annotate(n=Count("pk")):
            views[row["column_id"]].total = row["n"]
    for card in _first_of_each_column(cards, column_ids=list(views), limit=limit):
        card.board = board  # refs need the key: no query per card
        card.column = views[card.column_id].column  # and "overdue" its stage
        views[card.column_id].cards.append(card)
    for view in views.values():
        _fragment_keys(view.cards)
    return list(views.values())


def card_search(
    *,
    board: Board,
    filters: CardFilter = NO_FILTER,
    column: int | None = None,
    stage: str | None = None,
    archived: bool = False,
) -> QuerySet[Card]:
    """A board's cards in board order, filtered; labels and assignees prefetched."""
    cards = filters.apply(
        Card.objects.filter(board=board, archived=archived)
        .select_related("board", "column")
        .prefetch_related(
            Prefetch("labels", queryset=Label.objects.order_by("kind", "name")),
            Prefetch("assignees", queryset=User.objects.order_by("username")),
        )
    )
    if column is not None:
        cards = cards.filter(column_id=column)
    if stage is not None:
        cards = cards.filter(column__stage=stage)
    return cards.order_by("column__position", "column_id", "rank", "pk")


@functools.cache
def _template_digest() -> str:
    """A digest of the board's template: a deploy that changes how cards look changes every
    card's key, so no card cached by the previous version is shown."""
    source = get_template("boards/board.html").template.source  # type: ignore[attr-defined]
    return hashlib.sha256(source.encode()).hexdigest()[:12]


def _fragment_keys(cards: list[CardRow]) -> None:
    """Give each card the key of its rendered HTML: everything the card shows is in it (its
    version covers its own fields; labels, people, age and due state are spelled out; the
    template's digest covers how they are drawn)."""
    digest = _template_digest()
    for card in cards:
        labels = ",".join(f"{x.pk}.{x.kind}.{x.colour}.{x.name}" for x in card.label_list)
        people = ",".join(
            f"{p.pk}.{p.get_username()}.{p.get_full_name()}" for p in card.assignee_list
        )
        state = f"{age(card.entered_column_at)}.{overdue(card)}"
        card.fragment_key = f"{digest}:{card.pk}:{card.version}:{state}:{labels}:{people}"


def _first_of_each_column(
    cards: QuerySet[CardRow], *, column_ids: list[int], limit: int
) -> QuerySet[CardRow] | list[CardRow]:
    """The first `limit` cards of each column, in column and rank order.

    On PostgreSQL, one UNION ALL of a LIMIT per column, each read off the (column, rank)
    index, gives the ids: a Deployed column with 100,000 cards costs what a short one does.
    SQLite cannot order and limit inside a UNION; there a window numbers the cards instead.
    """
    if not column_ids or limit <= 0:
        return []
    if connection.features.supports_slicing_ordering_in_compound:
        firsts = [
            cards.filter(column_id=pk).order_by("rank").values_list("pk", "rank")[:limit]
            for pk in column_ids
        ]
        rows = firsts[0].union(*firsts[1:], all=True).order_by() if len(firsts) > 1 else firsts[0]
        return cards.filter(pk__in=[pk for pk, _ in rows]).order_by("column_id", "rank")
    ranked = cards.annotate(
        place=Window(RowNumber(), partition_by=[F("column_id")], order_by=[F("rank").asc()])
    ).filter(place__lte=limit)
    return ranked.order_by("column_id", "rank")


def column_more(
    *, board: Board, column_id: int, after_rank: str, filters: CardFilter = NO_FILTER
) -> tuple[Column, list[CardRow], bool]:
    """The next page of a column's cards after `after_rank`, and whether more follow."""
    column = Column.objects.filter(board=board, pk=column_id).first()
    if column is None:
        raise NotFoundError("Column not found.")
    after_rank = after_rank if RANK_RE.fullmatch(after_rank) else ""
    cards = filters.apply(_card_rows(board).filter(column=column, rank__gt=after_rank))
    page = list(cards.order_by("rank")[: COLUMN_PAGE + 1])
    for card in page:
        card.board = board
        card.column = column
    _fragment_keys(page)
    return column, page[:COLUMN_PAGE], len(page) > COLUMN_PAGE


def board_page_read(
    *, board: Board, actor: Actor, filters: CardFilter = NO_FILTER
) -> dict[str, Any]:
    """The board page's context, in a fixed number of queries whatever the board's size."""
    role = getattr(board, "role", None) or role_require(
        actor=actor, board=board, at_least=Role.VIEWER
    )
    labels = list(board.labels.order_by("kind", "name"))
    columns = columns_read(board=board, filters=filters)
    return {
        "board": board,
        "columns": columns,
        # Under a filter, how many open cards match on the whole board: at 0 the page says so
        # once, rather than leaving every column silently empty.
        "matches": sum(view.count for view in columns),
        "role": role,
        "can_edit": role.level >= Role.EDITOR.level,
        "filters": filters,
        "labels": [label for label in labels if label.kind == LabelKind.GENERAL],
        # Newest first, by version: a text sort put 2026.11.2 after 2026.11.11.
        "releases": sorted(
            (label for label in labels if label.kind == LabelKind.RELEASE),
            key=lambda label: natural_key(label.name),
            reverse=True,
        ),
        "members": board_members(board=board),
        "boards": list(boards_visible(actor=actor).order_by("name").only("name", "key")),
    }


def card_label_choices(*, card: Card) -> list[Label]:
    """Labels offered on a card: the board's general ones and the releases it already has."""
    return list(
        Label.objects.filter(board=card.board_id)
        .filter(Q(kind=LabelKind.GENERAL) | Q(cards=card))
        .distinct()
        .order_by("kind", "name")
    )


def board_columns(*, board: Board) -> list[Column]:
    return list(board.columns.order_by("position", "id"))


def board_members(*, board: Board) -> list[AbstractBaseUser]:
    return list(User.objects.filter(memberships__board=board, is_active=True).order_by("username"))


def card_get(*, actor: Actor, board_key: str, number: int, at_least: Role = Role.VIEWER) -> Card:
    """A card (archived too) by its ref parts if the actor has that role on its board."""
    board = board_get(actor=actor, key=board_key, at_least=at_least)
    card = (
        Card.objects.filter(board=board, number=number)
        .select_related("column")
        .prefetch_related("labels", "assignees")
        .first()
    )
    if card is None:
        raise NotFoundError("Card not found.")
    card.board = board
    return card


@dataclass
class HistoryEntry:
    event: Event
    sentence: str


def card_history(*, card: Card) -> list[HistoryEntry]:
    """The card's events, newest first, each in words."""
    events = Event.objects.filter(card=card).order_by("-id")
    return [HistoryEntry(event=e, sentence=event_describe(e, with_card=False)) for e in events]


def card_comments(*, card: Card) -> list[Comment]:
    return list(card.comments.order_by("created_at", "id"))


MARKDOWN_TAGS = {
    "p", "br", "hr", "strong", "em", "code", "pre", "blockquote", "ul", "ol", "li",
    "h1", "h2", "h3", "h4", "h5", "h6", "a", "table", "thead", "tbody", "tr", "th", "td", "del",
}  # fmt: skip


def markdown_render(text: str) -> SafeString:
    """Markdown to HTML that is safe to show: scripts, handlers and styles are stripped."""
    html = markdown.markdown(text, extensions=["fenced_code", "tables", "sane_lists"])
    clean = nh3.clean(
        html,
        tags=MARKDOWN_TAGS,
        attributes={"a": {"href", "title"}},
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )
    return mark_safe(clean)  # sanitised by nh3 just above
