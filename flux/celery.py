"""The Celery app. Tasks live in each app's tasks.py as thin wrappers around plain functions."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flux.settings")

app = Celery("flux")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _lost_connections_are_connection_errors() -> None:
    """A worker that loses Redis must survive it, not die of an AttributeError.

    kombu 5.7's Redis channel, once its connection is gone, still tries to reach Redis to
    hand back unacknowledged tasks or to acknowledge a task that just finished; it then
    fails looking up connection parameters on None: the channel's transport is gone, or
    the transport is still there but its connection (`client`) was closed under it (`make
    chaos` killed the worker all three ways). Raising a connection error there instead lets
    kombu's own handling take over: the worker logs it, reconnects when Redis returns, and
    a task it could not acknowledge is delivered again by the visibility sweep
    (CELERY_VISIBILITY_TIMEOUT). Every task is idempotent, so running one twice is harmless.
    """
    from kombu.transport import redis as kombu_redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    # _connparams is kombu's private method: its stubs (celery-types) leave it out.
    connparams = kombu_redis.Channel._connparams  # type: ignore[attr-defined]

    def _connparams(self, *args, **kwargs):
        if self.connection is None or self.connection.client is None:
            raise RedisConnectionError("the connection to Redis is closed")
        return connparams(self, *args, **kwargs)

    kombu_redis.Channel._connparams = _connparams  # type: ignore[attr-defined]


_lost_connections_are_connection_errors()
