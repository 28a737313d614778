"""The benchmark harness behind `make bench` (`python -m bench [--quick]`).

It builds its own data in its own PostgreSQL database (BENCH_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/flux_bench; re-created at each run and dropped at the end
unless --keep), starts a production-like server (uvicorn flux.asgi:application, DEBUG=0,
several workers, Redis), runs each benchmark (bench/run.py), and prints a table with the budget
and PASS/MISS of each figure, plus var/bench.json (median and p95 of each timing, ratios to
baselines measured in the same run, the machine and the commit). A budget lives next to the
benchmark that measures it (`bench.budgets`), so a regression shows up as MISS.
"""
