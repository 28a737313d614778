"""Streaming CSV of deployment history: one row per card deployment, constant memory.

Rows come from the projections (activity.rollups) through a server-side cursor in chunks,
and are written RFC 4180-style (quoted when needed, CRLF line ends). A cell that a
spreadsheet would run as a formula (starting with =, +, -, @, tab or carriage return) is
prefixed with a single quote. A deployment that delivered no card (a failed one, say) is
one row with the card columns empty.
"""

import csv
import datetime
import itertools
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.db import connection
from django.db.models import F, OuterRef, QuerySet, StringAgg, Subquery, Value
from django.http import HttpRequest, StreamingHttpResponse

from activity.models import Deployment
from boards.models import Card

HEADER = [
    "deployment_id",
    "service_key",
    "service_name",
    "environment",
    "version",
    "status",
    "deployed_at",
    "card_ref",
    "card_title",
    "labels",
    "created_at",
    "started_at",
    "lead_time_seconds",
    "cycle_time_seconds",
    "commit_shas",
    "source",
    "actor",
]
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
CHUNK = 2000
LINES_PER_BLOCK = 500


@dataclass(frozen=True)
class ExportFilter:
    board_ids: frozenset[int]
    since: datetime.datetime | None = None
    until: datetime.datetime | None = None
    release: str = ""


def deployment_rows(*, scope: ExportFilter) -> QuerySet:
    """The export's rows, oldest first, for the boards in scope only."""
    labels = Subquery(
        Card.labels.through.objects.filter(card_id=OuterRef("cards__card_id"))
        .values("card_id")
        .annotate(
            names=StringAgg(
                "label__name",
                delimiter=Value(" "),
                # SQLite cannot order inside an aggregate; there, labels keep insertion order.
                order_by="label__name" if connection.vendor == "postgresql" else None,
            )
        )
        .values("names")[:1]
    )
    rows = Deployment.objects.filter(board_id__in=scope.board_ids)
    if scope.since:
        rows = rows.filter(deployed_at__gte=scope.since)
    if scope.until:
        rows = rows.filter(deployed_at__lt=scope.until)
    if scope.release:
        rows = rows.filter(version=scope.release)
    return rows.order_by("deployed_at", "pk", "cards__card_ref").values_list(
        "pk",
        "board__key",
        "board__name",
        "environment",
        "version",
        "status",
        "deployed_at",
        "cards__card_ref",
        F("cards__card__title"),
        labels,
        "cards__created_at",
        "cards__started_at",
        "cards__lead_time",
        "cards__cycle_time",
        "commit_shas",
        "source",
        "actor_name",
    )


def cell(value) -> str:
    """One CSV cell: ISO 8601 UTC times, whole seconds, and no formula a spreadsheet would run."""
    if value is None:
        return ""
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, float):
        return str(round(value))
    if isinstance(value, list):
        value = " ".join(map(str, value))
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


class _Echo:
    """A file-like object whose write returns the line instead of storing it."""

    def write(self, value: str) -> str:
        return value


def csv_lines(rows: Iterable[tuple]) -> Iterator[str]:
    """The header and then every row as RFC 4180 lines, produced as they are read."""
    writer = csv.writer(_Echo(), lineterminator="\r\n")
    yield writer.writerow(HEADER)
    for row in rows:
        yield writer.writerow([cell(value) for value in row])


def _blocks(lines: Iterator[str]) -> Iterator[str]:
    while block := "".join(itertools.islice(lines, LINES_PER_BLOCK)):
        yield block


async def _async_blocks(lines: Iterator[str]) -> AsyncIterator[str]:
    # Under ASGI, Django would drain a sync iterator into a list before sending a byte. Each
    # block is read on the thread that opened the cursor, then sent before the next is read.
    next_block = sync_to_async(
        lambda: "".join(itertools.islice(lines, LINES_PER_BLOCK)), thread_sensitive=True
    )
    while block := await next_block():
        yield block


def deployments_csv_response(
    *, request: HttpRequest, scope: ExportFilter, filename: str
) -> StreamingHttpResponse:
    """A streamed download of the deployment history in scope, in constant memory under
    WSGI and ASGI alike."""
    rows = deployment_rows(scope=scope).iterator(chunk_size=CHUNK)
    # Read the first row now, so a failing query is an error response, not a cut-off file.
    first = list(itertools.islice(rows, 1))
    lines = csv_lines(itertools.chain(first, rows))
    body = _async_blocks(lines) if isinstance(request, ASGIRequest) else _blocks(lines)
    response = StreamingHttpResponse(body, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    return response
