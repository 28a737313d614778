"""Backup and restore: a logical dump restored into a fresh PostgreSQL cluster loses nothing.

Each event stores the id of the transaction that wrote it, and the rollups read by transaction
id. A fresh cluster counts transaction ids from the start again, so the restored events (and
the restored cursor's watermark) lie far "in the future" of the new cluster, and the events
written there after the restore lie below the restored watermark. The cursor names the cluster
it counts in; in another cluster the next run reads the log once by visibility instead
(delivery.rollups, "Restores"). This test makes a real second cluster (initdb, a free port,
trust on 127.0.0.1 only), restores a pg_dump of the test database into it, writes there, and
checks the rollups and the hash chain. It never touches the shared server's own processes.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from activity.events import EventKind
from activity.models import Event
from boards import services
from delivery.models import ProjectionCursor
from delivery.rollups import CURSOR
from tests.conftest import as_actor, column, make_card, rollups_settle

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[2]
# The source's transaction ids must be far above anything the fresh cluster reaches here.
SOURCE_XID_AT_LEAST = 100_000


def _bindir() -> Path | None:
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version_num")
        major = int(cursor.fetchone()[0]) // 10000
    for candidate in (Path(f"/usr/lib/postgresql/{major}/bin"), Path(f"/usr/pgsql-{major}/bin")):
        if (candidate / "initdb").exists():
            return candidate
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """A throwaway PostgreSQL cluster in a temporary directory (initdb + pg_ctl)."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="flux-restore-"))
        self.data = self.root / "data"
        self.port = _free_port()
        # initdb refuses to run as root: then the cluster belongs to the postgres user.
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.root, user="postgres")
        self.started = False

    def _run(self, *command: str) -> None:
        subprocess.run([*self.as_user, *command], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C.UTF-8")  # fmt: skip
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options,
                  "-l", str(self.root / "log"), "-w", "-t", "60", "start")  # fmt: skip
        self.started = True

    def stop(self) -> None:
        if self.started:
            stop = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]
            subprocess.run([*self.as_user, *stop], capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"


@pytest.fixture
def fresh_cluster():
    if connection.vendor != "postgresql":
        pytest.skip("transaction ids and pg_dump are PostgreSQL's")
    bindir = _bindir()
    if bindir is None or (os.geteuid() == 0 and not shutil.which("runuser")):
        pytest.skip("cannot make a second PostgreSQL cluster here: no initdb (or no runuser)")
    cluster = Cluster(bindir)
    try:
        try:
            cluster.start()
        except (OSError, subprocess.SubprocessError) as error:
            detail = getattr(error, "stderr", b"") or b""
            pytest.skip(f"cannot make a second PostgreSQL cluster here: {error} {detail[-300:]!r}")
        yield cluster
    finally:
        cluster.stop()


def source_url() -> str:
    db = settings.DATABASES["default"]
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def burn_transaction_ids(url: str, at_least: int) -> None:
    """Move the source cluster's transaction counter to `at_least` (one id per commit)."""
    with psycopg.connect(url, autocommit=True) as conn:
        (current,) = one_row(conn.execute("SELECT pg_current_xact_id()::text::bigint"))
        with conn.pipeline():
            for _ in range(max(0, at_least - current)):
                conn.execute("SELECT pg_current_xact_id()")


def manage(url: str, *args: str, code: str | None = None) -> subprocess.CompletedProcess:
    """Run manage.py against the restored database, as an operator (or the app) would."""
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": os.environ.get("REDIS_URL", "")}
    # With Redis, a delivery only queues the rollups (no worker consumes them here), so the
    # events written below wait for the explicit runs, as after a restore with no worker yet.
    command = [sys.executable, "manage.py", *args] + (["-c", code] if code else [])
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)


