"""Thin views: parse the request, call a query or service, render a template or partial."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from boards import queries


@require_GET
def board_list(request: HttpRequest) -> HttpResponse:
    boards = queries.board_list_for_user(user=request.user)
    return render(request, "boards/board_list.html", {"boards": boards})


@require_GET
def board_detail(request: HttpRequest, key: str) -> HttpResponse:
    board = queries.board_get_for_user(user=request.user, key=key)
    return render(request, "boards/board.html", queries.board_view(board=board, user=request.user))
