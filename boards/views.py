"""Thin views: parse the request, call a query or service, render a template or partial.

htmx requests get partials from `boards/board.html`; the same URLs without htmx get whole
pages (or a redirect after a POST), so every action also works without JavaScript.
"""

import json
from functools import partial
from urllib.parse import urlencode

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from activity import live
from activity.log import Actor
from boards import queries, services
from boards.errors import ConflictError, NotFoundError, WipLimitError, refusal_message
from boards.forms import (
    CardCreateForm,
    CardEditForm,
    CommentForm,
    FilterForm,
    MoveForm,
    TokenForm,
)
from boards.models import Board, Card, Role
from boards.tokens import token_create, token_revoke

BOARD = "boards/board.html"


def _actor(request: HttpRequest) -> Actor:
    return Actor(user=request.user)


def _wants_fragment(request: HttpRequest) -> bool:
    """htmx asked for a piece of the page (a history restore needs the whole page)."""
    return bool(request.htmx) and not request.htmx.history_restore_request


def _filters(request: HttpRequest) -> queries.CardFilter:
    return FilterForm(request.GET).card_filter()


def _board_url(board: Board, request: HttpRequest) -> str:
    query = request.GET.urlencode()
    return reverse("boards:detail", args=[board.key]) + (f"?{query}" if query else "")


def _render(request, template, context, status=200) -> HttpResponse:
    response = render(request, template, context, status=status)
    patch_vary_headers(response, ["HX-Request"])
    return response


@require_GET
def board_list(request: HttpRequest) -> HttpResponse:
    boards = queries.board_list(actor=_actor(request))
    return render(request, "boards/board_list.html", {"boards": boards})


@require_GET
def board_detail(request: HttpRequest, key: str) -> HttpResponse:
    board = queries.board_get(actor=_actor(request), key=key, with_last_event=True)
    context = queries.board_view(board=board, actor=_actor(request), filters=_filters(request))
    context["filter_query"] = _filter_query(request)
    template = f"{BOARD}#board" if _wants_fragment(request) else BOARD
    return _render(request, template, context)


@require_GET
def board_columns_view(request: HttpRequest, key: str) -> HttpResponse:
    """Fresh copies of some columns (`?ids=1,2`; all without it), for live updates."""
    board = queries.board_get(actor=_actor(request), key=key)
    ids = _id_list(request.GET.get("ids", ""))
    if ids is None:
        return HttpResponse("ids must be column ids separated by commas.", status=400)
    return _columns_response(request, board=board, column_ids=ids or None)


def _id_list(text: str, limit: int = 100) -> list[int] | None:
    parts = [part for part in text.split(",") if part]
    if len(parts) > limit or not all(part.isdigit() and len(part) <= 18 for part in parts):
        return None
    return [int(part) for part in parts]


