"""Read-only queries behind the history pages: the board as it was, its activity feed, a
person's activity. Permission is the board page's own (`boards.queries.board_get`, a 404 for
non-members); a person's page shows only events on boards the viewer may read.

Decisions made here:
- Times in URLs are ISO 8601 (`?at=2026-10-01T12:00Z`); one without an offset is UTC, as is
  the page's date picker. "The board at T" is the board after its last event at or before T.
- `?event=<id>` shows the board just after that event; stepping moves one event of the board
  at a time (its chain order), and the page lists the events of that event's UTC day.
- The diff against now lists cards opened since (created or restored), moved to another
  column, closed since (archived), and edited (title, description, due date, labels, people).
- Feeds are newest first, 50 entries a page, paged by event id.
"""

import datetime
import re
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db.models import Q, QuerySet
from django.utils.dateparse import parse_date, parse_datetime

from activity import clock
from activity.describe import event_describe
from activity.events import EventKind
from activity.log import Actor
from activity.models import Event
from boards.errors import NotFoundError
from boards.models import USERNAME_MAX_LENGTH, Board, LabelKind, Membership
from boards.problems import text_refusal
from boards.queries import boards_visible, ref_parse
from history.replay import (
    BoardNotReplayable,
    BoardState,
    board_changes,
    board_replay,
    board_state_present,
    seq_latest,
    users_named,
)

UTC = datetime.UTC
FEED_PAGE = 50
# Every kind, in the order the feed's filter lists them; each is named by its label in the
# catalogue, but for those the filter has always named more briefly.
FEED_KINDS: tuple[EventKind, ...] = (
    EventKind.CARD_CREATED,
    EventKind.CARD_MOVED,
    EventKind.CARD_UPDATED,
    EventKind.CARD_ARCHIVED,
    EventKind.CARD_RESTORED,
    EventKind.CARD_LABELLED,
    EventKind.CARD_UNLABELLED,
    EventKind.CARD_ASSIGNED,
    EventKind.COMMENT_ADDED,
    EventKind.DEPLOYMENT_RECORDED,
    EventKind.DEPLOYMENT_ROLLED_BACK,
    EventKind.INCIDENT_OPENED,
    EventKind.INCIDENT_RESOLVED,
    EventKind.BOARD_CREATED,
    EventKind.BOARD_UPDATED,
    EventKind.COLUMN_CREATED,
    EventKind.COLUMN_UPDATED,
    EventKind.LABEL_CREATED,
    EventKind.LABEL_UPDATED,
    EventKind.MEMBERSHIP_SET,
    EventKind.MEMBERSHIP_REMOVED,
)
FEED_NAMES: dict[EventKind, str] = {
    EventKind.CARD_LABELLED: "Label added",
    EventKind.CARD_UNLABELLED: "Label removed",
    EventKind.CARD_ASSIGNED: "People assigned",
    EventKind.COMMENT_ADDED: "Comment",
    EventKind.DEPLOYMENT_RECORDED: "Deployment",
    EventKind.DEPLOYMENT_ROLLED_BACK: "Rollback",
    EventKind.BOARD_UPDATED: "Board edited",
    EventKind.MEMBERSHIP_SET: "Member role",
}
KINDS = [(kind.value, FEED_NAMES.get(kind, kind.label)) for kind in FEED_KINDS]
KIND_NAMES = dict(KINDS)


def moment_parse(text: str | None) -> datetime.datetime | None:
    """An aware UTC datetime from "2026-10-01T12:00Z", "2026-10-01T12:00" (UTC) or
    "2026-10-01" (its end); None for anything else."""
    text = (text or "").strip()[:40]
    if not text:
        return None
    try:
        moment = parse_datetime(text.replace(" ", "T").replace("z", "Z"))
        if moment is None and (day := parse_date(text)) is not None:
            moment = datetime.datetime.combine(day, datetime.time.max)
    except ValueError:
        return None
    if moment is None or not 1970 <= moment.year <= 9998:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def moment_format(moment: datetime.datetime) -> str:
    """The shortest ISO form that names the moment: 2026-10-01T12:00Z, with seconds if any."""
    moment = moment.astimezone(UTC)
    if moment.second or moment.microsecond:
        return moment.strftime("%Y-%m-%dT%H:%M:%S") + (
            f".{moment.microsecond:06d}Z" if moment.microsecond else "Z"
        )
    return moment.strftime("%Y-%m-%dT%H:%MZ")


@dataclass
class Entry:
    """One event of a feed, in words."""

    event: Event
    sentence: str
    card_ref: str
    card_url: str


def _entries(events: list[Event]) -> list[Entry]:
    entries = []
    for event in events:
        ref = ""
        url = ""
        if event.card is not None:
            ref = f"{event.board.key}-{event.card.number}"
            url = f"{event.board.cards_url}{event.card.number}/"
        entries.append(
            Entry(event=event, sentence=event_describe(event), card_ref=ref, card_url=url)
        )
    return entries


