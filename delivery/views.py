"""Thin views for the delivery pages: parse the query string, call delivery.insights, render.

Both pages are plain GETs whose state lives in the URL (the window, the release), so they can
be bookmarked and shared; permission is the board page's own (`boards.queries.board_get`).
"""

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET

from activity.log import Actor
from boards.queries import board_get, boards_visible
from delivery import insights
from delivery.export import ExportFilter, deployments_csv_response

SERVICES = "delivery/services.html"


@require_GET
def board_insights(request: HttpRequest, key: str) -> HttpResponse:
    actor = Actor(user=request.user)
    board = board_get(actor=actor, key=key)
    days = insights.window_days_parse(request.GET.get("days"))
    context = insights.insights_view(board=board, actor=actor, days=days)
    return render(request, "delivery/insights.html", context)


@require_GET
def services(request: HttpRequest) -> HttpResponse:
    """Every permitted service side by side; `?release=<name>` adds where its cards are."""
    actor = Actor(user=request.user)
    release = insights.release_name_parse(request.GET.get("release"))
    found = insights.release_cards(actor=actor, name=release) if release else []
    context = {
        "release": release,
        "release_boards": found,
        "release_found": any(entry.cards for entry in found),
    }
    if request.htmx and not request.htmx.history_restore_request:
        response = render(request, f"{SERVICES}#release-results", context)
    else:
        context["rows"] = insights.services_view(actor=actor)
        context["release_names"] = insights.release_names(actor=actor)
        context["releases_recent"] = insights.releases_recent(actor=actor)
        response = render(request, SERVICES, context)
    patch_vary_headers(response, ["HX-Request"])
    return response


@require_GET
def deployments_csv(request: HttpRequest, key: str | None = None) -> StreamingHttpResponse:
    """Deployment history as CSV: one board's (from its insights page) or every permitted one's."""
    actor = Actor(user=request.user)
    if key is not None:
        board = board_get(actor=actor, key=key)
        board_ids, filename = frozenset([board.pk]), f"flux-{board.key}-deployments.csv"
    else:
        board_ids = frozenset(boards_visible(actor=actor).values_list("pk", flat=True))
        filename = "flux-deployments.csv"
    release = insights.release_name_parse(request.GET.get("release")) or ""
    scope = ExportFilter(board_ids=board_ids, release=release)
    return deployments_csv_response(request=request, scope=scope, filename=filename)