@require_GET
async def board_live(request: HttpRequest, key: str) -> HttpResponse:
    """Server-Sent Events: the board's changes as they commit, and who else is viewing it.

    Starts after `Last-Event-ID` (the browser's own reconnect) or `?last=` (a new connection
    from a page that has seen events up to there), else from now."""
    user = await request.auser()
    board = await live.db(queries.board_get, actor=Actor(user=user), key=key)
    after = _event_id(request.headers.get("Last-Event-ID")) or _event_id(request.GET.get("last"))
    if after is None:
        after = await live.db(live.event_latest, board_id=board.pk)
    spec = live.StreamSpec(
        board_id=board.pk,
        viewer=live.Viewer(user.pk, user.get_username()),
        after=after,
        still_allowed=partial(_still_allowed, user, board.key),
        render_presence=_presence_html,
    )
    response = StreamingHttpResponse(live.board_stream(spec), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache, no-store"
    response["X-Accel-Buffering"] = "no"  # proxies must pass events on as they come
    return response


@require_GET
def board_changes(request: HttpRequest, key: str) -> JsonResponse:
    """The polling fallback when a stream cannot be opened: anything new since event N?"""
    board = queries.board_get(actor=_actor(request), key=key)
    after = _event_id(request.GET.get("after"))
    if after is None:
        return JsonResponse({"last": live.event_latest(board_id=board.pk), "changes": []})
    changes = live.events_since(board_id=board.pk, after=after)
    reload = len(changes) > live.CATCH_UP_LIMIT
    last = changes[-1]["id"] if changes else after
    return JsonResponse({"last": last, "changes": [] if reload else changes, "reload": reload})


def _event_id(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() and len(text) <= 18 else None


def _still_allowed(user, key: str) -> bool:
    user.refresh_from_db(fields=["is_active", "is_staff", "is_superuser"])
    if not user.is_active:
        return False
    try:
        queries.board_get(actor=Actor(user=user), key=key)
    except NotFoundError:
        return False
    return True


def _presence_html(viewers: list[live.Viewer]) -> str:
    return render_to_string(f"{BOARD}#presence", {"viewers": viewers})


def _columns_response(
    request: HttpRequest,
    *,
    board: Board,
    column_ids: list[int] | None,
    toast: str = "",
    tone: str = "info",
    status: int = 200,
    columns: list[queries.ColumnView] | None = None,
) -> HttpResponse:
    """Fresh copies of the given columns (all when None) as out-of-band swaps, plus a toast."""
    if columns is None:
        columns = queries.columns_view(
            board=board, column_ids=column_ids, filters=_filters(request)
        )
    context = {
        "board": board,
        "columns": columns,
        "all_columns": queries.board_columns(board=board),
        "can_edit": board.role.level >= Role.EDITOR.level,
        "toast": toast,
        "tone": tone,
        "filter_query": _filter_query(request),
    }
    return _render(request, f"{BOARD}#columns-oob", context, status=status)


def _column_context(request: HttpRequest, board: Board, column_ids: list[int]) -> dict:
    """What the column partial needs besides its cards, with the page's filter kept."""
    return {
        "columns": queries.columns_view(
            board=board, column_ids=column_ids, filters=_filters(request)
        ),
        "filter_query": _filter_query(request),
    }


def _after_post(request: HttpRequest, board: Board, message: str, level=messages.SUCCESS):
    """Without htmx, a POST ends in a redirect back to the board, with its notice."""
    messages.add_message(request, level, message)
    return redirect(_board_url(board, request))


@require_http_methods(["GET", "POST"])
def card_move_view(request: HttpRequest, key: str, number: int) -> HttpResponse:
    """GET: the "Move to…" form (works without JavaScript). POST: the move itself."""
    if request.method == "GET":
        card = queries.card_get(
            actor=_actor(request), board_key=key, number=number, at_least=Role.EDITOR
        )
        context = {
            "board": card.board,
            "card": card,
            "all_columns": queries.board_columns(board=card.board),
            "board_url": _board_url(card.board, request),
        }
        template = f"{BOARD}#move-dialog" if _wants_fragment(request) else "boards/card_move.html"
        return _render(request, template, context)
    form = MoveForm(request.POST)
    if not form.is_valid():
        board = queries.board_get(actor=_actor(request), key=key, at_least=Role.EDITOR)
        if not request.htmx:
            return _after_post(request, board, "That move was not understood.", messages.ERROR)
        return _columns_response(
            request, board=board, column_ids=None, toast="That move was not understood.",
            tone="error", status=422,
        )  # fmt: skip
    data = form.cleaned_data
    ref = f"{key}-{number}"
    try:
        moved = services.card_move(
            actor=_actor(request),
            card_ref=(key, number),
            to_column_id=data["to_column"],
            expected_version=data["version"],
            after_id=data["after"],
            before_id=data["before"],
        )
    except ConflictError:
        board = queries.board_get(actor=_actor(request), key=key)
        text = f"{ref} was changed by someone else first; the board now shows the latest."
        if not request.htmx:
            return _after_post(request, board, text, messages.WARNING)
        return _columns_response(
            request, board=board, column_ids=None, toast=text, tone="warning", status=409
        )
    except (WipLimitError, ValidationError) as refused:
        board = queries.board_get(actor=_actor(request), key=key)
        text = (
            refused.message if isinstance(refused, WipLimitError) else "; ".join(refused.messages)
        )
        if not request.htmx:
            return _after_post(request, board, text, messages.ERROR)
        status = 409 if isinstance(refused, WipLimitError) else 422
        return _columns_response(
            request, board=board, column_ids=None, toast=text, tone="error", status=status
        )
    card, column, count = moved.card, moved.to_column, moved.to_count
    board = card.board
    board.role = moved.actor_role  # what the redrawn columns offer (as queries.board_get sets)
    toast, tone = f"{card.ref} moved to {column.name}.", "info"
    over_limit = column.wip_limit is not None and count > column.wip_limit
    if over_limit and moved.changed_column:
        toast += f" {column.name} is over its WIP limit ({count}/{column.wip_limit})."
        tone = "warning"
    if not request.htmx:
        return _after_post(request, board, toast)
    if request.headers.get("X-Flux-Placed") == "1" and not _filters(request).active:
        # The page has already put the card where it asked (a drag, or the keyboard): confirm
        # with the two columns' new counts and the card's new version, not the columns again.
        heads = [queries.ColumnView(column=moved.from_column, count=moved.from_count)]
        if moved.changed_column:
            heads.append(queries.ColumnView(column=column, count=count))
        for head in heads:
            head.total = head.count
        context = {"board": board, "heads": heads, "toast": toast, "tone": tone}
        response = _render(request, f"{BOARD}#move-placed", context)
        response["HX-Trigger"] = json.dumps(
            {"flux:moved": {"card": card.pk, "version": card.version}}
        )
        return response
    columns = queries.columns_view(
        board=board, column_ids=list({moved.from_column.pk, column.pk}), filters=_filters(request)
    )
    return _columns_response(
        request, board=board, column_ids=None, columns=columns, toast=toast, tone=tone
    )


@require_http_methods(["GET", "POST"])
def column_cards_view(request: HttpRequest, key: str, column_id: int) -> HttpResponse:
    """GET: the next page of a column's cards. POST: a new card at the column's bottom."""
    if request.method == "GET":
        return _column_page(request, key, column_id)
    return _card_create(request, key, column_id)


def _card_create(request: HttpRequest, key: str, column_id: int) -> HttpResponse:
    board = queries.board_get(actor=_actor(request), key=key, at_least=Role.EDITOR)
    form = CardCreateForm(request.POST)
    error = ""
    if form.is_valid():
        try:
            card = services.card_create(
                actor=_actor(request),
                board_id=board.pk,
                column_id=column_id,
                title=form.cleaned_data["title"],
            )
        except (ValidationError, WipLimitError) as refused:
            error = refusal_message(refused)
        else:
            if not request.htmx:
                return _after_post(request, board, f"{card.ref} created.")
            return _columns_response(
                request, board=board, column_ids=[column_id], toast=f"{card.ref} created."
            )
    else:
        error = form.errors.get("title", ["Give the card a title."])[0]
    if not request.htmx:
        return _after_post(request, board, error, messages.ERROR)
    return _columns_response(
        request, board=board, column_ids=[column_id], toast=error, tone="error", status=422
    )


def _column_page(request: HttpRequest, key: str, column_id: int) -> HttpResponse:
    board = queries.board_get(actor=_actor(request), key=key)
    column, cards, has_more = queries.column_more(
        board=board,
        column_id=column_id,
        after_rank=request.GET.get("after", ""),
        filters=_filters(request),
    )
    context = {
        "board": board,
        "column": column,
        "cards": cards,
        "has_more": has_more,
        "last_rank": cards[-1].rank if cards else "",
        "can_edit": board.role.level >= Role.EDITOR.level,
        "filter_query": _filter_query(request),
    }
    return _render(request, f"{BOARD}#cards-page", context)


def _filter_query(request: HttpRequest) -> str:
    """The board's filter as a query string, for links and requests made from a fragment."""
    return urlencode({k: v for k, v in request.GET.items() if k in FilterForm.base_fields and v})


def _dialog_context(request, card: Card, form: CardEditForm | None = None, **extra) -> dict:
    board = card.board
    labels = queries.card_label_choices(card=card)
    members = queries.board_members(board=board)
    can_edit = board.role.level >= Role.EDITOR.level
    if form is None:
        form = CardEditForm(
            initial={
                "version": card.version,
                "title": card.title,
                "description": card.description,
                "due_date": card.due_date,
                "labels": [label.pk for label in card.labels.all()],
                "assignees": [user.pk for user in card.assignees.all()],
            },
            labels=labels,
            members=members,
        )
    return {
        "board": board,
        "card": card,
        "form": form,
        "comment_form": CommentForm(),
        "description_html": queries.markdown_render(card.description),
        "comments": queries.card_comments(card=card),
        "history": queries.card_history(card=card),
        "can_edit": can_edit,
        "board_url": reverse("boards:detail", args=[board.key]),
        **extra,
    }


@require_http_methods(["GET", "POST"])
def card_detail(request: HttpRequest, key: str, number: int) -> HttpResponse:
    """The card dialog: its own URL, a whole page without htmx, the dialog alone with it."""
    card = queries.card_get(actor=_actor(request), board_key=key, number=number)
    board = card.board
    if request.method == "GET":
        if _wants_fragment(request):
            return _render(request, f"{BOARD}#card-dialog", _dialog_context(request, card))
        context = queries.board_view(board=board, actor=_actor(request), filters=_filters(request))
        context |= _dialog_context(request, card)
        context["open_card"] = card
        return _render(request, BOARD, context)

    queries.board_get(actor=_actor(request), key=key, at_least=Role.EDITOR)
    labels = queries.card_label_choices(card=card)
    members = queries.board_members(board=board)
    form = CardEditForm(request.POST, labels=labels, members=members)
    notice, status = "", 200
    if form.is_valid():
        data = form.cleaned_data
        try:
            card = services.card_edit(
                actor=_actor(request),
                card_id=card.pk,
                expected_version=data["version"],
                title=data["title"],
                description=data["description"],
                due_date=data["due_date"],
                label_ids=data["labels"],
                assignee_ids=data["assignees"],
            )
        except ConflictError as conflict:
            card = queries.card_get(actor=_actor(request), board_key=key, number=number)
            typed = request.POST.copy()
            typed["version"] = conflict.card.version
            form = CardEditForm(typed, labels=labels, members=members)
            notice = (
                "Someone else changed this card while you were editing. Your text is kept "
                "below; check the card and save again."
            )
            status = 409
        except ValidationError as invalid:
            for field, errors in invalid.message_dict.items():
                form.add_error(field if field in form.fields else None, errors)
            status = 422
        else:
            if not request.htmx:
                return _after_post(request, board, f"{card.ref} saved.")
            card = queries.card_get(actor=_actor(request), board_key=key, number=number)
            context = _dialog_context(request, card, saved=True)
            context |= _column_context(request, board, [card.column_id])
            return _render(request, f"{BOARD}#card-saved", context)
    else:
        status = 422
    if not request.htmx:
        context = queries.board_view(board=board, actor=_actor(request))
        context |= _dialog_context(request, card, form=form, notice=notice)
        context["open_card"] = card
        return _render(request, BOARD, context, status=status)
    context = _dialog_context(request, card, form=form, notice=notice)
    return _render(request, f"{BOARD}#card-dialog", context, status=status)


def _card_action(request: HttpRequest, key: str, number: int, action) -> HttpResponse:
    card = queries.card_get(
        actor=_actor(request), board_key=key, number=number, at_least=Role.EDITOR
    )
    try:
        action(card)
    except (WipLimitError, ValidationError) as refused:
        # The dialog stays open and says why (e.g. restoring into a full, blocking column).
        if not request.htmx:
            messages.error(request, refusal_message(refused))
            return redirect(reverse("boards:card", args=[key, number]))
        context = _dialog_context(request, card, notice=refusal_message(refused))
        status = 409 if isinstance(refused, WipLimitError) else 422
        return _render(request, f"{BOARD}#card-dialog", context, status=status)
    if not request.htmx:
        return redirect(reverse("boards:card", args=[key, number]))
    card = queries.card_get(actor=_actor(request), board_key=key, number=number)
    context = _dialog_context(request, card)
    context |= _column_context(request, card.board, [card.column_id])
    return _render(request, f"{BOARD}#card-saved", context)


@require_POST
def card_archive_view(request: HttpRequest, key: str, number: int) -> HttpResponse:
    return _card_action(
        request,
        key,
        number,
        lambda card: services.card_archive(actor=_actor(request), card_id=card.pk),
    )


@require_POST
def card_restore_view(request: HttpRequest, key: str, number: int) -> HttpResponse:
    return _card_action(
        request,
        key,
        number,
        lambda card: services.card_restore(actor=_actor(request), card_id=card.pk),
    )


@require_POST
def comment_add_view(request: HttpRequest, key: str, number: int) -> HttpResponse:
    card = queries.card_get(
        actor=_actor(request), board_key=key, number=number, at_least=Role.EDITOR
    )
    form = CommentForm(request.POST)
    status = 200
    if form.is_valid():
        try:
            services.comment_add(
                actor=_actor(request), card_id=card.pk, body=form.cleaned_data["body"]
            )
        except ValidationError as invalid:
            form.add_error("body", invalid.messages)
            status = 422
        else:
            form = CommentForm()
    else:
        status = 422
    if not request.htmx:
        return redirect(reverse("boards:card", args=[key, number]))
    context = _dialog_context(request, card)
    context["comment_form"] = form
    return _render(request, f"{BOARD}#card-talk", context, status=status)


@require_http_methods(["GET", "POST"])
def token_settings(request: HttpRequest) -> HttpResponse:
    """The user's API tokens: make one (its secret shown once, on this response) or revoke."""
    actor = _actor(request)
    secret, made, form = "", None, TokenForm(actor=actor)
    if request.method == "POST" and "revoke" in request.POST:
        try:
            token_id = int(request.POST["revoke"])
        except ValueError:
            token_id = 0
        token = token_revoke(actor=actor, token_id=token_id)
        messages.success(request, f"Token {token.name!r} revoked.")
        return redirect("tokens")
    if request.method == "POST":
        form = TokenForm(request.POST, actor=actor)
        if form.is_valid():
            try:
                made, secret = token_create(
                    actor=actor,
                    user=request.user,
                    name=form.cleaned_data["name"],
                    role=form.cleaned_data["role"],
                    board_keys=form.cleaned_data["boards"],
                )
            except ValidationError as invalid:
                for field, errors in invalid.message_dict.items():
                    form.add_error(field if field in form.fields else None, errors)
            else:
                form = TokenForm(actor=actor)
    tokens = request.user.api_tokens.prefetch_related("boards").order_by("-created_at")
    context = {"tokens": tokens, "form": form, "secret": secret, "made": made}
    response = render(
        request, "boards/tokens.html", context, status=200 if not form.errors else 422
    )
    if secret:
        response["Cache-Control"] = "no-store"
    return response
