"""Incremental, idempotent projections of the log: deployments, card flow, rework, daily rollups.

One definition. Each projection is defined once, in this module, and that definition serves
incremental runs and rebuilds alike, on PostgreSQL and on SQLite. It is applied to a scope:
the events of one batch, or every event (a rebuild, into emptied tables).

- What the events say (`_statements`, "gather"): which events make a deployment, a rework, a
  start or a commit moment, and which cards a deployment delivers. Set-based SQL over the
  scope's events.
- What follows for the cards the scope touched (every card, in a rebuild; "derive"): a card's
  flow (its earliest creation, start and commit), and each of its deliveries timed from the
  moments known at or before its deployment (lead, cycle and card lead time). Set-based SQL
  over those cards' projection rows, so a delivery rolled up earlier is timed again when a
  moment it should have counted arrives later.
- A day's numbers, for the (service, UTC day)s the scope touched (every day, in a rebuild):
  its counts and its deliveries' times read in one streamed query (`_days_statement`), and
  their medians and 85th percentiles from `metrics.Spread`, the percentile the metrics pages
  use (`_day_numbers`).

The SQL is written once for both databases. What each spells differently (a JSON value, an
array's elements, an ISO time from a payload, the seconds between two times, a UTC day, a
list of ids) comes from `_Sql`, which knows spellings and no rule. The event kinds, stages,
statuses and environments the rules name are bound parameters taken from their enums and
constants (`_PARAMS`); `KINDS_READ` and `KINDS_IGNORED` say which kinds the rules read.

`rollups_advance()` applies the events committed since its last run, in batches, each batch
in one transaction with the cursor that records it: a run killed half-way leaves the cursor
where it was, and the rerun applies the same events again to the same rows (every write here
is an insert that keeps the row it finds, keyed by the event, or a min, or a recomputation).
The result does not depend on the order events are applied in: a touched card's deliveries
and a touched day's numbers are recomputed whole from the projection rows.

Commit safety: on PostgreSQL an event is read only once every transaction with a lower id
has finished (its txid is below the snapshot's xmin), so an event whose transaction commits
late is neither skipped nor counted twice.

Rebuild: `rollups_rebuild()` empties the projections and applies the definition to every
event, in one transaction. On PostgreSQL the events are those visible to that transaction's
snapshot, whatever transaction ids they carry; the cursor's watermark becomes the snapshot's
xmin, so an event the snapshot could not see is read by the next incremental run, and one it
saw above the watermark is read again then, which changes nothing (applying is idempotent).
On SQLite, which serialises writers, the watermark is the newest event id the rebuild read.

Restores: transaction ids are a cluster's own. A logical dump restored into another cluster
(a fresh one counts from the start again) carries events, and a cursor watermark, from the
old counter: typically far above the new one, so the restored events would wait for ids the
new cluster may take years to reach, while the events written after the restore would lie
below the restored watermark and never be read. So the cursor records the cluster it counts
in (`system_identifier`), and a run that finds no cursor, or one of another cluster, first
rebuilds by visibility as above (no stored transaction id is trusted), which re-anchors the
watermark in this cluster's ids; from then on the incremental reader is the usual one. A
restore into the same cluster, or a physical replica of it, keeps its identifier and needs
nothing. (A reader that instead treated ids at or above pg_current_xact_id() as foreign
would lose that evidence once the new counter passes them, and could not tell an old event
from a new one below the restored watermark.)

Speed: a batch is a fixed number of statements whatever its size. Its event ids, then the
cards and the days it touches, are read once each and bound as lists of constants, which
the planner reaches by index; only rows whose values change are written. A rebuild runs the
same statements unrestricted, each reading the log (or the rows written before it) once,
with the secondary indexes built after the load; a day's delivery times come back as one
array per day, streamed, so memory stays flat. Runs are serialised by the cursor's row lock
(a rebuild locks the cursor table), so no two runs write the projections at once.
"""

import datetime
import functools
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from operator import itemgetter
from typing import Any, NamedTuple, cast

from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper

from activity.events import EventKind
from activity.models import Event
from boards.models import Stage
from delivery.metrics import Spread
from delivery.models import (
    CardFlow,
    CardMoment,
    Change,
    DailyRollup,
    Deployment,
    DeploymentCard,
    DeploymentCommit,
    DeploymentKind,
    Incident,
    ProjectionCursor,
    Rework,
)

CURSOR = "delivery"
BATCH = 5000
PRODUCTION = "production"  # the environment the daily numbers and DORA metrics count
DELIVERED_TO = (PRODUCTION, "staging")  # environments whose success delivers cards
SUCCESS, FAILED, ROLLED_BACK = "success", "failed", "rolled_back"
DAYS_PER_WRITE = 2000  # daily rollups written per statement (memory stays flat in a rebuild)

# The kinds the projections read, and those they ignore: together, every kind, once.
KINDS_READ: frozenset[EventKind] = frozenset(
    {
        EventKind.CARD_CREATED,
        EventKind.CARD_MOVED,
        EventKind.DEPLOYMENT_RECORDED,
        EventKind.DEPLOYMENT_ROLLED_BACK,
        EventKind.INCIDENT_OPENED,
        EventKind.INCIDENT_RESOLVED,
    }
)
KINDS_IGNORED: frozenset[EventKind] = frozenset(
    {
        EventKind.BOARD_CREATED,
        EventKind.BOARD_UPDATED,
        EventKind.COLUMN_CREATED,
        EventKind.COLUMN_UPDATED,
        EventKind.MEMBERSHIP_SET,
        EventKind.MEMBERSHIP_REMOVED,
        EventKind.LABEL_CREATED,
        EventKind.LABEL_UPDATED,
        EventKind.CARD_UPDATED,
        EventKind.CARD_ARCHIVED,
        EventKind.CARD_RESTORED,
        EventKind.CARD_LABELLED,
        EventKind.CARD_UNLABELLED,
        EventKind.CARD_ASSIGNED,
        EventKind.COMMENT_ADDED,
    }
)

Progress = Callable[[int], object]  # told how many events were applied (a tqdm bar's update)

# The projection tables, dependents first (the order a rebuild empties them in).
PROJECTIONS = (DeploymentCard, DeploymentCommit, Change, Incident, Deployment, Rework,
               CardMoment, CardFlow, DailyRollup)  # fmt: skip


