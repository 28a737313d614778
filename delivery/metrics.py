"""Delivery metrics from the projections: DORA's keys and Flux's flow figures, per service, over
a window. The README's "Delivery metrics" table states each definition; this module is it.

- Deployment frequency: successful production deployments (not failed, not rolled back).
- Change lead time: per change (a commit with a time), from its commit to the first successful
  production deployment that shipped it and was not rolled back; a commit stamped after its
  deployment (clock skew) counts as zero, and is counted (`changes_clamped`).
- Change failure rate: production deployments that failed, were rolled back, or are named as
  the cause of an incident, over all production deployments.
- Failed deployment recovery time: one sample per run of consecutive failed or rolled-back
  production deployments (from the first to the next successful one), and one per incident
  (from its start to the first successful production deployment fixing it, else to its
  resolution); open ones give none and are counted.
- Deployment rework rate: unplanned production deployments (a hotfix, or one that fixes an
  incident) over production deployments.
- Card lead time (Flux's own, per card): from the first commit of the deployments that named
  the card (else its first entry into In Progress, else its creation) to its delivery.
- Cards sent back (Flux's own, formerly "rework rate"): cards that left Deployed for an
  earlier stage, per card delivered.

Each figure belongs to the window its deployment (a change's, a recovery's start) falls in.
Medians and 85th percentiles, never means. Tiers follow the DORA 2023 report's bands, made
contiguous (the report leaves gaps between some), and there is no tier without data:

| metric                  | elite        | high          | medium         | low        |
|-------------------------|--------------|---------------|----------------|------------|
| deployment frequency    | ≥ 1 a day    | ≥ 1 a week    | ≥ 1 a month    | less       |
| lead time (p50)         | < 1 day      | < 1 week      | < 1 month      | longer     |
| change failure rate     | ≤ 5 %        | ≤ 10 %        | ≤ 15 %         | higher     |
| recovery time (p50)     | < 1 hour     | < 1 day       | < 1 week       | longer     |
"""

import datetime
import math
from collections.abc import Sequence
from dataclasses import dataclass

from django.db.models import Count, Exists, OuterRef, Q
from django.utils import timezone

from delivery.models import Change, Deployment, DeploymentCard, Incident, Rework

