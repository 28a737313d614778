"""The API's OpenAPI document made exact: every status and header an operation can answer with.

A route declares the refusals its own code makes (`boards.problems`: 403, 404, 409, 422). What
the machinery around every route answers is added here, each from where it is answered:

- token auth (`flux.api.TokenAuth`): 401 with WWW-Authenticate; 429 with Retry-After while
  API_RATE_LIMIT_PER_MINUTE is set; 503 with Retry-After when the database the token is
  checked against cannot be reached (`flux.middleware.DatabaseUnavailableMiddleware`). Redis
  away is no 503: the rate limit lets requests through uncounted until it returns.
- `flux.middleware.BodySizeLimitMiddleware`: 413 for a body over DATA_UPLOAD_MAX_MEMORY_SIZE,
  whatever the method, before anything reads it.
- ninja's parsing: 400 for a body that is not JSON, or a query string of more than
  DATA_UPLOAD_MAX_NUMBER_FIELDS fields (Django refuses it; `flux.api` says so as a problem);
  422 for parameters or a body that break their schema.
- `flux.middleware.IdempotencyMiddleware`, on POST: the Idempotency-Key request header; 400 for
  a key too long, 422 for a key reused with another request, Idempotent-Replay on a replay.
- `flux.middleware.RequestContextMiddleware`: the caller's X-Request-ID when it is sane, and
  X-Request-ID on every answer.
- `delivery.export.deployments_csv_response`: a CSV is an attachment, never cached.

A 404 is kept only where the request names something (a parameter or a body): a list of what
the token can see has nothing to look up. `tests/api/test_openapi_exact.py` draws every
declared status from every operation, and fails on an answer the document does not declare.
"""

from http import HTTPStatus
from typing import Any

from django.conf import settings

from boards.models import IDEMPOTENCY_KEY_MAX_LENGTH
from flux.middleware import DATABASE_RETRY_AFTER, REQUEST_ID, IdempotencyMiddleware

PROBLEM_MEDIA = "application/problem+json"
PROBLEM_SCHEMA = {"$ref": "#/components/schemas/Problem"}
# Anchored: a JSON Schema pattern may match anywhere; the middleware matches the whole value.
REQUEST_ID_PATTERN = f"^{REQUEST_ID.pattern}$"


