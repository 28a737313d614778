"""How every HTML view answers: the whole page, or (to htmx) only the fragment it asked for.

A page and its fragments share one URL, so every answer says it varies with HX-Request: a
cache must never hand a fragment to a full page load, or the page to htmx.
"""

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.cache import patch_vary_headers
from django_htmx.middleware import HtmxDetails

from activity.log import Actor


class FluxRequest(HttpRequest):
    """A view's request as the middleware leaves it: htmx details and the actor to act as."""

    htmx: HtmxDetails
    actor: Actor  # the signed-in user on pages (flux.middleware), the token's on the API
    request_id: str  # the id its log lines and events carry (flux.middleware)


def fragment_wanted(request: FluxRequest) -> bool:
    """htmx asked for a piece of the page; a history restore needs the whole page."""
    return bool(request.htmx) and not request.htmx.history_restore_request


def fragment_render(
    request: FluxRequest, *, fragment: str, context: dict[str, Any], status: int = 200
) -> HttpResponse:
    """`fragment` ("template.html#partial") alone, whoever asked: an htmx-only answer."""
    return _render(request, fragment, context, status)


def page_or_fragment_render(
    request: FluxRequest,
    *,
    page: str,
    fragment: str,
    context: dict[str, Any],
    page_context: Callable[[], dict[str, Any]] | None = None,
    status: int = 200,
) -> HttpResponse:
    """The fragment when htmx wants one, else the whole page (so the URL works without it)."""
    # `page_context` is what only the whole page shows (menus, the board behind a dialog):
    # worked out only when the page is sent; `context` wins where both name the same thing.
    if fragment_wanted(request):
        return _render(request, fragment, context, status)
    if page_context is not None:
        context = page_context() | context
    return _render(request, page, context, status)


def _render(
    request: FluxRequest, template: str, context: dict[str, Any], status: int
) -> HttpResponse:
    response = render(request, template, context, status=status)
    patch_vary_headers(response, ["HX-Request"])
    return response
