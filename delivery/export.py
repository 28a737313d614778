"""Streaming CSV of deployment history: one row per card deployment, constant memory.

Rows come from the projections (delivery.rollups) and are written RFC 4180-style (quoted
when needed, CRLF line ends). A deployment is named by its public id, the id of the event that
recorded it (`Deployment.event_id`: what `POST /api/v1/deployments` answered; for a manual
delivery, the move's event), never by a projection row's pk, which a rebuild renumbers; rows
come in (deployed_at, that id, card_ref) order, so a rebuild changes no byte of an export. A
cell that a spreadsheet would run as a formula (starting with =, +, -, @, tab or carriage
return) is prefixed with a single quote. A deployment that delivered no card (a failed one,
say) is one row with the card columns empty. The `actor` column says who, as every page does
(activity.describe.actor_label): the person, and the API token that acted for them, "maya
via token deploy-bot"". The last columns say what went wrong and what put it
right: when the deployment was rolled back, whether it was a hotfix, the incidents it fixes
and those that name it as their cause.

On PostgreSQL the database writes the CSV itself: `COPY (SELECT ...) TO STDOUT WITH CSV`
(`copy_query()`), with the filters, the formatting of `cell()` and the formula
neutralisation done in SQL, streamed through psycopg's copy in blocks of about 256 KB;
Python only turns the row ends into CRLF. Elsewhere (SQLite) the ORM query
`deployment_rows()` is read through a cursor in chunks and formatted by `cell()`. Both give
the same bytes.
"""

import csv
import datetime
import itertools
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.core.exceptions import ValidationError
from django.core.handlers.asgi import ASGIRequest
from django.db import connection
from django.db.models import (
    Case,
    CharField,
    F,
    OuterRef,
    QuerySet,
    StringAgg,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Cast, Concat
from django.http import HttpRequest, StreamingHttpResponse

from activity.describe import VIA_PREFIX
from activity.events import EventKind
from boards.models import Card
from delivery.models import Deployment, Incident

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
    "rolled_back_at",
    "hotfix",
    "fixes_incidents",
    "caused_incidents",
]
# The export reads the projections (delivery.rollups) and the boards, never the log: every
# kind reaches it through the rollups, or not at all.
KINDS_READ: frozenset[EventKind] = frozenset()
KINDS_IGNORED: frozenset[EventKind] = frozenset(EventKind)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
CHUNK = 2000
LINES_PER_BLOCK = 500
COPY_BLOCK_BYTES = 256 * 1024

# cell() in SQL, for COPY: the formula starts neutralised; an empty string becomes NULL so that
# COPY writes an empty cell unquoted, as csv.writer does.
_TEXT = r"""NULLIF(CASE WHEN ascii({0}) IN (61, 43, 45, 64, 9, 13)
       THEN '''' || {0} ELSE {0} END, '')"""
# UTC, ISO 8601 with "Z", microseconds only when there are some (datetime.isoformat()); the
# format has one ".", so the replace can only drop zero microseconds.
_TIME = r"""replace(to_char({0} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'), '.000000', '')
       || 'Z'"""