def rollups_advance(*, batch: int = BATCH, progress: Progress | None = None) -> int:
    """Apply every event committed since the last run, exactly once; returns how many."""
    applied = 0
    if connection.vendor == "postgresql" and not _cursor_of_this_cluster():
        # No cursor yet, or one written by another cluster (a restored dump): its transaction
        # ids mean nothing here, so read the whole log once by visibility (see rebuild).
        applied = _rebuild_postgresql(progress=progress, unless_cursor_is_ours=True)
    while True:
        count, more = _batch_advance(batch=batch)
        applied += count
        if progress and count:
            progress(count)
        if not more:
            return applied


def rollups_rebuild(*, progress: Progress | None = None) -> int:
    """Forget every projection and build them again from the whole log, in one transaction;
    gives the rows the incremental runs give. Returns how many events it read."""
    if connection.vendor == "postgresql":
        return _rebuild_postgresql(progress=progress)
    return _rebuild_sqlite(progress=progress)


def events_pending() -> int:
    """How many committed events the projections have not applied yet (for progress bars)."""
    cursor = ProjectionCursor.objects.filter(name=CURSOR).first()
    if connection.vendor == "postgresql":
        if cursor is None or not _cursor_of_this_cluster():
            return Event.objects.count()  # the next run reads the whole log
        low, high = cursor.txid_watermark, _snapshot_xmin()
        return Event.objects.filter(txid__gte=low, txid__lt=high).count()
    return Event.objects.filter(pk__gt=cursor.event_watermark if cursor else 0).count()


def _snapshot_xmin() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
        return cursor.fetchone()[0]


def _cursor_of_this_cluster() -> bool:
    """Whether the cursor exists and was written by this PostgreSQL cluster."""
    with connection.cursor() as cursor:
        cursor.execute(_CURSOR_CLUSTER, [CURSOR])
        stored, current = cursor.fetchone()
    return stored == current


_CURSOR_CLUSTER = """
    SELECT (SELECT cluster FROM activity_projectioncursor WHERE name = %s),
           system_identifier::text
      FROM pg_control_system()"""


# --- reading the log in batches -----------------------------------------------------------------


@transaction.atomic
def _batch_advance(*, batch: int) -> tuple[int, bool]:
    """Apply one batch with the cursor that records it; returns how many events, and whether
    more are waiting."""
    cursor, _ = ProjectionCursor.objects.get_or_create(name=CURSOR)
    cursor = ProjectionCursor.objects.select_for_update().get(pk=cursor.pk)
    if connection.vendor == "postgresql":
        events, cursor.txid_watermark, more = _batch_next_by_txid(cursor.txid_watermark, batch)
    else:
        events = list(
            Event.objects.filter(pk__gt=cursor.event_watermark)
            .order_by("pk")
            .values_list("pk", "kind")[: batch + 1]
        )
        more = len(events) > batch
        events = events[:batch]
        if events:
            cursor.event_watermark = events[-1][0]
    read = [pk for pk, kind, *_ in events if kind in KINDS_READ]
    if read:
        _projections_apply(events=read)
    cursor.events_applied += len(events)
    cursor.save()
    return len(events), more


def _batch_next_by_txid(watermark: int, batch: int) -> tuple[list[tuple], int, bool]:
    """Events (id, kind, txid) of finished transactions from `watermark` on, whole transactions
    at a time; with the next watermark and whether more events are waiting below the horizon."""
    horizon = _snapshot_xmin()
    # The column allows NULL, which txid__gte leaves out: every event read has its txid.
    events = cast(
        list[tuple[int, str, int]],
        list(
            Event.objects.filter(txid__gte=watermark, txid__lt=horizon)
            .order_by("txid", "pk")
            .values_list("pk", "kind", "txid")[: batch + 1]
        ),
    )
    if len(events) <= batch:
        return events, max(horizon, watermark), False
    last = events[-1][2]
    whole = [event for event in events if event[2] != last]
    if whole:
        return whole, last, True
    # One transaction wrote more than a batch: take all of it.
    every = Event.objects.filter(txid=last).order_by("pk").values_list("pk", "kind", "txid")
    return list(every), last + 1, True


