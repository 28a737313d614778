"""Project-level endpoints: liveness (/healthz) and readiness (/readyz)."""

import logging
import time

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

logger = logging.getLogger(__name__)


def _probe(check) -> dict:
    started = time.perf_counter()
    try:
        check()
    except Exception as exc:  # a health check reports every failure, whatever it is
        # The details (hosts, users) go to the log, not to an unauthenticated caller.
        logger.warning("health check %s failed: %s", check.__name__, exc)
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _redis() -> None:
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    finally:
        client.close()


@login_not_required
@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """JSON state of the database and Redis; 503 when the database is unreachable."""
    database = {"engine": connection.vendor, **_probe(_database)}
    redis_state = {"configured": bool(settings.REDIS_URL)}
    if settings.REDIS_URL:
        redis_state |= _probe(_redis)
    healthy = database["ok"]
    degraded = settings.REDIS_URL and not redis_state.get("ok")
    status = "ok" if healthy and not degraded else ("degraded" if healthy else "unavailable")
    return JsonResponse(
        {"status": status, "database": database, "redis": redis_state},
        status=200 if healthy else 503,
    )


_migrations_seen_applied = False


def _migrations() -> None:
    """Every migration this code knows of is applied (once seen, remembered: a process's
    code does not change, and the check reads every migration file)."""
    global _migrations_seen_applied
    if _migrations_seen_applied:
        return
    executor = MigrationExecutor(connection)
    pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if pending:
        raise RuntimeError(f"{len(pending)} migration(s) not applied")
    _migrations_seen_applied = True


@login_not_required
@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """200 when this process can serve: database reachable, migrations applied and Redis
    reachable (when configured); else 503. Each check's result is in the JSON body."""
    checks = {"database": _probe(_database)}
    checks["migrations"] = _probe(_migrations) if checks["database"]["ok"] else {"ok": False}
    if settings.REDIS_URL:
        checks["redis"] = _probe(_redis)
    ready = all(check["ok"] for check in checks.values())
    return JsonResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks},
        status=200 if ready else 503,
    )
