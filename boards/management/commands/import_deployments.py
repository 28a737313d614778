"""`manage.py import_deployments FILE --as USERNAME [--format csv|jsonl]`: backfill deployments.

A team adopting Flux loads its CI's past deployments from a file, each record exactly as
`POST /api/v1/deployments` takes it: every record is validated by the API's own schema
(`boards.api.DeploymentIn`, so a field the API learns is one the import learns) and
recorded by the route's own work (`boards.api.deployment_submit`), so an import equals
posting the same records, and a record the API would refuse is refused with the API's words.

- Formats: JSON lines (one object per line, the API's body plus `id`) or CSV (a header row
  of the same field names; a list of card refs as space- or comma-separated refs, commits
  as a JSON array of the API's commit objects or as space-separated SHAs; an empty cell is
  an absent field). Told by `--format`, else by the file's extension, else by its content.
- Idempotent by a caller-given `id` per record (the CI run's id, say): an id already
  imported into that board with the same content is skipped, with other content it is a
  conflict and skipped too. Ids are kept as `IdempotencyKey` rows with the scope
  `import:<board key>`, each claimed in the same transaction as the record it names.
- Who: the log names the member given by `--as` (an editor of the boards imported into)
  as the person, and this command as what acted for them (`via`), with the source
  "system": "maya via token import_deployments", never maya alone.
- Records go in file order, each in its own transaction. A refused record is reported with
  its line and reason, and the import goes on; the summary counts each outcome, and the
  exit status is 1 when any record was refused or in conflict.
"""

import csv
import enum
import hashlib
import io
import json
import re
import sys
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DataError, transaction
from tqdm import tqdm

from activity.log import Actor
from activity.models import Source
from boards import queries
from boards.api import DeploymentIn, deployment_submit
from boards.errors import INVALID_INPUT_STATUS, FluxError, refusal_message, refusal_status
from boards.models import IDEMPOTENCY_KEY_MAX_LENGTH, IdempotencyKey, Role
from boards.problems import text_refusal

IMPORT_VIA = "import_deployments"  # what acted for the member, in the log (Event.via)
ID_FIELD = "id"
FORMATS = ("csv", "jsonl")
EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
LIST_SEPARATORS = re.compile(r"[\s,]+")


class Outcome(enum.StrEnum):
    RECORDED = "recorded"
    ALREADY = "already imported"
    CONFLICT = "conflict"
    REFUSED = "refused"


@dataclass(frozen=True)
class Record:
    """One record of the file: the line it starts on, and its fields (None when the line
    could not be read as a record at all, with the reason in `problem`)."""

    line: int
    fields: dict[str, Any] | None
    problem: str = ""


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    message: str = ""


def import_scope(board_key: str) -> str:
    """The IdempotencyKey scope of a board's imported ids (tokens' keys are "token:<pk>")."""
    return f"import:{board_key}"


def import_actor(user) -> Actor:
    """The member the import acts for, and the import named as what acted (`via`)."""
    return Actor(user=user, source=Source.SYSTEM, via=IMPORT_VIA, max_role=Role.EDITOR)


# --- reading the file -------------------------------------------------------------------------


def format_detect(path: str, text: str) -> str:
    """The file's format, "csv" or "jsonl": told by its extension, else by its first
    character that is not a space."""
    by_extension = EXTENSIONS.get(Path(path).suffix.lower())
    if by_extension:
        return by_extension
    return "jsonl" if text.lstrip().startswith("{") else "csv"


def jsonl_records(text: str) -> Iterator[Record]:
    """One record per non-blank line: a JSON object."""
    for number, line in enumerate(io.StringIO(text), start=1):
        if not line.strip():
            continue
        try:
            fields = json.loads(line)
        except ValueError as error:
            yield Record(number, None, f"not valid JSON ({error})")
            continue
        if not isinstance(fields, dict):
            yield Record(number, None, "a record is a JSON object")
            continue
        yield Record(number, fields)