# --- Time travel --------------------------------------------------------------------------------


@dataclass
class TravelCard:
    ref: str
    number: int
    title: str
    labels: list
    assignees: list[str]
    due_date: datetime.date | None
    changed: str  # "", or how it differs now: "moved", "edited", "removed"


@dataclass
class TravelColumn:
    name: str
    stage: str
    wip_limit: int | None
    cards: list[TravelCard]


def travel_page_read(*, board: Board, at: datetime.datetime | None, event_id: int | None) -> dict:
    """The board as it was at `at` or just after event `event_id`, with the way there and
    back: the changes since, the neighbouring events and that day's events. NotFoundError for
    an event of another board; the page says so when the board did not exist yet."""
    events = Event.objects.filter(board=board)
    latest = seq_latest(board_id=board.pk)
    step = None
    if event_id is not None:
        step = events.filter(pk=event_id).first()
        if step is None or step.seq is None:
            raise NotFoundError("No such event on this board.")
        seq = step.seq
        at = step.occurred_at
    else:
        at = at or clock.now()
        seq = (
            events.filter(seq__isnull=False, occurred_at__lte=at)
            .order_by("-seq")
            .values_list("seq", flat=True)
            .first()
            or 0
        )
        if seq:
            step = events.filter(seq=seq).first()
    context: dict = {"board": board, "at": at, "at_iso": moment_format(at), "latest": latest}
    try:
        # A page view only reads: snapshots are written by verify_activity --snapshots.
        then = board_replay(board_id=board.pk, seq=seq, write_snapshot=False) if seq else None
    except BoardNotReplayable:
        then = None
    context["step"] = step
    if step is not None:
        context["step_sentence"] = event_describe(step)
        neighbours = events.filter(seq__in=[seq - 1, seq + 1]).select_related("card")
        by_seq = {e.seq: e for e in neighbours}
        context["previous"] = by_seq.get(seq - 1)
        context["next"] = by_seq.get(seq + 1)
    else:
        context["previous"] = None
        context["next"] = events.filter(seq__isnull=False).order_by("seq").first()
    context["is_now"] = seq == latest
    if then is None:
        context.update(columns=[], changes=[], exists=False, day_entries=[])
        return context
    now = board_state_present(board_id=board.pk)
    changes = board_changes(then=then, now=now)
    context.update(exists=True, then=then, changes=changes)
    context["columns"] = _travel_columns(then, changes)
    day = at.astimezone(UTC).date()
    start = datetime.datetime.combine(day, datetime.time.min, tzinfo=UTC)
    day_events = list(
        events.filter(occurred_at__gte=start, occurred_at__lt=start + datetime.timedelta(days=1))
        .select_related("board", "card")
        .order_by("seq", "id")[:500]
    )
    context["day"] = day
    context["day_entries"] = _entries(day_events)
    context["day_previous"] = start - datetime.timedelta(seconds=1)
    context["day_next"] = start + datetime.timedelta(days=1, hours=23, minutes=59)
    first = events.order_by("occurred_at").values_list("occurred_at", flat=True).first()
    context["slider"] = {
        "min": int(first.timestamp()) if first else int(at.timestamp()),
        "max": int(clock.now().timestamp()),
        "value": int(at.timestamp()),
    }
    return context


def _travel_columns(state: BoardState, changes: list) -> list[TravelColumn]:
    names = users_named(user_id for card in state.cards.values() for user_id in card.assignees)
    changed = {change.ref: change.change for change in changes}
    columns = []
    for column in state.columns_ordered():
        cards = []
        for card in state.open_cards(column.id):
            ref = state.ref(card)
            labels = sorted(
                (state.labels[pk] for pk in card.labels if pk in state.labels),
                key=lambda label: (label.kind != LabelKind.GENERAL, label.name),
            )
            cards.append(
                TravelCard(
                    ref=ref,
                    number=card.number,
                    title=card.title,
                    labels=labels,
                    assignees=sorted(names.get(pk, "?") for pk in card.assignees),
                    due_date=card.due_date,
                    changed=changed.get(ref, ""),
                )
            )
        columns.append(TravelColumn(column.name, column.stage, column.wip_limit, cards))
    return columns


# --- Feeds --------------------------------------------------------------------------------------


