"""Flux settings, read from the environment.

Production defaults are safe: DEBUG is off unless asked for, SECRET_KEY is required when
DEBUG is off, cookies are secure. `make run` sets DEBUG=1 for local use. Every variable read
here is listed below (tests/test_project.py holds that), and in the README's Configuration.

| variable                    | default                                             |
|-----------------------------|-----------------------------------------------------|
| DATABASE_URL                | sqlite:///var/flux.sqlite3                          |
| REDIS_URL                   | unset: Celery tasks and live updates in-process     |
| SECRET_KEY                  | required unless DEBUG                               |
| DEBUG                       | 0                                                   |
| ALLOWED_HOSTS               | localhost,127.0.0.1 (comma-separated)               |
| CSRF_TRUSTED_ORIGINS        | empty (comma-separated origins)                     |
| SECURE_SSL_REDIRECT         | 1 when not DEBUG                                    |
| SECURE_HSTS_SECONDS         | one year, when not DEBUG                            |
| DB_POOL_MAX_SIZE            | 10 connections per process (0: no pool)             |
| DB_POOL_TIMEOUT             | 5 seconds to wait for a pooled connection           |
| DB_CONNECT_TIMEOUT          | 5 seconds to open a connection                      |
| API_RATE_LIMIT_PER_MINUTE   | 600 per token (0: no limit)                         |
| MAX_REQUEST_BODY_BYTES      | 2 MiB                                               |
| CELERY_VISIBILITY_TIMEOUT   | 900 seconds before an unacknowledged task returns   |
| ROLLUPS_EVERY_SECONDS       | 60: how often beat brings the rollups up to date    |
| SNAPSHOTS_EVERY_SECONDS     | 600: how often beat writes the replay snapshots due |
| LOGIN_FAILURES_PER_USERNAME | 5 failed logins before a username is locked out     |
| LOGIN_FAILURES_PER_ADDRESS  | 20 failed logins before an address is locked out    |
| LOGIN_LOCKOUT_SECONDS       | 900                                                 |
| LOG_FORMAT                  | json (plain when DEBUG)                             |
| LOG_LEVEL                   | INFO                                                |
| PORT                        | 8000 (used by the servers, not here)                |
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG")
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("Set SECRET_KEY (or DEBUG=1 for local development).")
    SECRET_KEY = "django-insecure-local-development-only-never-in-production"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "ninja",
    "activity",
    "boards",
    "history",
    "delivery",
]

MIDDLEWARE = [
    # First: every response, even a redirect to HTTPS, carries the request id.
    "flux.middleware.RequestContextMiddleware",
    # Outside everything that may touch the database: a 503 with Retry-After when it is away.
    "flux.middleware.DatabaseUnavailableMiddleware",
    "flux.middleware.BodySizeLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "flux.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "flux.middleware.ServiceErrorMiddleware",
    "flux.middleware.IdempotencyMiddleware",
]

ROOT_URLCONF = "flux.urls"
WSGI_APPLICATION = "flux.wsgi.application"
ASGI_APPLICATION = "flux.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.csp",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Data ---------------------------------------------------------------------------------

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'flux.sqlite3'}",
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Under ASGI, Django's persistent connections leak; psycopg's pool is the way to reuse
    # connections. DB_POOL_MAX_SIZE=0 turns it off (one connection per request).
    pool_size = int(os.environ.get("DB_POOL_MAX_SIZE", "10"))
    # After a database restart the pooled connections are dead: `check` tests each one as it
    # is handed out (an empty query) and replaces a broken one, so the first requests after
    # the restart do not fail. A request waits at most DB_POOL_TIMEOUT seconds for a
    # connection (then a 503 with Retry-After, flux.middleware.DatabaseUnavailableMiddleware),
    # and a connection attempt gives up after DB_CONNECT_TIMEOUT seconds.
    DATABASES["default"].setdefault("OPTIONS", {})
    DATABASES["default"]["OPTIONS"]["connect_timeout"] = int(
        os.environ.get("DB_CONNECT_TIMEOUT", "5")
    )
    if pool_size:
        from psycopg_pool import ConnectionPool

        DATABASES["default"]["OPTIONS"]["pool"] = {
            "min_size": 1,
            "max_size": pool_size,
            "timeout": float(os.environ.get("DB_POOL_TIMEOUT", "5")),
            "check": ConnectionPool.check_connection,
        }
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the board be read while a write is in flight; IMMEDIATE takes the write
    # lock at BEGIN so two writers queue instead of failing with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL", "")

CACHES = {
    "default": (
        {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "flux",
        }
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    ),
    # Rendered cards, in each process's own memory: a card's key names everything it shows
    # (version, labels, people, age), so an entry is never stale, only unused.
    "template_fragments": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": "flux-fragments",
        "TIMEOUT": 3600,
        "OPTIONS": {"MAX_ENTRIES": 20_000},
    },
}

# --- API ----------------------------------------------------------------------------------

API_RATE_LIMIT_PER_MINUTE = int(os.environ.get("API_RATE_LIMIT_PER_MINUTE", "600"))

# --- Request size ---------------------------------------------------------------------------
# A body larger than this is refused with a 413 before it is read (flux.middleware): the
# largest legitimate request, a deployment with its commits, is far smaller. Flux takes no
# file uploads.

DATA_UPLOAD_MAX_MEMORY_SIZE = int(os.environ.get("MAX_REQUEST_BODY_BYTES", str(2 * 1024 * 1024)))
DATA_UPLOAD_MAX_NUMBER_FIELDS = 1000
FILE_UPLOAD_MAX_MEMORY_SIZE = DATA_UPLOAD_MAX_MEMORY_SIZE

# --- Celery -------------------------------------------------------------------------------
# With no REDIS_URL, tasks run eagerly in-process so `make run` needs nothing else.

CELERY_BROKER_URL = REDIS_URL or "memory://localhost/"
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = not REDIS_URL
CELERY_TASK_EAGER_PROPAGATES = True
# Reliability (README, Operations > Reliability). A task is acknowledged only once it has
# run, and a task whose worker died (SIGKILL, OOM) is given back to the queue; every task is
# idempotent, so running one twice is harmless. With Redis the broker cannot see a worker die:
# a fetched, unacknowledged task is delivered again once CELERY_VISIBILITY_TIMEOUT seconds
# have passed since it was fetched. That must be longer than the longest task (a rollup of a
# huge backlog takes a minute or two; a second delivery meanwhile would only wait for the
# first on the rollups' cursor lock) and short enough for a lost task to come back soon. The
# rollups do not depend on it: beat asks for them every ROLLUPS_EVERY_SECONDS anyway.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_VISIBILITY_TIMEOUT = int(os.environ.get("CELERY_VISIBILITY_TIMEOUT", "900"))
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT,
    # How often a worker looks for tasks whose visibility timeout has passed (a cheap sorted
    # set query): every 10 s, not kombu's default of every 100 s (interval x throttle).
    "unacked_restore_interval": 10,
    "unacked_restore_throttle": 1,
    # A Redis that is down or unreachable is noticed within seconds, by a web process
    # enqueueing a task as by the worker.
    "socket_connect_timeout": 2,
    "socket_timeout": 10,
    "socket_keepalive": True,
}
CELERY_BROKER_CONNECTION_TIMEOUT = 2
# The worker and beat wait out a Redis outage of any length (the default gives up after 100
# attempts and exits), and retry at start-up too.
CELERY_BROKER_CONNECTION_RETRY = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
# Publishing retries briefly; a web request never waits long for Redis (activity.log).
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
CELERY_TIMEZONE = "UTC"
# The worker logs through LOGGING below (JSON lines), like the web processes.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
ROLLUPS_EVERY_SECONDS = float(os.environ.get("ROLLUPS_EVERY_SECONDS", "60"))
SNAPSHOTS_EVERY_SECONDS = float(os.environ.get("SNAPSHOTS_EVERY_SECONDS", "600"))
CELERY_BEAT_SCHEDULE = {
    "rollups-every-minute": {
        "task": "delivery.tasks.rollups_advance_task",
        "schedule": ROLLUPS_EVERY_SECONDS,
    },
    "snapshots-every-ten-minutes": {
        "task": "history.tasks.snapshots_advance_task",
        "schedule": SNAPSHOTS_EVERY_SECONDS,
    },
}

# --- Auth ---------------------------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Login throttling (flux.login): after this many failed logins within the window, the
# username, or the client address, is refused until the window ends.
LOGIN_FAILURES_PER_USERNAME = int(os.environ.get("LOGIN_FAILURES_PER_USERNAME", "5"))
LOGIN_FAILURES_PER_ADDRESS = int(os.environ.get("LOGIN_FAILURES_PER_ADDRESS", "20"))
LOGIN_LOCKOUT_SECONDS = int(os.environ.get("LOGIN_LOCKOUT_SECONDS", "900"))
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "boards:list"
LOGOUT_REDIRECT_URL = "login"

# --- Internationalisation -----------------------------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Static files -------------------------------------------------------------------------

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}

# --- Security -----------------------------------------------------------------------------

SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF, CSP.NONCE],
    "style-src": [CSP.SELF],
    "img-src": [CSP.SELF, "data:"],
    "connect-src": [CSP.SELF],
    "font-src": [CSP.SELF],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.SELF],
    "form-action": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
}
# Read from the cache, written through to the database (flux.sessions): a page or a move
# spends no SQL on the session, and a Redis outage falls back to the database.
SESSION_ENGINE = "flux.sessions"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
# The token reaches htmx through the page (hx-headers on <body>); no script reads the cookie.
CSRF_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"

if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", str(60 * 60 * 24 * 365)))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True

# --- Logging ------------------------------------------------------------------------------

# JSON lines by default (LOG_FORMAT=plain for reading by eye; DEBUG defaults to plain).
# Every line carries the request id (flux.logging.RequestIdFilter).
LOG_FORMAT = os.environ.get("LOG_FORMAT", "plain" if DEBUG else "json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "flux.logging.RequestIdFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {"()": "flux.logging.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "plain",
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        # One line per task run is noise when tasks run eagerly in-process.
        "celery.app.trace": {"level": "WARNING"},
        # flux.request writes one line per request with its id; runserver's own is a repeat.
        "django.server": {"level": "WARNING"},
    },
}
