"""REST routes for boards, cards and deployments: parse, call a query or service, serialise."""

import datetime
from typing import Literal

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import prefetch_related_objects
from django.urls import reverse
from ninja import Field, Query, Router, Schema
from ninja.responses import Status

from activity import events
from activity.log import Actor
from activity.models import Event
from boards import queries, services
from boards.errors import NotFoundError
from boards.models import (
    BOARD_KEY_RE,
    COLUMN_NAME_MAX_LENGTH,
    DEPLOYMENT_URL_MAX_LENGTH,
    DESCRIPTION_MAX_LENGTH,
    ENVIRONMENT_MAX_LENGTH,
    LABEL_NAME_MAX_LENGTH,
    MAX_VERSION,
    SEARCH_MAX_LENGTH,
    TITLE_MAX_LENGTH,
    USERNAME_MAX_LENGTH,
    Board,
    Card,
    Column,
    LabelKind,
    Role,
    Stage,
)
from boards.problems import (
    ERRORS,
    WRITE_ERRORS,
    WRITE_ERRORS_WITHOUT_CONFLICT,
    IsoDate,
    IsoDateTime,
    Text,
)
from boards.rendering import FluxRequest

User = get_user_model()
router = Router(tags=["boards"])

REF_PATTERN = r"^[A-Za-z][A-Za-z0-9]{1,9}-[0-9]{1,9}$"


# --- schemas ----------------------------------------------------------------------------------


class ColumnOut(Schema):
    id: int
    name: str
    stage: Stage
    position: int
    wip_limit: int | None
    wip_blocks: bool
    open_cards: int


class BoardSummary(Schema):
    key: str
    name: str
    description: str
    open_by_stage: dict[str, int]


class BoardOut(Schema):
    key: str
    name: str
    description: str
    columns: list[ColumnOut]


class CardOut(Schema):
    ref: str
    number: int
    board: str
    title: str
    description: str
    column: str
    stage: Stage
    version: int
    archived: bool
    due_date: IsoDate | None
    labels: list[str]
    releases: list[str]
    assignees: list[str]
    created_at: datetime.datetime
    updated_at: datetime.datetime
    entered_column_at: datetime.datetime
    url: str


class CardPage(Schema):
    items: list[CardOut]
    count: int
    limit: int
    offset: int


class CardIn(Schema):
    title: Text = Field(min_length=1, max_length=TITLE_MAX_LENGTH)
    description: Text = Field("", max_length=DESCRIPTION_MAX_LENGTH)
    column: Text | None = Field(
        None, max_length=COLUMN_NAME_MAX_LENGTH, description="Column name or stage."
    )
    due_date: IsoDate | None = None
    labels: list[Text] = Field(default_factory=list, max_length=50)
    assignees: list[Text] = Field(default_factory=list, max_length=50)


class CardPatch(Schema):
    title: Text | None = Field(None, min_length=1, max_length=TITLE_MAX_LENGTH)
    description: Text | None = Field(None, max_length=DESCRIPTION_MAX_LENGTH)
    due_date: IsoDate | None = None
    expected_version: int | None = Field(None, ge=1, le=MAX_VERSION)


class MoveIn(Schema):
    to: Text = Field(
        min_length=1, max_length=COLUMN_NAME_MAX_LENGTH, description="Column name or stage."
    )
    after: Text | None = Field(None, pattern=REF_PATTERN)
    before: Text | None = Field(None, pattern=REF_PATTERN)
    expected_version: int | None = Field(None, ge=1, le=MAX_VERSION)


class CommitIn(Schema):
    sha: Text = Field(min_length=4, max_length=64, pattern=r"^[0-9a-fA-F]+$")
    timestamp: IsoDateTime | None = None
    message: Text = Field("", max_length=10_000)


class DeploymentIn(Schema):
    board: Text = Field(pattern=BOARD_KEY_RE.replace("[A-Z]", "[A-Za-z]"))
    version: Text = Field(min_length=1, max_length=LABEL_NAME_MAX_LENGTH)  # names the release
    environment: Text = Field(min_length=1, max_length=ENVIRONMENT_MAX_LENGTH)
    status: Literal["success", "failed", "rolled_back"]
    cards: list[Text] | None = Field(None, max_length=500)
    commits: list[CommitIn] = Field(default_factory=list, max_length=1000)
    url: Text = Field("", max_length=DEPLOYMENT_URL_MAX_LENGTH)
    started_at: IsoDateTime | None = None
    finished_at: IsoDateTime | None = Field(
        None, description="When it finished; the time its figures count from (default: now)."
    )
    hotfix: bool = Field(False, description="Unplanned: made because of a production incident.")
    fixes_incidents: list[int] = Field(
        default_factory=list, max_length=100, description="Ids of the incidents it fixes."
    )