WRITE = """
import datetime, json
from activity.log import Actor
from boards import services
from boards.models import Board, Card
from django.contrib.auth import get_user_model
bob = Actor(user=get_user_model().objects.get(username="bob"))
board = Board.objects.get(key="PAY")
staging = board.columns.get(name="Staging")
deployed = board.columns.get(name="Deployed")
new = dict(actor=bob, board_id=board.pk, column_id=staging.pk)
delivered = services.card_create(**new, title="{tag} CI")
manual = services.card_create(**new, title="{tag} by hand")
result = services.deployment_record(
    actor=bob, board_id=board.pk, version="{tag}", environment="production", status="success",
    card_numbers=[delivered.number],
    commits=[services.Commit(sha="{tag}", timestamp=datetime.datetime.now(datetime.UTC))])
manual = Card.objects.get(pk=manual.pk)
services.card_move(actor=bob, card_id=manual.pk, to_column_id=deployed.pk,
                   expected_version=manual.version)
print(json.dumps({{"deployment_event": result.event.pk, "cards": [delivered.pk, manual.pk]}}))
"""


def write_in(url: str, tag: str) -> dict:
    done = manage(url, "shell", code=WRITE.format(tag=tag))
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


PROJECTIONS = {
    "deployments": """SELECT event_id, board_id, kind, version, environment, status,
                             deployed_at::text FROM activity_deployment""",
    "cards": """SELECT d.event_id, dc.card_id, dc.card_ref, dc.lead_time, dc.cycle_time,
                       dc.card_lead_time, dc.started_at::text, dc.first_commit_at::text
                  FROM activity_deploymentcard dc
                  JOIN activity_deployment d ON d.id = dc.deployment_id""",
    "flows": "SELECT card_id, created_at::text, started_at::text, first_commit_at::text"
    " FROM activity_cardflow",
    "moments": "SELECT event_id, card_id, kind, at::text, known_at::text FROM activity_cardmoment",
    "rework": "SELECT event_id, card_id FROM activity_rework",
    "days": """SELECT board_id, day::text, deployments, failed_deployments, cards_deployed,
                      lead_time_p50, lead_time_p85, cycle_time_p50, cycle_time_p85, rework
                 FROM activity_dailyrollup""",
}


def projections(url: str) -> dict:
    with psycopg.connect(url) as conn:
        return {name: sorted(conn.execute(sql).fetchall()) for name, sql in PROJECTIONS.items()}


def scalar(url: str, sql: str, params=()):
    with psycopg.connect(url, autocommit=True) as conn:
        return one_row(conn.execute(sql, params))[0]


def one_row(cursor: psycopg.Cursor) -> tuple:
    row = cursor.fetchone()
    assert row is not None, "the query returns one row"
    return row


