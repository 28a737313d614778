"""`manage.py import_deployments`: a backfill equals posting the same records through the API,
records each deployment once however often it is run, and reports what it refuses."""

import csv
import datetime
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.db.models import Model
from django.test import Client

from activity import clock
from activity.describe import event_actor
from activity.events import EventKind
from activity.log import Actor
from activity.models import Event, Source
from boards import services
from boards.management.commands.import_deployments import IMPORT_VIA, import_scope
from boards.models import Board, IdempotencyKey, Role
from boards.tokens import token_create
from delivery.models import CardFlow, DailyRollup, Deployment, DeploymentCard
from tests.conftest import as_actor, column, rollups_settle

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.sqlite]

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime.datetime(2026, 6, 1, 12, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)


def iso(moment: datetime.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def history(key: str) -> list[dict]:
    """A CI history of board `key`, as a pipeline reports it: finished before it is posted,
    some cards named, some found in commit messages, a staging and a failed deployment, one
    without `finished_at`, and two records the API refuses."""
    return [
        {"id": "run-1", "board": key, "version": "2026.5.1", "environment": "production",
         "status": "success", "cards": [f"{key}-1", f"{key}-2"],
         "commits": [{"sha": "a1b2c3d4", "timestamp": iso(NOW - 45 * DAY), "message": "one"},
                     {"sha": "b2c3d4e5", "timestamp": iso(NOW - 44 * DAY)}],
         "started_at": iso(NOW - 41 * DAY), "finished_at": iso(NOW - 40 * DAY)},
        {"id": "run-2", "board": key, "version": "2026.5.2", "environment": "staging",
         "status": "success", "cards": [f"{key}-3"], "finished_at": iso(NOW - 35 * DAY),
         "url": "https://ci.example.com/runs/2"},
        {"id": "run-3", "board": key, "version": "2026.5.3", "environment": "production",
         "status": "failed", "cards": [], "finished_at": iso(NOW - 34 * DAY)},
        {"id": "run-4", "board": key, "version": "2026.5.4", "environment": "production",
         "status": "success",
         "commits": [{"sha": "c3d4e5f6", "timestamp": iso(NOW - 33 * DAY),
                      "message": f"Fix rounding, closes {key}-3\nand {key}-4"}],
         "finished_at": iso(NOW - 30 * DAY)},
        {"id": "run-5", "board": key, "version": "2026.5.5", "environment": "production",
         "status": "success", "cards": [f"{key}-99"], "finished_at": iso(NOW - 25 * DAY)},
        {"id": "run-6", "board": key, "version": "2026.5.6", "environment": "production",
         "status": "exploded"},
        {"id": "run-7", "board": key, "version": "2026.5.7", "environment": "production",
         "status": "success", "cards": [f"{key}-5"],
         "commits": [{"sha": "d4e5f6a7", "timestamp": iso(NOW - 2 * DAY)}]},
        {"id": "run-8", "board": key, "version": "2026.5.8", "environment": "Production",
         "status": "success", "cards": [f"{key}-6", f"{key}-1"],
         "commits": [{"sha": "e5f6a7b8"}, {"sha": "f6a7b8c9"}],
         "finished_at": "2026-05-25T14:00:00+02:00"},
    ]  # fmt: skip


REFUSED = {"run-5", "run-6"}


def twin_board(key: str, admin, editor) -> Board:
    """A board made as every twin is, at the same moments: cards created and started."""
    with clock.frozen_at(NOW - 60 * DAY):
        board = services.board_create(actor=as_actor(admin), name="Payments", key=key)
        services.membership_set(
            actor=as_actor(admin), board_id=board.pk, user_id=editor.pk, role=Role.EDITOR
        )
    for number in range(1, 7):
        with clock.frozen_at(NOW - 60 * DAY + number * datetime.timedelta(hours=1)):
            card = services.card_create(
                actor=as_actor(editor), board_id=board.pk, title=f"Card {number}",
                column_id=column(board, "To Do").pk,
            )  # fmt: skip
        if number <= 4:
            with clock.frozen_at(NOW - 50 * DAY + number * DAY):
                services.card_move(
                    actor=as_actor(editor), card_id=card.pk,
                    to_column_id=column(board, "In Progress").pk, expected_version=None,
                )  # fmt: skip
    return board


def write_jsonl(path: Path, records: list[dict]) -> dict[str, int]:
    """Writes one record a line; returns each record's line."""
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return {record["id"]: number for number, record in enumerate(records, start=1)}


def write_csv(path: Path, records: list[dict]) -> dict[str, int]:
    """Writes the records as the README describes CSV (cards space-separated, commits as
    JSON, here spread over several lines, or bare SHAs when no commit has more; an absent
    field an empty cell); returns the line each record starts on."""
    names = list(dict.fromkeys(name for record in records for name in record))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(names)
    lines = {}
    for record in records:
        row = []
        for name in names:
            value = record.get(name)
            if name == "cards" and value is not None:
                value = " ".join(value) if value else "[]"
            elif name == "commits" and value is not None:
                bare = all(set(commit) == {"sha"} for commit in value)
                value = " ".join(c["sha"] for c in value) if bare else json.dumps(value, indent=1)
            row.append("" if value is None else value)
        lines[record["id"]] = out.getvalue().count("\n") + 1
        writer.writerow(row)
    path.write_text(out.getvalue(), newline="")
    return lines


def run_import(path: Path, username: str = "bob", *args: str) -> tuple[str, str, bool]:
    """(stdout, stderr, whether it failed) of the command, called in this process."""
    out, err = io.StringIO(), io.StringIO()
    failed = False
    try:
        call_command("import_deployments", str(path), "--as", username, *args,
                     stdout=out, stderr=err)  # fmt: skip
    except CommandError as error:
        failed = True
        err.write(f"CommandError: {error}\n")
    return out.getvalue(), err.getvalue(), failed


def post(secret: str, body: dict):
    return Client().post(
        "/api/v1/deployments",
        json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {secret}"},
    )


def rows_of(model: type[Model], board: Board, order: list[str], *extra: str) -> list[tuple]:
    """A board's projection rows: every stored column but ids, references and the source (so
    a column added later is compared too), card refs without the board's key."""
    skip = {"id", "board_id", "deployment_id", "card_id", "event_id", "source"}
    names = [*extra, *(f.attname for f in model._meta.concrete_fields if f.attname not in skip)]
    where = {"deployment__board": board} if model is DeploymentCard else {"board": board}
    rows = model._default_manager.filter(**where).order_by(*order).values_list(*names)
    prefix = f"{board.key}-"
    return [tuple(v.removeprefix(prefix) if isinstance(v, str) else v for v in row) for row in rows]


def projections_of(board: Board) -> dict[str, list[tuple]]:
    return {
        "deployments": rows_of(Deployment, board, ["deployed_at", "event_id"]),
        "cards": rows_of(DeploymentCard, board, ["deployed_at", "card_ref"]),
        "flows": rows_of(CardFlow, board, ["card__number"], "card__number"),
        "days": rows_of(DailyRollup, board, ["day"]),
    }


def csv_of(board: Board, user) -> list[dict]:
    _, secret = token_create(actor=Actor(user=user), user=user, name=f"export-{board.key}")
    response: Any = Client().get(
        f"/api/v1/deployments.csv?board={board.key}", headers={"Authorization": f"Bearer {secret}"}
    )
    assert response.status_code == 200
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


@pytest.mark.parametrize("file_format", ["jsonl", "csv"])
def test_an_import_equals_posting_the_same_records(tmp_path, alice, bob, file_format):
    """One history posted through the API into API, and imported into its twin IMP: the same
    deployments, deliveries, flows and days, the same CSV but for the board and the ids, and
    the same refusals in the same words."""
    posted_into, imported_into = twin_board("API", alice, bob), twin_board("IMP", alice, bob)
    _, secret = token_create(actor=Actor(user=bob), user=bob, name="ci")
    answers, refusals = {}, {}
    with clock.frozen_at(NOW):
        for record in history("API"):
            response = post(secret, {k: v for k, v in record.items() if k != "id"})
            if record["id"] in REFUSED:
                assert response.status_code == 422
                refusals[record["id"]] = response.json()["detail"]
            else:
                assert response.status_code == 201, response.content
                answers[record["id"]] = response.json()
    write = write_jsonl if file_format == "jsonl" else write_csv
    path = tmp_path / f"history.{file_format}"
    lines = write(path, history("IMP"))
    with clock.frozen_at(NOW):
        out, err, failed = run_import(path)
    assert failed
    assert out.endswith("8 records: 6 recorded, 0 already imported, 0 conflicts, 2 refused.\n")
    for id_, detail in refusals.items():
        assert f"line {lines[id_]}: refused (422): {detail.replace('API', 'IMP')}\n" in err
    rollups_settle()

    assert set(Deployment.objects.filter(board=posted_into).values_list("source", flat=True)) == {
        Source.API
    }
    assert set(Deployment.objects.filter(board=imported_into).values_list("source", flat=True)) == {
        Source.SYSTEM
    }
    posted, imported = projections_of(posted_into), projections_of(imported_into)
    assert len(posted["deployments"]) == 6
    assert len(posted["cards"]) == 8
    assert posted == imported

    posted_csv, imported_csv = csv_of(posted_into, bob), csv_of(imported_into, bob)
    assert {int(row["deployment_id"]) for row in posted_csv} == {a["id"] for a in answers.values()}
    stored = IdempotencyKey.objects.filter(scope=import_scope("IMP"))
    assert {int(row["deployment_id"]) for row in imported_csv} == {
        json.loads(bytes(claim.body))["id"] for claim in stored
    }
    assert {row["actor"] for row in posted_csv} == {"bob via token ci"}
    assert {row["actor"] for row in imported_csv} == {f"bob via token {IMPORT_VIA}"}

    def comparable(rows: list[dict]) -> list[dict]:
        ignored = {"deployment_id", "service_key", "source", "actor"}
        return [
            {
                k: v.replace("API-", "").replace("IMP-", "")
                for k, v in row.items()
                if k not in ignored
            }
            for row in rows
        ]

    assert comparable(posted_csv) == comparable(imported_csv)


def deployments_recorded(board: Board) -> int:
    return Event.objects.filter(board=board, kind=EventKind.DEPLOYMENT_RECORDED).count()


def test_importing_again_or_overlapping_files_records_each_deployment_once(tmp_path, board, bob):
    """Ids make the import idempotent: a second run, an overlapping file, or the same records
    written another way (CSV, other offsets) record nothing twice; an id reused for other
    content is a conflict, skipped, and fails the run, while the rest still go in."""
    records = [
        {"id": f"run-{n}", "board": "PAY", "version": f"1.{n}", "environment": "production",
         "status": "success", "cards": [], "finished_at": iso(NOW - n * DAY)}
        for n in range(1, 6)
    ]  # fmt: skip
    write_jsonl(tmp_path / "first.jsonl", records[:3])
    out, err, failed = run_import(tmp_path / "first.jsonl")
    assert (out, failed) == ("3 records: 3 recorded, 0 already imported, 0 conflicts, 0 refused.\n",
                             False)  # fmt: skip
    out, err, failed = run_import(tmp_path / "first.jsonl")
    assert (out, err, failed) == (
        "3 records: 0 recorded, 3 already imported, 0 conflicts, 0 refused.\n",
        "",
        False,
    )
    write_jsonl(tmp_path / "overlap.jsonl", records[1:])
    out, _, _ = run_import(tmp_path / "overlap.jsonl")
    assert out == "4 records: 2 recorded, 2 already imported, 0 conflicts, 0 refused.\n"
    same = [{**record, "finished_at": (NOW - n * DAY).astimezone(datetime.timezone(
                datetime.timedelta(hours=-5))).isoformat(), "url": ""}
            for n, record in enumerate(records, start=1)]  # fmt: skip
    write_csv(tmp_path / "same.csv", same)
    out, _, _ = run_import(tmp_path / "same.csv")
    assert out == "5 records: 0 recorded, 5 already imported, 0 conflicts, 0 refused.\n"
    assert deployments_recorded(board) == 5

    changed = [{**records[1], "version": "1.2-rebuilt"}, {**records[0], "id": "run-9"}]
    write_jsonl(tmp_path / "changed.jsonl", changed)
    out, err, failed = run_import(tmp_path / "changed.jsonl")
    assert failed
    assert out == "2 records: 1 recorded, 0 already imported, 1 conflicts, 0 refused.\n"
    assert "line 1: conflict: id 'run-2' was imported into PAY before with other content" in err
    assert deployments_recorded(board) == 6
    assert not Deployment.objects.filter(version="1.2-rebuilt").exists()


def test_a_refused_record_is_reported_by_its_line_and_the_rest_go_in(tmp_path, board, alice, bob):
    other = services.board_create(actor=as_actor(bob), name="Other", key="OTH")
    services.board_create(actor=as_actor(alice), name="Secret", key="SEC")
    text = (
        "id,board,version,environment,status,cards,commits\r\n"
        '1,PAY,1.0,production,success,,"[{""sha"": ""abcdef12"",\n'
        '  ""message"": ""two\\r\\nlines""}]"\r\n'
        "2,PAY,1.1,production,success,PAY-404,\r\n"
        "\r\n"
        "3,SEC,1.2,production,success,,\r\n"
        ",PAY,1.3,production,success,,\r\n"
        '4,PAY,1.4,production,success,,"[{""sha"": 5}]"\r\n'
        "5,OTH,1.5,staging,success,,deadbeef cafebabe\r\n"
        "6,PAY,1.6,production,success,,[not json\r\n"
    )
    (tmp_path / "history.csv").write_text(text, newline="")
    out, err, failed = run_import(tmp_path / "history.csv")
    assert failed
    assert out == "7 records: 2 recorded, 0 already imported, 0 conflicts, 5 refused.\n"
    assert err.splitlines() == [
        "line 4: refused (422): PAY has no cards PAY-404.",
        "line 6: refused (404): Board not found.",
        "line 7: refused (422): Every record needs an id (text or a whole number).",
        "line 8: refused (422): commits.0.sha: Input should be a valid string",
        "line 10: refused (422): commits: not valid JSON (Expecting value: line 1 column 2 "
        "(char 1))",
        "CommandError: 5 of 7 records were not imported (see above).",
    ]
    first = Event.objects.get(board=board, kind=EventKind.DEPLOYMENT_RECORDED)
    assert first.payload["deployment"]["commits"][0]["message"] == "two\r\nlines"
    shas = Event.objects.get(board=other, kind=EventKind.DEPLOYMENT_RECORDED)
    assert [c["sha"] for c in shas.payload["deployment"]["commits"]] == ["deadbeef", "cafebabe"]

    (tmp_path / "bad.jsonl").write_text('{"id": 1, "board": "PAY"}\n\nnot json\n[1]\n')
    out, err, failed = run_import(tmp_path / "bad.jsonl")
    assert out == "3 records: 0 recorded, 0 already imported, 0 conflicts, 3 refused.\n"
    assert [line.split(":")[0] for line in err.splitlines()[:3]] == ["line 1", "line 3", "line 4"]
    assert "environment: Field required; status: Field required" in err
    assert "line 4: refused (422): a record is a JSON object" in err


def test_the_log_names_the_member_and_the_import_never_the_member_alone(
    tmp_path, board, bob, victor, mallory
):
    record = {"id": "r", "board": "PAY", "version": "7", "environment": "production",
              "status": "success", "cards": []}  # fmt: skip
    write_jsonl(tmp_path / "one.jsonl", [record])
    _, err, failed = run_import(tmp_path / "one.jsonl", "victor")  # a viewer
    assert failed
    assert "line 1: refused (403): You need the editor role on PAY for that." in err
    _, err, _ = run_import(tmp_path / "one.jsonl", "mallory")  # not a member
    assert "line 1: refused (404): Board not found." in err
    with pytest.raises(CommandError, match="No active user 'nobody'"):
        call_command("import_deployments", str(tmp_path / "one.jsonl"), "--as", "nobody")
    assert not IdempotencyKey.objects.exists()  # a refused record claims no id

    run_import(tmp_path / "one.jsonl", "bob")
    event = Event.objects.get(kind=EventKind.DEPLOYMENT_RECORDED)
    assert (event.actor, event.actor_name, event.via, event.source) == (
        bob,
        "bob",
        IMPORT_VIA,
        Source.SYSTEM,
    )
    assert event_actor(event) == "bob via token import_deployments"


def test_the_format_is_told_by_option_extension_or_content(tmp_path, board, bob):
    record = {"id": "x1", "board": "PAY", "version": "1", "environment": "production",
              "status": "failed"}  # fmt: skip
    write_jsonl(tmp_path / "history.txt", [record])  # no telling extension: content
    assert run_import(tmp_path / "history.txt")[0].startswith("1 records: 1 recorded")
    write_csv(tmp_path / "history.log", [{**record, "id": "x2"}])
    assert run_import(tmp_path / "history.log")[0].startswith("1 records: 1 recorded")
    write_jsonl(tmp_path / "history.csv", [{**record, "id": "x3"}])  # misnamed: the option wins
    assert run_import(tmp_path / "history.csv", "bob", "--format", "jsonl")[0].startswith(
        "1 records: 1 recorded"
    )
    (tmp_path / "noid.csv").write_text("board,version,environment,status\nPAY,1,staging,failed\n")
    with pytest.raises(CommandError, match="no id column"):
        call_command("import_deployments", str(tmp_path / "noid.csv"), "--as", "bob")


def test_from_the_shell_the_exit_status_says_whether_every_record_went_in(tmp_path, board, bob):
    """A real `manage.py import_deployments` run (its own process and connection): status 0
    when every record was recorded or already there, 1 when one was refused."""
    if connection.vendor != "postgresql":
        pytest.skip("SQLite's test database is in this process's memory only")
    db = settings.DATABASES["default"]
    url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    env = {**os.environ, "DATABASE_URL": url}
    good = {"id": "ok", "board": "PAY", "version": "1", "environment": "production",
            "status": "success", "cards": []}  # fmt: skip
    write_jsonl(tmp_path / "good.jsonl", [good])
    write_jsonl(tmp_path / "bad.jsonl", [good, {**good, "id": "bad", "board": "NOPE"}])

    def run(name: str) -> subprocess.CompletedProcess:
        command = ["manage.py", "import_deployments", str(tmp_path / name), "--as", "bob"]
        return subprocess.run(
            [sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip

    done = run("good.jsonl")
    assert (done.returncode, done.stdout) == (
        0, "1 records: 1 recorded, 0 already imported, 0 conflicts, 0 refused.\n"
    )  # fmt: skip
    done = run("bad.jsonl")
    assert done.returncode == 1
    assert done.stdout == "2 records: 0 recorded, 1 already imported, 0 conflicts, 1 refused.\n"
    assert "line 2: refused (404): Board not found." in done.stderr
    assert deployments_recorded(board) == 1
