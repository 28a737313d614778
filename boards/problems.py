"""Shapes shared by every app's API routes: the error (RFC 9457 problem details), strict
date types and text that can be stored."""

import datetime
import re
from typing import Annotated

from ninja import Schema
from pydantic import AfterValidator, BeforeValidator


class Problem(Schema):
    type: str
    title: str
    status: int
    detail: str


# What a route's own code refuses, for its `response=`; what every operation may also answer
# (400, 401, 413, 422 for what breaks its schema, 429, 503, and the Idempotency-Key's answers on
# POST) is declared for all by flux.openapi. Declare no status the route cannot answer:
# tests/api/test_openapi_exact.py draws every declared one from every operation.
ERRORS = {404: Problem}  # a read: what it names is not there, or not the token's to see
# A write may also find the token below editor (403) or its input refused (422); most may
# also conflict with the present state (409: a stale version, a full column, done already).
WRITE_ERRORS_WITHOUT_CONFLICT = ERRORS | {403: Problem, 422: Problem}
WRITE_ERRORS = WRITE_ERRORS_WITHOUT_CONFLICT | {409: Problem}


ISO_START = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _text_only(value):
    """Dates and times arrive as ISO 8601 text; pydantic alone would also take 1.5 or "1.5"."""
    if isinstance(value, datetime.date) or (isinstance(value, str) and ISO_START.match(value)):
        return value
    raise ValueError("must be an ISO 8601 date or date-time, like 2026-11-29T10:00:00Z")


EARLIEST, LATEST = 1970, 2200


def _as_utc(value: datetime.datetime) -> datetime.datetime:
    """Any offset ISO 8601 allows, as UTC (PostgreSQL takes offsets up to ±15:59 only); a
    time without an offset is taken as UTC. Years outside 1970-2200 are refused: no delivery
    happened then, and the rollups' day arithmetic must never leave the calendar."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    try:
        value = value.astimezone(datetime.UTC)
    except OverflowError:
        raise ValueError("date-time out of range") from None
    if not EARLIEST <= value.year <= LATEST:
        raise ValueError(f"must be between the years {EARLIEST} and {LATEST}")
    return value


IsoDateTime = Annotated[datetime.datetime, BeforeValidator(_text_only), AfterValidator(_as_utc)]
IsoDate = Annotated[datetime.date, BeforeValidator(_text_only)]


def text_refusal(value: str) -> str | None:
    """Why text cannot be stored (a NUL, which PostgreSQL refuses; a lone surrogate, which
    UTF-8 cannot encode), or None when it can. Browser parsers share it with the API."""
    if "\x00" in value:
        return "must not contain a NUL character (\\u0000)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must not contain a lone surrogate (an unpaired \\ud800-\\udfff escape)"
    return None


def _storable(value):
    """Checked before pydantic's own string checks, whose word for a lone surrogate ("unable to
    parse raw data") says less; anything but text goes on to be refused by them."""
    if isinstance(value, str) and (reason := text_refusal(value)) is not None:
        raise ValueError(reason)
    return value


# Every string an API client sends: refused with a 422 that says why, before any query.
Text = Annotated[str, BeforeValidator(_storable)]