def test_a_dump_restored_into_a_fresh_cluster_keeps_every_event_in_the_rollups(
    fresh_cluster, board, bob
):
    actor = as_actor(bob)
    burn_transaction_ids(source_url(), SOURCE_XID_AT_LEAST)
    # The source: deliveries (CI with a commit, manual), rework, rolled up ...
    first = make_card(board, title="first", column_name="In Progress")
    second = make_card(board, title="second", column_name="Staging")
    services.deployment_record(
        actor=actor, board_id=board.pk, version="1.0", environment="production",
        status="success", card_numbers=[first.number, second.number],
        commits=[services.Commit(sha="a1", timestamp=timezone.now())],
    )  # fmt: skip
    second.refresh_from_db()
    services.card_move(actor=actor, card_id=second.pk, to_column_id=column(board, "In Review").pk,
                       expected_version=second.version)  # fmt: skip
    rollups_settle()
    applied_at_dump = Event.objects.count()
    # ... and one more delivery committed after the last rollup run: in the dump, not applied.
    third = make_card(board, title="third", column_name="Staging")
    late = services.deployment_record(
        actor=actor, board_id=board.pk, version="1.1", environment="production",
        status="success", card_numbers=[third.number],
    )  # fmt: skip
    assert Event.objects.count() > applied_at_dump
    source_cursor = ProjectionCursor.objects.get(name=CURSOR)

    dump = fresh_cluster.root / "flux.dump"
    subprocess.run([str(fresh_cluster.bindir / "pg_dump"), "--format=custom", "--no-owner",
                    f"--file={dump}", source_url()], check=True, timeout=120)  # fmt: skip
    restored = fresh_cluster.url("flux_restored")
    with psycopg.connect(fresh_cluster.url("postgres"), autocommit=True) as conn:
        conn.execute("CREATE DATABASE flux_restored")
    subprocess.run([str(fresh_cluster.bindir / "pg_restore"), "--no-owner", "--exit-on-error",
                    f"--dbname={restored}", str(dump)], check=True, timeout=120)  # fmt: skip

    # The hazard is real here: the restored transaction ids lie beyond this cluster's counter.
    newest_restored = scalar(restored, "SELECT max(txid) FROM activity_event")
    assert newest_restored > scalar(restored, "SELECT pg_current_xact_id()::text::bigint")
    assert scalar(restored, "SELECT txid_watermark FROM activity_projectioncursor") == (
        source_cursor.txid_watermark
    )

    # The app writes before any rollup runs: its events' ids lie below the restored watermark.
    written = write_in(restored, "after-restore")
    assert scalar(restored, "SELECT max(txid) FROM activity_event WHERE id >= %s",
                  [written["deployment_event"]]) < source_cursor.txid_watermark  # fmt: skip
    assert manage(restored, "rollups").returncode == 0

    after_restore = projections(restored)
    counted = {row[0] for row in after_restore["deployments"]}
    deployment_events = set(
        scalar(
            restored,
            """
        SELECT array_agg(id) FROM activity_event
         WHERE kind = %s
            OR (kind = %s AND payload->'to'->>'stage' = 'deployed'
                AND NOT payload ? 'deployment_id')""",
            [EventKind.DEPLOYMENT_RECORDED, EventKind.CARD_MOVED],
        )
    )
    assert counted == deployment_events
    assert late.event.pk in counted  # committed before the dump, applied only after it
    assert written["deployment_event"] in counted  # written after the restore
    delivered = {(row[0], row[1]) for row in after_restore["cards"]}
    assert (late.event.pk, third.pk) in delivered
    assert {card for _, card in delivered} >= {first.pk, second.pk, third.pk, *written["cards"]}
    assert len(after_restore["rework"]) == 1
    cluster = scalar(restored, "SELECT system_identifier::text FROM pg_control_system()")
    assert scalar(restored, "SELECT cluster FROM activity_projectioncursor") == cluster

    # What the source had rolled up, the restored cluster has, row for row.
    source = projections(source_url())
    assert set(source["deployments"]) <= set(after_restore["deployments"])
    assert set(source["cards"]) <= set(after_restore["cards"])

    # From now on the incremental reader counts in this cluster's transaction ids.
    again = write_in(restored, "later")
    done = manage(restored, "rollups")
    assert done.returncode == 0, done.stderr[-2000:]
    incremental = projections(restored)
    assert again["deployment_event"] in {row[0] for row in incremental["deployments"]}
    assert {again["deployment_event"]} | set(again["cards"]) <= {
        value for row in incremental["cards"] for value in row[:2]
    }
    assert scalar(restored, "SELECT txid_watermark FROM activity_projectioncursor") <= (
        scalar(restored, "SELECT pg_current_xact_id()::text::bigint")
    )

    # A rebuild gives the same rows, and the log still verifies: hash chain and replay.
    done = manage(restored, "rollups", "--rebuild")
    assert done.returncode == 0, done.stderr[-2000:]
    assert projections(restored) == incremental
    verified = manage(restored, "verify_activity")
    assert verified.returncode == 0, verified.stdout[-2000:] + verified.stderr[-2000:]
    assert "The activity log verifies." in verified.stdout
