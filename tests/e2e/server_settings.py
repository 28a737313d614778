"""Settings for the e2e tests' uvicorn processes: production settings, plus the fast password
hasher the test process makes its users with."""

from flux.settings import *  # noqa: F403

PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.MD5PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