class DeploymentOut(Schema):
    id: int
    board: str
    version: str
    environment: str
    status: str
    cards: list[str]
    moved: list[str]
    recorded_at: datetime.datetime
    hotfix: bool
    fixes_incidents: list[int]


class DeploymentPatch(Schema):
    status: Literal["rolled_back"]
    rolled_back_at: IsoDateTime | None = Field(None, description="Default: now.")


class RollbackOut(Schema):
    id: int = Field(description="The deployment's id.")
    board: str
    version: str
    environment: str
    status: Literal["rolled_back"]
    rolled_back_at: datetime.datetime


class IncidentIn(Schema):
    board: Text = Field(pattern=BOARD_KEY_RE.replace("[A-Z]", "[A-Za-z]"))
    title: Text = Field(min_length=1, max_length=TITLE_MAX_LENGTH)
    started_at: IsoDateTime | None = Field(None, description="Default: now.")
    caused_by: int | None = Field(None, description="The id of the deployment that caused it.")


class IncidentPatch(Schema):
    status: Literal["resolved"]
    resolved_at: IsoDateTime | None = Field(None, description="Default: now.")
    fixed_by: int | None = Field(None, description="The id of the deployment that fixed it.")


class IncidentOut(Schema):
    id: int
    board: str
    title: str
    status: Literal["open", "resolved"]
    started_at: datetime.datetime
    caused_by: int | None
    resolved_at: datetime.datetime | None
    fixed_by: int | None


# --- helpers ----------------------------------------------------------------------------------


def _card_out(card: Card) -> CardOut:
    labels = list(card.labels.all())
    return CardOut(
        ref=card.ref,
        number=card.number,
        board=card.board.key,
        title=card.title,
        description=card.description,
        column=card.column.name,
        stage=Stage(card.column.stage),
        version=card.version,
        archived=card.archived,
        due_date=card.due_date,
        labels=[label.name for label in labels if label.kind == LabelKind.GENERAL],
        releases=[label.name for label in labels if label.kind == LabelKind.RELEASE],
        assignees=[user.get_username() for user in card.assignees.all()],
        created_at=card.created_at,
        updated_at=card.updated_at,
        entered_column_at=card.entered_column_at,
        url=reverse("boards:card", args=[card.board.key, card.number]),
    )


def _parse_ref(ref: str) -> tuple[str, int]:
    parsed = queries.ref_parse(ref)
    if parsed is None:
        raise NotFoundError("Card not found.")
    return parsed


def _card(request: FluxRequest, ref: str, at_least: Role = Role.VIEWER) -> Card:
    key, number = _parse_ref(ref)
    return queries.card_get(actor=request.actor, board_key=key, number=number, at_least=at_least)


def _column_for(board: Board, name_or_stage: str) -> Column:
    """A column by its name (any case), else the first column of that stage."""
    wanted = name_or_stage.strip()
    columns = list(board.columns.order_by("position", "id"))
    for column in columns:
        if column.name.lower() == wanted.lower():
            return column
    for column in columns:
        if column.stage == wanted.lower():
            return column
    raise ValidationError({"to": f"{board.key} has no column or stage called {wanted!r}."})


def _neighbour(board: Board, ref: str | None) -> int | None:
    if ref is None:
        return None
    key, number = _parse_ref(ref)
    card_id = Card.objects.filter(board=board, number=number).values_list("pk", flat=True).first()
    if key != board.key or card_id is None:
        raise ValidationError({"after": f"{ref} is not a card of {board.key}."})
    return card_id


def _fresh(card: Card) -> Card:
    return (
        Card.objects.select_related("board", "column")
        .prefetch_related("labels", "assignees")
        .get(pk=card.pk)
    )


# --- routes -----------------------------------------------------------------------------------


@router.get("/boards", response={200: list[BoardSummary], **ERRORS})
def board_list(request: FluxRequest):
    """The boards this token can see, with open cards per stage."""
    return [
        BoardSummary(
            key=board.key,
            name=board.name,
            description=board.description,
            open_by_stage={stage.value: count for stage, count in board.open_by_stage},
        )
        for board in queries.board_list(actor=request.actor)
    ]


@router.get("/boards/{key}", response={200: BoardOut, **ERRORS})
def board_detail(request: FluxRequest, key: str):
    """A board and its columns: stage, open cards, WIP limit."""
    board = queries.board_get(actor=request.actor, key=key)
    columns = queries.columns_read(board=board, limit=0)
    return BoardOut(
        key=board.key,
        name=board.name,
        description=board.description,
        columns=[
            ColumnOut(
                id=view.column.pk,
                name=view.column.name,
                stage=Stage(view.column.stage),
                position=view.column.position,
                wip_limit=view.column.wip_limit,
                wip_blocks=view.column.wip_blocks,
                open_cards=view.total,
            )
            for view in columns
        ],
    )