def _header(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/headers/{name}"}


def headers_declared() -> dict[str, dict[str, Any]]:
    """The response headers Flux itself sends (components.headers)."""
    return {
        "X-Request-ID": {
            "description": "The request's id, in its log lines and on the events it wrote: "
            "the caller's X-Request-ID when it is sane, else a fresh one.",
            "schema": {"type": "string", "pattern": REQUEST_ID_PATTERN},
        },
        "WWW-Authenticate": {
            "description": "How to authenticate: a bearer token.",
            "required": True,
            "schema": {"type": "string", "example": 'Bearer realm="flux"'},
        },
        "Retry-After": {
            "description": "Seconds to wait before trying again.",
            "required": True,
            "schema": {"type": "integer", "minimum": 0},
        },
        "Idempotent-Replay": {
            "description": "Present on the stored answer to an earlier request with the same "
            "Idempotency-Key, replayed: the request was not applied again.",
            "schema": {"type": "string", "enum": ["true"]},
        },
        "Cache-Control": {
            "description": "Not to be stored by any cache.",
            "required": True,
            "schema": {"type": "string", "enum": ["no-store"]},
        },
        "Content-Disposition": {
            "description": "A download, with its file name.",
            "required": True,
            "schema": {"type": "string", "example": 'attachment; filename="flux-deployments.csv"'},
        },
    }


def _request_parameters(method: str) -> list[dict[str, Any]]:
    """The request headers every operation reads (and, on POST, the Idempotency-Key)."""
    parameters: list[dict[str, Any]] = [
        {
            "in": "header",
            "name": "X-Request-ID",
            "required": False,
            "description": "Your own id for the request, echoed in the answer and kept in the "
            "log and on the events it writes. Anything else is replaced by a fresh id.",
            "schema": {"type": "string", "pattern": REQUEST_ID_PATTERN},
        }
    ]
    if method == "post":
        parameters.append(
            {
                "in": "header",
                "name": "Idempotency-Key",
                "required": False,
                "description": "Makes a retry safe: the first request with a key is applied "
                "and its answer kept (for this token); a later request with the same key and "
                "the same method, path and body gets that answer again, with "
                "`Idempotent-Replay: true`, and is not applied twice, even when both arrive at "
                "once. The same key with another request is a 422. Answers that say nothing "
                "of the request's effect (401, 403, 429, 5xx) are not kept: retry them with "
                "the same key. A replay is refused as the request would be if the token has "
                "since lost access to the board.",
                "schema": {"type": "string", "maxLength": IDEMPOTENCY_KEY_MAX_LENGTH},
            }
        )
    return parameters


def _answered(operation: dict[str, Any], method: str) -> dict[int, list[str]]:
    """What the machinery around the route answers this operation with: status, and why."""
    parameters = operation.get("parameters", [])
    query = any(p["in"] == "query" for p in parameters)
    typed_path = any(
        p["in"] == "path" and p.get("schema", {}).get("type") != "string" for p in parameters
    )
    body = "requestBody" in operation
    answered: dict[int, list[str]] = {}

    def add(status: int, why: str) -> None:
        answered.setdefault(status, []).append(why)

    if body:
        add(400, "The body is not JSON.")
    if query:
        add(
            400,
            f"More than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS} fields in the query string.",
        )
    if method == "post":
        add(400, f"The Idempotency-Key is longer than {IDEMPOTENCY_KEY_MAX_LENGTH} characters.")
    if operation.get("security"):
        add(401, "No valid, unrevoked token: send `Authorization: Bearer <token>`.")
    if settings.DATA_UPLOAD_MAX_MEMORY_SIZE is not None:
        add(
            413,
            f"The body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes; it is "
            "refused before it is read, whatever the method.",
        )
    if body or query or typed_path:
        add(422, "A parameter or the body does not fit its schema (`errors` says where).")
    if method == "post":
        add(422, "The Idempotency-Key was used with a different request: use a new key.")
    if operation.get("security") and settings.API_RATE_LIMIT_PER_MINUTE:
        add(
            429,
            f"This token made more than {settings.API_RATE_LIMIT_PER_MINUTE} requests this "
            "minute; Retry-After says when the next minute starts.",
        )
    if operation.get("security"):
        retry = (
            " A retry with the same Idempotency-Key is applied once." if method == "post" else ""
        )
        add(
            503,
            "The database cannot be reached for a moment: try again after Retry-After seconds "
            f"({DATABASE_RETRY_AFTER}).{retry}",
        )
    return answered


# The route's own refusals, in words (`boards.errors` and Django's ValidationError).
REFUSALS = {
    403: "The token (or its user) is below editor on the board.",
    404: "What the request names does not exist or is not the token's to see: the same "
    "answer for both.",
    409: "The change conflicts with the present state: a stale `expected_version` "
    "(`current_version` is the card's), a column at its blocking WIP limit, or a change "
    "already made.",
    422: "The service refused the input (`detail` says why).",
}

# The headers each status is answered with, besides X-Request-ID on all.
STATUS_HEADERS = {
    401: ["WWW-Authenticate"],
    429: ["Retry-After"],
    503: ["Retry-After", "Cache-Control"],
}


def _names_something(operation: dict[str, Any]) -> bool:
    parameters = [p for p in operation.get("parameters", []) if p["in"] in ("path", "query")]
    return bool(parameters) or "requestBody" in operation


def operation_complete(operation: dict[str, Any], method: str) -> None:
    """Declare every status and header the operation is answered with (see the module)."""
    responses: dict[int, dict[str, Any]] = {}
    for status, response in operation.get("responses", {}).items():
        merged = responses.setdefault(int(status), {})
        merged.update(response)
    if 404 in responses and not _names_something(operation):
        del responses[404]
    for status, response in responses.items():
        content = response.get("content", {})
        if status >= 400:
            if "application/json" in content:
                content[PROBLEM_MEDIA] = content.pop("application/json")
            if status in REFUSALS:
                response["description"] = REFUSALS[status]
    for status, reasons in _answered(operation, method).items():
        response = responses.setdefault(status, {})
        response["content"] = {PROBLEM_MEDIA: {"schema": PROBLEM_SCHEMA}}
        said = response.get("description", "")
        said = "" if said == HTTPStatus(status).phrase else said
        response["description"] = " ".join(filter(None, [said, *reasons]))
    # What the idempotency middleware keeps, and so may replay (a 413 never reaches it).
    kept = {s for s in responses if s < 500 and s != 413} - IdempotencyMiddleware.NOT_KEPT
    for status, response in responses.items():
        headers = {"X-Request-ID": _header("X-Request-ID")}
        headers |= {name: _header(name) for name in STATUS_HEADERS.get(status, [])}
        if "text/csv" in response.get("content", {}):
            headers |= {name: _header(name) for name in ("Content-Disposition", "Cache-Control")}
        if method == "post" and status in kept:
            headers["Idempotent-Replay"] = _header("Idempotent-Replay")
        response["headers"] = response.get("headers", {}) | headers
    operation["responses"] = {str(status): responses[status] for status in sorted(responses)}
    operation["parameters"] = [*operation.get("parameters", []), *_request_parameters(method)]


def schema_complete(schema: dict[str, Any]) -> dict[str, Any]:
    """The whole document, every operation completed; headers in components.headers."""
    for operations in schema["paths"].values():
        for method, operation in operations.items():
            operation_complete(operation, method)
    schema.setdefault("components", {})["headers"] = headers_declared()
    return schema