# --- the one definition -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sql:
    """How the definition is spelt for one database and one scope. Spellings only, no rule:
    each method gives the same value on both databases."""

    postgresql: bool
    whole: bool  # every event, card and day (a rebuild), or the scope's (an incremental batch)

    def events(self, column: str) -> str:
        """`column` is one of the scope's events (the bound parameter `events`)."""
        return "true" if self.whole else self._one_of(column, "events")

    def cards(self, column: str) -> str:
        """`column` is one of the cards the scope touched (the bound parameter `cards`)."""
        return "true" if self.whole else self._one_of(column, "cards")

    def _one_of(self, column: str, name: str) -> str:
        # A list of constants the planner sees, so that it reaches the rows by index.
        if self.postgresql:
            return f"{column} = ANY(%({name})s)"
        return f"{column} IN (SELECT value FROM json_each(%({name})s))"

    def ids(self, values: Sequence[int]) -> list[int] | str:
        """A list of ids as `events` and `cards` take it."""
        return list(values) if self.postgresql else json.dumps(list(values))

    def days(self, table: str, alias: str, moment: str) -> str:
        """`table` (as `alias`), limited to the rows whose `moment` falls on a day the scope
        touched in their service (the bound parameter `days`): by time range, so the
        (board, time) indexes serve it."""
        if self.whole:
            return f"{table} {alias}"
        return (
            f"{self.touched_days()} JOIN {table} {alias} ON {alias}.board_id = s.board_id"
            f" AND {alias}.{moment} >= {self.midnight('s.day')}"
            f" AND {alias}.{moment} < {self.midnight('s.day', later=1)}"
        )

    def touched_days(self) -> str:
        """The days the scope touched, as rows s(board_id, day)."""
        if self.postgresql:
            return "unnest(%(day_boards)s::bigint[], %(day_dates)s::date[]) AS s(board_id, day)"
        return (
            "(SELECT json_extract(value, '$[0]') AS board_id, json_extract(value, '$[1]') AS day"
            " FROM json_each(%(days)s)) s"
        )

    def days_bound(self, days: Sequence[tuple[int, datetime.date | str]]) -> dict:
        """The parameters `days` takes: (service, UTC day)s."""
        if self.postgresql:
            return {"day_boards": [b for b, _ in days], "day_dates": [d for _, d in days]}
        return {"days": json.dumps([[board, str(day)] for board, day in days])}

    def analyse(self, table: str) -> list[str]:
        """The statements that give the planner a temporary table's statistics (PostgreSQL
        has none for them otherwise, and would guess scans of whole projections)."""
        return [f"ANALYZE {table}"] if self.postgresql else []

    def upsert(self, clause: str) -> str:
        """What a write does with a row already there; a rebuild writes into empty tables."""
        return "" if self.whole else clause

    def json(self, document: str, *path: str) -> str:
        """The JSON value at `path` in `document` (NULL when missing)."""
        if self.postgresql:
            return document + "".join(f" -> '{key}'" for key in path)
        return f"json_extract({document}, '$.{'.'.join(path)}')"

    def text(self, document: str, *path: str) -> str:
        """The text (or number) at `path` in `document` (NULL when missing)."""
        if self.postgresql:
            return f"({self.json(document, *path[:-1])} ->> '{path[-1]}')"
        return self.json(document, *path)

    def lacks(self, document: str, key: str) -> str:
        """`document` has no key `key` (a key holding null counts as there)."""
        if self.postgresql:
            return f"{document} -> '{key}' IS NULL"
        return f"json_type({document}, '$.{key}') IS NULL"

    def differs(self, a: str, b: str) -> str:
        """a != b, a NULL equal to a NULL only (SQLite before 3.39 lacks IS DISTINCT FROM)."""
        return f"{a} IS DISTINCT FROM {b}" if self.postgresql else f"{a} IS NOT {b}"

    def elements(self, array: str, alias: str) -> str:
        """A JSON array's elements as rows `alias`(value, key), key ascending in array order;
        none when the array is missing."""
        if self.postgresql:
            return f"jsonb_array_elements({array}) WITH ORDINALITY AS {alias}(value, key)"
        return f"json_each({array}) AS {alias}"

    def values_of(self, array: str, key: str) -> str:
        """The JSON list of each element's `key`, in array order ([] for none)."""
        value, elements = self.json("x.value", key), self.elements(array, "x")
        if self.postgresql:
            return f"coalesce((SELECT jsonb_agg({value} ORDER BY x.key) FROM {elements}), '[]')"
        return f"(SELECT json_group_array({value}) FROM {elements})"

    def distinct_keys(self, array: str, key: str, alias: str) -> str:
        """The distinct `key`s (as text) of a JSON array's elements, as rows `alias`(value).
        Each array is deduplicated on its own (a few elements), not the rows of all of them."""
        value, elements = self.text("x.value", key), self.elements(array, "x")
        if self.postgresql:
            keys = f"SELECT jsonb_agg(DISTINCT {value}) FROM {elements}"
            return f"jsonb_array_elements_text(({keys})) AS {alias}(value)"
        keys = f"SELECT json_group_array(DISTINCT {value}) FROM {elements}"
        return f"json_each(({keys})) AS {alias}"

    def flag(self, text: str) -> str:
        """A JSON boolean (text, as `text` gives it) as a stored boolean, false when missing."""
        return (
            f"coalesce(CAST({text} AS boolean), false)"
            if self.postgresql
            else f"coalesce({text}, 0)"
        )

    def length(self, array: str) -> str:
        """How many elements a stored JSON array has."""
        if self.postgresql:
            return f"jsonb_array_length({array})"
        return f"json_array_length({array})"

    def integer(self, text: str) -> str:
        """A number (as `text` gives it, NULL for a JSON null) as a bigint."""
        return f"CAST({text} AS bigint)"

    def element_integer(self, alias: str) -> str:
        """The number an `elements` row `alias` holds, as a bigint."""
        if self.postgresql:
            return f"CAST({alias}.value #>> '{{}}' AS bigint)"
        return f"CAST({alias}.value AS bigint)"

    def listed(self, value: str) -> str:
        """The values of a group as one list (an array on PostgreSQL, read as a list); on
        SQLite, whose text of a double is not exact, the values one row each."""
        return f"array_agg({value})" if self.postgresql else value

    def listed_by(self, columns: str) -> str:
        """The grouping `listed` needs."""
        return f"GROUP BY {columns}" if self.postgresql else ""

    def timestamp(self, text: str) -> str:
        """An ISO 8601 time from a payload as a stored time (NULL when missing or empty)."""
        if self.postgresql:
            return f"CAST(nullif({text}, '') AS timestamptz)"
        return f"flux_timestamp({text})"  # see _sqlite_functions_register

    def seconds(self, later: str, earlier: str) -> str:
        """(later - earlier).total_seconds(): the exact difference, rounded once to a double."""
        if self.postgresql:
            return f"CAST(extract(epoch FROM {later}) - extract(epoch FROM {earlier}) AS float8)"
        # Django's own SQLite function: the difference in whole microseconds, exactly.
        return f"(django_timestamp_diff({later}, {earlier}) / 1000000.0)"

    def at_least_zero(self, seconds: str) -> str:
        """max(0.0, seconds), NULL for NULL (PostgreSQL's greatest() would give 0 for NULL,
        SQLite's max() NULL; neither is said here)."""
        if self.postgresql:
            return f"CASE WHEN {seconds} < 0 THEN 0 ELSE {seconds} END"
        return f"CASE WHEN {seconds} < 0 THEN 0.0 ELSE {seconds} END"

    def day(self, moment: str) -> str:
        """The UTC date of a stored time."""
        if self.postgresql:
            return f"CAST(({moment} AT TIME ZONE 'UTC') AS date)"
        return f"date({moment})"

    def midnight(self, day: str, *, later: int = 0) -> str:
        """The stored time at which UTC day `day` (plus `later` days) begins."""
        if self.postgresql:
            return f"(CAST({day} + {later} AS timestamp) AT TIME ZONE 'UTC')"
        return f"datetime({day}, '+{later} day')"


def _earliest(a: str, b: str) -> str:
    """The earlier of two times, ignoring a NULL (PostgreSQL's least; SQLite's min() would
    give NULL)."""
    return f"CASE WHEN {b} IS NULL OR {a} <= {b} THEN coalesce({a}, {b}) ELSE {b} END"


def _in(name: str, values: Sequence[str]) -> tuple[str, dict[str, str]]:
    """An IN list of bound parameters, and their values."""
    params = {f"{name}_{i}": value for i, value in enumerate(values)}
    return "(" + ", ".join(f"%({key})s" for key in params) + ")", params


_DELIVERED_TO, _DELIVERED_TO_PARAMS = _in("delivered_to", DELIVERED_TO)

