"""Shapes shared by every app's API routes: the error (RFC 9457 problem details) and strict
date types."""

import datetime
import re
from typing import Annotated

from ninja import Schema
from pydantic import BeforeValidator


class Problem(Schema):
    type: str
    title: str
    status: int
    detail: str


ERRORS = {400: Problem, 401: Problem, 403: Problem, 404: Problem, 422: Problem, 429: Problem}
WRITE_ERRORS = ERRORS | {409: Problem}


ISO_START = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _text_only(value):
    """Dates and times arrive as ISO 8601 text; pydantic alone would also take 1.5 or "1.5"."""
    if isinstance(value, datetime.date) or (isinstance(value, str) and ISO_START.match(value)):
        return value
    raise ValueError("must be an ISO 8601 date or date-time, like 2026-11-29T10:00:00Z")


IsoDateTime = Annotated[datetime.datetime, BeforeValidator(_text_only)]
IsoDate = Annotated[datetime.date, BeforeValidator(_text_only)]