def csv_records(text: str) -> Iterator[Record]:
    """One record per row after the header; a record's line is the one its row starts on
    (a quoted cell may span lines)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        return
    names = [name.strip() for name in header]
    ended = reader.line_num
    for row in reader:
        line, ended = ended + 1, reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(names):
            yield Record(line, None, f"{len(row)} cells for {len(names)} columns")
            continue
        try:
            fields = {
                name: csv_cell(name, cell)
                for name, cell in zip(names, row, strict=False)
                if cell.strip() != ""
            }
        except ValueError as error:
            yield Record(line, None, str(error))
            continue
        yield Record(line, fields)


def csv_cell(name: str, cell: str) -> Any:
    """A cell as the API's JSON would carry the field: lists and objects as JSON (a list may
    also be plain refs or SHAs, separated by spaces or commas); any other value as its text,
    which the schema reads as the API does (dates, numbers, true/false)."""
    field = DeploymentIn.model_fields.get(name)
    if field is None or not _structured(field.annotation):
        return cell
    text = cell.strip()
    if text.startswith(("[", "{")):
        try:
            return json.loads(text)
        except ValueError as error:
            raise ValueError(f"{name}: not valid JSON ({error})") from None
    item = _list_item(field.annotation)
    if item is None:
        raise ValueError(f"{name}: must be a JSON object")
    tokens = [token for token in LIST_SEPARATORS.split(text) if token]
    if isinstance(item, type) and issubclass(item, pydantic.BaseModel):
        first = next(iter(item.model_fields))  # a commit by its SHA alone
        return [{first: token} for token in tokens]
    return tokens


def _structured(annotation: Any) -> bool:
    """Whether a field holds a list or an object (read from JSON in a CSV cell)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        return any(_structured(arg) for arg in typing.get_args(annotation))
    if origin in (list, dict):
        return True
    return isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel | dict)


def _list_item(annotation: Any) -> Any:
    """The item type of a list field (through Optional and Annotated), or None."""
    origin = typing.get_origin(annotation)
    if origin is list:
        (item,) = typing.get_args(annotation)
        return typing.get_args(item)[0] if typing.get_origin(item) is typing.Annotated else item
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if (item := _list_item(arg)) is not None:
                return item
    return None


def records_read(text: str, *, file_format: str) -> Iterator[Record]:
    return jsonl_records(text) if file_format == "jsonl" else csv_records(text)


# --- importing one record ---------------------------------------------------------------------


def problems_text(error: pydantic.ValidationError) -> str:
    """Pydantic's errors in the words of the API's 422 (flux.api): "field: message; ..."."""
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item.get("loc", ()))
        parts.append(f"{where}: {item.get('msg', 'invalid')}" if where else item.get("msg", ""))
    return "; ".join(parts) or "The record is not valid."


def record_id(fields: dict[str, Any]) -> str:
    """The caller's id of a record: text (or a whole number) of 1 to 200 characters."""
    value = fields.get(ID_FIELD)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise ValidationError({ID_FIELD: "Every record needs an id (text or a whole number)."})
    value = value.strip()
    if len(value) > IDEMPOTENCY_KEY_MAX_LENGTH:
        raise ValidationError(
            {ID_FIELD: f"An id is at most {IDEMPOTENCY_KEY_MAX_LENGTH} characters."}
        )
    if (reason := text_refusal(value)) is not None:
        raise ValidationError({ID_FIELD: f"An id {reason}."})
    return value


def fingerprint(payload: DeploymentIn, board_key: str) -> str:
    """SHA-256 of what the record says: its fields in the schema's order, times in UTC, the
    defaults left out (so a field the schema gains later, or one given as its default,
    does not make an old record differ from itself)."""
    said = payload.model_dump(mode="json", exclude_defaults=True) | {"board": board_key}
    return hashlib.sha256(json.dumps(said, sort_keys=True).encode()).hexdigest()


