"""Thin views for the history pages: time travel and the activity feeds.

Plain GETs whose state lives in the URL (the moment, the filters), so they can be bookmarked
and shared; permission is the board page's own (`boards.queries.board_get`).
"""

import datetime

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET

from activity.log import Actor
from boards.queries import board_get, boards_visible
from history import timeline

HISTORY = "history/history.html"
FEED = "history/feed.html"


def _int_param(text: str | None) -> int | None:
    text = (text or "").strip()
    return int(text) if text.isdigit() and len(text) <= 18 else None


@require_GET
def board_history(request: HttpRequest, key: str) -> HttpResponse:
    """The board as it was: `?at=<ISO time>` or `?event=<id>` (`?t=<unix seconds>` from the
    slider is answered with the `?at=` URL pushed to the address bar)."""
    actor = Actor(user=request.user)
    board = board_get(actor=actor, key=key)
    at = timeline.moment_parse(request.GET.get("at"))
    seconds = _int_param(request.GET.get("t"))
    if seconds is not None and seconds < 7_000_000_000:
        at = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    bad_time = bool(request.GET.get("at")) and at is None
    event_id = _int_param(request.GET.get("event"))
    context = timeline.travel_view(board=board, at=at, event_id=event_id)
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
    filters = timeline.FeedFilter.parse(request.GET)
    before = _int_param(request.GET.get("before"))
    entries, more = timeline.board_feed(board=board, filters=filters, before=before)
    context = {
        "board": board,
        "entries": entries,
        "more": more,
        "filters": filters,
        "filter_query": filters.query_string(),
        "kinds": timeline.KINDS,
        "people": timeline.board_people(board=board),
        "page_url": request.path,
    }
    return _feed_response(request, context, before=before)


@require_GET
def user_activity(request: HttpRequest, username: str) -> HttpResponse:
    """What one person did, on the boards the viewer may read."""
    actor = Actor(user=request.user)
    person = timeline.user_get_visible(actor=actor, username=username)
    filters = timeline.FeedFilter.parse(request.GET)
    before = _int_param(request.GET.get("before"))
    entries, more = timeline.user_feed(actor=actor, person=person, filters=filters, before=before)
    context = {
        "person": person,
        "entries": entries,
        "more": more,
        "filters": filters,
        "filter_query": filters.query_string(),
        "kinds": timeline.KINDS,
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
