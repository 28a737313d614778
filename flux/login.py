"""Login throttling: repeated failed logins lock the username, and the client address, out.

A small cache-based counter (Redis in production, shared by every web process): each failed
login counts against its username (case-insensitive) and its client address for
LOGIN_LOCKOUT_SECONDS from the first failure. Past LOGIN_FAILURES_PER_USERNAME (or
LOGIN_FAILURES_PER_ADDRESS) further attempts are refused without checking the password, with
a message that says when to try again; the login page answers 429. A successful login clears
its username's count, not the address's. The same form guards the admin's login.

django-axes was considered: its releases declare support up to Django 6.0 only, and it brings
tables, a backend and middleware for what two cache counters do here.

The client address is REMOTE_ADDR; behind a proxy the ASGI server must set it from
X-Forwarded-For (uvicorn --proxy-headers --forwarded-allow-ips, as the Dockerfile does).
If the cache is unreachable the throttle lets the attempt through (logged): a Redis outage
must not lock everybody out, and the password check still applies.
"""

import hashlib
import logging
import math
import time
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.http import HttpRequest

logger = logging.getLogger(__name__)

THROTTLED = "throttled"


def _key(kind: str, value: str) -> str:
    # Hashed: usernames can be any text, and cache keys must be short and printable.
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"login-fail:{kind}:{digest}"


def _client_address(request: HttpRequest | None) -> str:
    return (request.META.get("REMOTE_ADDR") or "") if request is not None else ""


def _keys(username: str, address: str) -> list[tuple[str, int]]:
    keys = [(_key("user", username.strip().casefold()), settings.LOGIN_FAILURES_PER_USERNAME)]
    if address:
        keys.append((_key("addr", address), settings.LOGIN_FAILURES_PER_ADDRESS))
    return keys


def login_retry_after(*, username: str, address: str) -> int:
    """Seconds until this username and address may try again; 0 when they may now."""
    try:
        keys = _keys(username, address)
        counts = cache.get_many([key for key, _ in keys])
        wait = 0
        for key, limit in keys:
            failures = counts.get(key)
            if failures and failures[0] >= limit:
                wait = max(wait, math.ceil(failures[1] - time.time()))
        return max(wait, 0)
    except Exception:  # the cache is down: let the password check decide
        logger.warning("login throttle: cache unavailable, not checked", exc_info=True)
        return 0


def login_failed(*, username: str, address: str) -> None:
    """Count one failed login against the username and the address."""
    now = time.time()
    window = settings.LOGIN_LOCKOUT_SECONDS
    try:
        for key, _limit in _keys(username, address):
            # (count, window end): the window runs from the first failure; a lockout ends
            # with it. A read-modify-write: two racing failures may count as one, which only
            # ever lets one extra guess through.
            count, until = cache.get(key) or (0, now + window)
            if until <= now:
                count, until = 0, now + window
            cache.set(key, (count + 1, until), timeout=max(1, math.ceil(until - now)))
    except Exception:
        logger.warning("login throttle: cache unavailable, failure not counted", exc_info=True)


def login_succeeded(*, username: str) -> None:
    """A correct password clears the username's failures (the address's stay)."""
    try:
        cache.delete(_key("user", username.strip().casefold()))
    except Exception:
        logger.warning("login throttle: cache unavailable", exc_info=True)


# The mixin is only ever mixed into an AuthenticationForm: the type checker is told so, and
# at run time its base stays plain object.
if TYPE_CHECKING:
    _LoginForm = AuthenticationForm
else:
    _LoginForm = object


class ThrottledLoginMixin(_LoginForm):
    """For AuthenticationForm subclasses: refuse locked-out attempts, count failures."""

    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username") or ""
        address = _client_address(self.request)
        wait = login_retry_after(username=username, address=address)
        self.retry_after = wait
        if wait:
            minutes = max(1, math.ceil(wait / 60))
            logger.warning("login throttled", extra={"address": address})
            raise ValidationError(
                "Too many failed login attempts. Try again in %(minutes)s minute(s).",
                code=THROTTLED,
                params={"minutes": minutes},
            )
        try:
            cleaned = super().clean()
        except ValidationError:
            login_failed(username=username, address=address)
            logger.info("login failed", extra={"address": address})
            raise
        login_succeeded(username=username)
        return cleaned

    @property
    def throttled(self) -> bool:
        return any(error.code == THROTTLED for error in self.errors.as_data().get("__all__", []))


class ThrottledAuthenticationForm(ThrottledLoginMixin, AuthenticationForm):
    pass


class ThrottledAdminAuthenticationForm(ThrottledLoginMixin, AdminAuthenticationForm):
    pass


class LoginView(auth_views.LoginView):
    """Django's login view with the throttled form; a locked-out attempt is a 429."""

    authentication_form = ThrottledAuthenticationForm

    def form_invalid(self, form):
        response = super().form_invalid(form)
        if form.throttled:
            response.status_code = 429
            response["Retry-After"] = str(form.retry_after)
        return response
