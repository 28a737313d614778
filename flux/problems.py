"""The API's error shape (RFC 9457 problem details), shared by every app's routes."""

from ninja import Schema


class Problem(Schema):
    type: str
    title: str
    status: int
    detail: str


ERRORS = {400: Problem, 401: Problem, 403: Problem, 404: Problem, 422: Problem, 429: Problem}
WRITE_ERRORS = ERRORS | {409: Problem}
