"""Deployments reported by CI: one event, and the moves a successful one makes."""

import datetime
import re
from collections.abc import Iterable
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import transaction

from activity import events, log
from activity.log import Actor
from activity.models import Event
from boards.models import (
    ENVIRONMENT_MAX_LENGTH,
    LABEL_NAME_MAX_LENGTH,
    Card,
    Column,
    LabelKind,
    Role,
    Stage,
)
from boards.permissions import role_require
from boards.services.cards import card_label_add
from boards.services.common import (
    board_lock,
)
from boards.services.incidents import incident_events_get
from boards.services.inputs import (
    text_clean,
)
from boards.services.labels import label_get_or_create
from boards.services.moves import card_move

STATUSES = ("success", "failed", "rolled_back")  # rolled_back: went out, and was taken back
DEPLOY_STAGE = {"production": Stage.DEPLOYED, "staging": Stage.STAGING}
STAGE_ORDER = {stage.value: index for index, stage in enumerate(Stage)}
CARD_REF_RE = re.compile(r"\b([A-Z][A-Z0-9]{1,9})-(\d{1,9})\b")


@dataclass(frozen=True)
class Commit:
    sha: str
    timestamp: datetime.datetime | None = None
    message: str = ""


@dataclass(frozen=True)
class DeploymentResult:
    event: Event
    cards: list[Card]
    moved: list[Card]


def card_refs_in(text: str, *, board_key: str) -> list[int]:
    """Numbers of the board's card refs named in `text` ("fixes PAY-42" gives [42])."""
    return [int(number) for key, number in CARD_REF_RE.findall(text) if key == board_key]


@transaction.atomic
def deployment_record(
    *,
    actor: Actor,
    board_id: int,
    version: str,
    environment: str,
    status: str,
    card_numbers: Iterable[int] | None = None,
    commits: Iterable[Commit] = (),
    url: str = "",
    started_at: datetime.datetime | None = None,
    finished_at: datetime.datetime | None = None,
    hotfix: bool = False,
    fixes_incident_ids: Iterable[int] = (),
) -> DeploymentResult:
    """Record one deployment event; a successful one to production (or staging) also labels
    its cards with the release and moves them to Deployed (or Staging).

    Cards come from `card_numbers`, or else from the refs named in the commit messages.
    Unknown cards are refused before anything is written. A deployment made because of a
    production incident is a `hotfix`, or names the incidents it fixes: it counts as
    unplanned (the deployment rework rate). One reported as `rolled_back` delivers nothing.
    """
    board = board_lock(board_id)
    role_require(actor=actor, board=board, at_least=Role.EDITOR)
    # The version names the release label its cards get.
    version = text_clean(version, field="version", max_length=LABEL_NAME_MAX_LENGTH)
    environment = text_clean(
        environment, field="environment", max_length=ENVIRONMENT_MAX_LENGTH
    ).lower()
    if status not in STATUSES:
        raise ValidationError(
            {"status": "A deployment's status is success, failed or rolled_back."}
        )
    fixes = list(dict.fromkeys(fixes_incident_ids))
    incident_events_get(board=board, incident_ids=fixes, field="fixes_incidents")
    commits = list(commits)
    for field, moment in [("started_at", started_at), ("finished_at", finished_at)] + [
        ("commits", commit.timestamp) for commit in commits
    ]:
        if moment is not None and (moment.tzinfo is None or not 1970 <= moment.year <= 2200):
            raise ValidationError({field: "Times need a UTC offset and a year from 1970 to 2200."})
    if card_numbers is None:
        card_numbers = [n for c in commits for n in card_refs_in(c.message, board_key=board.key)]
    numbers = list(dict.fromkeys(card_numbers))  # named twice, deployed once
    cards = list(Card.objects.filter(board=board, number__in=numbers).select_related("column"))
    missing = sorted(set(numbers) - {card.number for card in cards})
    if missing:
        refs = ", ".join(f"{board.key}-{n}" for n in missing)
        raise ValidationError({"cards": f"{board.key} has no cards {refs}."})
    for card in cards:
        card.board = board
    cards.sort(key=lambda card: numbers.index(card.number))
    stage = DEPLOY_STAGE.get(environment)
    delivers = status == "success" and stage is not None
    target = board.columns.filter(stage=stage).order_by("position").first() if delivers else None
    if delivers and cards:
        # Every row the moves below will lock is locked now, before the first event: an event
        # takes the board's chain head until commit (activity.chain), so a lock taken after it
        # could deadlock with a person's move, which locks column, then card, then the head.
        if target is not None:
            Column.objects.select_for_update(of=("self",), no_key=True).filter(pk=target.pk).get()
        locked = Card.objects.select_for_update(of=("self",), no_key=True)
        list(locked.filter(pk__in=[card.pk for card in cards]).order_by("pk").values_list("pk"))
    # The deployment is recorded first, so the moves it makes can name it.
    fields: events.DeploymentFields = {
        "version": version,
        "environment": environment,
        "status": status,
        "url": url,
        "started_at": events.iso(started_at),
        "finished_at": events.iso(finished_at),
        "commits": [
            {
                "sha": c.sha,
                "timestamp": events.iso(c.timestamp),
                "message": c.message,
            }
            for c in commits
        ],
        "cards": [{"id": c.pk, "ref": c.ref, "number": c.number} for c in cards],
    }
    # Written only when set, so that an ordinary deployment's payload is as it always was.
    if hotfix:
        fields["hotfix"] = True
    if fixes:
        fields["fixes_incidents"] = fixes
    event = log.record(
        actor=actor,
        board=board,
        event=events.DeploymentRecorded(
            deployment=fields, moves_to=target.name if target is not None else None
        ),
    )
    moved: list[Card] = []
    if delivers and cards:
        label = label_get_or_create(
            actor=actor, board_id=board.pk, name=version, kind=LabelKind.RELEASE, colour="#059669"
        )
        for card in cards:
            card_label_add(actor=actor, card_id=card.pk, label_id=label.pk)
            # Deployments move cards forward only: a staging deployment that names a card
            # already in Deployed leaves it there.
            if (
                target is not None
                and stage is not None  # always, with a target
                and STAGE_ORDER[card.column.stage] < STAGE_ORDER[stage]
                and not card.archived
            ):
                result = card_move(
                    actor=actor,
                    card_id=card.pk,
                    to_column_id=target.pk,
                    expected_version=None,
                    stay_if_in_column=True,
                    deployment_id=event.pk,
                )
                if result.moved and result.changed_column:
                    moved.append(result.card)
    return DeploymentResult(event=event, cards=cards, moved=moved)