class CardQuery(Schema):
    column: Text | None = Field(
        None, max_length=COLUMN_NAME_MAX_LENGTH, description="Column name or stage."
    )
    stage: Stage | None = None
    label: Text | None = Field(None, max_length=LABEL_NAME_MAX_LENGTH)
    release: Text | None = Field(None, max_length=LABEL_NAME_MAX_LENGTH)
    assignee: Text | None = Field(None, max_length=USERNAME_MAX_LENGTH)
    q: Text | None = Field(
        None, max_length=SEARCH_MAX_LENGTH, description="Text in title, description or ref."
    )
    archived: bool = False
    limit: int = Field(50, ge=1, le=500)
    offset: int = Field(0, ge=0, le=10_000_000)


@router.get("/boards/{key}/cards", response={200: CardPage, **ERRORS})
def card_list(request: FluxRequest, key: str, filters: Query[CardQuery]):
    """A board's cards in board order (column, then rank), filtered and paginated."""
    board = queries.board_get(actor=request.actor, key=key)
    cards = queries.card_search(
        board=board,
        filters=queries.CardFilter(
            text=filters.q or "",
            label=filters.label or "",
            assignee=filters.assignee or "",
            release=filters.release or "",
        ),
        column=_column_for(board, filters.column).pk if filters.column else None,
        stage=filters.stage,
        archived=filters.archived,
    )
    page = list(cards[filters.offset : filters.offset + filters.limit])
    return CardPage(
        items=[_card_out(card) for card in page],
        count=cards.count(),
        limit=filters.limit,
        offset=filters.offset,
    )


@router.post("/boards/{key}/cards", response={201: CardOut, **WRITE_ERRORS})
def card_create(request: FluxRequest, key: str, payload: CardIn):
    """Create a card at the bottom of a column (default: To Do), with labels and assignees."""
    board = queries.board_get(actor=request.actor, key=key, at_least=Role.EDITOR)
    actor = request.actor
    with transaction.atomic():
        column = _column_for(board, payload.column) if payload.column else None
        card = services.card_create(
            actor=actor,
            board_id=board.pk,
            column_id=column.pk if column else None,
            title=payload.title,
            description=payload.description,
            due_date=payload.due_date,
        )
        for name in dict.fromkeys(payload.labels):
            label = services.label_get_or_create(actor=actor, board_id=board.pk, name=name)
            services.card_label_add(actor=actor, card_id=card.pk, label_id=label.pk)
        if payload.assignees:
            # Names are looked up among the board's members only: a name that is no one's and
            # the name of someone elsewhere get the same answer, so none can be probed.
            users = dict(
                User.objects.filter(
                    username__in=payload.assignees, is_active=True, memberships__board=board
                ).values_list("username", "pk")
            )
            others = sorted(set(payload.assignees) - set(users))
            if others:
                raise ValidationError(
                    {"assignees": f"Assignees must be members of the board: {', '.join(others)}."}
                )
            services.card_assign(actor=actor, card_id=card.pk, user_ids=users.values())
    return Status(201, _card_out(_fresh(card)))


@router.get("/cards/{ref}", response={200: CardOut, **ERRORS})
def card_detail(request: FluxRequest, ref: str):
    """A card by its ref, e.g. PAY-42."""
    return _card_out(_fresh(_card(request, ref)))


@router.patch("/cards/{ref}", response={200: CardOut, **WRITE_ERRORS})
def card_patch(request: FluxRequest, ref: str, payload: CardPatch):
    """Change a card's title, description or due date; send expected_version to be safe."""
    card = _card(request, ref, Role.EDITOR)
    changes = payload.model_dump(exclude_unset=True, exclude={"expected_version"})
    if "title" in changes and changes["title"] is None:
        raise ValidationError({"title": "A card's title cannot be null."})
    if "description" in changes and changes["description"] is None:
        changes["description"] = ""
    card = services.card_update(
        actor=request.actor,
        card_id=card.pk,
        expected_version=payload.expected_version,
        **changes,
    )
    return _card_out(_fresh(card))


@router.post("/cards/{ref}/move", response={200: CardOut, **WRITE_ERRORS})
def card_move(request: FluxRequest, ref: str, payload: MoveIn):
    """Move a card to a column (by name or stage), optionally after or before another card.

    Without after/before the card goes to the top of the column, unless it is already in that
    column: then nothing changes and no event is written.
    """
    key, number = _parse_ref(ref)
    board = queries.board_get(actor=request.actor, key=key, at_least=Role.EDITOR)
    column = _column_for(board, payload.to)
    card = services.card_move(
        actor=request.actor,
        card_ref=(board.key, number),
        to_column_id=column.pk,
        expected_version=payload.expected_version,
        after_id=_neighbour(board, payload.after),
        before_id=_neighbour(board, payload.before),
        stay_if_in_column=True,
    ).card
    # The move leaves labels and people as they were: read just those for the answer.
    prefetch_related_objects([card], "labels", "assignees")
    return _card_out(card)


