"""The event catalogue: every kind of event Flux writes, and the one shape of each payload.

An event's payload is hash-chained (`activity.chain`): once written it never changes, so each
class below describes what the log holds, for ever. Services write an event by building one of
these (`log.record(..., event=events.CardMoved(...))`); every reader (replay, live updates,
descriptions, the feeds, the projections) reads one back with `events.read(...)`, which gives
the same class, with the defaults below for the keys that events written by older versions of
Flux lack. A payload whose shape does not fit raises `MalformedEvent`, naming what is wrong.

Adding a kind: add its `EventKind` member and its payload class here (with `kind` set), write
it from one service, and teach every reader (`READERS` in tests/activity/test_catalogue.py
lists them; the test fails until each handles the new kind or says it ignores it). Changing a
shape: add fields with defaults only; a change that old payloads cannot meet is a new kind.

Nested shapes (a card's place, a column, a label) are TypedDicts: they are plain JSON in the
payload and read as such.
"""

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any, ClassVar, NotRequired, Self, TypedDict

from django.db import models


class EventKind(models.TextChoices):
    BOARD_CREATED = "board.created", "Board created"
    BOARD_UPDATED = "board.updated", "Board changed"
    COLUMN_CREATED = "column.created", "Column added"
    COLUMN_UPDATED = "column.updated", "Column changed"
    MEMBERSHIP_SET = "membership.set", "Member added or role changed"
    MEMBERSHIP_REMOVED = "membership.removed", "Member removed"
    LABEL_CREATED = "label.created", "Label created"
    LABEL_UPDATED = "label.updated", "Label changed"
    CARD_CREATED = "card.created", "Card created"
    CARD_UPDATED = "card.updated", "Card edited"
    CARD_MOVED = "card.moved", "Card moved"
    CARD_ARCHIVED = "card.archived", "Card archived"
    CARD_RESTORED = "card.restored", "Card restored"
    CARD_LABELLED = "card.labelled", "Label added to a card"
    CARD_UNLABELLED = "card.unlabelled", "Label removed from a card"
    CARD_ASSIGNED = "card.assigned", "Card assigned"
    COMMENT_ADDED = "comment.added", "Comment added"
    DEPLOYMENT_RECORDED = "deployment.recorded", "Deployment recorded"
    DEPLOYMENT_ROLLED_BACK = "deployment.rolled_back", "Deployment rolled back"
    INCIDENT_OPENED = "incident.opened", "Incident opened"
    INCIDENT_RESOLVED = "incident.resolved", "Incident resolved"


class MalformedEvent(ValueError):
    """A stored payload that does not have the shape its kind promises."""


# --- Nested shapes ----------------------------------------------------------------------------


class Change(TypedDict):
    old: Any
    new: Any


class ColumnSnapshot(TypedDict):
    id: int
    name: str
    position: int
    stage: str
    wip_limit: NotRequired[int | None]
    wip_blocks: NotRequired[bool]


class CardPlace(TypedDict):
    column_id: int
    column: str  # its name then
    stage: str
    rank: str


class CardSnapshot(CardPlace):
    id: int
    ref: str
    number: int
    title: str
    description: NotRequired[str]
    due_date: NotRequired[str | None]  # ISO date
    version: NotRequired[int]
    archived: NotRequired[bool]
    created_by_id: NotRequired[int | None]
    created_at: NotRequired[str]  # ISO times, as the card row held them
    entered_column_at: NotRequired[str]
    updated_at: NotRequired[str]


class LabelSnapshot(TypedDict):
    id: int
    name: str
    colour: str
    kind: str


class BoardFields(TypedDict):
    id: int
    name: str
    key: str
    description: NotRequired[str]
    created_at: NotRequired[str]


class MembershipFields(TypedDict):
    user_id: int
    role: str


class CommitFields(TypedDict):
    sha: str
    timestamp: str | None
    message: str


class DeployedCard(TypedDict):
    id: int
    ref: str
    number: int


