"""Errors the services raise. Views and the API turn them into 4xx answers.

Bad input itself is `django.core.exceptions.ValidationError` (with a message per field).
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from boards.models import Card, Column


class FluxError(Exception):
    status = 400

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__doc__ or "")
        self.message = message or (self.__doc__ or "").strip()


class NotFoundError(FluxError):
    """Not found."""

    status = 404


class ForbiddenError(FluxError):
    """You do not have permission to do that on this board."""

    status = 403


class ConflictError(FluxError):
    """Someone else changed this card first; reload to see their change."""

    status = 409

    def __init__(self, *, card: "Card", message: str = "") -> None:
        super().__init__(message)
        self.card = card


class WipLimitError(FluxError):
    """The column is at its WIP limit and refuses more cards."""

    status = 409

    def __init__(self, *, column: "Column") -> None:
        super().__init__(
            f"{column.name} is at its WIP limit of {column.wip_limit}; "
            "finish a card there before adding another."
        )
        self.column = column


def refusal_message(error: Exception) -> str:
    """The sentence to show a person for a service's refusal."""
    if isinstance(error, FluxError):
        return error.message
    messages = getattr(error, "messages", None)
    return "; ".join(messages) if messages else str(error)
