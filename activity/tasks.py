"""Celery tasks: thin wrappers around activity.rollups."""

from celery import shared_task

from activity.rollups import rollups_advance


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def rollups_advance_task() -> int:
    """Bring the delivery projections up to date (idempotent; safe to run twice at once)."""
    return rollups_advance()
