"""Small display helpers for the board templates."""

from datetime import datetime

from django import template
from django.utils import timezone

from activity.describe import event_actor
from boards.models import LABEL_NAME_MAX_LENGTH, TITLE_MAX_LENGTH, Card, Stage

register = template.Library()

# What an input may hold, named as the page names it; the values are the models' own limits.
MAX_LENGTHS = {"card title": TITLE_MAX_LENGTH, "release name": LABEL_NAME_MAX_LENGTH}


@register.simple_tag
def max_length(what: str) -> int:
    """The most characters `what` ("card title", ...) may hold: the limit the server applies."""
    return MAX_LENGTHS[what]


@register.filter
def age(moment: datetime | None) -> str:
    """How long ago, in the largest whole unit: "5m", "3h", "12d", "8w"."""
    if moment is None:
        return ""
    seconds = max(0, int((timezone.now() - moment).total_seconds()))
    for unit, size in (("w", 604_800), ("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return "now"


@register.filter
def overdue(card: Card) -> bool:
    """Past its due date and not yet shipped: a card in a Deployed column is done, so its
    date is history, not a warning. (Reads `card.column`: load it with the card.)"""
    due = card.due_date
    return due is not None and due < timezone.localdate() and card.column.stage != Stage.DEPLOYED


@register.filter
def initials(user) -> str:
    """Two letters for an avatar, from a user or a plain name."""
    name = user if isinstance(user, str) else user.get_full_name() or user.get_username()
    name = name.strip()
    parts = name.split()
    return (parts[0][0] + parts[-1][0] if len(parts) > 1 else name[:2]).upper()


@register.filter
def who(event) -> str:
    """Who made an event (or a deployment) happen: "maya", or "maya via token deploy-bot"
    (`activity.describe.actor_label`, the one rule every surface uses)."""
    return event_actor(event)