@router.post("/deployments", response={201: DeploymentOut, **WRITE_ERRORS})
def deployment_create(request: FluxRequest, payload: DeploymentIn):
    """Record a deployment. A successful one to production moves its cards to Deployed (to
    staging: Staging) and labels them with the release; cards may be named in commit messages.
    """
    return Status(201, deployment_submit(actor=request.actor, payload=payload))


def deployment_submit(*, actor: Actor, payload: DeploymentIn) -> DeploymentOut:
    """Record one deployment as the API states it: the route's work, and `import_deployments`'s
    for each record, so that an import equals posting the same records."""
    board = queries.board_get(actor=actor, key=payload.board, at_least=Role.EDITOR)
    numbers = None
    if payload.cards is not None:
        numbers = []
        for ref in payload.cards:
            key, number = _parse_ref(ref)
            if key != board.key:
                raise ValidationError({"cards": f"{ref} is not a card of {board.key}."})
            numbers.append(number)
    result = services.deployment_record(
        actor=actor,
        board_id=board.pk,
        version=payload.version,
        environment=payload.environment,
        status=payload.status,
        card_numbers=numbers,
        commits=[
            services.Commit(sha=c.sha, timestamp=c.timestamp, message=c.message)
            for c in payload.commits
        ],
        url=payload.url,
        started_at=payload.started_at,
        finished_at=payload.finished_at,
        hotfix=payload.hotfix,
        fixes_incident_ids=payload.fixes_incidents,
    )
    return DeploymentOut(
        id=result.event.pk,
        board=board.key,
        version=payload.version,
        environment=payload.environment.lower(),
        status=payload.status,
        cards=[card.ref for card in result.cards],
        moved=[card.ref for card in result.moved],
        recorded_at=result.event.occurred_at,
        hotfix=payload.hotfix,
        fixes_incidents=list(dict.fromkeys(payload.fixes_incidents)),
    )


@router.patch("/deployments/{deployment_id}", response={200: RollbackOut, **WRITE_ERRORS})
def deployment_patch(request: FluxRequest, deployment_id: int, payload: DeploymentPatch):
    """Mark a successful deployment rolled back: it then counts as a failed change."""
    event = services.deployment_roll_back(
        actor=request.actor, deployment_id=deployment_id, rolled_back_at=payload.rolled_back_at
    )
    rollback = events.read(event.kind, event.payload)
    assert isinstance(rollback, events.DeploymentRolledBack)
    return RollbackOut(
        id=deployment_id,
        board=event.board.key,
        version=rollback.version,
        environment=rollback.environment,
        status="rolled_back",
        rolled_back_at=datetime.datetime.fromisoformat(rollback.rolled_back_at),
    )


def _incident_out(opened: Event, resolved: Event | None) -> IncidentOut:
    incident = events.read(opened.kind, opened.payload)
    assert isinstance(incident, events.IncidentOpened)
    end = events.read(resolved.kind, resolved.payload) if resolved else None
    assert end is None or isinstance(end, events.IncidentResolved)
    return IncidentOut(
        id=opened.pk,
        board=opened.board.key,
        title=incident.title,
        status="resolved" if end else "open",
        started_at=datetime.datetime.fromisoformat(incident.started_at),
        caused_by=incident.caused_by,
        resolved_at=datetime.datetime.fromisoformat(end.resolved_at) if end else None,
        fixed_by=end.fixed_by if end else None,
    )


@router.post("/incidents", response={201: IncidentOut, **WRITE_ERRORS_WITHOUT_CONFLICT})
def incident_create(request: FluxRequest, payload: IncidentIn):
    """Open a production incident on a service, naming the deployment that caused it if
    known; it feeds the change failure rate and the recovery time."""
    board = queries.board_get(actor=request.actor, key=payload.board, at_least=Role.EDITOR)
    event = services.incident_open(
        actor=request.actor,
        board_id=board.pk,
        title=payload.title,
        started_at=payload.started_at,
        cause_deployment_id=payload.caused_by,
    )
    return Status(201, _incident_out(event, None))


@router.patch("/incidents/{incident_id}", response={200: IncidentOut, **WRITE_ERRORS})
def incident_patch(request: FluxRequest, incident_id: int, payload: IncidentPatch):
    """Resolve an incident, naming the deployment that restored service if there was one."""
    resolved = services.incident_resolve(
        actor=request.actor,
        incident_id=incident_id,
        resolved_at=payload.resolved_at,
        fixed_by_deployment_id=payload.fixed_by,
    )
    opened = Event.objects.get(pk=incident_id)
    opened.board = resolved.board
    return _incident_out(opened, resolved)
