"""Figures, budgets, the table and var/bench.json."""

import json
import statistics
from dataclasses import asdict, dataclass, field

from bench.env import ROOT


def median_p95(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered) + 0.5) - 1))]
    return statistics.median(ordered), p95


@dataclass
class Figure:
    """One measured figure against its budget (`limit`, read with `op`: "<=" or ">=")."""

    bench: str
    name: str
    unit: str
    median: float | None = None
    p95: float | None = None
    samples: int = 0
    limit: float | None = None
    op: str = "<="
    on: str = "median"  # which statistic the budget reads
    ratio: float | None = None
    baseline: str = ""
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.limit is None:
            return "-" if self.median is not None else "n/a"
        value = self.p95 if self.on == "p95" else self.median
        if value is None:
            return "n/a"
        ok = value <= self.limit if self.op == "<=" else value >= self.limit
        return "PASS" if ok else "MISS"


def timed(bench, name, unit, values, **kwargs) -> Figure:
    median, p95 = median_p95(values)
    return Figure(bench=bench, name=name, unit=unit, median=median, p95=p95,
                  samples=len(values), **kwargs)  # fmt: skip


def single(bench, name, unit, value, **kwargs) -> Figure:
    return Figure(bench=bench, name=name, unit=unit, median=value, p95=value,
                  samples=0 if value is None else 1, **kwargs)  # fmt: skip


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return f"{int(value):,}"


def table(figures: list[Figure]) -> str:
    rows = [("benchmark", "figure", "median", "p95", "unit", "budget", "ratio", "result")]
    for f in figures:
        budget = f"{f.op} {_fmt(f.limit)} ({f.on})" if f.limit is not None else ""
        ratio = f"{f.ratio:.2f}x {f.baseline}" if f.ratio is not None else ""
        rows.append((f.bench, f.name, _fmt(f.median), _fmt(f.p95), f.unit, budget, ratio,
                     f.status + (f" ({f.note})" if f.note else "")))  # fmt: skip
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False))
                     + "  " + row[-1])  # fmt: skip
        if index == 0:
            lines.append("-" * (sum(widths) + 2 * len(widths) + 8))
    return "\n".join(lines)


def write_json(figures: list[Figure], meta: dict) -> str:
    path = ROOT / "var" / "bench.json"
    path.parent.mkdir(exist_ok=True)
    data = {**meta, "figures": [{**asdict(f), "status": f.status} for f in figures]}
    path.write_text(json.dumps(data, indent=2, default=str))
    return str(path)
