"""Each scenario's figures and checks, the table, and var/chaos.json."""

import json
from dataclasses import dataclass, field

from bench.env import ROOT
from bench.report import median_p95
from chaos.traffic import Record

SUMMARY = ["requests", "errors", "5xx", "clean 503", "recovery s", "catch-up s"]


@dataclass
class Scenario:
    name: str
    figures: dict = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(self.checks.values())

    def check(self, name: str, ok: bool) -> bool:
        self.checks[name] = bool(ok)
        return bool(ok)


def traffic_figures(records: list[Record]) -> dict:
    """Counts and latencies of a stretch of traffic."""
    writes = [r for r in records if r.op in ("move", "edit", "api-move", "deploy")]
    moves = [r.ms for r in records if r.op in ("move", "api-move") and 200 <= r.status < 300]
    p50, p95 = median_p95(moves)
    failures: dict[str, int] = {}
    for r in records:
        if r.is_error:
            label = f"{r.op} {r.status or r.error}" + (" retry-after" if r.clean_503 else "")
            failures[label] = failures.get(label, 0) + 1
    return {
        "requests": len(records),
        "errors": sum(r.is_error for r in records),
        "5xx": sum(r.status >= 500 for r in records),
        "clean 503": sum(r.clean_503 for r in records),
        "writes accepted": sum(200 <= r.status < 300 for r in writes),
        "refused 409 / 422": f"{sum(r.status == 409 for r in records)} / "
        f"{sum(r.status == 422 for r in records)}",
        "pages served": sum(r.op == "page" and r.status == 200 for r in records),
        "move p50 ms": round(p50, 1) if p50 is not None else None,
        "move p95 ms": round(p95, 1) if p95 is not None else None,
        "failures": failures,
    }


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) or "none"
    return str(value)


def table(scenarios: list[Scenario]) -> str:
    rows = [("scenario", *SUMMARY, "result")]
    for s in scenarios:
        rows.append((s.name, *(_fmt(s.figures.get(k)) for k in SUMMARY),
                     "PASS" if s.passed else "FAIL"))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        cells = zip(row, widths, strict=True)
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(cells)))  # fmt: skip
        if index == 0:
            lines.append("-" * len(lines[0]))
    for s in scenarios:
        lines.append("")
        lines.append(f"{s.name}: {'PASS' if s.passed else 'FAIL'}")
        for name, value in s.figures.items():
            if name not in SUMMARY:
                lines.append(f"    {name}: {_fmt(value)}")
        for name, ok in s.checks.items():
            lines.append(f"    [{'ok' if ok else 'FAIL'}] {name}")
        for note in s.notes:
            lines.append(f"    note: {note}")
    return "\n".join(lines)


def write_json(scenarios: list[Scenario], meta: dict) -> str:
    path = ROOT / "var" / "chaos.json"
    path.parent.mkdir(exist_ok=True)
    data = {
        **meta,
        "passed": all(s.passed for s in scenarios),
        "scenarios": [{"name": s.name, "result": "PASS" if s.passed else "FAIL",
                       "figures": s.figures, "checks": s.checks, "notes": s.notes}
                      for s in scenarios],
    }  # fmt: skip
    path.write_text(json.dumps(data, indent=2, default=str))
    return str(path)
