"""Thin views for the history pages: time travel and the activity feeds.

Plain GETs whose state lives in the URL (the moment, the filters), so they can be bookmarked
and shared; permission is the board page's own (`boards.queries.board_get`).
"""

import datetime

from django.http import HttpResponse
from django.views.decorators.http import require_GET

from boards.forms import number_parse
from boards.queries import board_get, boards_visible
from boards.rendering import FluxRequest, fragment_wanted, page_or_fragment_render
from history import timeline

HISTORY = "history/history.html"
FEED = "history/feed.html"


@require_GET
def board_history(request: FluxRequest, key: str) -> HttpResponse:
    """The board as it was: `?at=<ISO time>` or `?event=<id>` (`?t=<unix seconds>` from the
    slider is answered with the `?at=` URL pushed to the address bar)."""
    board = board_get(actor=request.actor, key=key)
    at = timeline.moment_parse(request.GET.get("at"))
    seconds = number_parse(request.GET.get("t"))
    if seconds is not None and seconds < 7_000_000_000:
        at = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    bad_time = bool(request.GET.get("at")) and at is None
    event_id = number_parse(request.GET.get("event"))
    context = timeline.travel_page_read(board=board, at=at, event_id=event_id)
    context["bad_time"] = bad_time
    context["boards"] = _boards_menu(request)
    response = page_or_fragment_render(
        request, page=HISTORY, fragment=f"{HISTORY}#travel", context=context
    )
    if fragment_wanted(request) and seconds is not None:
        response["HX-Push-Url"] = f"{request.path}?at={context['at_iso']}"
    return response


@require_GET
def board_activity(request: FluxRequest, key: str) -> HttpResponse:
    """The board's activity feed, filtered; `?before=<id>` is the next page (infinite scroll)."""
    board = board_get(actor=request.actor, key=key)
    filters = timeline.FeedFilter.parse(request.GET)
    before = number_parse(request.GET.get("before"))
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
    return _feed_render(request, context, before=before)


@require_GET
def user_activity(request: FluxRequest, username: str) -> HttpResponse:
    """What one person did, on the boards the viewer may read."""
    person = timeline.user_get_visible(actor=request.actor, username=username)
    filters = timeline.FeedFilter.parse(request.GET)
    before = number_parse(request.GET.get("before"))
    entries, more = timeline.user_feed(
        actor=request.actor, person=person, filters=filters, before=before
    )
    context = {
        "person": person,
        "entries": entries,
        "more": more,
        "filters": filters,
        "filter_query": filters.query_string(),
        "kinds": timeline.KINDS,
        "page_url": request.path,
    }
    return _feed_render(request, context, before=before)


def _feed_render(request: FluxRequest, context: dict, *, before: int | None) -> HttpResponse:
    """A feed page; to htmx, its next entries (infinite scroll) or the refiltered feed."""
    return page_or_fragment_render(
        request,
        page=FEED,
        fragment=f"{FEED}#entries" if before is not None else f"{FEED}#feed",
        context=context,
        page_context=lambda: {"boards": _boards_menu(request)},
    )


def _boards_menu(request: FluxRequest) -> list:
    return list(boards_visible(actor=request.actor).order_by("name").only("name", "key"))