# The names the rules use, bound as parameters: the event kinds, stages, kinds of deployment
# and moment, statuses and environments.
_PARAMS = {
    "created": EventKind.CARD_CREATED.value,
    "moved": EventKind.CARD_MOVED.value,
    "recorded": EventKind.DEPLOYMENT_RECORDED.value,
    "rollback": EventKind.DEPLOYMENT_ROLLED_BACK.value,
    "incident_opened": EventKind.INCIDENT_OPENED.value,
    "incident_resolved": EventKind.INCIDENT_RESOLVED.value,
    "rolled_back": ROLLED_BACK,
    "in_progress": Stage.IN_PROGRESS.value,
    "deployed": Stage.DEPLOYED.value,
    "ci": DeploymentKind.CI.value,
    "manual": DeploymentKind.MANUAL.value,
    "start": CardMoment.START,
    "commit": CardMoment.COMMIT,
    "success": SUCCESS,
    "failed": FAILED,
    "production": PRODUCTION,
    **_DELIVERED_TO_PARAMS,
}
_TIMES = ("card_ref", "created_at", "started_at", "first_commit_at", "lead_time", "cycle_time",
          "card_lead_time")  # fmt: skip
_FLOW = ("created_at", "started_at", "first_commit_at")
_CHANGE = ("committed_at", "deployment_id", "deployed_at", "lead_time")
_DAY = ("deployments", "failed_deployments", "successful_deployments", "failed_changes",
        "unplanned_deployments", "changes", "change_lead_p50", "change_lead_p85",
        "cards_deployed", "lead_time_p50", "lead_time_p85", "cycle_time_p50", "cycle_time_p85",
        "rework")  # fmt: skip


class _Statements(NamedTuple):
    """The definition's statements for one database and scope, in the order they run."""

    gather: tuple[str, ...]  # from the scope's events
    touched_cards: str  # (incremental) the cards whose flows and deliveries are recomputed
    derive: tuple[str, ...]  # from the touched cards' rows
    touched_days: str  # (incremental) the days recomputed


