"""Request plumbing: a request id and client id per request, early refusal of oversized
bodies, the services' refusals as clear 4xx pages, idempotent API retries, login required
(and the signed-in user as the pages' actor), and a clear 503 while the database is
unreachable."""

import hashlib
import json
import logging
import re
import time
import uuid
from typing import cast

import psycopg
from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.contrib.auth.middleware import LoginRequiredMiddleware as DjangoLoginRequiredMiddleware
from django.contrib.auth.signals import user_logged_out
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.signals import got_request_exception
from django.db import DatabaseError, InterfaceError, OperationalError, transaction
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import Resolver404, resolve

from activity import live
from activity import log as activity_log
from boards import queries
from boards.errors import (
    FluxError,
    ForbiddenError,
    NotFoundError,
    refusal_message,
    refusal_status,
)
from boards.models import IDEMPOTENCY_KEY_MAX_LENGTH, ApiToken, IdempotencyKey, Role
from boards.rendering import FluxRequest
from boards.tokens import token_actor, token_authenticate

request_logger = logging.getLogger("flux.request")
logger = logging.getLogger(__name__)

# What a request id or client id may look like when a caller supplies one: short, printable,
# nothing a log line or a header could be split with.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def request_id_from(request: HttpRequest) -> str:
    """The caller's X-Request-ID when it is sane (a proxy's or CI's), else a fresh one."""
    incoming = request.headers.get("X-Request-ID", "")
    return incoming if REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex


def client_id_from(request: HttpRequest) -> str:
    """The browser tab's random id from X-Flux-Client; empty when absent or malformed."""
    incoming = request.headers.get("X-Flux-Client", "")
    return incoming if CLIENT_ID.fullmatch(incoming) else ""


class RequestContextMiddleware:
    """Sets `activity.log.request_id` and `client_id` for the length of one request.

    The request id ties the request's log lines (flux.logging adds it to each) to the events
    it writes, and is echoed in the X-Request-ID response header. One INFO line per request
    on the `flux.request` logger says what was asked, the answer and how long it took.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):
        if iscoroutinefunction(self):
            return self._acall(request)
        tokens, started = self._enter(request)
        try:
            response = self.get_response(request)
            return self._leave(request, response, started)
        finally:
            self._reset(tokens)

    async def _acall(self, request: HttpRequest):
        tokens, started = self._enter(request)
        try:
            response = await self.get_response(request)
            return self._leave(request, response, started)
        finally:
            self._reset(tokens)

    def _enter(self, request: HttpRequest):
        request_id = request_id_from(request)
        cast(FluxRequest, request).request_id = request_id  # views see it (FluxRequest)
        tokens = (
            activity_log.request_id.set(request_id),
            activity_log.client_id.set(client_id_from(request)),
        )
        return tokens, time.perf_counter()

    def _leave(self, request: HttpRequest, response: HttpResponse, started: float):
        response["X-Request-ID"] = cast(FluxRequest, request).request_id
        request_logger.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status_code,
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                "user_id": _user_id(request),
            },
        )
        return response

    @staticmethod
    def _reset(tokens) -> None:
        activity_log.client_id.reset(tokens[1])
        activity_log.request_id.reset(tokens[0])


def _user_id(request: HttpRequest) -> int | None:
    """The signed-in user's id for the log line; None when the user could not even be loaded
    (the database is away: the answer is a 503, and the log line must not turn it into a 500)."""
    user = getattr(request, "user", None)
    try:
        return user.pk if user is not None and user.is_authenticated else None
    except (DatabaseError, psycopg.Error):
        return None


def _body_too_large(request_path: str, limit: int) -> HttpResponse:
    detail = f"The request body is larger than {limit} bytes, the most Flux accepts."
    if request_path.startswith("/api/"):
        body = {
            "type": "https://flux.invalid/problems/too-large",
            "title": "Request body too large",
            "status": 413,
            "detail": detail,
        }
        return JsonResponse(body, status=413, content_type="application/problem+json")
    return HttpResponse(detail, status=413, content_type="text/plain; charset=utf-8")


class BodySizeLimitMiddleware:
    """Refuse a body whose declared length is over DATA_UPLOAD_MAX_MEMORY_SIZE with a 413,
    before anything reads it (Django itself would answer a bare 400 on first access; the API
    answers problem+json). Under ASGI, `BodySizeLimitASGI` refuses it even earlier, and also
    bodies sent without a Content-Length."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared = 0
        if limit is not None and declared > limit:
            return _body_too_large(request.path, limit)
        return self.get_response(request)


