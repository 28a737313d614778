"""The benchmark harness's own pieces that need no server: statistics, budgets, the table."""

from bench.report import Figure, median_p95, single, table, timed


def test_median_and_p95_of_repeated_timings():
    assert median_p95([]) == (None, None)
    assert median_p95([5.0]) == (5.0, 5.0)
    median, p95 = median_p95([float(n) for n in range(1, 101)])
    assert median == 50.5
    assert p95 == 96.0


def test_a_figure_passes_or_misses_its_budget_and_says_when_it_was_not_measured():
    assert timed("page", "p50", "ms", [10.0, 12.0, 30.0], limit=15).status == "PASS"
    assert timed("page", "p95", "ms", [10.0, 12.0, 30.0], limit=15, on="p95").status == "MISS"
    assert single("export", "rate", "rows/s", 250_000.0, limit=200_000, op=">=").status == "PASS"
    assert single("live", "p95", "ms", None, limit=500).status == "n/a"
    assert Figure(bench="x", name="y", unit="s", median=1.0).status == "-"


def test_the_table_shows_each_figure_with_its_budget_and_result():
    text = table([single("rollups", "incremental", "s", 0.2, limit=0.5, note="1000 pending")])
    assert "rollups" in text
    assert "<= 0.5 (median)" in text
    assert "PASS (1000 pending)" in text
