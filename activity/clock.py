"""The time a change happens at.

Services stamp their rows and events with `now()`. Seeding and imports replay history that
happened in the past with `frozen_at(...)`; everything else sees the wall clock.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime

from django.utils import timezone

_frozen: ContextVar[datetime | None] = ContextVar("flux_clock_frozen", default=None)


def now() -> datetime:
    """The current time, or the time set by an enclosing `frozen_at`."""
    return _frozen.get() or timezone.now()


@contextmanager
def frozen_at(moment: datetime) -> Iterator[None]:
    """Make `now()` return `moment` inside the block (for backfills and demo history)."""
    if timezone.is_naive(moment):
        raise ValueError("frozen_at needs an aware datetime")
    token = _frozen.set(moment)
    try:
        yield
    finally:
        _frozen.reset(token)