def record_import(*, actor: Actor, fields: dict[str, Any]) -> Result:
    """Record one deployment unless its id was imported before, in one transaction with the
    claim of its id. Refusals come back as results, in the API's words; nothing is written."""
    try:
        key = record_id(fields)
        body = {name: value for name, value in fields.items() if name != ID_FIELD}
        payload = DeploymentIn.model_validate(body)
        with transaction.atomic():
            board = queries.board_get(actor=actor, key=payload.board, at_least=Role.EDITOR)
            digest = fingerprint(payload, board.key)
            claim, created = IdempotencyKey.objects.get_or_create(
                scope=import_scope(board.key), key=key, defaults={"fingerprint": digest}
            )
            if not created:
                if claim.fingerprint == digest:
                    return Result(Outcome.ALREADY)
                return Result(
                    Outcome.CONFLICT,
                    f"conflict: id {key!r} was imported into {board.key} before with other "
                    "content; skipped (the first import stands)",
                )
            answer = deployment_submit(actor=actor, payload=payload)
            claim.status = 201
            claim.content_type = "application/json"
            claim.body = answer.model_dump_json().encode()
            claim.save(update_fields=["status", "content_type", "body"])
    except pydantic.ValidationError as error:
        return Result(Outcome.REFUSED, _refused(INVALID_INPUT_STATUS, problems_text(error)))
    except (ValidationError, FluxError) as error:
        return Result(Outcome.REFUSED, _refused(refusal_status(error), refusal_message(error)))
    except DataError as error:  # as the API: a NUL the database refuses is bad input
        if "NUL" not in str(error):
            raise
        return Result(
            Outcome.REFUSED,
            _refused(
                INVALID_INPUT_STATUS, "Text contains a NUL character, which Flux cannot store."
            ),
        )
    return Result(Outcome.RECORDED, f"deployment {answer.id}")


def _refused(status: int, detail: str) -> str:
    return f"refused ({status}): {detail}"


# --- the command ------------------------------------------------------------------------------


class Command(BaseCommand):
    help = (
        "Record past deployments from a CSV or JSON-lines file, each as POST "
        "/api/v1/deployments would, idempotently by each record's id."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="The records: a CSV or JSON-lines file, or - for stdin.")
        parser.add_argument(
            "--as",
            dest="username",
            required=True,
            help="The member (an editor of the boards) the import acts for.",
        )
        parser.add_argument(
            "--format",
            dest="file_format",
            choices=FORMATS,
            help="csv or jsonl (default: from the file's extension, else its content).",
        )

    def handle(self, *args, file: str, username: str, file_format: str | None, **options):
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise CommandError(f"No active user {username!r}.")
        actor = import_actor(user)
        text = self._read(file)
        file_format = file_format or format_detect(file, text)
        if file_format == "csv":
            self._check_header(text)
        elif text.lstrip().startswith("["):
            raise CommandError("This is a JSON array: write one JSON object a line (JSON lines).")
        total = sum(1 for _ in records_read(text, file_format=file_format))
        counts = dict.fromkeys(Outcome, 0)
        with tqdm(total=total, unit="record", desc="import", disable=None) as bar:
            for record in records_read(text, file_format=file_format):
                if record.fields is None:
                    result = Result(Outcome.REFUSED, _refused(INVALID_INPUT_STATUS, record.problem))
                else:
                    result = record_import(actor=actor, fields=record.fields)
                counts[result.outcome] += 1
                if result.outcome in (Outcome.REFUSED, Outcome.CONFLICT):
                    with bar.external_write_mode():
                        self.stderr.write(f"line {record.line}: {result.message}")
                elif options["verbosity"] > 1:
                    with bar.external_write_mode():
                        self.stdout.write(f"line {record.line}: {result.outcome} {result.message}")
                bar.update()
        self.stdout.write(
            f"{total} records: {counts[Outcome.RECORDED]} recorded, "
            f"{counts[Outcome.ALREADY]} already imported, {counts[Outcome.CONFLICT]} conflicts, "
            f"{counts[Outcome.REFUSED]} refused."
        )
        failed = counts[Outcome.REFUSED] + counts[Outcome.CONFLICT]
        if failed:
            raise CommandError(f"{failed} of {total} records were not imported (see above).")

    @staticmethod
    def _read(file: str) -> str:
        if file == "-":
            return sys.stdin.read()
        try:
            # newline="": a line break inside a quoted CSV cell stays as it was written.
            with open(file, encoding="utf-8-sig", newline="") as opened:
                return opened.read()
        except (OSError, UnicodeDecodeError) as error:
            raise CommandError(f"Cannot read {file}: {error}") from None

    def _check_header(self, text: str) -> None:
        """The CSV must name an id column. A column the API does not know is ignored, as the
        API ignores an unknown key; said once, since it is more likely a misspelt header."""
        header = {name.strip() for name in next(csv.reader(io.StringIO(text, newline="")), [])}
        if ID_FIELD not in header:
            raise CommandError("The CSV has no id column: every record needs a caller-given id.")
        unknown = sorted(header - {ID_FIELD, *DeploymentIn.model_fields})
        if unknown:
            self.stderr.write(f"Ignoring columns the API does not know: {', '.join(unknown)}.")
