"""Thin views for the delivery pages: parse the query string, call delivery.insights, render.

Both pages are plain GETs whose state lives in the URL (the window, the release), so they can
be bookmarked and shared; permission is the board page's own (`boards.queries.board_get`).
"""

import datetime

from django.core.exceptions import ValidationError
from django.http import HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET
from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from boards.problems import IsoDateTime
from boards.queries import board_get, boards_visible
from boards.rendering import FluxRequest, page_or_fragment_render
from delivery import insights
from delivery.export import ExportFilter, deployments_csv_response

INSIGHTS = "delivery/insights.html"
OVERVIEW = "delivery/services.html"  # the Services page: every board as a service


@require_GET
def board_insights(request: FluxRequest, key: str) -> HttpResponse:
    board = board_get(actor=request.actor, key=key)
    days = insights.window_days_parse(request.GET.get("days"))
    context = insights.insights_page_read(board=board, actor=request.actor, days=days)
    return render(request, INSIGHTS, context)


@require_GET
def services_overview(request: FluxRequest) -> HttpResponse:
    """Every permitted service side by side; `?release=<name>` adds where its cards are."""
    actor = request.actor
    release = insights.release_name_parse(request.GET.get("release"))
    found = insights.release_cards(actor=actor, name=release) if release else []
    context = {
        "release": release,
        "release_boards": found,
        "release_found": any(entry.cards for entry in found),
    }
    return page_or_fragment_render(
        request,
        page=OVERVIEW,
        fragment=f"{OVERVIEW}#release-results",
        context=context,
        page_context=lambda: {
            "rows": insights.service_rows_read(actor=actor),
            "release_names": insights.release_names(actor=actor),
            "releases_recent": insights.releases_recent(actor=actor),
        },
    )


@require_GET
def deployments_csv(request: FluxRequest, key: str | None = None) -> StreamingHttpResponse:
    """Deployment history as CSV: one board's (from its insights page) or every permitted one's,
    deployed in [`since`, `until`) when given (the insights page's link gives its window)."""
    actor = request.actor
    if key is not None:
        board = board_get(actor=actor, key=key)
        board_ids, filename = frozenset([board.pk]), f"flux-{board.key}-deployments.csv"
    else:
        board_ids = frozenset(boards_visible(actor=actor).values_list("pk", flat=True))
        filename = "flux-deployments.csv"
    release = insights.release_name_parse(request.GET.get("release")) or ""
    scope = ExportFilter(
        board_ids=board_ids,
        since=_time_parse(request.GET.get("since"), field="since"),
        until=_time_parse(request.GET.get("until"), field="until"),
        release=release,
    )
    return deployments_csv_response(request=request, scope=scope, filename=filename)


_ISO_DATETIME = TypeAdapter(IsoDateTime)


def _time_parse(value: str | None, *, field: str) -> datetime.datetime | None:
    """`since`/`until` as the API reads them (ISO 8601, UTC when no offset is given), so the
    insights page's link exports the window on screen; a bad one is a 422, never a 500."""
    if not value:
        return None
    try:
        return _ISO_DATETIME.validate_python(value)
    except PydanticValidationError:
        raise ValidationError(
            {field: f"{field} must be an ISO 8601 date-time, like 2026-11-29T10:00:00Z."}
        ) from None
