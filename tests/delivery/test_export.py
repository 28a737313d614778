"""The deployment history CSV: content, permissions, formula neutralisation, flat memory."""

import csv
import datetime
import html
import io
import json
import re
import tracemalloc

import pytest
from django.core.management import call_command
from django.db import transaction
from django.http import StreamingHttpResponse
from django.test import Client
from django.utils import timezone

from activity import clock
from activity.events import EventKind
from activity.log import Actor
from activity.models import Event, Source
from boards import services
from boards.tokens import token_create
from delivery.export import ExportFilter, csv_lines, deployment_rows
from delivery.models import Deployment, DeploymentCard
from tests.conftest import as_actor, make_card, rollups_settle

pytestmark = pytest.mark.django_db(transaction=True)


def read_csv(response) -> list[dict]:
    body = b"".join(response.streaming_content).decode()
    assert body.endswith("\r\n")
    return list(csv.DictReader(io.StringIO(body)))


def api_get(user, path):
    _, secret = token_create(actor=Actor(user=user), user=user, name="export")
    return Client().get(path, headers={"Authorization": f"Bearer {secret}"})


CREATED = datetime.datetime(2026, 3, 2, 9, 0, 0, 250_000, tzinfo=datetime.UTC)
COMMITTED = datetime.datetime(2026, 3, 2, 10, 0, tzinfo=datetime.UTC)
DEPLOYED = datetime.datetime(2026, 3, 2, 12, 30, tzinfo=datetime.UTC)


@pytest.fixture
def deployed(board, bob, alice):
    """PAY's two cards made at CREATED, committed at COMMITTED and deployed at DEPLOYED, then
    a failed deployment of nothing; and SEC, a board bob is not on, with its own deployment."""
    with clock.frozen_at(CREATED):
        hostile = make_card(board, title='=HYPERLINK("http://evil","click")', column_name="Staging")
        plain = make_card(board, title='Refunds, "quoted"\nand multi-line', column_name="Staging")
        label = services.label_create(actor=as_actor(bob), board_id=board.pk, name="@risky")
        services.card_label_add(actor=as_actor(bob), card_id=hostile.pk, label_id=label.pk)
    with clock.frozen_at(DEPLOYED):
        services.deployment_record(
            actor=Actor(user=bob, source=Source.API, via="ci"), board_id=board.pk, version="-1+1",
            environment="production", status="success", card_numbers=[hostile.number, plain.number],
            commits=[services.Commit(sha="abc1234", timestamp=COMMITTED)],
        )  # fmt: skip
    with clock.frozen_at(DEPLOYED + datetime.timedelta(hours=1)):
        services.deployment_record(
            actor=Actor(user=bob, source=Source.API, via="ci"), board_id=board.pk, version="2",
            environment="production", status="failed", card_numbers=[],
        )  # fmt: skip
        other = services.board_create(actor=as_actor(alice), name="Secret", key="SEC")
        secret = make_card(other, title="Secret card", column_name="Staging")
        services.deployment_record(
            actor=as_actor(alice), board_id=other.pk, version="9", environment="production",
            status="success", card_numbers=[secret.number],
        )  # fmt: skip
    rollups_settle()
    return board


def test_one_row_per_card_deployment_with_every_column(deployed, bob):
    rows = read_csv(api_get(bob, "/api/v1/deployments.csv"))
    assert [(r["service_key"], r["card_ref"], r["status"]) for r in rows] == [
        ("PAY", "PAY-1", "success"),
        ("PAY", "PAY-2", "success"),
        ("PAY", "", "failed"),
    ]
    first = rows[0]
    assert first["service_name"] == "Payments"
    assert first["environment"] == "production"
    assert first["source"] == "api"
    assert first["actor"] == "bob via token ci"
    assert first["commit_shas"] == "abc1234"
    assert first["created_at"] == "2026-03-02T09:00:00.250000Z"
    assert first["started_at"] == ""  # never in In Progress
    assert first["deployed_at"] == "2026-03-02T12:30:00Z"
    assert first["lead_time_seconds"] == "9000"  # from the commit: 2 h 30 min
    assert first["cycle_time_seconds"] == ""
    assert rows[2]["deployed_at"] == "2026-03-02T13:30:00Z"
    assert rows[1]["card_title"] == 'Refunds, "quoted"\nand multi-line'


def test_cells_that_look_like_formulas_are_neutralised(deployed, bob):
    rows = read_csv(api_get(bob, "/api/v1/deployments.csv?board=PAY"))
    assert rows[0]["card_title"] == '\'=HYPERLINK("http://evil","click")'
    assert rows[0]["version"] == "'-1+1"
    assert rows[0]["labels"] == "'-1+1 @risky"
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@", "\t", "\r"))


