"""Thin views for the delivery pages: parse the query string, call activity.insights, render.

Both pages are plain GETs whose state lives in the URL (the window, the release), so they can
be bookmarked and shared; permission is the board page's own (`boards.queries.board_get`).
"""

import datetime

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET

from activity import history, insights
from activity.export import ExportFilter, deployments_csv_response
from activity.log import Actor
from boards.queries import board_get, boards_visible

SERVICES = "activity/services.html"


@require_GET
def board_insights(request: HttpRequest, key: str) -> HttpResponse:
    actor = Actor(user=request.user)
    board = board_get(actor=actor, key=key)
    days = insights.window_days_parse(request.GET.get("days"))
    context = insights.insights_view(board=board, actor=actor, days=days)
    return render(request, "activity/insights.html", context)


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


# --- History: time travel and activity feeds ---------------------------------------------------

HISTORY = "activity/history.html"
FEED = "activity/feed.html"


def _int_param(text: str | None) -> int | None:
    text = (text or "").strip()
    return int(text) if text.isdigit() and len(text) <= 18 else None


@require_GET
def board_history(request: HttpRequest, key: str) -> HttpResponse:
    """The board as it was: `?at=<ISO time>` or `?event=<id>` (`?t=<unix seconds>` from the
    slider is answered with the `?at=` URL pushed to the address bar)."""
    actor = Actor(user=request.user)
    board = board_get(actor=actor, key=key)
    at = history.moment_parse(request.GET.get("at"))
    seconds = _int_param(request.GET.get("t"))
    if seconds is not None and seconds < 7_000_000_000:
        at = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    bad_time = bool(request.GET.get("at")) and at is None
    event_id = _int_param(request.GET.get("event"))
    context = history.travel_view(board=board, at=at, event_id=event_id)
    context["bad_time"] = bad_time
    context["boards"] = list(boards_visible(actor=actor).order_by("name").only("name", "key"))
    fragment = request.htmx and not request.htmx.history_restore_request
    response = render(request, f"{HISTORY}#travel" if fragment else HISTORY, context)
    if fragment and seconds is not None:
        response["HX-Push-Url"] = f"{request.path}?at={context['at_iso']}"
    patch_vary_headers(response, ["HX-Request"])
    return response


@require_GET
def board_activity(request: HttpRequest, key: str) -> HttpResponse:
    """The board's activity feed, filtered; `?before=<id>` is the next page (infinite scroll)."""
    actor = Actor(user=request.user)
    board = board_get(actor=actor, key=key)
    filters = history.FeedFilter.parse(request.GET)
    before = _int_param(request.GET.get("before"))
    entries, more = history.board_feed(board=board, filters=filters, before=before)
    context = {
        "board": board,
        "entries": entries,
        "more": more,
        "filters": filters,
        "filter_query": filters.query_string(),
        "kinds": history.KINDS,
        "people": history.board_people(board=board),
        "page_url": request.path,
    }
    return _feed_response(request, context, before=before)


@require_GET
def user_activity(request: HttpRequest, username: str) -> HttpResponse:
    """What one person did, on the boards the viewer may read."""
    actor = Actor(user=request.user)
    person = history.user_get_visible(actor=actor, username=username)
    filters = history.FeedFilter.parse(request.GET)
    before = _int_param(request.GET.get("before"))
    entries, more = history.user_feed(actor=actor, person=person, filters=filters, before=before)
    context = {
        "person": person,
        "entries": entries,
        "more": more,
        "filters": filters,
        "filter_query": filters.query_string(),
        "kinds": history.KINDS,
        "page_url": request.path,
    }
    return _feed_response(request, context, before=before)


def _feed_response(request: HttpRequest, context: dict, *, before: int | None) -> HttpResponse:
    if request.htmx and not request.htmx.history_restore_request:
        partial = "entries" if before is not None else "feed"
        response = render(request, f"{FEED}#{partial}", context)
    else:
        context["boards"] = list(
            boards_visible(actor=Actor(user=request.user)).order_by("name").only("name", "key")
        )
        response = render(request, FEED, context)
    patch_vary_headers(response, ["HX-Request"])
    return response
