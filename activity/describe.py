"""Events in words: "alice moved PAY-42 from In Review to Staging"."""

from activity.models import Event


def _field_names(changes: dict) -> str:
    names = [name.replace("_", " ") for name in changes]
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def event_describe(event: Event, *, with_card: bool = True) -> str:
    """One sentence, without the actor, saying what the event changed."""
    p = event.payload
    ref = p.get("ref") or (p.get("card") or {}).get("ref") or "a card"
    card = f" {ref}" if with_card else ""
    match event.kind:
        case "card.created":
            return f"created{card} in {p['card']['column']}"
        case "card.moved":
            if p["from"]["column_id"] == p["to"]["column_id"]:
                return f"reordered{card} in {p['to']['column']}"
            return f"moved{card} from {p['from']['column']} to {p['to']['column']}"
        case "card.updated":
            of = f" of {ref}" if with_card else ""
            return f"changed the {_field_names(p['changes'])}{of}"
        case "card.archived":
            return f"archived{card}"
        case "card.restored":
            return f"restored{card} to {p['column']}"
        case "card.labelled":
            return f"labelled{card} {p['label']['name']}"
        case "card.unlabelled":
            source = f" from {ref}" if with_card else ""
            return f"removed the label {p['label']['name']}{source}"
        case "card.assigned":
            names = [p["names"].get(str(pk), "?") for pk in p["new"]]
            return f"assigned{card} to {', '.join(names)}" if names else f"unassigned{card}"
        case "comment.added":
            return f"commented on {ref}" if with_card else "commented"
        case "board.created":
            return f"created the board {p['board']['name']}"
        case "board.updated":
            return f"changed the board's {_field_names(p['changes'])}"
        case "column.created":
            return f"added the column {p['column']['name']}"
        case "column.updated":
            changes = p["changes"]
            if "name" in changes:
                rest = {k: v for k, v in changes.items() if k != "name"}
                also = f" and changed its {_field_names(rest)}" if rest else ""
                return (
                    f"renamed the column {changes['name']['old']} to {changes['name']['new']}{also}"
                )
            return f"changed the {_field_names(changes)} of a column"
        case "label.created":
            return f"created the label {p['label']['name']}"
        case "label.updated":
            return f"changed the label {p['new']['name']}"
        case "membership.set":
            return f"made {p['username']} {p['new']}"
        case "membership.removed":
            return f"removed {p['username']} from the board"
        case "deployment.recorded":
            d = p["deployment"]
            version = f" {d['version']}" if d.get("version") else ""
            failed = " (failed)" if d.get("status") == "failed" else ""
            cards = len(d.get("cards", []))
            named = f" with {cards} card{'s' if cards != 1 else ''}" if cards else ""
            return f"deployed{version} to {d['environment']}{named}{failed}"
    return event.kind.replace(".", " ")