class DeploymentFields(TypedDict):
    version: str
    environment: str
    status: str  # "success" or "failed"
    url: NotRequired[str]
    started_at: NotRequired[str | None]
    finished_at: NotRequired[str | None]
    commits: NotRequired[list[CommitFields]]
    cards: NotRequired[list[DeployedCard]]
    hotfix: NotRequired[bool]  # unplanned: made because of a production incident
    fixes_incidents: NotRequired[list[int]]  # the ids of the incidents it fixes


# --- Payloads ---------------------------------------------------------------------------------

_OMIT_EMPTY = {"omit_empty": True}  # written only when it has a value (as it always was)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Payload:
    """One kind's payload. Field names are the stored keys (a trailing "_" is dropped)."""

    kind: ClassVar[EventKind]

    def to_payload(self) -> dict[str, Any]:
        """The JSON object stored in `Event.payload`."""
        stored: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.metadata.get("omit_empty") and not value and value != 0:
                continue
            stored[field.name.rstrip("_")] = value
        return stored

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Self:
        if not isinstance(payload, Mapping):
            raise MalformedEvent(f"a {cls.kind} payload must be a JSON object")
        values, missing = {}, []
        for name, key, required in _shape(cls):
            if key in payload:
                values[name] = payload[key]
            elif required:
                missing.append(key)
        if missing:
            raise MalformedEvent(f"a {cls.kind} payload lacks {', '.join(missing)}")
        return cls(**values)


_SHAPES: dict[type, tuple[tuple[str, str, bool], ...]] = {}


def _shape(cls: type) -> tuple[tuple[str, str, bool], ...]:
    """(field name, stored key, required) of each field: worked out once per class, as a
    replay reads thousands of payloads."""
    shape = _SHAPES.get(cls)
    if shape is None:
        shape = _SHAPES[cls] = tuple(
            (field.name, field.name.rstrip("_"), _required(field))
            for field in dataclasses.fields(cls)
        )
    return shape


