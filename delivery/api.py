"""REST route for a board's activity log: stable order, paginated by event id."""

from ninja import Field, Query, Router, Schema

from boards import queries
from boards.models import LABEL_NAME_MAX_LENGTH
from boards.problems import ERRORS, IsoDateTime, Text
from boards.rendering import FluxRequest
from delivery.export import ExportFilter, deployments_csv_response

router = Router(tags=["delivery"])


class ExportQuery(Schema):
    board: Text | None = Field(None, pattern=r"^[A-Za-z][A-Za-z0-9]{1,9}$")
    since: IsoDateTime | None = Field(None, description="Deployed at or after (UTC).")
    until: IsoDateTime | None = Field(None, description="Deployed before (UTC).")
    release: Text | None = Field(
        None, max_length=LABEL_NAME_MAX_LENGTH, description="Only this version."
    )


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
def deployments_csv(request: FluxRequest, query: Query[ExportQuery]):
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
