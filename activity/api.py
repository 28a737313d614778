"""REST route for a board's activity log: stable order, paginated by event id."""

import datetime

from django.http import HttpRequest
from ninja import Field, Query, Router, Schema

from activity.export import ExportFilter, deployments_csv_response
from activity.models import Event
from boards import queries
from flux.problems import ERRORS, IsoDateTime

router = Router(tags=["activity"])


class EventOut(Schema):
    id: int
    occurred_at: datetime.datetime
    kind: str
    actor: str
    source: str
    card: str | None
    payload: dict


class EventPage(Schema):
    items: list[EventOut]
    next_after: int | None = Field(
        description="Pass as `after` for the next page; null at the end."
    )


class EventQuery(Schema):
    after: int = Field(0, ge=0, le=9_223_372_036_854_775_807, description="Events after this id.")
    limit: int = Field(100, ge=1, le=1000)


@router.get("/boards/{key}/events", response={200: EventPage, **ERRORS})
def event_list(request: HttpRequest, key: str, page: Query[EventQuery]):
    """The board's events in id order, oldest first, `limit` at a time after `after`."""
    board = queries.board_get(actor=request.actor, key=key)
    events = list(
        Event.objects.filter(board=board, pk__gt=page.after)
        .select_related("card")
        .order_by("pk")[: page.limit + 1]
    )
    more = len(events) > page.limit
    events = events[: page.limit]
    return EventPage(
        items=[
            EventOut(
                id=event.pk,
                occurred_at=event.occurred_at,
                kind=event.kind,
                actor=event.actor_name,
                source=event.source,
                card=f"{board.key}-{event.card.number}" if event.card_id else None,
                payload=event.payload,
            )
            for event in events
        ],
        next_after=events[-1].pk if more else None,
    )


class ExportQuery(Schema):
    board: str | None = Field(None, pattern=r"^[A-Za-z][A-Za-z0-9]{1,9}$")
    since: IsoDateTime | None = Field(None, description="Deployed at or after (UTC).")
    until: IsoDateTime | None = Field(None, description="Deployed before (UTC).")
    release: str | None = Field(None, max_length=50, description="Only this version.")


@router.get(
    "/deployments.csv",
    response={**ERRORS},
    openapi_extra={
        "responses": {
            "200": {
                "description": "One row per card deployment (RFC 4180, streamed).",
                "content": {"text/csv": {"schema": {"type": "string"}}},
            }
        }
    },
)
def deployments_csv(request: HttpRequest, query: Query[ExportQuery]):
    """Deployment history as CSV, for the boards this token may see (or just `board`)."""
    if query.board:
        board_ids = frozenset([queries.board_get(actor=request.actor, key=query.board).pk])
    else:
        board_ids = frozenset(
            queries.boards_visible(actor=request.actor).values_list("pk", flat=True)
        )
    scope = ExportFilter(
        board_ids=board_ids, since=query.since, until=query.until, release=query.release or ""
    )
    return deployments_csv_response(request=request, scope=scope, filename="flux-deployments.csv")
