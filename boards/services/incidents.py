"""Incidents and rollbacks: what went wrong in production, and what put it right.

Each is one event on the board's log (`incident.opened`, `incident.resolved`,
`deployment.rolled_back`); the delivery projections read them for the change failure rate,
recovery time and deployment rework rate. An incident's id, like a deployment's, is the id of
the event that recorded it: the id the API answers with.
"""

import datetime

from django.core.exceptions import ValidationError
from django.db import transaction

from activity import clock, events, log
from activity.events import EventKind
from activity.log import Actor
from activity.models import Event
from boards.errors import NotFoundError, StateConflictError
from boards.models import MAX_ID, TITLE_MAX_LENGTH, Board, Role
from boards.permissions import role_require
from boards.services.common import board_lock
from boards.services.inputs import id_clean, text_clean


def moment_clean(moment: datetime.datetime | None, *, field: str) -> datetime.datetime:
    """A reported time (now when none): with a UTC offset, in a year Flux can store."""
    if moment is None:
        return clock.now()
    if moment.tzinfo is None or not 1970 <= moment.year <= 2200:
        raise ValidationError({field: "Times need a UTC offset and a year from 1970 to 2200."})
    return moment


def deployment_event_get(*, board: Board, deployment_id: int, field: str) -> Event:
    """The event that recorded deployment `deployment_id` on `board`; a clear 422 otherwise
    (for a deployment named in a request's body)."""
    id_clean(deployment_id, field=field)
    found = Event.objects.filter(
        pk=deployment_id, board=board, kind=EventKind.DEPLOYMENT_RECORDED
    ).first()
    if found is None:
        raise ValidationError({field: f"{board.key} has no deployment {deployment_id}."})
    return found


def incident_events_get(*, board: Board, incident_ids: list[int], field: str) -> list[Event]:
    """The events that opened incidents `incident_ids` on `board`; a clear 422 otherwise."""
    for incident_id in incident_ids:
        id_clean(incident_id, field=field)
    found = list(
        Event.objects.filter(pk__in=incident_ids, board=board, kind=EventKind.INCIDENT_OPENED)
    )
    missing = sorted(set(incident_ids) - {event.pk for event in found})
    if missing:
        named = ", ".join(str(i) for i in missing)
        raise ValidationError({field: f"{board.key} has no incident {named}."})
    return found


def _event_of_board_lock(*, actor: Actor, event_id: int, kind: EventKind, what: str) -> Event:
    """The event `event_id` of `kind`, with its board locked and the actor's role on it
    checked; the same 404 whether it does not exist or the actor may not see it."""
    if isinstance(event_id, bool) or not isinstance(event_id, int) or not 0 < event_id <= MAX_ID:
        raise NotFoundError(f"{what} not found.")
    found = Event.objects.filter(pk=event_id, kind=kind).values_list("board_id", flat=True)
    board_id = found.first()
    if board_id is None:
        raise NotFoundError(f"{what} not found.")
    board = board_lock(board_id)
    try:
        role_require(actor=actor, board=board, at_least=Role.EDITOR)
    except NotFoundError:
        raise NotFoundError(f"{what} not found.") from None
    event = Event.objects.get(pk=event_id)
    event.board = board
    return event


@transaction.atomic
def incident_open(
    *,
    actor: Actor,
    board_id: int,
    title: str,
    started_at: datetime.datetime | None = None,
    cause_deployment_id: int | None = None,
) -> Event:
    """Open an incident on a service (a board), optionally naming the deployment that caused
    it; returns its event, whose id is the incident's."""
    board = board_lock(board_id)
    role_require(actor=actor, board=board, at_least=Role.EDITOR)
    title = text_clean(title, field="title", max_length=TITLE_MAX_LENGTH)
    started = moment_clean(started_at, field="started_at")
    if cause_deployment_id is not None:
        deployment_event_get(board=board, deployment_id=cause_deployment_id, field="caused_by")
    return log.record(
        actor=actor,
        board=board,
        event=events.IncidentOpened(
            title=title, started_at=started.isoformat(), caused_by=cause_deployment_id
        ),
    )


def incident_resolution(incident_id: int) -> Event | None:
    """The event that resolved incident `incident_id`, if any."""
    return (
        Event.objects.filter(
            kind=EventKind.INCIDENT_RESOLVED, pk__gt=incident_id, payload__incident_id=incident_id
        )
        .order_by("pk")
        .first()
    )


@transaction.atomic
def incident_resolve(
    *,
    actor: Actor,
    incident_id: int,
    resolved_at: datetime.datetime | None = None,
    fixed_by_deployment_id: int | None = None,
) -> Event:
    """Resolve an open incident, optionally naming the deployment that restored service."""
    opened = _event_of_board_lock(
        actor=actor, event_id=incident_id, kind=EventKind.INCIDENT_OPENED, what="Incident"
    )
    incident = events.read(opened.kind, opened.payload)
    assert isinstance(incident, events.IncidentOpened)
    if incident_resolution(incident_id) is not None:
        raise StateConflictError(f"Incident {incident_id} is already resolved.")
    resolved = moment_clean(resolved_at, field="resolved_at")
    if resolved < datetime.datetime.fromisoformat(incident.started_at):
        raise ValidationError({"resolved_at": "An incident cannot be resolved before it began."})
    if fixed_by_deployment_id is not None:
        deployment_event_get(
            board=opened.board, deployment_id=fixed_by_deployment_id, field="fixed_by"
        )
    return log.record(
        actor=actor,
        board=opened.board,
        event=events.IncidentResolved(
            incident_id=incident_id,
            title=incident.title,
            resolved_at=resolved.isoformat(),
            fixed_by=fixed_by_deployment_id,
        ),
    )


def deployment_rollback(deployment_id: int) -> Event | None:
    """The event that rolled deployment `deployment_id` back, if any."""
    return (
        Event.objects.filter(
            kind=EventKind.DEPLOYMENT_ROLLED_BACK,
            pk__gt=deployment_id,
            payload__deployment_id=deployment_id,
        )
        .order_by("pk")
        .first()
    )


@transaction.atomic
def deployment_roll_back(
    *, actor: Actor, deployment_id: int, rolled_back_at: datetime.datetime | None = None
) -> Event:
    """Mark a successful deployment rolled back: from now on it is a failed change. The cards
    it delivered stay delivered (they did reach the environment); a change's lead time counts
    to the next deployment that shipped it and was not rolled back."""
    recorded = _event_of_board_lock(
        actor=actor, event_id=deployment_id, kind=EventKind.DEPLOYMENT_RECORDED, what="Deployment"
    )
    deployment = events.read(recorded.kind, recorded.payload)
    assert isinstance(deployment, events.DeploymentRecorded)
    fields = deployment.deployment
    if fields["status"] != "success" or deployment_rollback(deployment_id) is not None:
        state = "was already rolled back" if fields["status"] != "failed" else "failed"
        raise StateConflictError(
            f"Deployment {deployment_id} {state}: there is nothing to roll back."
        )
    at = moment_clean(rolled_back_at, field="rolled_back_at")
    finished = fields.get("finished_at")
    deployed = datetime.datetime.fromisoformat(finished) if finished else recorded.occurred_at
    if at < deployed:
        raise ValidationError(
            {"rolled_back_at": "A deployment cannot be rolled back before it finished."}
        )
    return log.record(
        actor=actor,
        board=recorded.board,
        event=events.DeploymentRolledBack(
            deployment_id=deployment_id,
            version=fields.get("version", ""),
            environment=fields["environment"],
            rolled_back_at=at.isoformat(),
        ),
    )