@functools.cache
def _statements(sql: _Sql) -> _Statements:
    """The statements that bring every projection but the daily rollups up to the log, for
    the scope; each reads the log (or the rows written before it) once."""
    # What the rules read of an event's payload.
    from_stage, to_stage = (
        sql.text("e.payload", "from", "stage"),
        sql.text("e.payload", "to", "stage"),
    )
    created_stage = sql.text("e.payload", "card", "stage")

    def deployment(key: str) -> str:
        return sql.text("e.payload", "deployment", key)

    # The scope's rollback of the deployment, and resolution of the incident, being updated.
    rolled_back = (
        f"FROM activity_event e WHERE e.kind = %(rollback)s AND {sql.events('e.id')}"
        f" AND {sql.integer(sql.text('e.payload', 'deployment_id'))}"
        " = activity_deployment.event_id"
    )
    resolving = (
        f"FROM activity_event e WHERE e.kind = %(incident_resolved)s AND {sql.events('e.id')}"
        f" AND {sql.integer(sql.text('e.payload', 'incident_id'))} = activity_incident.event_id"
    )
    rolled_back_at = sql.timestamp(sql.text("e.payload", "rolled_back_at"))
    # A delivery: a deployment that succeeded in an environment that delivers, as reported
    # (a rollback reported later leaves its deliveries: the cards did reach it).
    delivers = f"{deployment('status')} = %(success)s AND d.environment IN {_DELIVERED_TO}"
    # A change ships with a successful production deployment (not rolled back).
    ships = "(d.status = %(success)s AND d.environment = %(production)s)"
    restores_scope = f"""activity_incident.event_id IN (
            SELECT i.event_id FROM activity_incident i
             WHERE {sql.events("i.event_id")} OR {sql.events("i.resolve_event_id")}
            UNION
            SELECT {sql.element_integer("x")}
              FROM activity_deployment d, {sql.elements("d.fixes", "x")}
             WHERE {sql.events("d.event_id")} OR {sql.events("d.rollback_event_id")})"""
    change_upsert = (
        "ON CONFLICT (board_id, sha) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in _CHANGE)
        + " WHERE "
        + " OR ".join(sql.differs(f"ch.{c}", f"excluded.{c}") for c in _CHANGE)
    )
    # Where a delivery's lead time starts: the first commit, else the start, else creation.
    start_of_change = "coalesce(m.first_commit_at, m.started_at, f.created_at)"
    # A stored flow only ever moves earlier; a stored delivery takes its recomputed times.
    # Either is written only when that changes it.
    flow_upsert = (
        "ON CONFLICT (card_id) DO UPDATE SET "
        + ", ".join(f"{c} = {_earliest(f'f.{c}', f'excluded.{c}')}" for c in _FLOW)
        + " WHERE "
        + " OR ".join(sql.differs(_earliest(f"f.{c}", f"excluded.{c}"), f"f.{c}") for c in _FLOW)
    )
    times_upsert = (
        "ON CONFLICT (deployment_id, card_id) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in _TIMES)
        + " WHERE "
        + " OR ".join(sql.differs(f"dc.{c}", f"excluded.{c}") for c in _TIMES)
    )
    gather = [
        # Deployments: every CI-recorded one, and every move into Deployed from another
        # stage that no deployment made (a manual delivery).
        f"""
        INSERT INTO activity_deployment (event_id, board_id, kind, version, environment,
                                         status, deployed_at, url, commit_shas, source,
                                         actor_name, hotfix, fixes)
        SELECT * FROM (
            SELECT e.id, e.board_id, %(ci)s, {deployment("version")},
                   {deployment("environment")}, {deployment("status")},
                   coalesce({sql.timestamp(deployment("finished_at"))}, e.occurred_at),
                   coalesce({deployment("url")}, ''),
                   {sql.values_of(sql.json("e.payload", "deployment", "commits"), "sha")},
                   e.source, e.actor_name, {sql.flag(deployment("hotfix"))},
                   coalesce({sql.json("e.payload", "deployment", "fixes_incidents")}, '[]')
              FROM activity_event e
             WHERE e.kind = %(recorded)s AND {sql.events("e.id")}
            UNION ALL
            SELECT e.id, e.board_id, %(manual)s, '', %(production)s, %(success)s, e.occurred_at,
                   '', '[]', e.source, e.actor_name, {sql.flag("NULL")}, '[]'
              FROM activity_event e
             WHERE e.kind = %(moved)s AND {sql.events("e.id")}
               AND {to_stage} = %(deployed)s
               AND {sql.differs(from_stage, "%(deployed)s")}
               AND {sql.lacks("e.payload", "deployment_id")}
        ) deployments WHERE true  -- SQLite's parser wants a WHERE before ON CONFLICT
         ORDER BY 1
        {sql.upsert("ON CONFLICT (event_id) DO NOTHING")}""",
        # Rework: a card leaving Deployed for an earlier stage.
        f"""
        INSERT INTO activity_rework (event_id, board_id, card_id, occurred_at)
        SELECT e.id, e.board_id, e.card_id, e.occurred_at
          FROM activity_event e
         WHERE e.kind = %(moved)s AND {sql.events("e.id")}
           AND {from_stage} = %(deployed)s
           AND {sql.differs(to_stage, "%(deployed)s")}
         ORDER BY e.id
        {sql.upsert("ON CONFLICT (event_id) DO NOTHING")}""",
        # Rollbacks: a deployment rolled back is one no longer (its status says so).
        f"""
        UPDATE activity_deployment
           SET status = %(rolled_back)s,
               rollback_event_id = (SELECT min(e.id) {rolled_back}),
               rolled_back_at = (SELECT min({rolled_back_at}) {rolled_back})
         WHERE rollback_event_id IS NULL
           AND event_id IN (SELECT {sql.integer(sql.text("e.payload", "deployment_id"))}
                              FROM activity_event e
                             WHERE e.kind = %(rollback)s AND {sql.events("e.id")})""",
        # Incidents, as they open and as they are resolved.
        f"""
        INSERT INTO activity_incident (event_id, board_id, title, started_at, caused_by)
        SELECT e.id, e.board_id, {sql.text("e.payload", "title")},
               {sql.timestamp(sql.text("e.payload", "started_at"))},
               {sql.integer(sql.text("e.payload", "caused_by"))}
          FROM activity_event e
         WHERE e.kind = %(incident_opened)s AND {sql.events("e.id")}
         ORDER BY e.id
        {sql.upsert("ON CONFLICT (event_id) DO NOTHING")}""",
        f"""
        UPDATE activity_incident
           SET resolve_event_id = (SELECT min(e.id) {resolving}),
               resolved_at = (SELECT min({sql.timestamp(sql.text("e.payload", "resolved_at"))})
                              {resolving}),
               fixed_by = (SELECT min({sql.integer(sql.text("e.payload", "fixed_by"))})
                           {resolving})
         WHERE resolve_event_id IS NULL
           AND event_id IN (SELECT {sql.integer(sql.text("e.payload", "incident_id"))}
                              FROM activity_event e
                             WHERE e.kind = %(incident_resolved)s AND {sql.events("e.id")})""",
        # The commits each of the scope's CI deployments lists, once per sha, with the
        # earliest time it gives.
        f"""
        INSERT INTO activity_deploymentcommit (deployment_id, board_id, sha, committed_at)
        SELECT d.id, d.board_id, {sql.text("x.value", "sha")},
               min({sql.timestamp(sql.text("x.value", "timestamp"))})
          FROM activity_deployment d
          JOIN activity_event e ON e.id = d.event_id,
               {sql.elements(sql.json("e.payload", "deployment", "commits"), "x")}
         WHERE d.kind = %(ci)s AND {sql.events("d.event_id")}
         GROUP BY 1, 2, 3
         ORDER BY 1, 3
        {sql.upsert("ON CONFLICT (deployment_id, sha) DO NOTHING")}""",
        # The changes whose first shipping may have changed: those the scope's deployments
        # list, or the deployments it rolled back; with the deployment that shipped each so far.
        f"""
        CREATE TEMPORARY TABLE rollups_changed AS
        SELECT t.board_id, t.sha, ch.deployment_id AS was
          FROM (SELECT DISTINCT c.board_id, c.sha
                  FROM activity_deployment d
                  JOIN activity_deploymentcommit c ON c.deployment_id = d.id
                 WHERE {sql.events("d.event_id")} OR {sql.events("d.rollback_event_id")}) t
          LEFT JOIN activity_change ch ON ch.board_id = t.board_id AND ch.sha = t.sha""",
        *sql.analyse("rollups_changed"),
        # The cards each of the scope's deployments names (once each), whether it delivers
        # them, and its earliest commit; a manual delivery names the moved card.
        f"""
        CREATE TEMPORARY TABLE rollups_named AS
        WITH recorded AS MATERIALIZED (
            SELECT d.id AS deployment_id, d.event_id, d.deployed_at,
                   {delivers} AS delivers,
                   (SELECT min({sql.timestamp(sql.text("x.value", "timestamp"))})
                      FROM {sql.elements(sql.json("e.payload", "deployment", "commits"), "x")})
                       AS first_commit,
                   {sql.json("e.payload", "deployment", "cards")} AS cards
              FROM activity_deployment d
              JOIN activity_event e ON e.id = d.event_id
             WHERE d.kind = %(ci)s AND {sql.events("d.event_id")})
        SELECT r.deployment_id, r.event_id, r.deployed_at, r.delivers,
               r.first_commit, CAST(n.value AS bigint) AS card_id
          FROM recorded r, {sql.distinct_keys("r.cards", "id", "n")}
        UNION ALL
        SELECT d.id, d.event_id, d.deployed_at, d.environment IN {_DELIVERED_TO}, NULL, e.card_id
          FROM activity_deployment d
          JOIN activity_event e ON e.id = d.event_id
         WHERE d.kind = %(manual)s AND {sql.events("d.event_id")}""",
        *sql.analyse("rollups_named"),
        # Card moments: entries into In Progress (a card created there, or moved there), and
        # the earliest commit of a deployment naming the card, known from that deployment's
        # own time on (when it finished, not when it was reported: a deployment's commits
        # count for its own cards however late CI reports it).
        f"""
        INSERT INTO activity_cardmoment (event_id, card_id, kind, at, known_at)
        SELECT * FROM (
            SELECT e.id AS event_id, e.card_id, %(start)s, e.occurred_at, e.occurred_at
              FROM activity_event e
             WHERE ((e.kind = %(created)s AND {created_stage} = %(in_progress)s)
                 OR (e.kind = %(moved)s AND {to_stage} = %(in_progress)s))
               AND {sql.events("e.id")}
            UNION ALL
            SELECT event_id, card_id, %(commit)s, first_commit, deployed_at
              FROM rollups_named
             WHERE first_commit IS NOT NULL
        ) moments WHERE true  -- SQLite's parser wants a WHERE before ON CONFLICT
         ORDER BY 2, 1
        {sql.upsert("ON CONFLICT DO NOTHING")}""",
    ]
    # The cards the scope touched: their flows and deliveries are recomputed.
    touched_cards = f"""
        SELECT e.card_id FROM activity_event e
         WHERE e.kind IN (%(created)s, %(moved)s) AND {sql.events("e.id")}
        UNION
        SELECT card_id FROM rollups_named"""
    derive = [
        # Card flows: a card's earliest creation (its row's, unless its card.created event
        # says earlier), start and commit; every card an event touched or a deployment
        # delivered has one.
        f"""
        INSERT INTO activity_cardflow AS f (card_id, board_id, created_at, started_at,
                                            first_commit_at)
        SELECT c.id, c.board_id, {_earliest("c.created_at", "t.created_at")}, t.started_at,
               t.first_commit_at
          FROM (SELECT card_id, min(created_at) AS created_at, min(started_at) AS started_at,
                       min(first_commit_at) AS first_commit_at
                  FROM (SELECT e.card_id,
                               CASE WHEN e.kind = %(created)s THEN e.occurred_at END
                                   AS created_at,
                               NULL AS started_at, NULL AS first_commit_at
                          FROM activity_event e
                         WHERE e.kind IN (%(created)s, %(moved)s) AND {sql.events("e.id")}
                        UNION ALL
                        SELECT m.card_id, NULL, CASE WHEN m.kind = %(start)s THEN m.at END,
                               CASE WHEN m.kind = %(commit)s THEN m.at END
                          FROM activity_cardmoment m
                         WHERE {sql.events("m.event_id")}
                        UNION ALL
                        SELECT card_id, NULL, NULL, NULL FROM rollups_named WHERE delivers
                       ) notes
                 GROUP BY card_id) t
          JOIN boards_card c ON c.id = t.card_id
         WHERE {sql.cards("c.id")}  -- implied, and lets the planner use the index
         ORDER BY c.id
        {sql.upsert(flow_upsert)}""",
        # Deliveries, every one of the touched cards', each timed from the moments known at
        # or before its deployment: per card, its moments (at the time they became known)
        # and deliveries in time order, a moment before a delivery at the same instant, each
        # delivery taking the running minimum. Lead time runs from the first commit (else
        # the start, else the creation), card lead time from the creation, neither below
        # zero; cycle time from the start (none without one).
        f"""
        INSERT INTO activity_deploymentcard AS dc (deployment_id, card_id, card_ref, created_at,
                                                   started_at, first_commit_at, deployed_at,
                                                   lead_time, cycle_time, card_lead_time)
        SELECT m.deployment_id, m.card_id, b.key || '-' || c.number, f.created_at,
               m.started_at, m.first_commit_at, m.deployed_at,
               {sql.at_least_zero(sql.seconds("m.deployed_at", start_of_change))},
               {sql.seconds("m.deployed_at", "m.started_at")},
               {sql.at_least_zero(sql.seconds("m.deployed_at", "f.created_at"))}
          FROM (SELECT deployment_id, card_id, moment AS deployed_at,
                       min(start_at) OVER running AS started_at,
                       min(commit_at) OVER running AS first_commit_at
                  FROM (SELECT NULL AS deployment_id, card_id, known_at AS moment, 0 AS ord,
                               CASE WHEN kind = %(start)s THEN at END AS start_at,
                               CASE WHEN kind = %(commit)s THEN at END AS commit_at
                          FROM activity_cardmoment
                         WHERE {sql.cards("card_id")}
                        UNION ALL
                        SELECT deployment_id, card_id, deployed_at, 1, NULL, NULL
                          FROM rollups_named
                         WHERE delivers
                        UNION ALL
                        SELECT o.deployment_id, o.card_id, o.deployed_at, 1, NULL, NULL
                          FROM activity_deploymentcard o
                         WHERE {sql.cards("o.card_id")}
                           AND NOT EXISTS (SELECT 1 FROM rollups_named n
                                            WHERE n.deployment_id = o.deployment_id
                                              AND n.card_id = o.card_id AND n.delivers)
                       ) timeline
                WINDOW running AS (PARTITION BY card_id ORDER BY moment, ord
                                   ROWS UNBOUNDED PRECEDING)) m
          JOIN activity_cardflow f ON f.card_id = m.card_id
               AND {sql.cards("f.card_id")}  -- implied, and lets the planner use the index
          JOIN boards_card c ON c.id = m.card_id
          JOIN boards_board b ON b.id = c.board_id
         WHERE m.deployment_id IS NOT NULL
         ORDER BY m.deployment_id, m.card_id
        {sql.upsert(times_upsert)}""",
        # Changes: each changed sha's earliest time, and the deployment that first shipped it
        # (by finish time, then public id); its lead time, not below zero.
        f"""
        INSERT INTO activity_change AS ch (board_id, sha, committed_at, deployment_id,
                                           deployed_at, lead_time)
        SELECT board_id, sha, committed_at,
               CASE WHEN ships THEN deployment_id END, CASE WHEN ships THEN deployed_at END,
               CASE WHEN ships
                    THEN {sql.at_least_zero(sql.seconds("deployed_at", "committed_at"))} END
          FROM (SELECT c.board_id, c.sha, d.id AS deployment_id, d.deployed_at,
                       {ships} AS ships,
                       min(c.committed_at) OVER (PARTITION BY c.board_id, c.sha)
                           AS committed_at,
                       row_number() OVER (PARTITION BY c.board_id, c.sha
                                          ORDER BY CASE WHEN {ships} THEN 0 ELSE 1 END,
                                                   d.deployed_at, d.event_id) AS n
                  FROM rollups_changed t
                  JOIN activity_deploymentcommit c ON c.board_id = t.board_id AND c.sha = t.sha
                  JOIN activity_deployment d ON d.id = c.deployment_id) f
         WHERE n = 1
         ORDER BY board_id, sha
        {sql.upsert(change_upsert)}""",
        # Incidents' restores: the first successful production deployment that fixes one
        # (at or after its start), else its resolution; for the incidents the scope opened,
        # resolved, or fixed (or rolled a fix of back).
        f"""
        UPDATE activity_incident
           SET restored_at = coalesce(
                   (SELECT min(d.deployed_at)
                      FROM activity_deployment d, {sql.elements("d.fixes", "x")}
                     WHERE d.board_id = activity_incident.board_id
                       AND {sql.element_integer("x")} = activity_incident.event_id
                       AND {ships} AND d.deployed_at >= activity_incident.started_at),
                   resolved_at)
         WHERE {restores_scope}""",
    ]
    # The (service, UTC day)s the scope touched: its deployments' (those it recorded or rolled
    # back, or an incident it opened names as the cause) and rework's, those of every delivery
    # of a touched card (whose times may have changed), and those a changed sha was and is
    # shipped on.
    touched_days = f"""
        SELECT d.board_id, {sql.day("d.deployed_at")}
          FROM activity_deployment d
         WHERE {sql.events("d.event_id")} OR {sql.events("d.rollback_event_id")}
        UNION
        SELECT d.board_id, {sql.day("d.deployed_at")}
          FROM activity_incident i
          JOIN activity_deployment d ON d.event_id = i.caused_by
         WHERE {sql.events("i.event_id")}
        UNION
        SELECT d.board_id, {sql.day("d.deployed_at")}
          FROM rollups_changed t
          JOIN activity_change ch ON ch.board_id = t.board_id AND ch.sha = t.sha
          JOIN activity_deployment d ON d.id = ch.deployment_id
        UNION
        SELECT d.board_id, {sql.day("d.deployed_at")}
          FROM rollups_changed t
          JOIN activity_deployment d ON d.id = t.was
        UNION
        SELECT r.board_id, {sql.day("r.occurred_at")}
          FROM activity_rework r WHERE {sql.events("r.event_id")}
        UNION
        SELECT d.board_id, {sql.day("d.deployed_at")}
          FROM activity_deploymentcard o
          JOIN activity_deployment d ON d.id = o.deployment_id
         WHERE {sql.cards("o.card_id")}"""
    return _Statements(tuple(gather), touched_cards, tuple(derive), touched_days)


