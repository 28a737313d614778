"""Errors the services raise. Views and the API turn them into 4xx answers.

Bad input itself is `django.core.exceptions.ValidationError` (with a message per field).
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from boards.models import Card, Column


# A refusal carries everything an answer needs: its HTTP status, the sentence for a person
# (`message`: the class's docstring unless given), and for the API's problem details a title,
# the end of its type URL (`slug`) and any fields a client acts on (`details`).
class FluxError(Exception):
    status = 400
    title = "Refused"
    slug = "refused"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__doc__ or "")
        self.message = message or (self.__doc__ or "").strip()

    @property
    def details(self) -> dict:
        return {}


class NotFoundError(FluxError):
    """Not found."""

    status = 404
    title = "Not found"
    slug = "not-found"


class ForbiddenError(FluxError):
    """You do not have permission to do that on this board."""

    status = 403
    title = "Forbidden"
    slug = "forbidden"


class ConflictError(FluxError):
    """Someone else changed this card first; reload to see their change."""

    status = 409
    title = "Conflict"
    slug = "stale-version"

    def __init__(self, *, card: "Card", message: str = "") -> None:
        super().__init__(message)
        self.card = card

    @property
    def details(self) -> dict:
        return {"current_version": self.card.version}


class WipLimitError(FluxError):
    """The column is at its WIP limit and refuses more cards."""

    status = 409
    title = "Conflict"
    slug = "wip-limit"

    def __init__(self, *, column: "Column") -> None:
        super().__init__(
            f"{column.name} is at its WIP limit of {column.wip_limit}; "
            "finish a card there before adding another."
        )
        self.column = column


class StateConflictError(FluxError):
    """That has already happened."""

    status = 409
    title = "Conflict"
    slug = "conflict"


INVALID_INPUT_STATUS = 422


def refusal_message(error: Exception) -> str:
    """The sentence to show a person for a service's refusal."""
    if isinstance(error, FluxError):
        return error.message
    messages = getattr(error, "messages", None)
    return "; ".join(messages) if messages else str(error)


def refusal_status(error: Exception) -> int:
    """The HTTP status of a service's refusal: the error's own, 422 for bad input."""
    return error.status if isinstance(error, FluxError) else INVALID_INPUT_STATUS
