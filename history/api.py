"""REST route for a board's activity log: stable order, paginated by event id."""

import datetime

from ninja import Field, Query, Router, Schema

from activity.models import Event
from boards import queries
from boards.models import MAX_ID
from boards.problems import ERRORS
from boards.rendering import FluxRequest

router = Router(tags=["activity"])


class EventOut(Schema):
    id: int
    occurred_at: datetime.datetime
    kind: str
    actor: str = Field(description="The person (or system actor) who made the change.")
    via: str = Field(description="The API token that acted for them; empty if none.")
    source: str
    card: str | None
    payload: dict


class EventPage(Schema):
    items: list[EventOut]
    next_after: int | None = Field(
        description="Pass as `after` for the next page; null at the end."
    )


class EventQuery(Schema):
    after: int = Field(0, ge=0, le=MAX_ID, description="Events after this id.")
    limit: int = Field(100, ge=1, le=1000)


@router.get("/boards/{key}/events", response={200: EventPage, **ERRORS})
def event_list(request: FluxRequest, key: str, page: Query[EventQuery]):
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
                via=event.via,
                source=event.source,
                card=f"{board.key}-{event.card.number}" if event.card is not None else None,
                payload=event.payload,
            )
            for event in events
        ],
        next_after=events[-1].pk if more else None,
    )
