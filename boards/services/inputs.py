"""Input cleaning: the rules every service applies, so the browser, API and admin agree."""

import datetime
from typing import Any, Literal, overload

from django.core.exceptions import ValidationError

from boards.models import (
    MAX_ID,
    WIP_LIMIT_MAX,
    LabelKind,
    Role,
    Stage,
)


def text_clean(value: str, *, field: str, max_length: int, required: bool = True) -> str:
    if not isinstance(value, str):
        raise ValidationError({field: "Must be text."})
    value = value.replace("\x00", "").strip()
    if required and not value:
        raise ValidationError({field: "This field cannot be empty."})
    if len(value) > max_length:
        raise ValidationError({field: f"At most {max_length} characters (this has {len(value)})."})
    return value


@overload
def id_clean(value: Any, *, field: str, required: Literal[True] = True) -> int: ...
@overload
def id_clean(value: Any, *, field: str, required: bool) -> int | None: ...
def id_clean(value: Any, *, field: str, required: bool = True) -> int | None:
    """A database id from any caller: an int in range, or a clear ValidationError."""
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_ID:
        raise ValidationError({field: "Must be the id of an existing object."})
    return value


def choice_clean[C: (Stage, Role, LabelKind)](value: str, *, field: str, choices: type[C]) -> C:
    try:
        return choices(value)
    except ValueError:
        allowed = ", ".join(choices.values)
        raise ValidationError({field: f"Must be one of: {allowed}."}) from None


def wip_limit_clean(value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= WIP_LIMIT_MAX:
        raise ValidationError(
            {"wip_limit": f"A WIP limit is a whole number from 1 to {WIP_LIMIT_MAX}."}
        )
    return value


def due_date_clean(value: datetime.date | None) -> datetime.date | None:
    if value is None:
        return None
    if isinstance(value, datetime.datetime) or not isinstance(value, datetime.date):
        raise ValidationError({"due_date": "Must be a date."})
    return value


# A keyword argument the caller did not pass (None is a value: "no due date").
UNSET: Any = object()