class BodySizeLimitASGI:
    """ASGI wrapper: a body over DATA_UPLOAD_MAX_MEMORY_SIZE gets a 413 before Django spools it.

    A declared Content-Length over the limit is refused without reading a byte; a body that
    grows past the limit while streaming (chunked) stops being read, Django sees the client
    gone, and the 413 is sent here.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if scope["type"] != "http" or limit is None:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        try:
            declared = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            return await self._refuse(scope, send, limit)
        received, too_large, started = 0, False, False

        async def limited_receive():
            nonlocal received, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, limited_receive, tracking_send)
        if too_large and not started:
            await self._refuse(scope, send, limit)

    @staticmethod
    async def _refuse(scope, send, limit: int) -> None:
        response = _body_too_large(scope.get("path", ""), limit)
        headers = [(b"content-type", response["Content-Type"].encode()), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": response.content})


class ServiceErrorMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, NotFoundError):
            raise Http404(exception.message) from exception
        if isinstance(exception, ForbiddenError):
            raise PermissionDenied(exception.message) from exception
        if isinstance(exception, FluxError | ValidationError):
            context = {"message": refusal_message(exception)}
            return render(request, "error.html", context, status=refusal_status(exception))
        return None


class IdempotencyMiddleware:
    """Safe retries for API POSTs that carry an `Idempotency-Key` header.

    The key is claimed by inserting its row in the same transaction as the request's work.
    A concurrent request with the same key waits on that row's unique index until the first
    commits, then replays its stored answer; so does any later retry. The same key with a
    different method, path or body is a 422. Answers that say nothing about the request's
    effect (401, 403, 429, 5xx) are not kept, so the client may retry them. Keys are scoped
    to the authenticated token: a revoked token's retry gets a 401, not the stored answer.
    """

    PREFIX = "/api/"
    NOT_KEPT = {401, 403, 429}

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        key = request.headers.get("Idempotency-Key")
        if request.method != "POST" or not key or not request.path.startswith(self.PREFIX):
            return self.get_response(request)
        if len(key) > IDEMPOTENCY_KEY_MAX_LENGTH:
            return _problem(
                400,
                "Bad request",
                f"An Idempotency-Key is at most {IDEMPOTENCY_KEY_MAX_LENGTH} characters.",
            )
        # Keys belong to a live token: a revoked or unknown one gets the route's own 401.
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        token = token_authenticate(bearer) if bearer else None
        if token is None:
            return self.get_response(request)
        scope = f"token:{token.pk}"
        fingerprint = hashlib.sha256(
            b"\n".join([request.method.encode(), request.path.encode(), request.body])
        ).hexdigest()
        with transaction.atomic():
            record, created = IdempotencyKey.objects.get_or_create(
                scope=scope, key=key, defaults={"fingerprint": fingerprint}
            )
            if not created:
                if record.fingerprint != fingerprint:
                    return _problem(
                        422,
                        "Idempotency-Key reused",
                        "This Idempotency-Key was used with a different request; use a new key.",
                    )
                # The stored answer is the route's; whether the caller may still have it is
                # asked again, as the route asks: access lost since is the route's 404.
                refused = _replay_refused(request, token)
                if refused is not None:
                    return refused
                response = HttpResponse(
                    bytes(record.body), status=record.status, content_type=record.content_type
                )
                response["Idempotent-Replay"] = "true"
                return response
            response = self.get_response(request)
            if response.status_code >= 500 or response.status_code in self.NOT_KEPT:
                transaction.set_rollback(True)
                return response
            record.status = response.status_code
            record.content_type = response.get("Content-Type", "application/json")
            record.body = response.content
            record.save(update_fields=["status", "content_type", "body"])
            return response


def _replay_board_key(request: HttpRequest) -> str:
    """The board a POST route acts on, as the route finds it: the `key` in its path, the
    board of the card `ref` in its path, or the `board` its JSON body names ("" when the
    route names no board, "?" when it names one that cannot exist)."""
    try:
        match = resolve(request.path)
    except Resolver404:
        return ""
    if "key" in match.kwargs:
        return str(match.kwargs["key"])
    if "ref" in match.kwargs:
        parsed = queries.ref_parse(str(match.kwargs["ref"]))
        return parsed[0] if parsed else "?"
    try:
        body = json.loads(request.body or b"null")
    except ValueError:
        return ""
    if isinstance(body, dict) and "board" in body:
        return str(body["board"])
    return ""


def _replay_refused(request: HttpRequest, token: ApiToken) -> HttpResponse | None:
    """The route's own refusal if the token may no longer write to the request's board."""
    key = _replay_board_key(request)
    if key == "":
        return None
    from flux.api import refusal_problem  # (flux.api imports this module's neighbours)

    try:
        queries.board_get(actor=token_actor(token), key=key, at_least=Role.EDITOR)
    except FluxError as error:
        return refusal_problem(request, error)
    return None


def _problem(status: int, title: str, detail: str) -> JsonResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return JsonResponse(body, status=status, content_type="application/problem+json")


class LoginRequiredMiddleware(DjangoLoginRequiredMiddleware):
    """Every page needs a signed-in user and acts as them (`request.actor`); the API is left
    to its token auth, which sets the token's narrower actor."""

    def process_view(self, request, view_func, view_args, view_kwargs):
        if request.path.startswith(IdempotencyMiddleware.PREFIX):
            return None
        # Lazy like request.user: building the actor loads nothing.
        request.actor = activity_log.Actor(user=request.user)
        return super().process_view(request, view_func, view_args, view_kwargs)


