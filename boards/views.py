"""Thin views: parse the request, call a query or service, render a template or partial.

htmx requests get partials from `boards/board.html`; the same URLs without htmx get whole
pages (or a redirect after a POST), so every action also works without JavaScript.
"""

import json
import re
import uuid
from functools import partial
from urllib.parse import urlencode

from django.contrib import auth, messages
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from activity import live
from activity.log import Actor
from boards import queries, services
from boards.errors import (
    INVALID_INPUT_STATUS,
    ConflictError,
    NotFoundError,
    WipLimitError,
    refusal_message,
    refusal_status,
)
from boards.forms import (
    CardCreateForm,
    CardEditForm,
    CommentForm,
    FilterForm,
    MoveForm,
    TokenForm,
    number_list_parse,
    number_parse,
)
from boards.models import Board, Card, Role
from boards.rendering import FluxRequest, fragment_render, page_or_fragment_render
from boards.tokens import token_create, token_revoke

BOARD = "boards/board.html"


def _filters(request: FluxRequest) -> queries.CardFilter:
    return FilterForm(request.GET).card_filter()


def _board_url(board: Board, request: FluxRequest) -> str:
    query = request.GET.urlencode()
    return reverse("boards:detail", args=[board.key]) + (f"?{query}" if query else "")


@require_GET
def board_list(request: FluxRequest) -> HttpResponse:
    boards = queries.board_list(actor=request.actor)
    return render(request, "boards/board_list.html", {"boards": boards})


@require_GET
def board_detail(request: FluxRequest, key: str) -> HttpResponse:
    board = queries.board_get(actor=request.actor, key=key, with_last_event=True)
    context = queries.board_page_read(board=board, actor=request.actor, filters=_filters(request))
    context["filter_query"] = _filter_query(request)
    return page_or_fragment_render(request, page=BOARD, fragment=f"{BOARD}#board", context=context)


@require_GET
def board_columns_view(request: FluxRequest, key: str) -> HttpResponse:
    """Fresh copies of some columns (`?ids=1,2`; all without it), for live updates."""
    board = queries.board_get(actor=request.actor, key=key)
    ids = number_list_parse(request.GET.get("ids"))
    if ids is None:
        return HttpResponse("ids must be column ids separated by commas.", status=400)
    return _columns_response(request, board=board, column_ids=ids or None)