def _projections_apply(*, events: Sequence[int] | None) -> None:
    """Bring every projection row the given events bear on (None: every event, into empty
    tables) to what the log says; applying the same events again changes nothing."""
    sql = _Sql(postgresql=connection.vendor == "postgresql", whole=events is None)
    statements = _statements(sql)
    params: dict[str, Any] = dict(_PARAMS)
    if events is not None:
        params["events"] = sql.ids(events)
    with connection.cursor() as cursor:
        if not sql.postgresql:
            _sqlite_functions_register()
        for statement in statements.gather:
            cursor.execute(statement, params)
        if not sql.whole:
            cursor.execute(statements.touched_cards, params)
            params["cards"] = sql.ids([card for (card,) in cursor.fetchall()])
        for statement in statements.derive:
            cursor.execute(statement, params)
        if not sql.whole:
            cursor.execute(statements.touched_days, params)
            params.update(sql.days_bound(cursor.fetchall()))
        _days_refresh(sql=sql, params=params)
        cursor.execute("DROP TABLE rollups_named")
        cursor.execute("DROP TABLE rollups_changed")


def _sqlite_functions_register() -> None:
    """Teach this SQLite connection `flux_timestamp`, _Sql.timestamp's spelling there."""
    connection.ensure_connection()
    connection.connection.create_function(
        "flux_timestamp", 1, _timestamp_stored, deterministic=True
    )