HOUR, DAY, WEEK, MONTH = 3600, 86_400, 7 * 86_400, 30 * 86_400
TIERS = ("elite", "high", "medium", "low")


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile of sorted `values`, interpolated linearly; None when empty."""
    if not values:
        return None
    position = (len(values) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return values[low] + (values[high] - values[low]) * (position - low)


def tier(value: float | None, bands: tuple[float, float, float], *, higher_is_better=False):
    """The DORA tier of `value` against the elite/high/medium limits; None without data."""
    if value is None:
        return None
    for name, limit in zip(TIERS, bands, strict=False):
        if (value >= limit) if higher_is_better else (value < limit):
            return name
    return "low"


@dataclass(frozen=True)
class Window:
    start: datetime.datetime
    end: datetime.datetime

    @classmethod
    def last(cls, days: int, *, now: datetime.datetime | None = None) -> "Window":
        end = now or timezone.now()
        return cls(start=end - datetime.timedelta(days=days), end=end)

    @property
    def days(self) -> float:
        return (self.end - self.start).total_seconds() / DAY


@dataclass(frozen=True)
class Spread:
    """A sample's median, 85th percentile and size: how every duration is summarised, here
    over a window and by the daily rollups (delivery.rollups) over a day."""

    p50: float | None
    p85: float | None
    count: int

    @classmethod
    def of(cls, values: list[float]) -> "Spread":
        """The spread of `values`, in any order; None for both percentiles when empty."""
        ordered = sorted(values)
        return cls(percentile(ordered, 50), percentile(ordered, 85), len(ordered))


@dataclass(frozen=True)
class DeliveryMetrics:
    window: Window
    deployments: int  # production, any status
    successful_deployments: int
    failed_deployments: int  # status failed
    rolled_back_deployments: int
    failed_changes: int  # failed, rolled back or the cause of an incident
    unplanned_deployments: int  # hotfixes and fixes of incidents
    per_day: float  # successful production deployments
    per_week: float
    per_month: float
    frequency_tier: str | None
    change_lead_time: Spread
    changes_clamped: int  # commits stamped after their deployment, counted as zero
    lead_time_tier: str | None  # of the change lead time
    lead_time: Spread  # per card
    cycle_time: Spread
    change_failure_rate: float | None
    change_failure_tier: str | None
    recovery_time: Spread
    recovery_tier: str | None
    incidents: int  # begun in the window
    open_incidents: int  # of those, not restored yet
    deployment_rework_rate: float | None
    throughput: int
    sent_back: int
    sent_back_rate: float | None


FAILURES = ("failed", "rolled_back")


def production(board_ids: Sequence[int], window: Window):
    return Deployment.objects.filter(
        board_id__in=board_ids,
        environment="production",
        deployed_at__gte=window.start,
        deployed_at__lt=window.end,
    )


def delivery_metrics(*, board_id: int, window: Window) -> DeliveryMetrics:
    """Every delivery metric of one service over the window (see the module's definitions)."""
    deployments = production([board_id], window)
    caused = Incident.objects.filter(board_id=board_id, caused_by=OuterRef("event_id"))
    counts = deployments.aggregate(
        total=Count("pk"),
        successful=Count("pk", filter=Q(status="success")),
        failed=Count("pk", filter=Q(status="failed")),
        rolled_back=Count("pk", filter=Q(status="rolled_back")),
        failed_changes=Count("pk", filter=Q(status__in=FAILURES) | Q(Exists(caused))),
        unplanned=Count("pk", filter=Q(hotfix=True) | ~Q(fixes=[])),
    )
    total, successful = counts["total"], counts["successful"]
    changes = list(
        Change.objects.filter(
            board_id=board_id,
            deployed_at__gte=window.start,
            deployed_at__lt=window.end,
            lead_time__isnull=False,
        ).values_list("lead_time", "committed_at", "deployed_at")
    )
    change_lead = Spread.of([lead for lead, _, _ in changes if lead is not None])
    delivered = DeploymentCard.objects.filter(deployment__in=deployments)
    leads = list(delivered.values_list("lead_time", flat=True))
    cycles = [c for c in delivered.values_list("cycle_time", flat=True) if c is not None]
    per_day = successful / window.days if window.days else 0.0
    rate = counts["failed_changes"] / total if total else None
    samples, incidents, open_incidents = recovery_samples(board_id=board_id, window=window)
    recovery = Spread.of(samples)
    sent_back = Rework.objects.filter(
        board_id=board_id, occurred_at__gte=window.start, occurred_at__lt=window.end
    ).count()
    return DeliveryMetrics(
        window=window,
        deployments=total,
        successful_deployments=successful,
        failed_deployments=counts["failed"],
        rolled_back_deployments=counts["rolled_back"],
        failed_changes=counts["failed_changes"],
        unplanned_deployments=counts["unplanned"],
        per_day=per_day,
        per_week=per_day * 7,
        per_month=per_day * 30,
        frequency_tier=tier(per_day, (1, 1 / 7, 1 / 30), higher_is_better=True) if total else None,
        change_lead_time=change_lead,
        changes_clamped=sum(
            bool(committed and deployed and committed > deployed)
            for _, committed, deployed in changes
        ),
        lead_time_tier=tier(change_lead.p50, (DAY, WEEK, MONTH)),
        lead_time=Spread.of(leads),
        cycle_time=Spread.of(cycles),
        change_failure_rate=rate,
        change_failure_tier=tier(rate, (0.05000001, 0.10000001, 0.15000001)),
        recovery_time=recovery,
        recovery_tier=tier(recovery.p50, (HOUR, DAY, WEEK)),
        incidents=incidents,
        open_incidents=open_incidents,
        deployment_rework_rate=counts["unplanned"] / total if total else None,
        throughput=len(leads),
        sent_back=sent_back,
        sent_back_rate=sent_back / len(leads) if leads else None,
    )


def recovery_samples(*, board_id: int, window: Window) -> tuple[list[float], int, int]:
    """Seconds to recover, for each failure that began in the window: each run of failed or
    rolled-back production deployments (to the next successful one) and each incident (to
    its restore); with how many incidents began in the window, and how many are still open."""
    samples = []
    prod = Deployment.objects.filter(board_id=board_id, environment="production")
    before = (
        prod.filter(deployed_at__lt=window.start)
        .order_by("-deployed_at", "-event_id")
        .values_list("status", flat=True)
        .first()
    )
    # A run that began before the window is that window's, even where it goes on in this one.
    inherited = before in FAILURES
    pending: datetime.datetime | None = None
    rows = prod.filter(deployed_at__gte=window.start).order_by("deployed_at", "event_id")
    for status, at in rows.values_list("status", "deployed_at").iterator():
        if status in FAILURES:
            if not inherited and pending is None:
                if at >= window.end:
                    break  # runs that begin after the window are not its own
                pending = at
        elif status == "success":
            if pending is not None:
                samples.append((at - pending).total_seconds())
            pending, inherited = None, False
            if at >= window.end:
                break
    incidents = list(
        Incident.objects.filter(
            board_id=board_id, started_at__gte=window.start, started_at__lt=window.end
        ).values_list("started_at", "restored_at")
    )
    samples += [(end - start).total_seconds() for start, end in incidents if end is not None]
    return samples, len(incidents), sum(end is None for _, end in incidents)