# The days a feed can be filtered to: an event's time is stored in these years, and the day
# after the last is still a date (`until` filters up to the end of its day).
FEED_DAYS = (datetime.date(1970, 1, 1), datetime.date(9998, 12, 31))
# A card number in the filter: ASCII digits, few enough to fit any integer column.
FEED_CARD_NUMBER = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True)
class FeedFilter:
    person: str = ""
    kind: str = ""
    card: str = ""  # a ref, "PAY-42", or its number
    since: datetime.date | None = None
    until: datetime.date | None = None

    @classmethod
    def parse(cls, query) -> "FeedFilter":
        """The filters asked for. A value that is not one (a misspelt kind, "yesterday") is
        dropped; text that cannot be stored or a day outside FEED_DAYS is refused with a
        ValidationError that says so (a 422 page), never passed on to the database."""
        errors: dict[str, str] = {}

        def text(name: str, most: int) -> str:
            value = str(query.get(name) or "")
            if (reason := text_refusal(value)) is not None:
                errors[name] = f"The {name} filter {reason}."
                return ""
            return value.strip()[:most]

        def day(name: str) -> datetime.date | None:
            try:
                found = parse_date(text(name, 10))
            except ValueError:
                return None
            if found is not None and not FEED_DAYS[0] <= found <= FEED_DAYS[1]:
                errors[name] = f"The {name} date must be between {FEED_DAYS[0]} and {FEED_DAYS[1]}."
                return None
            return found

        kind = text("kind", 40)
        filters = cls(
            person=text("person", USERNAME_MAX_LENGTH),
            kind=kind if kind in KIND_NAMES else "",
            card=text("card", 20),
            since=day("since"),
            until=day("until"),
        )
        if errors:
            raise ValidationError(errors)
        return filters

    @property
    def active(self) -> bool:
        return any((self.person, self.kind, self.card, self.since, self.until))

    def query_string(self) -> str:
        from django.utils.http import urlencode

        pairs = {
            "person": self.person,
            "kind": self.kind,
            "card": self.card,
            "since": self.since.isoformat() if self.since else "",
            "until": self.until.isoformat() if self.until else "",
        }
        return urlencode({k: v for k, v in pairs.items() if v})

    def apply(self, events: QuerySet[Event], *, board: Board | None) -> QuerySet[Event]:
        if self.person:
            events = events.filter(
                Q(actor__username=self.person) | Q(actor__isnull=True, actor_name=self.person)
            )
        if self.kind:
            events = events.filter(kind=self.kind)
        if self.card and board is not None:
            number = None
            if FEED_CARD_NUMBER.fullmatch(self.card):
                number = int(self.card)
            elif (ref := ref_parse(self.card)) is not None and ref[0] == board.key:
                number = ref[1]
            events = events.filter(card__number=number) if number is not None else events.none()
        if self.since:
            start = datetime.datetime.combine(self.since, datetime.time.min, tzinfo=UTC)
            events = events.filter(occurred_at__gte=start)
        if self.until:
            end = datetime.datetime.combine(self.until, datetime.time.min, tzinfo=UTC)
            events = events.filter(occurred_at__lt=end + datetime.timedelta(days=1))
        return events


def _page(events: QuerySet[Event], before: int | None) -> tuple[list[Entry], int | None]:
    if before is not None:
        events = events.filter(pk__lt=before)
    page = list(events.select_related("board", "card", "actor").order_by("-id")[: FEED_PAGE + 1])
    more = page[FEED_PAGE - 1].pk if len(page) > FEED_PAGE else None
    return _entries(page[:FEED_PAGE]), more


def board_feed(
    *, board: Board, filters: FeedFilter, before: int | None = None
) -> tuple[list[Entry], int | None]:
    """A page of the board's events, newest first, and the id to continue before (or None)."""
    return _page(filters.apply(Event.objects.filter(board=board), board=board), before)


def board_people(*, board: Board) -> list[str]:
    """Who appears in the board's feed filter: its members, and the names events carry."""
    User = get_user_model()
    members = User.objects.filter(memberships__board=board).values_list("username", flat=True)
    return sorted(set(members))


def user_get_visible(*, actor: Actor, username: str):
    """A person whose activity the actor may see: themself, or someone on a board they share
    (staff: anyone). NotFoundError otherwise, so names cannot be probed."""
    User = get_user_model()
    # A name no one can have (NUL, which PostgreSQL refuses in a query; too long) is no one's.
    if text_refusal(username) is not None or len(username) > USERNAME_MAX_LENGTH:
        raise NotFoundError("No such person.")
    person = User.objects.filter(username=username).first()
    if person is None or actor.user is None or not actor.user.is_authenticated:
        raise NotFoundError("No such person.")
    if person.pk == actor.user.pk or actor.user.is_staff:
        return person
    shared = Membership.objects.filter(user=person, board__in=boards_visible(actor=actor))
    if not shared.exists():
        raise NotFoundError("No such person.")
    return person


def user_feed(
    *, actor: Actor, person, filters: FeedFilter, before: int | None = None
) -> tuple[list[Entry], int | None]:
    """A page of what `person` did on the boards the actor may read, newest first."""
    events = Event.objects.filter(actor=person, board__in=boards_visible(actor=actor))
    return _page(filters.apply(events, board=None), before)