def _timestamp_stored(text: str | None) -> str | None:
    """An ISO 8601 time from a payload as Django stores times on SQLite: UTC, without an
    offset, microseconds kept (PostgreSQL's timestamptz cast, in the UTC session Django
    opens, reads it the same way)."""
    if not text:
        return None
    moment = datetime.datetime.fromisoformat(text)
    if moment.tzinfo is not None:
        moment = moment.astimezone(datetime.UTC).replace(tzinfo=None)
    return str(moment)


def _days_refresh(*, sql: _Sql, params: dict[str, Any]) -> None:
    """Recompute each day the scope touched (every day, in a rebuild) from its projection
    rows, and write the rows whose numbers change."""
    stored: dict[tuple[int, datetime.date], tuple] = {}
    if not sql.whole:
        with connection.cursor() as cursor:
            cursor.execute(_stored_days_statement(sql), params)
            stored = {(board, _date(day)): tuple(rest) for board, day, *rest in cursor}
    changed: list[tuple] = []
    # Streamed (a server-side cursor on PostgreSQL), one day at a time.
    with connection.chunked_cursor() as cursor:
        cursor.execute(_days_statement(sql), params)
        for (board_id, day), facts in groupby(_rows_streamed(cursor), key=itemgetter(0, 1)):
            key = (board_id, _date(day))
            numbers = _day_numbers(facts)
            if stored.get(key) != numbers:
                changed.append((*key, *numbers))
            if len(changed) >= DAYS_PER_WRITE:
                _days_write(changed)
                changed = []
    _days_write(changed)


def _day_numbers(facts: Iterator[tuple]) -> tuple:
    """One service's day (in _DAY order): its production deployments, how many failed,
    succeeded, were failed changes and were unplanned; the changes first shipped and the
    cards delivered, with the median and 85th percentile of their lead (and cycle) times;
    and its rework."""
    counts = [0] * 6
    leads: list[float] = []
    cycles: list[float] = []
    change_leads: list[float] = []
    for _, _, *numbers, lead_times, cycle_times, change_times in facts:
        counts = [total + number for total, number in zip(counts, numbers, strict=True)]
        leads += _listed(lead_times)
        cycles += [cycle for cycle in _listed(cycle_times) if cycle is not None]
        change_leads += _listed(change_times)
    deployments, failed, successful, failed_changes, unplanned, rework = counts
    lead, cycle, change = Spread.of(leads), Spread.of(cycles), Spread.of(change_leads)
    return (deployments, failed, successful, failed_changes, unplanned, change.count,
            change.p50, change.p85, lead.count, lead.p50, lead.p85, cycle.p50, cycle.p85,
            rework)  # fmt: skip


@functools.cache
def _days_statement(sql: _Sql) -> str:
    """Each touched day's facts, ordered by service and day: the times of its production
    deliveries and of the changes first shipped, its production deployments counted (how
    many failed, succeeded, were failed changes, were unplanned), and its rework."""
    caused_incident = "EXISTS (SELECT 1 FROM activity_incident i WHERE i.caused_by = d.event_id)"
    failed_change = f"d.status IN (%(failed)s, %(rolled_back)s) OR {caused_incident}"
    unplanned = f"d.hotfix OR {sql.length('d.fixes')} > 0"
    return f"""
    SELECT board_id, day, deployments, failed, successful, failed_changes, unplanned, rework,
           lead_times, cycle_times, change_times FROM (
        SELECT d.board_id, {sql.day("d.deployed_at")} AS day, 0 AS deployments, 0 AS failed,
               0 AS successful, 0 AS failed_changes, 0 AS unplanned, 0 AS rework,
               {sql.listed("o.lead_time")} AS lead_times,
               {sql.listed("o.cycle_time")} AS cycle_times, NULL AS change_times
          FROM {sql.days("activity_deployment", "d", "deployed_at")}
          JOIN activity_deploymentcard o ON o.deployment_id = d.id
         WHERE d.environment = %(production)s
         {sql.listed_by("1, 2")}
        UNION ALL
        SELECT ch.board_id, {sql.day("ch.deployed_at")}, 0, 0, 0, 0, 0, 0, NULL, NULL,
               {sql.listed("ch.lead_time")}
          FROM {sql.days("activity_change", "ch", "deployed_at")}
         WHERE ch.lead_time IS NOT NULL
         {sql.listed_by("1, 2")}
        UNION ALL
        SELECT d.board_id, {sql.day("d.deployed_at")}, count(*),
               sum(CASE WHEN d.status = %(failed)s THEN 1 ELSE 0 END),
               sum(CASE WHEN d.status = %(success)s THEN 1 ELSE 0 END),
               sum(CASE WHEN {failed_change} THEN 1 ELSE 0 END),
               sum(CASE WHEN {unplanned} THEN 1 ELSE 0 END), 0, NULL, NULL, NULL
          FROM {sql.days("activity_deployment", "d", "deployed_at")}
         WHERE d.environment = %(production)s
         GROUP BY 1, 2
        UNION ALL
        SELECT r.board_id, {sql.day("r.occurred_at")}, 0, 0, 0, 0, 0, count(*), NULL, NULL,
               NULL
          FROM {sql.days("activity_rework", "r", "occurred_at")}
         GROUP BY 1, 2
    ) facts
     ORDER BY board_id, day"""


