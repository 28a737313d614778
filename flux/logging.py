"""Structured logs: one JSON object per line, each carrying the request id it belongs to.

`RequestIdFilter` reads `activity.log.request_id` (set by flux.middleware for each request),
so every line a request causes, from any logger, can be matched with the request's
X-Request-ID header and the events it wrote. Outside a request the id is empty.
"""

import datetime
import json
import logging
from contextvars import ContextVar

from django.apps import apps

# The attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "request_id"}


def _contextvars() -> tuple[ContextVar[str], ContextVar[str]] | None:
    """activity.log's contextvars; None while Django is still loading the apps (logging is
    configured before the models can be imported)."""
    if not apps.ready:
        return None
    from activity.log import client_id, request_id

    return request_id, client_id


class RequestIdFilter(logging.Filter):
    """Adds `request_id` (and `client_id` when a browser tab sent one) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        found = _contextvars()
        request_id, client_id = found if found else (None, None)
        if not getattr(record, "request_id", ""):
            # django.request logs 4xx/5xx after the middleware has finished; its records
            # carry the request, which keeps its id.
            from_request = getattr(getattr(record, "request", None), "request_id", "")
            record.request_id = from_request or (request_id.get() if request_id else "")
        if client_id is not None and not getattr(record, "client_id", ""):
            tab = client_id.get()
            if tab:
                record.client_id = tab
        return True


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message", "request_id", ...extra, "exc"}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", ""),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_"):
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)
