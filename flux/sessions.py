"""Sessions read from the cache (Redis) and kept in the database: no SQL on most requests.

Django's cached_db store already falls back to the database when a cache read fails; this
one also carries on when writing to the cache or asking it fails, so a Redis outage costs
a database read per request instead of an error page.
"""

import logging

from django.contrib.sessions.backends.cached_db import SessionStore as CachedDBStore

logger = logging.getLogger("django.contrib.sessions")


class SessionStore(CachedDBStore):
    def load(self):
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

    def exists(self, session_key):
        try:
            if session_key and (self.cache_key_prefix + session_key) in self._cache:
                return True
        except Exception:
            logger.warning("session cache unavailable; asking the database", exc_info=True)
        return super(CachedDBStore, self).exists(session_key)

    def delete(self, session_key=None):
        key = session_key or self.session_key
        super(CachedDBStore, self).delete(session_key)
        if key is None:
            return
        try:
            self._cache.delete(self.cache_key_prefix + key)
        except Exception:
            logger.warning("session cache unavailable; it expires by itself", exc_info=True)