@functools.cache
def _stored_days_statement(sql: _Sql) -> str:
    """The stored numbers of the days the scope touched (to write only those that change)."""
    return f"""
    SELECT r.board_id, r.day, {", ".join(f"r.{name}" for name in _DAY)}
      FROM {sql.touched_days()}
      JOIN activity_dailyrollup r ON r.board_id = s.board_id AND r.day = s.day"""


_DAYS_WRITE = f"""
    INSERT INTO activity_dailyrollup (board_id, day, {", ".join(_DAY)})
    VALUES ({", ".join(["%s"] * (2 + len(_DAY)))})
    ON CONFLICT (board_id, day) DO UPDATE SET
           {", ".join(f"{name} = excluded.{name}" for name in _DAY)}"""


def _rows_streamed(cursor: CursorWrapper) -> Iterator[tuple]:
    """The cursor's rows, fetched a chunk at a time."""
    while rows := cursor.fetchmany(DAYS_PER_WRITE):
        yield from rows


def _listed(values: list | float | None) -> list:
    """A `_Sql.listed` value as a list."""
    if isinstance(values, list):
        return values
    return [] if values is None else [values]


def _date(value: datetime.date | str) -> datetime.date:
    """A date as read by raw SQL (SQLite gives its text)."""
    return value if isinstance(value, datetime.date) else datetime.date.fromisoformat(value)


def _days_write(rows: list[tuple]) -> None:
    """Store each (board, day, *numbers). A day's numbers only grow (projection rows are never
    deleted but by a rebuild), so a touched day is written, never emptied."""
    if rows:
        adapt = connection.ops.adapt_datefield_value
        with connection.cursor() as cursor:
            cursor.executemany(
                _DAYS_WRITE, [(board, adapt(day), *rest) for board, day, *rest in rows]
            )


# --- rebuilding ---------------------------------------------------------------------------------


def _rebuild_sqlite(*, progress: Progress | None = None) -> int:
    """Empty the projections and apply the definition to every event, in one transaction;
    SQLite serialises writers, so the newest event read is the watermark."""
    with transaction.atomic(), connection.cursor() as cursor:
        for model in PROJECTIONS:
            cursor.execute(f"DELETE FROM {connection.ops.quote_name(model._meta.db_table)}")
        cursor.execute("SELECT coalesce(max(id), 0), count(*) FROM activity_event")
        newest, events = cursor.fetchone()
        _projections_apply(events=None)
        ProjectionCursor.objects.update_or_create(
            name=CURSOR,
            defaults={"txid_watermark": 0, "event_watermark": newest, "events_applied": events},
        )
    if progress and events:
        progress(events)
    return events


def _rebuild_postgresql(
    *, progress: Progress | None = None, unless_cursor_is_ours: bool = False
) -> int:
    """Rebuild every projection from the log in one transaction, set-wise in SQL.

    The events are those visible to the transaction's snapshot, whatever their stored
    transaction ids (a restored dump's come from another cluster); the cursor's watermark
    becomes that snapshot's xmin in this cluster, so every event the snapshot could not see
    (its transaction was still running) has a transaction id at or above it and is read by
    the next incremental run. Events the snapshot saw above the watermark are read again
    then, which changes nothing: applying an event is idempotent.
    """
    outermost = not connection.in_atomic_block
    with transaction.atomic(), connection.cursor() as cursor:
        if outermost:
            # One snapshot for every statement; taken after the lock below (LOCK takes none).
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        # Waits for a run in progress and keeps others out (they lock the cursor's row).
        cursor.execute("LOCK TABLE activity_projectioncursor IN EXCLUSIVE MODE")
        cursor.execute(_REBUILD_START, [CURSOR])
        watermark, cluster, stored_cluster = cursor.fetchone()
        if unless_cursor_is_ours and stored_cluster == cluster:
            return 0  # another run has just done it
        cursor.execute("SET LOCAL work_mem = '64MB'")
        cursor.execute("SET LOCAL maintenance_work_mem = '256MB'")
        # Foreign keys checked as each statement ends: an index cannot be built on a table
        # with checks still pending.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        tables = [model._meta.db_table for model in PROJECTIONS]
        cursor.execute("TRUNCATE " + ", ".join(map(connection.ops.quote_name, tables)))
        # An index built once over the loaded rows costs a fraction of a million insertions
        # into it: the secondary indexes (no constraint uses them) are dropped and then
        # created again, as they were, in this transaction.
        cursor.execute(_SECONDARY_INDEXES, [tables])
        indexes = cursor.fetchall()
        for name, _ in indexes:
            cursor.execute(f"DROP INDEX {name}")
        _projections_apply(events=None)
        for _, definition in indexes:
            cursor.execute(definition)
        cursor.execute("ANALYZE " + ", ".join(map(connection.ops.quote_name, tables)))
        cursor.execute("SELECT count(*) FROM activity_event")
        events = cursor.fetchone()[0]
        ProjectionCursor.objects.update_or_create(
            name=CURSOR,
            defaults={
                "txid_watermark": watermark,
                "event_watermark": 0,
                "events_applied": events,
                "cluster": cluster,
            },
        )
    if progress and events:
        progress(events)
    return events


_REBUILD_START = """
    SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint, s.system_identifier::text,
           (SELECT cluster FROM activity_projectioncursor WHERE name = %s)
      FROM pg_control_system() s"""


_SECONDARY_INDEXES = """
    SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
      FROM pg_index i
     WHERE i.indrelid = ANY(%s::regclass[])
       AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conindid = i.indexrelid)
     ORDER BY 1"""
