"""`python -m flux.servicecheck DATABASE_URL REDIS_URL`: one clear line when a service is down.

`make test` runs this first so a stopped PostgreSQL or Redis reads as an instruction, not as
a page of connection tracebacks.
"""

import sys

import psycopg
import redis


def main(database_url: str, redis_url: str) -> int:
    server_url = database_url.rsplit("/", 1)[0] + "/postgres"
    try:
        psycopg.connect(server_url, connect_timeout=3).close()
    except psycopg.Error as error:
        text = str(error).strip()
        reason = text.splitlines()[-1].strip() if text else type(error).__name__
        print(
            f"PostgreSQL is not reachable at {database_url} ({reason}). Start it "
            "(pg_ctlcluster <version> main start, or docker compose up -d postgres) "
            "or point TEST_DATABASE_URL at one.",
            file=sys.stderr,
        )
        return 1
    try:
        redis.Redis.from_url(redis_url, socket_connect_timeout=3).ping()
    except redis.RedisError as error:
        print(
            f"Redis is not reachable at {redis_url} ({error}). Start it "
            "(redis-server --daemonize yes, or docker compose up -d redis) "
            "or point TEST_REDIS_URL at one.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