# round() of a float8 rounds half to even, as Python's round() does.
_SECONDS = "round({0})::bigint"
# activity.describe.actor_label in SQL: the person, and the token that acted for them (its
# words bound as a parameter, from the same constant); `_actor()` below is the ORM's own.
_ACTOR = "CASE WHEN e.via = '' THEN d.actor_name ELSE d.actor_name || %(via_prefix)s || e.via END"
# The shape is for a million rows: each deployment's own cells (service, times, commit shas)
# are formatted once per deployment, not once per card; the deployments come in export order
# and each one's cards from its index in card_ref order, so the final ORDER BY is an
# incremental sort of small groups instead of a sort of every row; labels are aggregated once
# per card by a hash join rather than by a subquery per row. (When many cards carry labels
# the planner may prefer hash joins and one sort: still one aggregate per card.)
COPY_SELECT = f"""
SELECT d.event_id, d.service_key, d.service_name, d.environment, d.version, d.status, d.deployed,
       {_TEXT.format("dc.card_ref")},
       {_TEXT.format("c.title")},
       {_TEXT.format("labels.names")},
       {_TIME.format("dc.created_at")},
       {_TIME.format("dc.started_at")},
       {_SECONDS.format("dc.lead_time")},
       {_SECONDS.format("dc.cycle_time")},
       d.commit_shas, d.source, d.actor, d.rolled_back, d.hotfix, d.fixes, d.caused
  FROM (SELECT d.id, d.event_id, d.deployed_at,
               {_TEXT.format("b.key")} AS service_key,
               {_TEXT.format("b.name")} AS service_name,
               {_TEXT.format("d.environment")} AS environment,
               {_TEXT.format("d.version")} AS version,
               {_TEXT.format("d.status")} AS status,
               {_TIME.format("d.deployed_at")} AS deployed,
               {_TEXT.format("shas.joined")} AS commit_shas,
               {_TEXT.format("d.source")} AS source,
               {_TEXT.format(_ACTOR)} AS actor,
               {_TIME.format("d.rolled_back_at")} AS rolled_back,
               CASE WHEN d.hotfix THEN 'true' ELSE 'false' END AS hotfix,
               (SELECT string_agg(f.id, ' ' ORDER BY f.n)
                  FROM jsonb_array_elements_text(d.fixes) WITH ORDINALITY AS f(id, n)) AS fixes,
               (SELECT string_agg(i.event_id::text, ' ' ORDER BY i.event_id)
                  FROM activity_incident i WHERE i.caused_by = d.event_id) AS caused
          FROM activity_deployment d
          JOIN boards_board b ON b.id = d.board_id
          JOIN activity_event e ON e.id = d.event_id
          LEFT JOIN LATERAL (
                SELECT string_agg(s.sha, ' ' ORDER BY s.n) AS joined
                  FROM jsonb_array_elements_text(d.commit_shas) WITH ORDINALITY AS s(sha, n)
               ) shas ON true
         WHERE {{where}}
         ORDER BY d.deployed_at, d.event_id) d
  LEFT JOIN LATERAL (
        SELECT dc.card_id, dc.card_ref, dc.created_at, dc.started_at, dc.lead_time, dc.cycle_time
          FROM activity_deploymentcard dc
         WHERE dc.deployment_id = d.id
         ORDER BY dc.card_ref) dc ON true
  LEFT JOIN boards_card c ON c.id = dc.card_id
  LEFT JOIN (SELECT cl.card_id, string_agg(l.name, ' ' ORDER BY l.name) AS names
               FROM boards_card_labels cl JOIN boards_label l ON l.id = cl.label_id
              GROUP BY cl.card_id) labels ON labels.card_id = dc.card_id
 ORDER BY d.deployed_at, d.event_id, dc.card_ref"""


@dataclass(frozen=True)
class ExportFilter:
    board_ids: frozenset[int]
    since: datetime.datetime | None = None
    until: datetime.datetime | None = None
    release: str = ""

    def __post_init__(self) -> None:
        if "\x00" in self.release:  # no version holds one, and PostgreSQL refuses the query
            raise ValidationError({"release": "A release name cannot contain a NUL character."})