def test_only_permitted_boards_are_exported(deployed, bob, mallory):
    assert "SEC" not in {
        r["service_key"] for r in read_csv(api_get(bob, "/api/v1/deployments.csv"))
    }
    assert api_get(bob, "/api/v1/deployments.csv?board=SEC").status_code == 404
    assert read_csv(api_get(mallory, "/api/v1/deployments.csv")) == []


def test_filters_by_time_and_release(deployed, bob):
    assert {r["version"] for r in read_csv(api_get(bob, "/api/v1/deployments.csv?release=2"))} == {
        "2"
    }
    future = (timezone.now() + datetime.timedelta(days=1)).isoformat().replace("+00:00", "Z")
    assert read_csv(api_get(bob, f"/api/v1/deployments.csv?since={future}")) == []


def test_a_large_export_streams_in_flat_memory(board, bob):
    """100,000 rows cost no more memory than 10,000: rows are streamed, never collected."""
    cards = [make_card(board, title=f"card {i}", column_name="Staging") for i in range(100)]
    now = timezone.now()
    with transaction.atomic():  # each event joins the board's chain (no raw bulk insert)
        events = [
            Event.objects.create(occurred_at=now, actor_name="ci", source="api", board=board,
                                 kind="deployment.imported", payload={})
            for _ in range(1000)
        ]  # fmt: skip
    deployments = Deployment.objects.bulk_create(
        Deployment(event=e, board=board, kind="ci", version=f"v{i}", environment="production",
                   status="success", deployed_at=now, source="api", actor_name="ci")
        for i, e in enumerate(events)
    )  # fmt: skip
    DeploymentCard.objects.bulk_create(
        DeploymentCard(deployment=d, card=c, card_ref=c.ref, created_at=now, deployed_at=now,
                       lead_time=60.0, cycle_time=30.0, card_lead_time=90.0)
        for d in deployments for c in cards
    )  # fmt: skip

    def peak_while_streaming(since_version: int) -> tuple[int, int]:
        scope = ExportFilter(board_ids=frozenset([board.pk]))
        rows = deployment_rows(scope=scope)
        if since_version:
            rows = rows.filter(version__in=[f"v{i}" for i in range(since_version)])
        tracemalloc.start()
        count = sum(1 for _ in csv_lines(rows.iterator(chunk_size=2000))) - 1
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return count, peak

    small_rows, small_peak = peak_while_streaming(100)
    big_rows, big_peak = peak_while_streaming(0)
    assert (small_rows, big_rows) == (10_000, 100_000)
    assert big_peak < 1.5 * small_peak + 512 * 1024
    print(f"export peak memory: {small_peak / 1e6:.1f} MB at 10k rows, {big_peak / 1e6:.1f} MB "
          f"at 100k rows")  # fmt: skip


def test_staff_export_selected_boards_from_the_admin(deployed, client, staff):
    client.force_login(staff)
    response = client.post(
        "/admin/boards/board/",
        {"action": "export_deployments", "_selected_action": [deployed.pk]},
    )
    assert response["Content-Type"].startswith("text/csv")
    rows = read_csv(response)
    assert {r["service_key"] for r in rows} == {"PAY"}
    assert len(rows) == 3


def test_members_download_from_the_insights_and_services_pages(deployed, client, bob, mallory):
    client.force_login(bob)
    board_rows = read_csv(client.get("/b/PAY/insights/deployments.csv"))
    assert {r["service_key"] for r in board_rows} == {"PAY"}
    every = read_csv(client.get("/services/deployments.csv"))
    assert {r["service_key"] for r in every} == {"PAY"}  # SEC is not bob's
    assert "/b/PAY/insights/deployments.csv" in client.get("/b/PAY/insights/").content.decode()
    client.force_login(mallory)
    assert client.get("/b/PAY/insights/deployments.csv").status_code == 404
    assert read_csv(client.get("/services/deployments.csv")) == []


def test_under_asgi_the_export_is_sent_block_by_block(deployed, bob):
    """Django drains a sync iterator into memory under ASGI; the export hands it async blocks."""
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    _, secret = token_create(actor=Actor(user=bob), user=bob, name="asgi")

    async def fetch():
        response = await AsyncClient().get(
            "/api/v1/deployments.csv", headers={"Authorization": f"Bearer {secret}"}
        )
        assert isinstance(response, StreamingHttpResponse)
        blocks = [block async for block in response]
        return response, blocks

    response, blocks = async_to_sync(fetch)()
    assert response.is_async
    rows = list(csv.DictReader(io.StringIO(b"".join(blocks).decode())))
    assert [r["card_ref"] for r in rows] == ["PAY-1", "PAY-2", ""]


