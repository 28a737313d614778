"""Delivery metrics from the projections: DORA keys and flow, per service, over a window.

Medians and 85th percentiles, never means. Tiers follow the DORA 2023 report's bands, made
contiguous (the report leaves gaps between some):

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

from django.db.models import Q
from django.utils import timezone

from delivery.models import Deployment, DeploymentCard, Rework

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
    deployments: int
    failed_deployments: int
    per_day: float
    per_week: float
    per_month: float
    frequency_tier: str | None
    lead_time: Spread
    lead_time_tier: str | None
    cycle_time: Spread
    change_failure_rate: float | None
    change_failure_tier: str | None
    recovery_time: Spread
    recovery_tier: str | None
    throughput: int
    rework: int
    rework_rate: float | None


def production(board_ids: Sequence[int], window: Window):
    return Deployment.objects.filter(
        board_id__in=board_ids,
        environment="production",
        deployed_at__gte=window.start,
        deployed_at__lt=window.end,
    )


def delivery_metrics(*, board_id: int, window: Window) -> DeliveryMetrics:
    """Every delivery metric of one service over the window (see the module's table)."""
    deployments = production([board_id], window)
    total = deployments.count()
    failed = deployments.filter(status="failed").count()
    delivered = DeploymentCard.objects.filter(deployment__in=deployments)
    leads = list(delivered.values_list("lead_time", flat=True))
    cycles = [c for c in delivered.values_list("cycle_time", flat=True) if c is not None]
    per_day = total / window.days if window.days else 0.0
    lead = Spread.of(leads)
    rate = failed / total if total else None
    recovery = Spread.of(recovery_times(board_id=board_id, window=window))
    rework = Rework.objects.filter(
        board_id=board_id, occurred_at__gte=window.start, occurred_at__lt=window.end
    ).count()
    return DeliveryMetrics(
        window=window,
        deployments=total,
        failed_deployments=failed,
        per_day=per_day,
        per_week=per_day * 7,
        per_month=per_day * 30,
        frequency_tier=tier(per_day, (1, 1 / 7, 1 / 30), higher_is_better=True) if total else "low",
        lead_time=lead,
        lead_time_tier=tier(lead.p50, (DAY, WEEK, MONTH)),
        cycle_time=Spread.of(cycles),
        change_failure_rate=rate,
        change_failure_tier=tier(rate, (0.05000001, 0.10000001, 0.15000001)),
        recovery_time=recovery,
        recovery_tier=tier(recovery.p50, (HOUR, DAY, WEEK)),
        throughput=len(leads),
        rework=rework,
        rework_rate=rework / len(leads) if leads else None,
    )


def recovery_times(*, board_id: int, window: Window) -> list[float]:
    """Seconds from each failed production deployment to the next successful one."""
    times = []
    pending: datetime.datetime | None = None
    rows = (
        Deployment.objects.filter(board_id=board_id, environment="production")
        .filter(Q(deployed_at__gte=window.start) & Q(deployed_at__lt=window.end))
        .order_by("deployed_at", "event_id")
        .values_list("status", "deployed_at")
    )
    for status, at in rows:
        if status == "failed":
            pending = pending or at
        elif pending is not None:
            times.append((at - pending).total_seconds())
            pending = None
    return times
