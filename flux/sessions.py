"""Sessions read from the cache (Redis) and kept in the database: no SQL on most requests.

Django's cached_db store already falls back to the database when a cache read fails; this
one also carries on when writing to the cache or asking it fails, so a Redis outage costs
a database read per request instead of an error page.
"""

import logging
from typing import TYPE_CHECKING, Any

from django.contrib.sessions.backends.cached_db import SessionStore as CachedDBStore

if TYPE_CHECKING:
    from django.contrib.sessions.base_session import AbstractBaseSession
    from django.core.cache.backends.base import BaseCache

logger = logging.getLogger("django.contrib.sessions")


class SessionStore(CachedDBStore):
    if TYPE_CHECKING:
        # Django's private members that this store builds on and django-stubs leaves out: the
        # cache cached_db's __init__ sets, and db's read of the row (None: none, or expired).
        _cache: BaseCache

        def _get_session_from_db(self) -> AbstractBaseSession | None: ...

    def load(self) -> dict[str, Any]:
        try:
            data = self._cache.get(self.cache_key)
        except Exception:
            logger.warning("session cache unavailable; reading the database", exc_info=True)
            data = None
        if data is not None:
            return data
        stored = self._get_session_from_db()
        if not stored:
            return {}
        data = self.decode(stored.session_data)
        try:
            self._cache.set(self.cache_key, data, self.get_expiry_age(expiry=stored.expire_date))
        except Exception:
            logger.warning("session cache unavailable", exc_info=True)
        return data

    def exists(self, session_key: str) -> bool:
        try:
            if session_key and (self.cache_key_prefix + session_key) in self._cache:
                return True
        except Exception:
            logger.warning("session cache unavailable; asking the database", exc_info=True)
        return super(CachedDBStore, self).exists(session_key)

    def delete(self, session_key: str | None = None) -> None:
        key = session_key or self.session_key
        super(CachedDBStore, self).delete(session_key)
        if key is None:
            return
        try:
            self._cache.delete(self.cache_key_prefix + key)
        except Exception:
            logger.warning("session cache unavailable; it expires by itself", exc_info=True)