@pytest.mark.parametrize("block_bytes", [1, 7, 256 * 1024])
def test_postgresql_copy_writes_the_same_bytes_as_the_python_writer(
    deployed, bob, monkeypatch, block_bytes
):
    """COPY formats in SQL what cell() formats in Python: the two must agree byte for byte,
    including cells with quotes, line breaks, formula starts, half seconds and microseconds,
    whatever the size of the blocks the rows are cut into."""
    from django.db import connection

    from delivery import export

    if connection.vendor != "postgresql":
        pytest.skip("COPY is PostgreSQL's")
    card = make_card(deployed, title='\tTabbed\r\nand\n"quoted"\n', column_name="Staging")
    other = make_card(deployed, title="+plain, with comma", column_name="Staging")
    services.deployment_record(
        actor=Actor(user=bob, source=Source.API, via="=ci"), board_id=deployed.pk, version="@v3",
        environment="staging", status="success", card_numbers=[card.number, other.number],
        commits=[services.Commit(sha="-abc", timestamp=timezone.now()),
                 services.Commit(sha="def", timestamp=None)],
        finished_at=datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
    )  # fmt: skip
    rollups_settle()
    half = DeploymentCard.objects.filter(card=card).first()
    assert half is not None
    DeploymentCard.objects.filter(pk=half.pk).update(lead_time=2.5, cycle_time=3.5)
    monkeypatch.setattr(export, "COPY_BLOCK_BYTES", block_bytes)
    for scope in [
        ExportFilter(board_ids=frozenset([deployed.pk])),
        ExportFilter(board_ids=frozenset([deployed.pk]), release="@v3"),
        ExportFilter(board_ids=frozenset()),
        ExportFilter(
            board_ids=frozenset([deployed.pk]),
            since=datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC),
            until=datetime.datetime(2026, 1, 3, tzinfo=datetime.UTC),
        ),
    ]:
        expected = "".join(csv_lines(deployment_rows(scope=scope).iterator())).encode()
        assert b"".join(export.copy_blocks(scope=scope)) == expected
    assert b'Tabbed\r\nand\n""quoted""' in expected  # line breaks inside a cell stay as they are


# --- stable ids, and the window on screen -----------------------------------------------------