@require_GET
async def board_live(request: FluxRequest, key: str) -> HttpResponse | StreamingHttpResponse:
    """Server-Sent Events: the board's changes as they commit, and who else is viewing it.

    Starts after `Last-Event-ID` (the browser's own reconnect) or `?last=` (a new connection
    from a page that has seen events up to there), else from now. `?client=` is the tab's id
    (the one its requests send as X-Flux-Client): changes made from it come marked `mine`.
    The stream ends when the session does, or the user's access; a user who already holds
    `live.STREAMS_PER_USER` streams gets a 429 with Retry-After."""
    user = await request.auser()
    board = await live.db(queries.board_get, actor=request.actor, key=key)
    assert user.is_authenticated  # board_get let no one else through
    after = number_parse(request.headers.get("Last-Event-ID"))
    after = after or number_parse(request.GET.get("last"))
    if after is None:
        after = await live.db(live.event_latest, board_id=board.pk)
    client = request.GET.get("client", "")
    slot = uuid.uuid4().hex
    if not await live.stream_claim(live.hub(), user.pk, slot):
        refused = HttpResponse(
            f"You have {live.STREAMS_PER_USER} live boards open already; close one and retry.",
            status=429,
            content_type="text/plain; charset=utf-8",
        )
        refused["Retry-After"] = str(live.streams_retry_after())
        return refused
    session_key = request.session.session_key
    spec = live.StreamSpec(
        board_id=board.pk,
        viewer=live.Viewer(user.pk, user.get_username()),
        after=after,
        still_allowed=partial(_stream_allowed, request.actor, board.key, session_key, user.pk),
        render_presence=_presence_html,
        session=live.session_tag(session_key),
        client=live.client_tag(user.pk, client if CLIENT_ID.fullmatch(client) else ""),
        slot=slot,
    )
    response = StreamingHttpResponse(live.board_stream(spec), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache, no-store"
    response["X-Accel-Buffering"] = "no"  # proxies must pass events on as they come
    return response


CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # as flux.middleware accepts X-Flux-Client


@require_GET
def board_changes(request: FluxRequest, key: str) -> JsonResponse:
    """The polling fallback when a stream cannot be opened: anything new since event N?"""
    board = queries.board_get(actor=request.actor, key=key)
    after = number_parse(request.GET.get("after"))
    if after is None:
        return JsonResponse({"last": live.event_latest(board_id=board.pk), "changes": []})
    changes = [live.for_viewer(c) for c in live.events_since(board_id=board.pk, after=after)]
    reload = len(changes) > live.CATCH_UP_LIMIT
    last = changes[-1]["id"] if changes else after
    return JsonResponse({"last": last, "changes": [] if reload else changes, "reload": reload})


def _stream_allowed(actor: Actor, key: str, session_key: str | None, user_id: int) -> bool:
    """A stream goes on while its session is still the user's (not logged out, expired,
    deleted or cut by a password change: read from the database, not the session cache) and
    the user may still see the board."""
    return _session_current(session_key, user_id) and _still_allowed(actor, key)


def _session_current(session_key: str | None, user_id: int) -> bool:
    if not session_key:
        return False
    probe = HttpRequest()
    probe.session = DatabaseSessionStore(session_key)
    user = auth.get_user(probe)  # checks the session's auth hash and that the user is active
    return user.is_authenticated and user.pk == user_id


def _still_allowed(actor: Actor, key: str) -> bool:
    user = actor.user
    if user is None or not user.is_authenticated:
        return False
    user.refresh_from_db(fields=["is_active", "is_staff", "is_superuser"])
    if not user.is_active:
        return False
    try:
        queries.board_get(actor=actor, key=key)
    except NotFoundError:
        return False
    return True


def _presence_html(viewers: list[live.Viewer]) -> str:
    return render_to_string(f"{BOARD}#presence", {"viewers": viewers})


def _columns_response(
    request: FluxRequest,
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
        columns = queries.columns_read(
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
    return fragment_render(request, fragment=f"{BOARD}#columns-oob", context=context, status=status)


def _column_context(request: FluxRequest, board: Board, column_ids: list[int]) -> dict:
    """What the column partial needs besides its cards, with the page's filter kept."""
    return {
        "columns": queries.columns_read(
            board=board, column_ids=column_ids, filters=_filters(request)
        ),
        "filter_query": _filter_query(request),
    }


def _after_post(request: FluxRequest, board: Board, message: str, level=messages.SUCCESS):
    """Without htmx, a POST ends in a redirect back to the board, with its notice."""
    messages.add_message(request, level, message)
    return redirect(_board_url(board, request))


NOTICE_LEVELS = {"error": messages.ERROR, "warning": messages.WARNING}


def _board_refusal(
    request: FluxRequest,
    *,
    board: Board,
    refused: Exception,
    column_ids: list[int] | None = None,
    text: str = "",
    tone: str = "error",
) -> HttpResponse:
    """A refusal's own status and reason (or `text`): toast and fresh columns, else a notice."""
    text = text or refusal_message(refused)
    if not request.htmx:
        return _after_post(request, board, text, NOTICE_LEVELS[tone])
    return _columns_response(
        request,
        board=board,
        column_ids=column_ids,
        toast=text,
        tone=tone,
        status=refusal_status(refused),
    )


@require_http_methods(["GET", "POST"])
def card_move_view(request: FluxRequest, key: str, number: int) -> HttpResponse:
    """GET: the "Move to…" form (works without JavaScript). POST: the move itself."""
    if request.method == "POST":
        return _card_move(request, key, number)
    card = queries.card_get(actor=request.actor, board_key=key, number=number, at_least=Role.EDITOR)
    context = {
        "board": card.board,
        "card": card,
        "all_columns": queries.board_columns(board=card.board),
        "board_url": _board_url(card.board, request),
    }
    return page_or_fragment_render(
        request, page="boards/card_move.html", fragment=f"{BOARD}#move-dialog", context=context
    )


def _card_move(request: FluxRequest, key: str, number: int) -> HttpResponse:
    form = MoveForm(request.POST)
    if not form.is_valid():
        board = queries.board_get(actor=request.actor, key=key, at_least=Role.EDITOR)
        refused = ValidationError("That move was not understood.")
        return _board_refusal(request, board=board, refused=refused)
    data = form.cleaned_data
    try:
        moved = services.card_move(
            actor=request.actor,
            card_ref=(key, number),
            to_column_id=data["to_column"],
            expected_version=data["version"],
            after_id=data["after"],
            before_id=data["before"],
        )
    except ConflictError as conflict:
        # Every column is redrawn with the answer, so the sentence can say the board is fresh.
        board = queries.board_get(actor=request.actor, key=key)
        text = f"{key}-{number} was changed by someone else first; the board now shows the latest."
        return _board_refusal(request, board=board, refused=conflict, text=text, tone="warning")
    except (WipLimitError, ValidationError) as refused:
        board = queries.board_get(actor=request.actor, key=key)
        return _board_refusal(request, board=board, refused=refused)
    board = moved.card.board
    board.role = moved.actor_role  # what the redrawn columns offer (as queries.board_get sets)
    toast, tone = _move_toast(moved)
    if not request.htmx:
        return _after_post(request, board, toast)
    if request.headers.get("X-Flux-Placed") == "1" and not _filters(request).active:
        return _move_confirmed(request, moved, toast=toast, tone=tone)
    columns = queries.columns_read(
        board=board,
        column_ids=list({moved.from_column.pk, moved.to_column.pk}),
        filters=_filters(request),
    )
    return _columns_response(
        request, board=board, column_ids=None, columns=columns, toast=toast, tone=tone
    )


def _move_toast(moved: services.MoveResult) -> tuple[str, str]:
    """What a done move says, and its tone: a warning when it took a column past its limit."""
    column, count = moved.to_column, moved.to_count
    toast = f"{moved.card.ref} moved to {column.name}."
    if moved.changed_column and column.wip_limit is not None and count > column.wip_limit:
        return (
            f"{toast} {column.name} is over its WIP limit ({count}/{column.wip_limit}).",
            "warning",
        )
    return toast, "info"


def _move_confirmed(
    request: FluxRequest, moved: services.MoveResult, *, toast: str, tone: str
) -> HttpResponse:
    """The two columns' new counts and the card's new version, not the columns again."""
    # The page has already put the card where it asked (a drag, or the keyboard).
    heads = [queries.ColumnView(column=moved.from_column, count=moved.from_count)]
    if moved.changed_column:
        heads.append(queries.ColumnView(column=moved.to_column, count=moved.to_count))
    for head in heads:
        head.total = head.count
    context = {"board": moved.card.board, "heads": heads, "toast": toast, "tone": tone}
    response = fragment_render(request, fragment=f"{BOARD}#move-placed", context=context)
    card = moved.card
    response["HX-Trigger"] = json.dumps({"flux:moved": {"card": card.pk, "version": card.version}})
    return response


@require_http_methods(["GET", "POST"])
def column_cards_view(request: FluxRequest, key: str, column_id: int) -> HttpResponse:
    """GET: the next page of a column's cards. POST: a new card at the column's bottom."""
    if request.method == "GET":
        return _column_page(request, key, column_id)
    return _card_create(request, key, column_id)


def _card_create(request: FluxRequest, key: str, column_id: int) -> HttpResponse:
    board = queries.board_get(actor=request.actor, key=key, at_least=Role.EDITOR)
    form = CardCreateForm(request.POST)
    if not form.is_valid():
        refused = ValidationError(form.errors.get("title", ["Give the card a title."])[0])
        return _board_refusal(request, board=board, refused=refused, column_ids=[column_id])
    try:
        card = services.card_create(
            actor=request.actor,
            board_id=board.pk,
            column_id=column_id,
            title=form.cleaned_data["title"],
        )
    except (ValidationError, WipLimitError) as refused:
        return _board_refusal(request, board=board, refused=refused, column_ids=[column_id])
    if not request.htmx:
        return _after_post(request, board, f"{card.ref} created.")
    return _columns_response(
        request, board=board, column_ids=[column_id], toast=f"{card.ref} created."
    )


def _column_page(request: FluxRequest, key: str, column_id: int) -> HttpResponse:
    board = queries.board_get(actor=request.actor, key=key)
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
    return fragment_render(request, fragment=f"{BOARD}#cards-page", context=context)


def _filter_query(request: FluxRequest) -> str:
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
def card_detail(request: FluxRequest, key: str, number: int) -> HttpResponse:
    """The card dialog: its own URL, a whole page without htmx, the dialog alone with it."""
    card = queries.card_get(actor=request.actor, board_key=key, number=number)
    if request.method == "POST":
        return _card_save(request, card)
    return page_or_fragment_render(
        request,
        page=BOARD,
        fragment=f"{BOARD}#card-dialog",
        context=_dialog_context(request, card),
        page_context=lambda: _board_behind(request, card, filters=_filters(request)),
    )


def _card_save(request: FluxRequest, card: Card) -> HttpResponse:
    board, key, number = card.board, card.board.key, card.number
    queries.board_get(actor=request.actor, key=key, at_least=Role.EDITOR)
    labels = queries.card_label_choices(card=card)
    members = queries.board_members(board=board)
    form = CardEditForm(request.POST, labels=labels, members=members)
    notice, status = "", 200
    if form.is_valid():
        data = form.cleaned_data
        try:
            card = services.card_details_set(
                actor=request.actor,
                card_id=card.pk,
                expected_version=data["version"],
                title=data["title"],
                description=data["description"],
                due_date=data["due_date"],
                label_ids=data["labels"],
                assignee_ids=data["assignees"],
            )
        except ConflictError as conflict:
            card = queries.card_get(actor=request.actor, board_key=key, number=number)
            typed = request.POST.copy()
            typed["version"] = str(conflict.card.version)
            form = CardEditForm(typed, labels=labels, members=members)
            notice = (
                "Someone else changed this card while you were editing. Your text is kept "
                "below; check the card and save again."
            )
            status = refusal_status(conflict)
        except ValidationError as invalid:
            for field, errors in invalid.message_dict.items():
                form.add_error(field if field in form.fields else None, errors)
            status = refusal_status(invalid)
        else:
            if not request.htmx:
                return _after_post(request, board, f"{card.ref} saved.")
            card = queries.card_get(actor=request.actor, board_key=key, number=number)
            context = _dialog_context(request, card, saved=True)
            context |= _column_context(request, board, [card.column_id])
            return fragment_render(request, fragment=f"{BOARD}#card-saved", context=context)
    else:
        status = INVALID_INPUT_STATUS
    return page_or_fragment_render(
        request,
        page=BOARD,
        fragment=f"{BOARD}#card-dialog",
        context=_dialog_context(request, card, form=form, notice=notice),
        page_context=lambda: _board_behind(request, card),
        status=status,
    )


def _board_behind(
    request: FluxRequest, card: Card, *, filters: queries.CardFilter = queries.NO_FILTER
) -> dict:
    """The board page a card dialog opens over when it is a whole page of its own."""
    context = queries.board_page_read(board=card.board, actor=request.actor, filters=filters)
    context["open_card"] = card
    return context


def _card_action(request: FluxRequest, key: str, number: int, action) -> HttpResponse:
    card = queries.card_get(actor=request.actor, board_key=key, number=number, at_least=Role.EDITOR)
    try:
        action(card)
    except (WipLimitError, ValidationError) as refused:
        # The dialog stays open and says why (e.g. restoring into a full, blocking column).
        if not request.htmx:
            messages.error(request, refusal_message(refused))
            return redirect(reverse("boards:card", args=[key, number]))
        context = _dialog_context(request, card, notice=refusal_message(refused))
        return fragment_render(
            request,
            fragment=f"{BOARD}#card-dialog",
            context=context,
            status=refusal_status(refused),
        )
    if not request.htmx:
        return redirect(reverse("boards:card", args=[key, number]))
    card = queries.card_get(actor=request.actor, board_key=key, number=number)
    context = _dialog_context(request, card)
    context |= _column_context(request, card.board, [card.column_id])
    return fragment_render(request, fragment=f"{BOARD}#card-saved", context=context)


@require_POST
def card_archive_view(request: FluxRequest, key: str, number: int) -> HttpResponse:
    return _card_action(
        request,
        key,
        number,
        lambda card: services.card_archive(actor=request.actor, card_id=card.pk),
    )


@require_POST
def card_restore_view(request: FluxRequest, key: str, number: int) -> HttpResponse:
    return _card_action(
        request,
        key,
        number,
        lambda card: services.card_restore(actor=request.actor, card_id=card.pk),
    )


@require_POST
def comment_add_view(request: FluxRequest, key: str, number: int) -> HttpResponse:
    card = queries.card_get(actor=request.actor, board_key=key, number=number, at_least=Role.EDITOR)
    form = CommentForm(request.POST)
    status = 200
    if form.is_valid():
        try:
            services.comment_add(
                actor=request.actor, card_id=card.pk, body=form.cleaned_data["body"]
            )
        except ValidationError as invalid:
            form.add_error("body", invalid.messages)
            status = refusal_status(invalid)
        else:
            form = CommentForm()
    else:
        status = INVALID_INPUT_STATUS
    if not request.htmx:
        return redirect(reverse("boards:card", args=[key, number]))
    context = _dialog_context(request, card)
    context["comment_form"] = form
    return fragment_render(request, fragment=f"{BOARD}#card-talk", context=context, status=status)


@require_http_methods(["GET", "POST"])
def token_settings(request: FluxRequest) -> HttpResponse:
    """The user's API tokens: make one (its secret shown once, on this response) or revoke."""
    actor, user = request.actor, request.user
    assert user.is_authenticated  # as on every page but the login page (flux.middleware)
    secret, made, form = "", None, TokenForm(actor=actor)
    if request.method == "POST" and "revoke" in request.POST:
        token_id = number_parse(request.POST["revoke"]) or 0  # no token has id 0
        token = token_revoke(actor=actor, token_id=token_id)
        messages.success(request, f"Token {token.name!r} revoked.")
        return redirect("tokens")
    if request.method == "POST":
        form = TokenForm(request.POST, actor=actor)
        if form.is_valid():
            try:
                made, secret = token_create(
                    actor=actor,
                    user=user,
                    name=form.cleaned_data["name"],
                    role=form.cleaned_data["role"],
                    board_keys=form.cleaned_data["boards"],
                )
            except ValidationError as invalid:
                for field, errors in invalid.message_dict.items():
                    form.add_error(field if field in form.fields else None, errors)
            else:
                form = TokenForm(actor=actor)
    tokens = user.api_tokens.prefetch_related("boards").order_by("-created_at")
    context = {"tokens": tokens, "form": form, "secret": secret, "made": made}
    response = render(
        request, "boards/tokens.html", context, status=INVALID_INPUT_STATUS if form.errors else 200
    )
    if secret:
        response["Cache-Control"] = "no-store"
    return response
