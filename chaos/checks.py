"""What the chaos run asserts, read from the database after the traffic has stopped."""

import contextlib
import io
import itertools
import time
from collections import Counter

from django.core.management import CommandError, call_command
from django.db import close_old_connections, connection
from django.db.models.fields.json import KT

from activity.events import EventKind
from bench.server import Client
from chaos.traffic import BoardInfo, Ledger, columns_in


def fresh_connection() -> None:
    """Drop a connection a database restart may have broken; the next query opens another."""
    close_old_connections()
    with contextlib.suppress(Exception):  # already broken: nothing to close
        connection.close()


def ledger_check(ledger: Ledger, board_ids: list[int]) -> dict:
    """Every change a client was told succeeded is in the log exactly once; no card version
    was written twice; changes applied but never acknowledged (the answer was lost) are
    counted apart."""
    from activity.models import Event

    events = Event.objects.filter(board_id__in=board_ids)
    moved_as_text = Counter(
        events.filter(kind=EventKind.CARD_MOVED)
        .annotate(v=KT("payload__version"))
        .values_list("card_id", "v")
    )
    moved = Counter({(card, int(v)): n for (card, v), n in moved_as_text.items()})
    titles = Counter(
        events.filter(kind=EventKind.CARD_UPDATED)
        .annotate(t=KT("payload__changes__title__new"))
        .values_list("card_id", "t")
    )
    deployed = Counter(
        events.filter(kind=EventKind.DEPLOYMENT_RECORDED)
        .annotate(v=KT("payload__deployment__version"))
        .values_list("v", flat=True)
    )
    deployment_ids = dict(
        events.filter(kind=EventKind.DEPLOYMENT_RECORDED)
        .annotate(v=KT("payload__deployment__version"))
        .values_list("pk", "v")
    )
    versions = Counter(
        events.exclude(card=None)
        .exclude(kind__in=[EventKind.CARD_CREATED, EventKind.COMMENT_ADDED])
        .annotate(v=KT("payload__version"))
        .values_list("card_id", "v")
    )
    with ledger.lock:
        moves, edits, deployments = list(ledger.moves), list(ledger.edits), list(ledger.deployments)
    lost = sum(1 for item in moves if moved[item] == 0)
    lost += sum(1 for item in edits if titles[item] == 0)
    lost += sum(1 for pk, version in deployments if deployment_ids.get(pk) != version)
    doubled = sum(1 for item in moves if moved[item] > 1)
    doubled += sum(1 for item in edits if titles[item] > 1)
    doubled += sum(1 for _, version in deployments if deployed[version] > 1)
    told = set(moves)
    by_deployment_as_text = set(
        events.filter(kind=EventKind.CARD_MOVED, payload__has_key="deployment_id")
        .annotate(v=KT("payload__version"))
        .values_list("card_id", "v")
    )
    by_deployment = {(card, int(v)) for card, v in by_deployment_as_text}
    unacknowledged = sum(1 for item in moved if item not in told and item not in by_deployment)
    return {
        "accepted": len(moves) + len(edits) + len(deployments),
        "lost": lost,
        "duplicated": doubled,
        "versions_written_twice": sum(1 for n in versions.values() if n > 1),
        "applied_unacknowledged": unacknowledged,
    }


def board_integrity(boards: list[BoardInfo], owner: tuple[str, str], port: int) -> dict:
    """Every open card is in exactly one place: ranks strictly ordered within each column in
    the tables, and each card shown once on the board page."""
    from boards.models import Card

    misordered = misplaced = 0
    client = Client(port)
    client.login(*owner)
    for board in boards:
        rows = list(
            Card.objects.filter(board__key=board.key, archived=False)
            .order_by("column_id", "rank")
            .values_list("pk", "column_id", "rank", "column__board__key")
        )
        for (_, column_a, rank_a, _), (_, column_b, rank_b, _) in itertools.pairwise(rows):
            if column_a == column_b and not rank_a < rank_b:
                misordered += 1
        misplaced += sum(1 for row in rows if row[3] != board.key)
        status, _, page = client.request("GET", f"/b/{board.key}/")
        shown = Counter(
            card for cards in columns_in(page.decode()).values() for card, _, _ in cards
        )
        expected = {row[0]: row[1] for row in rows}
        misplaced += sum(1 for n in shown.values() if n != 1)
        misplaced += len(set(expected) ^ set(shown)) + (status != 200)
        for column, cards in columns_in(page.decode()).items():
            misplaced += sum(1 for card, _, _ in cards if expected.get(card) != column)
    return {"misordered": misordered, "misplaced": misplaced}


def verify_activity(keys: list[str]) -> tuple[bool, str]:
    """`manage.py verify_activity --board KEY` for each board: chain, replay, snapshots."""
    output = io.StringIO()
    ok = True
    for key in keys:
        try:
            call_command("verify_activity", board=key, stdout=output, stderr=output)
        except CommandError:
            ok = False
    return ok, output.getvalue()


def rollups_caught_up() -> bool:
    """Every committed event has been applied (the cursor's watermark is past them all)."""
    from django.db.models import Max

    from activity.models import Event
    from delivery.models import ProjectionCursor
    from delivery.rollups import CURSOR

    newest = Event.objects.aggregate(top=Max("txid"))["top"] or 0
    cursor = ProjectionCursor.objects.filter(name=CURSOR).first()
    return cursor is not None and cursor.txid_watermark > newest


def wait_caught_up(timeout: float) -> float | None:
    """Seconds until the rollups had applied every event, or None after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if rollups_caught_up():
                return time.monotonic() - started
        except Exception:  # the database is coming back
            fresh_connection()
        time.sleep(0.25)
    return None


def projections_dump() -> dict[str, list[tuple]]:
    """Every projection row without its id; a row naming a deployment (a deployment card, a
    commit, a change) names it by the event that recorded it, as a rebuild renumbers them."""
    from delivery.models import Deployment
    from delivery.rollups import PROJECTIONS

    dump = {}
    for model in PROJECTIONS:
        names = [
            f"{f.name}__event_id" if f.is_relation and f.related_model is Deployment else f.attname
            for f in model._meta.concrete_fields
            if not f.primary_key
        ]
        rows = model.objects.values_list(*names)
        dump[model._meta.db_table] = sorted(rows, key=repr)
    return dump


def rebuild_compare() -> tuple[bool, dict]:
    """The projections as the incremental runs left them, against `rollups --rebuild`."""
    before = projections_dump()
    out = io.StringIO()
    call_command("rollups", rebuild=True, stdout=out, stderr=out)
    after = projections_dump()
    differences = {}
    for table in after:
        a, b = Counter(map(repr, before[table])), Counter(map(repr, after[table]))
        if a != b:
            differences[table] = {"only_incremental": sum((a - b).values()),
                                  "only_rebuild": sum((b - a).values()),
                                  "example": next(iter((a - b) or (b - a)))[:300]}  # fmt: skip
    rows = sum(len(rows) for rows in after.values())
    return not differences, {"rows": rows, "differences": differences}
