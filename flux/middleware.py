"""Turn the services' refusals into clear 4xx pages, so no view has to repeat the mapping."""

import hashlib

from django.contrib.auth.middleware import LoginRequiredMiddleware as DjangoLoginRequiredMiddleware
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from boards.errors import FluxError, ForbiddenError, NotFoundError, refusal_message
from boards.models import IdempotencyKey
from boards.tokens import token_authenticate


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
            status = exception.status if isinstance(exception, FluxError) else 422
            context = {"message": refusal_message(exception)}
            return render(request, "error.html", context, status=status)
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
        if len(key) > 200:
            return _problem(400, "Bad request", "An Idempotency-Key is at most 200 characters.")
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


def _problem(status: int, title: str, detail: str) -> JsonResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return JsonResponse(body, status=status, content_type="application/problem+json")


class LoginRequiredMiddleware(DjangoLoginRequiredMiddleware):
    """Every page needs a signed-in user, except the token-authenticated API."""

    def process_view(self, request, view_func, view_args, view_kwargs):
        if request.path.startswith(IdempotencyMiddleware.PREFIX):
            return None
        return super().process_view(request, view_func, view_args, view_kwargs)