def deployment_rows(*, scope: ExportFilter) -> QuerySet:
    """The export's rows, oldest first, for the boards in scope only; each deployment named by
    its public id (its event's), which a rebuild of the projections keeps."""
    labels = Subquery(
        # django-stubs loses annotate() on an auto-created through model, so it refuses "names".
        Card.labels.through.objects.filter(card_id=OuterRef("cards__card_id"))  # type: ignore[misc]
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
    return rows.order_by("deployed_at", "event_id", "cards__card_ref").values_list(
        "event_id",
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
        _actor(),
        "rolled_back_at",
        "hotfix",
        "fixes",
        _caused(),
    )


def _caused() -> Subquery:
    """The `caused_incidents` cell: the ids of the incidents naming the deployment as cause."""
    return Subquery(
        Incident.objects.filter(caused_by=OuterRef("event_id"))
        .order_by()
        .values("caused_by")
        .annotate(
            ids=StringAgg(
                Cast("event_id", CharField()),
                delimiter=Value(" "),
                order_by="event_id" if connection.vendor == "postgresql" else None,
            )
        )
        .values("ids")[:1]
    )


def _actor() -> Case:
    """The `actor` cell: activity.describe.actor_label of the deployment's person and the
    token that recorded it (read from its event), "maya via token deploy-bot"."""
    return Case(
        When(event__via="", then=F("actor_name")),
        default=Concat(F("actor_name"), Value(VIA_PREFIX), F("event__via")),
        output_field=CharField(),
    )


def copy_query(*, scope: ExportFilter) -> tuple[str, dict]:
    """The export as a PostgreSQL COPY statement and its parameters, for the boards in scope."""
    where = ["d.board_id = ANY(%(boards)s)"]
    params: dict = {"boards": sorted(scope.board_ids), "via_prefix": VIA_PREFIX}
    if scope.since:
        where.append("d.deployed_at >= %(since)s")
        params["since"] = scope.since
    if scope.until:
        where.append("d.deployed_at < %(until)s")
        params["until"] = scope.until
    if scope.release:
        where.append("d.version = %(release)s")
        params["release"] = scope.release
    select = COPY_SELECT.format(where=" AND ".join(where))
    return f"COPY ({select}) TO STDOUT WITH (FORMAT csv)", params


def copy_blocks(*, scope: ExportFilter) -> Iterator[bytes]:
    """The header and the rows as CSV bytes in blocks, written by PostgreSQL's COPY.

    The query starts (and fails, if it fails) at the first next(); rows are read as the
    blocks are consumed, so memory stays flat whatever the size of the export."""
    statement, params = copy_query(scope=scope)
    connection.ensure_connection()
    with connection.connection.cursor() as cursor, cursor.copy(statement, params) as copy:
        yield _HEADER_LINE
        inside_quotes = False
        pending: list = []
        size = 0
        for data in copy:
            pending.append(data)
            size += len(data)
            if size >= COPY_BLOCK_BYTES:
                block, inside_quotes = _crlf(b"".join(pending), inside_quotes)
                yield block
                pending, size = [], 0
        if pending:
            yield _crlf(b"".join(pending), inside_quotes)[0]


def _crlf(data: bytes, inside_quotes: bool) -> tuple[bytes, bool]:
    """COPY ends rows with LF; RFC 4180 (and csv_lines) with CRLF. A LF inside a quoted cell
    is data and stays; quotes toggle in and out of a cell ("" inside one toggles twice).
    Returns the block and whether it ended inside a quoted cell."""
    if b'"' not in data:
        return (data if inside_quotes else data.replace(b"\n", b"\r\n")), inside_quotes
    parts = data.split(b'"')
    start = 1 if inside_quotes else 0
    for index in range(start, len(parts), 2):
        parts[index] = parts[index].replace(b"\n", b"\r\n")
    return b'"'.join(parts), inside_quotes != (len(parts) % 2 == 0)


def cell(value) -> str:
    """One CSV cell: ISO 8601 UTC times, whole seconds, and no formula a spreadsheet would run."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, float):
        return str(round(value))
    if isinstance(value, list):
        value = " ".join(map(str, value))
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


_HEADER_LINE = (",".join(HEADER) + "\r\n").encode()


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


async def _async_copy_blocks(blocks: Iterator[bytes]) -> AsyncIterator[bytes]:
    # As _async_blocks: each block is read on the thread that holds the connection.
    next_block = sync_to_async(lambda: next(blocks, b""), thread_sensitive=True)
    while block := await next_block():
        yield block


def deployments_csv_response(
    *, request: HttpRequest, scope: ExportFilter, filename: str
) -> StreamingHttpResponse:
    """A streamed download of the deployment history in scope, in constant memory under
    WSGI and ASGI alike."""
    asgi = isinstance(request, ASGIRequest)
    body: Iterator[bytes] | AsyncIterator[bytes] | Iterator[str] | AsyncIterator[str]
    if connection.vendor == "postgresql":
        blocks = copy_blocks(scope=scope)
        # Start the COPY now, so a failing query is an error response, not a cut-off file.
        first_blocks = [next(blocks), *itertools.islice(blocks, 1)]
        blocks = itertools.chain(first_blocks, blocks)
        body = _async_copy_blocks(blocks) if asgi else blocks
    else:
        rows = deployment_rows(scope=scope).iterator(chunk_size=CHUNK)
        # Read the first row now, so a failing query is an error response, not a cut-off file.
        first_rows = list(itertools.islice(rows, 1))
        lines = csv_lines(itertools.chain(first_rows, rows))
        body = _async_blocks(lines) if asgi else _blocks(lines)
    response = StreamingHttpResponse(body, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    return response