def _required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BoardCreated(Payload):
    kind = EventKind.BOARD_CREATED
    board: BoardFields
    columns: list[ColumnSnapshot] = dataclasses.field(default_factory=list)
    membership: MembershipFields | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BoardUpdated(Payload):
    kind = EventKind.BOARD_UPDATED
    changes: dict[str, Change]  # name, description


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ColumnCreated(Payload):
    kind = EventKind.COLUMN_CREATED
    column: ColumnSnapshot


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ColumnUpdated(Payload):
    kind = EventKind.COLUMN_UPDATED
    column_id: int
    changes: dict[str, Change]  # name, stage, position, wip_limit, wip_blocks


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MembershipSet(Payload):
    kind = EventKind.MEMBERSHIP_SET
    user_id: int
    username: str
    old: str | None  # the role before (None: was not a member)
    new: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MembershipRemoved(Payload):
    kind = EventKind.MEMBERSHIP_REMOVED
    user_id: int
    username: str
    old: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LabelCreated(Payload):
    kind = EventKind.LABEL_CREATED
    label: LabelSnapshot


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LabelUpdated(Payload):
    kind = EventKind.LABEL_UPDATED
    old: LabelSnapshot
    new: LabelSnapshot


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CardCreated(Payload):
    kind = EventKind.CARD_CREATED
    card: CardSnapshot


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CardChange(Payload):
    """What every change to an existing card carries: its ref, and the row's new version
    and `updated_at` (replay restores both; events from before they existed lack them)."""

    ref: str = ""
    version: int | None = None
    updated_at: str | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CardUpdated(CardChange):
    kind = EventKind.CARD_UPDATED
    changes: dict[str, Change]  # title, description, due_date (ISO date or None)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CardMoved(CardChange):
    kind = EventKind.CARD_MOVED
    from_: CardPlace
    to: CardPlace
    entered_column_at: str | None = None
    # {card id: new rank} of the column's other cards, when the move re-spread its ranks
    # (events written before `respread`; read for ever, no longer written).
    rebalanced: dict[str, str] = dataclasses.field(default_factory=dict, metadata=_OMIT_EMPTY)
    # True when the move re-spread the target column: its open cards, in their order with this
    # one at its place, took `boards.ranking.ranks_spread(count=...)` in turn (`to.rank` is
    # this card's). Replay recomputes the same ranks; the event stays small however long the
    # column is.
    respread: bool = dataclasses.field(default=False, metadata=_OMIT_EMPTY)
    # The deployment.recorded event that made the move (not a manual delivery then).
    deployment_id: int | None = dataclasses.field(default=None, metadata=_OMIT_EMPTY)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CardAtPlace(CardChange):
    """A change that names the card's place, flat in the payload (a card's `CardPlace`)."""

    column_id: int
    column: str
    stage: str
    rank: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CardArchived(CardAtPlace):
    """The card leaves the board from this place."""

    kind = EventKind.CARD_ARCHIVED


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CardRestored(CardAtPlace):
    """The card is back, at this place (the bottom of its column)."""

    kind = EventKind.CARD_RESTORED


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CardLabelChange(CardChange):
    label: LabelSnapshot


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CardLabelled(CardLabelChange):
    kind = EventKind.CARD_LABELLED


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CardUnlabelled(CardLabelChange):
    kind = EventKind.CARD_UNLABELLED


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CardAssigned(CardChange):
    kind = EventKind.CARD_ASSIGNED
    old: list[int]  # user ids, sorted
    new: list[int]
    names: dict[str, str]  # {user id: username} of everyone in old and new


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CommentAdded(Payload):
    kind = EventKind.COMMENT_ADDED
    ref: str
    comment_id: int
    body: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeploymentRecorded(Payload):
    kind = EventKind.DEPLOYMENT_RECORDED
    deployment: DeploymentFields
    moves_to: str | None = None  # the column its cards move to (None: they stay)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeploymentRolledBack(Payload):
    """A recorded deployment was rolled back: from now on it counts as a failed change."""

    kind = EventKind.DEPLOYMENT_ROLLED_BACK
    deployment_id: int  # its public id: the id of the event that recorded it
    version: str
    environment: str
    rolled_back_at: str  # ISO time


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class IncidentOpened(Payload):
    """A production incident began (its id is this event's)."""

    kind = EventKind.INCIDENT_OPENED
    title: str
    started_at: str  # ISO time
    caused_by: int | None = None  # the deployment that caused it (its public id)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class IncidentResolved(Payload):
    """Service was restored after an incident."""

    kind = EventKind.INCIDENT_RESOLVED
    incident_id: int
    title: str
    resolved_at: str  # ISO time
    fixed_by: int | None = None  # the deployment that restored service (its public id)


CATALOGUE: dict[EventKind, type[Payload]] = {
    cls.kind: cls
    for cls in (
        BoardCreated,
        BoardUpdated,
        ColumnCreated,
        ColumnUpdated,
        MembershipSet,
        MembershipRemoved,
        LabelCreated,
        LabelUpdated,
        CardCreated,
        CardUpdated,
        CardMoved,
        CardArchived,
        CardRestored,
        CardLabelled,
        CardUnlabelled,
        CardAssigned,
        CommentAdded,
        DeploymentRecorded,
        DeploymentRolledBack,
        IncidentOpened,
        IncidentResolved,
    )
}


def read(kind: str, payload: Any) -> Payload:
    """The typed payload of a stored event; MalformedEvent if its kind or shape is unknown."""
    try:
        cls = CATALOGUE[EventKind(kind)]
    except ValueError:
        raise MalformedEvent(f"{kind!r} is not a kind of event Flux writes") from None
    return cls.from_payload(payload)


def iso(moment: datetime.date | None) -> str | None:
    """Dates and times as payloads hold them."""
    return moment.isoformat() if moment is not None else None