# --- The database away ------------------------------------------------------------------------

DATABASE_RETRY_AFTER = 5  # seconds: a restart or failover of PostgreSQL takes about that


def database_unavailable(exception: BaseException) -> bool:
    """The database could not be reached or dropped the connection (Django's wrapped errors,
    psycopg's own, and a pool that had no connection to give within its timeout)."""
    return isinstance(exception, OperationalError | InterfaceError | psycopg.OperationalError)


def database_unavailable_response(request: HttpRequest) -> HttpResponse:
    """503 with Retry-After: problem+json under /api/, a short plain page elsewhere."""
    detail = (
        "Flux cannot reach its database for a moment. Try again in a few seconds; if you were "
        "saving a change, check afterwards whether it was applied."
    )
    response: HttpResponse
    if request.path.startswith(IdempotencyMiddleware.PREFIX):
        response = JsonResponse(
            {
                "type": "https://flux.invalid/problems/unavailable",
                "title": "Service unavailable",
                "status": 503,
                "detail": detail.replace(
                    "check afterwards whether it was applied",
                    "retry with the same Idempotency-Key and it applies once",
                ),
            },
            status=503,
            content_type="application/problem+json",
        )
    else:
        response = HttpResponse(detail, status=503, content_type="text/plain; charset=utf-8")
    response["Retry-After"] = str(DATABASE_RETRY_AFTER)
    response["Cache-Control"] = "no-store"
    return response


class _MarkedRequest(HttpRequest):
    """A request that `_mark_database_unavailable` has marked (the mark is absent otherwise)."""

    flux_database_unavailable: bool


class DatabaseUnavailableMiddleware:
    """A request that fails because the database is away gets a 503 with Retry-After and a
    clear message (problem+json under /api/), not a 500 and a traceback page.

    A view's exception arrives in `process_exception`. One raised outside the view (another
    middleware loading the session or the user, a session saved on the way out) has already
    been turned into a 500 by Django when it reaches this middleware: the
    `got_request_exception` signal marks such a request, and its 500 is replaced here. The
    middleware must therefore sit near the top of MIDDLEWARE, outside everything that may
    touch the database. Nothing of a failed request is kept: its transaction rolled back
    (or, failing after the commit, the change is in the log and a retry gets a conflict).
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):
        if iscoroutinefunction(self):
            return self._acall(request)
        return self._replace(request, self.get_response(request))

    async def _acall(self, request: HttpRequest):
        return self._replace(request, await self.get_response(request))

    @staticmethod
    def _replace(request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if response.status_code == 500 and getattr(request, "flux_database_unavailable", False):
            return database_unavailable_response(request)
        return response

    def process_view(self, request: HttpRequest, view_func, view_args, view_kwargs):
        """Load the signed-in user (session and user rows) here, where a failure can still be
        answered cleanly, rather than in LoginRequiredMiddleware or a view's first line. Views
        that need no login (/healthz, /readyz, the login page) and the token API are left
        alone: they report the database themselves."""
        needs_login = getattr(view_func, "login_required", True)
        if not needs_login or request.path.startswith(IdempotencyMiddleware.PREFIX):
            return None
        user = getattr(request, "user", None)
        if user is None:
            return None
        try:
            user.is_authenticated  # noqa: B018 - evaluates the lazy user
        except Exception as exception:
            if database_unavailable(exception):
                return self.process_exception(request, exception)
            raise
        return None

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not database_unavailable(exception):
            return None
        logger.warning(
            "database unavailable: %s %s answered 503 (%s: %s)",
            request.method,
            request.path,
            type(exception).__name__,
            str(exception).strip().splitlines()[0] if str(exception).strip() else "",
        )
        return database_unavailable_response(request)


def _mark_database_unavailable(sender, request: HttpRequest | None = None, **kwargs) -> None:
    """Django is about to answer 500 for an exception raised outside a view: note whether
    the database was the cause (the exception being handled is the current one)."""
    import sys

    exception = sys.exception()
    if request is not None and exception is not None and database_unavailable(exception):
        cast(_MarkedRequest, request).flux_database_unavailable = True


got_request_exception.connect(_mark_database_unavailable, dispatch_uid="flux-database-away")


def _end_live_streams(sender, request: HttpRequest | None = None, **kwargs) -> None:
    """A logout ends that session's live streams in every process, at once."""
    session = getattr(request, "session", None)
    if session is not None:
        live.session_ended(session.session_key)


user_logged_out.connect(_end_live_streams, dispatch_uid="flux-live-logout")
