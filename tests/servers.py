"""Flux served the way production serves it, for tests that need a real web process: live
streams (ASGI only), two processes sharing PostgreSQL and Redis, and the browser tests."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parents[1]


class AppServer:
    """Flux under uvicorn in its own process, as in production (ASGI, DEBUG off, PostgreSQL
    and Redis), on the test database. Pages, htmx fragments and live streams all go through it.
    """

    def __init__(self, *, database_url: str, redis_url: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.e2e.server_settings",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "SECRET_KEY": settings.SECRET_KEY,  # sessions made in the tests work there too
            "DEBUG": "0",
            "SECURE_SSL_REDIRECT": "0",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "DB_POOL_MAX_SIZE": "4",
        }
        env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        self.env = env
        self.start()

    def start(self) -> None:
        """Start (or start again, on the same port) and wait until it answers."""
        command = [sys.executable, "-m", "uvicorn", "flux.asgi:application"]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--no-access-log"]
        command += ["--timeout-graceful-shutdown", "1", "--log-level", "warning"]
        self.process = subprocess.Popen(command, cwd=ROOT, env=self.env)
        self._wait_until_up()

    def _wait_until_up(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the test server exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the test server did not start within 30 s")

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def database_url_for_servers() -> str:
    """The URL of the database this test run uses (the test database), for the servers.

    (Not named test_*: pytest would collect it as a test.)"""
    db = connection.settings_dict
    return f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
