"""The fault-injection run behind `make chaos` (`python -m chaos [--quick]`).

It brings up a production-like Flux on this machine, all of it private to the run: its own
PostgreSQL cluster (initdb under var/chaos/pg, a free port) and its own Redis (no
persistence), uvicorn with three workers and production settings (bench.server), a Celery
worker and beat. 24 browser-like users (htmx moves and card edits, session and CSRF) and 8
API clients (moves and deployments, bearer token, Idempotency-Key) work on two boards while
the run breaks things, one scenario after the other:

- load: the users alone (2 minutes; QUICK=1: 30 s): no error, every accepted change in the
  log exactly once, every card in exactly one place, `verify_activity` clean;
- hostile: attacks while the users work (chaos/hostile.py): forged INSERTs into the log and
  the legacy seal refused by the database, an editor's token named after the board's admin
  logged as "<editor> via token <admin>", hostile input answered 4xx, never 5xx, usernames
  not probeable through assignees, a logged-out session's stream ended at once, the stream
  over the per-user cap a 429 with Retry-After; then the same checks as after the load;
- redis: Redis killed for 30 s (10 s) under load: zero 5xx, the board keeps accepting moves,
  and afterwards the rollups catch up to exactly what `rollups --rebuild` gives;
- pg: PostgreSQL restarted under load: only clean 503s with Retry-After, recovery within
  seconds without restarting anything, nothing accepted is lost;
- worker: the Celery worker SIGKILLed in the middle of a long rollup (a bulk backlog): the
  task is redelivered (late ack, visibility timeout) and the result equals the rebuild;
- beat: two beats at once: nothing counted twice.

It prints a table of every scenario with its figures and PASS/FAIL, writes var/chaos.json
and exits 1 on any FAIL. Logs of every process are kept in var/chaos/; the database
cluster and every process are stopped at the end. Traffic goes to 127.0.0.1 only.
"""