def post_deployment(secret: str, body: dict) -> dict:
    response = Client().post(
        "/api/v1/deployments",
        json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert response.status_code == 201, response.content
    return response.json()


def export_bytes(scope: ExportFilter) -> dict[str, bytes]:
    """The export by each path this database has: the ORM's rows through csv_lines, and on
    PostgreSQL also COPY."""
    from django.db import connection

    from delivery import export

    found = {"orm": "".join(csv_lines(deployment_rows(scope=scope).iterator())).encode()}
    if connection.vendor == "postgresql":
        found["copy"] = b"".join(export.copy_blocks(scope=scope))
    return found


@pytest.mark.sqlite
def test_the_csv_names_deployments_by_their_api_ids_and_a_rebuild_changes_no_byte(
    board, bob, alice
):
    """`deployment_id` is the id POST /api/v1/deployments answered (a manual delivery's: its
    move's event id), rows in (deployed_at, id) order; a rebuild, which renumbers the
    projection rows, changes no byte of the export, by COPY and by the ORM alike."""
    _, secret = token_create(actor=Actor(user=bob), user=bob, name="ci")
    with clock.frozen_at(CREATED):
        cards = [make_card(board, title=f"card {i}", column_name="In Progress") for i in range(4)]
    later = "2026-03-03T09:00:00Z"
    posted = {
        version: post_deployment(secret, {
            "board": "PAY", "version": version, "environment": "production",
            "status": "success", "cards": [cards[index].ref], "finished_at": finished,
            "commits": [{"sha": f"abc{index}def", "timestamp": COMMITTED.isoformat()}],
        })["id"]
        for version, index, finished in [("3", 2, later), ("1", 0, "2026-03-02T12:30:00Z"),
                                         ("2", 1, "2026-03-02T12:30:00Z")]
    }  # fmt: skip
    with clock.frozen_at(DEPLOYED):  # by hand, at the very moment of deployments 1 and 2
        services.card_move(
            actor=as_actor(alice),
            card_id=cards[3].pk,
            to_column_id=board.columns.get(name="Deployed").pk,
            expected_version=None,
        )
    manual = Event.objects.filter(card=cards[3], kind=EventKind.CARD_MOVED).latest("pk").pk
    rollups_settle()
    scope = ExportFilter(board_ids=frozenset([board.pk]))
    before = export_bytes(scope)
    assert len(set(before.values())) == 1  # COPY and the ORM agree
    rows = list(csv.DictReader(io.StringIO(before["orm"].decode())))
    assert [(r["deployment_id"], r["version"], r["card_ref"]) for r in rows] == [
        (str(posted["1"]), "1", "PAY-1"),
        (str(posted["2"]), "2", "PAY-2"),
        (str(manual), "", "PAY-4"),
        (str(posted["3"]), "3", "PAY-3"),
    ]
    assert manual > posted["2"]  # same deployed_at: the id decides
    assert read_csv(api_get(bob, "/api/v1/deployments.csv?board=PAY")) == rows
    pks = set(Deployment.objects.values_list("pk", flat=True))

    call_command("rollups", "--rebuild", stdout=io.StringIO())

    assert pks.isdisjoint(Deployment.objects.values_list("pk", flat=True))  # renumbered
    assert export_bytes(scope) == before


def insights_csv_link(client, days: int) -> str:
    page = client.get(f"/b/PAY/insights/?days={days}")
    assert page.status_code == 200
    found = re.findall(r'<a class="download" href="([^"]+)"', page.content.decode())
    assert len(found) == 1
    return html.unescape(found[0])


@pytest.mark.sqlite
@pytest.mark.parametrize("days", [30, 90, 365])
def test_the_insights_csv_link_exports_the_window_on_screen(board, bob, client, days):
    """The page's link carries its window: the CSV (by the web route, and by the API route
    given the same query) holds the deployments the page counts, none before and none after."""
    now = timezone.now()
    ages = {"day-5": 5, "day-45": 45, "day-200": 200, "day-400": 400}
    for version, age in ages.items():
        services.deployment_record(
            actor=as_actor(bob), board_id=board.pk, version=version, environment="production",
            status="success", finished_at=now - datetime.timedelta(days=age),
        )  # fmt: skip
    rollups_settle()
    client.force_login(bob)
    link = insights_csv_link(client, days)
    # Recorded after the page was drawn: not on it, so not in its export.
    services.deployment_record(
        actor=as_actor(bob), board_id=board.pk, version="after", environment="production",
        status="success",
    )  # fmt: skip
    rollups_settle()
    path, _, query = link.partition("?")
    assert path == "/b/PAY/insights/deployments.csv"
    shown = {version for version, age in ages.items() if age < days}
    response = client.get(link)
    assert response.status_code == 200
    body = b"".join(response.streaming_content)
    assert {r["version"] for r in csv.DictReader(io.StringIO(body.decode()))} == shown
    through_api = api_get(bob, f"/api/v1/deployments.csv?board=PAY&{query}")
    assert through_api.status_code == 200
    assert b"".join(through_api.streaming_content) == body
    everything = read_csv(client.get(path))
    assert {r["version"] for r in everything} == {*ages, "after"}


@pytest.mark.sqlite
def test_a_bad_window_is_refused_with_a_422(board, bob, client):
    client.force_login(bob)
    for query in ["since=yesterday", "until=2026-13-01", "since=1900-01-01T00:00:00Z"]:
        response = client.get(f"/b/PAY/insights/deployments.csv?{query}")
        assert response.status_code == 422, query
        assert "ISO 8601" in response.content.decode()


@pytest.mark.sqlite
def test_rollbacks_hotfixes_and_incidents_have_their_columns(board, bob):
    """A deployment rolled back and named as an incident's cause, and the hotfix that fixed
    it: their own cells, the same by COPY and by the ORM."""
    actor = Actor(user=bob, source=Source.API, via="ci")
    with clock.frozen_at(DEPLOYED):
        bad = services.deployment_record(
            actor=actor, board_id=board.pk, version="5", environment="production",
            status="success", card_numbers=[],
        ).event  # fmt: skip
    with clock.frozen_at(DEPLOYED + datetime.timedelta(minutes=10)):
        incident = services.incident_open(
            actor=actor, board_id=board.pk, title="down", cause_deployment_id=bad.pk
        )
        services.deployment_roll_back(actor=actor, deployment_id=bad.pk)
    with clock.frozen_at(DEPLOYED + datetime.timedelta(minutes=30)):
        services.deployment_record(
            actor=actor, board_id=board.pk, version="5.1", environment="production",
            status="success", card_numbers=[], hotfix=True, fixes_incident_ids=[incident.pk],
        )  # fmt: skip
    rollups_settle()
    found = export_bytes(ExportFilter(board_ids=frozenset([board.pk])))
    assert len(set(found.values())) == 1  # COPY and the ORM agree
    rows = list(csv.DictReader(io.StringIO(found["orm"].decode())))
    assert [
        (r["version"], r["status"], r["rolled_back_at"], r["hotfix"], r["fixes_incidents"],
         r["caused_incidents"])
        for r in rows
    ] == [
        ("5", "rolled_back", "2026-03-02T12:40:00Z", "false", "", str(incident.pk)),
        ("5.1", "success", "", "true", str(incident.pk), ""),
    ]  # fmt: skip
