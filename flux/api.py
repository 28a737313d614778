"""The REST API root: token auth, rate limits, problem-details errors; mounts the apps' routers.

Every route goes through the same services and queries as the browser. Errors are RFC 9457
problem details (`type`, `title`, `status`, `detail`); nothing a client sends yields a 500.
"""

import logging
import time
from typing import cast

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import TooManyFieldsSent
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.security import HttpBearer

from boards.errors import FluxError, refusal_message, refusal_status
from boards.rendering import FluxRequest
from boards.tokens import token_actor, token_authenticate
from flux.openapi import schema_complete

PROBLEM_TYPES = "https://flux.invalid/problems/"

logger = logging.getLogger(__name__)


class RateLimitedError(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__("Too many requests")
        self.retry_after = retry_after


class TokenAuth(HttpBearer):
    """`Authorization: Bearer flux_...`; sets request.actor to the token's scoped actor."""

    def authenticate(self, request: HttpRequest, token: str):
        api_token = token_authenticate(token)
        if api_token is None:
            return None
        _rate_limit(api_token.prefix)
        cast(FluxRequest, request).actor = token_actor(api_token)  # what makes it a FluxRequest
        return api_token


def _rate_limit(token_prefix: str) -> None:
    """A fixed one-minute window per token, counted in the cache (Redis in production).

    One atomic INCR per request; ninja's own throttles keep a list of timestamps per client
    and rewrite it on every request, and read their rate only once, at start-up.
    """
    limit = settings.API_RATE_LIMIT_PER_MINUTE
    if not limit:
        return
    window = int(time.time() // 60)
    key = f"api-rate:{token_prefix}:{window}"
    try:
        cache.add(key, 0, timeout=120)
        try:
            count = cache.incr(key)
        except ValueError:  # evicted between add and incr: count this request as the first
            cache.set(key, 1, timeout=120)
            count = 1
    except Exception:  # Redis is down: CI keeps working, unthrottled, until it returns
        logger.warning("API rate limit: cache unavailable, request not counted", exc_info=True)
        return
    if count > limit:
        raise RateLimitedError(retry_after=60 - int(time.time()) % 60)


class FluxAPI(NinjaAPI):
    def get_openapi_schema(self, *args, **kwargs):
        """Exact: every status and header each operation answers with (flux.openapi), errors
        as what they are, application/problem+json."""
        return schema_complete(super().get_openapi_schema(*args, **kwargs))


api = FluxAPI(
    title="Flux API",
    version="1",
    description=(
        "Move cards and record deployments from CI. Authenticate with "
        "`Authorization: Bearer <token>`; send an `Idempotency-Key` header with every POST "
        "so a retry never applies twice."
    ),
    auth=TokenAuth(),
    urls_namespace="api",
    docs_url="/docs",
    openapi_url="/openapi.json",
)


def problem(
    request: HttpRequest, *, status: int, title: str, detail: str, slug: str, **extra
) -> HttpResponse:
    body = {"type": PROBLEM_TYPES + slug, "title": title, "status": status, "detail": detail}
    response = JsonResponse(body | extra, status=status, content_type="application/problem+json")
    return response


@api.exception_handler(NinjaValidationError)
def _invalid(request, error: NinjaValidationError):
    parts = []
    for item in error.errors:
        where = ".".join(str(p) for p in item.get("loc", ()) if p not in ("body", "payload"))
        parts.append(f"{where}: {item.get('msg', 'invalid')}" if where else item.get("msg", ""))
    return problem(
        request,
        status=422,
        title="Invalid request",
        detail="; ".join(parts) or "The request is not valid.",
        slug="invalid",
        errors=[
            {"loc": list(map(str, e.get("loc", ()))), "msg": e.get("msg")} for e in error.errors
        ],
    )


@api.exception_handler(DjangoValidationError)
def _refused_input(request, error: DjangoValidationError):
    return problem(
        request,
        status=refusal_status(error),
        title="Invalid request",
        detail=refusal_message(error),
        slug="invalid",
    )


@api.exception_handler(DataError)
def _unstorable(request, error: DataError):
    """A NUL character the database refuses is bad input; any other DataError is our bug.

    In the path it names nothing, and is answered as every other path that names nothing
    (`/cards/%00`, or `/boards/%00` on SQLite): 404.
    """
    if "NUL" not in str(error):
        raise error
    if "\x00" in request.path:
        return _not_found(request, error)
    return problem(
        request,
        status=422,
        title="Invalid request",
        detail="Text in the request contains a NUL character, which Flux cannot store.",
        slug="invalid",
    )


@api.exception_handler(TooManyFieldsSent)
def _too_many_fields(request, error: TooManyFieldsSent):
    """Django's own refusal of a query string it will not parse, as problem details (Django
    alone would answer an HTML 400 page)."""
    return problem(
        request,
        status=400,
        title="Bad request",
        detail=f"A query string has at most {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS} fields.",
        slug="bad-request",
    )


@api.exception_handler(AuthenticationError)
def _unauthenticated(request, error):
    response = problem(
        request,
        status=401,
        title="Unauthorized",
        detail="Send a valid, unrevoked token: Authorization: Bearer <token>.",
        slug="unauthorized",
    )
    response["WWW-Authenticate"] = 'Bearer realm="flux"'
    return response


@api.exception_handler(RateLimitedError)
def _rate_limited(request, error: RateLimitedError):
    response = problem(
        request,
        status=429,
        title="Too many requests",
        detail=f"This token is limited to {settings.API_RATE_LIMIT_PER_MINUTE} requests a minute.",
        slug="rate-limited",
    )
    response["Retry-After"] = str(error.retry_after)
    return response


@api.exception_handler(Http404)
def _not_found(request, error):
    return problem(request, status=404, title="Not found", detail="Not found.", slug="not-found")


@api.exception_handler(HttpError)
def _http_error(request, error: HttpError):
    return problem(
        request,
        status=error.status_code,
        title="Request refused",
        detail=str(error.message),
        slug="refused",
    )


def refusal_problem(request, error: FluxError):
    """A service's refusal as problem+json: the error's own status, title and message."""
    return problem(
        request,
        status=error.status,
        title=error.title,
        detail=error.message,
        slug=error.slug,
        **error.details,
    )


api.exception_handler(FluxError)(refusal_problem)


def _mount() -> None:
    from boards.api import router as boards_router
    from delivery.api import router as delivery_router
    from history.api import router as history_router

    api.add_router("", boards_router)
    api.add_router("", history_router)
    api.add_router("", delivery_router)


_mount()
