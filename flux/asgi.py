"""The ASGI entry point (uvicorn in production and in `make run`).

Django runs each request inside its own ThreadSensitiveContext, which keeps a thread for
the request's sync steps until the response ends. That is right for ordinary requests, but a
live board stream stays open for hours: holding a thread each would cap a process at a few
hundred viewers. Streams therefore run without that context; their few short sync steps
(sessions, the permission check) share the process's one sync thread or a pooled one.

Django keeps a cache client per request context, and its Redis cache never closes its
connection pool (`close()` is a no-op); an ordinary request's pool goes with its context, but
a stream's was kept alive long after the stream (hundreds of idle Redis connections after a
viewer opened and closed many streams). A stream therefore closes its own context's cache
connections when it ends.
"""

import os
import re

import django
from django.core.cache import caches
from django.core.handlers.asgi import ASGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flux.settings")

LONG_LIVED = re.compile(r"^/b/[A-Za-z][A-Za-z0-9]{1,9}/live/$")


class FluxASGIHandler(ASGIHandler):
    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and LONG_LIVED.match(scope["path"]):
            try:
                await self.handle(scope, receive, send)
            finally:
                cache_connections_close()
            return
        await super().__call__(scope, receive, send)


def cache_connections_close() -> None:
    """Disconnect the Redis pools of the caches this context made (sessions, mostly)."""
    for cache in caches.all(initialized_only=True):
        client = cache.__dict__.get("_cache")  # RedisCache's client, once it was made
        for pool in getattr(client, "_pools", {}).values():
            pool.disconnect()


django.setup(set_prefix=False)

from flux.middleware import BodySizeLimitASGI  # noqa: E402  (needs the apps loaded)

# Oversized request bodies get a 413 before Django spools them (flux.middleware).
application = BodySizeLimitASGI(FluxASGIHandler())
