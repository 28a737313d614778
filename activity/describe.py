"""Events in words: "alice moved PAY-42 from In Review to Staging", and who did it:
"alice via token deploy-bot"."""

from activity import events
from activity.events import EventKind
from activity.models import Event

# Every kind has its own sentence below; tests/activity/test_catalogue.py holds each one to it.
KINDS_DESCRIBED: frozenset[EventKind] = frozenset(
    {
        EventKind.BOARD_CREATED,
        EventKind.BOARD_UPDATED,
        EventKind.COLUMN_CREATED,
        EventKind.COLUMN_UPDATED,
        EventKind.MEMBERSHIP_SET,
        EventKind.MEMBERSHIP_REMOVED,
        EventKind.LABEL_CREATED,
        EventKind.LABEL_UPDATED,
        EventKind.CARD_CREATED,
        EventKind.CARD_UPDATED,
        EventKind.CARD_MOVED,
        EventKind.CARD_ARCHIVED,
        EventKind.CARD_RESTORED,
        EventKind.CARD_LABELLED,
        EventKind.CARD_UNLABELLED,
        EventKind.CARD_ASSIGNED,
        EventKind.COMMENT_ADDED,
        EventKind.DEPLOYMENT_RECORDED,
        EventKind.DEPLOYMENT_ROLLED_BACK,
        EventKind.INCIDENT_OPENED,
        EventKind.INCIDENT_RESOLVED,
    }
)


# How a token (or integration) acting for a person is named after them. The CSV export's
# COPY statement (delivery/export.py) binds this very string, so both paths agree.
VIA_PREFIX = " via token "


def actor_label(actor_name: str, via: str = "") -> str:
    """Who did it, in words, the one way every surface says it: "maya", or "maya via token
    deploy-bot" when a token acted for maya. `actor_name` is the person (or a system actor's
    name); `via` the token's name, never shown as if it were a person."""
    return f"{actor_name}{VIA_PREFIX}{via}" if via else actor_name


def event_actor(event: Event) -> str:
    """`actor_label` of an event (or of anything with `actor_name` and, maybe, `via`)."""
    return actor_label(event.actor_name, getattr(event, "via", "") or "")


def _field_names(changes: dict) -> str:
    names = [name.replace("_", " ") for name in changes]
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def _ref(payload: events.Payload) -> str:
    match payload:
        case events.CardCreated(card=card):
            return card.get("ref") or "a card"
        case events.CardChange(ref=ref) | events.CommentAdded(ref=ref):
            return ref or "a card"
    return "a card"


def event_describe(event: Event, *, with_card: bool = True) -> str:
    """One sentence, without the actor, saying what the event changed (for a payload that
    does not fit its kind, the kind itself, so that a feed still lists the event)."""
    try:
        payload = events.read(event.kind, event.payload)
    except events.MalformedEvent:
        return event.kind.replace(".", " ")
    ref = _ref(payload)
    card = f" {ref}" if with_card else ""
    match payload:
        case events.CardCreated(card=created):
            return f"created{card} in {created['column']}"
        case events.CardMoved(from_=before, to=after):
            if before["column_id"] == after["column_id"]:
                return f"reordered{card} in {after['column']}"
            return f"moved{card} from {before['column']} to {after['column']}"
        case events.CardUpdated(changes=changes):
            of = f" of {ref}" if with_card else ""
            return f"changed the {_field_names(changes)}{of}"
        case events.CardArchived():
            return f"archived{card}"
        case events.CardRestored(column=column):
            return f"restored{card} to {column}"
        case events.CardLabelled(label=label):
            return f"labelled{card} {label['name']}"
        case events.CardUnlabelled(label=label):
            source = f" from {ref}" if with_card else ""
            return f"removed the label {label['name']}{source}"
        case events.CardAssigned(new=new, names=names):
            people = [names.get(str(pk), "?") for pk in new]
            return f"assigned{card} to {', '.join(people)}" if people else f"unassigned{card}"
        case events.CommentAdded():
            return f"commented on {ref}" if with_card else "commented"
        case events.BoardCreated(board=board):
            return f"created the board {board['name']}"
        case events.BoardUpdated(changes=changes):
            return f"changed the board's {_field_names(changes)}"
        case events.ColumnCreated(column=column):
            return f"added the column {column['name']}"
        case events.ColumnUpdated(changes=changes):
            if "name" in changes:
                rest = {k: v for k, v in changes.items() if k != "name"}
                also = f" and changed its {_field_names(rest)}" if rest else ""
                return (
                    f"renamed the column {changes['name']['old']} to {changes['name']['new']}{also}"
                )
            return f"changed the {_field_names(changes)} of a column"
        case events.LabelCreated(label=label):
            return f"created the label {label['name']}"
        case events.LabelUpdated(new=new):
            return f"changed the label {new['name']}"
        case events.MembershipSet(username=username, new=role):
            return f"made {username} {role}"
        case events.MembershipRemoved(username=username):
            return f"removed {username} from the board"
        case events.DeploymentRecorded(deployment=d):
            version = f" {d['version']}" if d.get("version") else ""
            failed = {"failed": " (failed)", "rolled_back": " (rolled back)"}.get(
                d.get("status", ""), ""
            )
            cards = len(d.get("cards", []))
            named = f" with {cards} card{'s' if cards != 1 else ''}" if cards else ""
            hotfix = " as a hotfix" if d.get("hotfix") else ""
            fixes = d.get("fixes_incidents") or []
            fixing = f", fixing incident {', '.join(f'#{i}' for i in fixes)}" if fixes else ""
            return f"deployed{version} to {d['environment']}{named}{hotfix}{fixing}{failed}"
        case events.DeploymentRolledBack(
            deployment_id=deployment, version=version, environment=env
        ):
            named = f" {version}" if version else f" #{deployment}"
            return f"rolled back the deployment{named} in {env}"
        case events.IncidentOpened(title=title, caused_by=cause):
            caused = f", caused by deployment #{cause}" if cause else ""
            return f"opened the incident “{title}”{caused}"
        case events.IncidentResolved(title=title, fixed_by=fix):
            fixed = f" with deployment #{fix}" if fix else ""
            return f"resolved the incident “{title}”{fixed}"
    return event.kind.replace(".", " ")
