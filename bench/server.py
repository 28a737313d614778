"""A production-like server for the benchmarks, and a small keep-alive HTTP client."""

import http.client
import os
import re
import socket
import subprocess
import sys
import time
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode

from bench.env import PRODUCTION, ROOT

WORKERS = int(os.environ.get("BENCH_WORKERS", "3"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """uvicorn flux.asgi:application with production settings and several workers."""

    def __init__(self, workers: int = WORKERS, log_path: Path | None = None):
        self.port = free_port()
        self.workers = workers
        self.process: subprocess.Popen | None = None
        self.log_path = log_path or ROOT / "var/bench-server.log"

    def __enter__(self) -> "Server":
        env = {**os.environ, **PRODUCTION}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "flux.asgi:application", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", str(self.workers), "--no-access-log",
             "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                status, _, _ = Client(self.port).request("GET", _login_url())
                if status == 200 and len(self.worker_pids()) >= self.workers:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the bench server did not start; see {self.log_path}")

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def worker_pids(self) -> list[int]:
        if self.process is None:
            return []
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(pid) for pid in children.read_text().split()]
        except OSError:
            return []

    def rss_mb(self) -> dict[int, float]:
        """Resident memory of each worker process now (MB)."""
        found = {}
        for pid in self.worker_pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            match = re.search(r"VmRSS:\s+(\d+) kB", status)
            if match:
                found[pid] = int(match.group(1)) / 1024
        return found


def _login_url() -> str:
    from django.urls import reverse

    return reverse("login")


class Client:
    """One browser-like client: a keep-alive connection, cookies, CSRF."""

    def __init__(self, port: int):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, *, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, dict, bytes]:  # fmt: skip
        all_headers = {"Host": "127.0.0.1", **(headers or {})}
        if self.cookies:
            all_headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=body, headers=all_headers)
                response = self.conn.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                if attempt:
                    raise
        for value in response.headers.get_all("Set-Cookie") or []:
            cookie = SimpleCookie(value)
            for key, morsel in cookie.items():
                self.cookies[key] = morsel.value
        return response.status, dict(response.headers), data

    def login(self, username: str, password: str) -> None:
        self.request("GET", _login_url())
        body = urlencode({"username": username, "password": password,
                          "csrfmiddlewaretoken": self.cookies["csrftoken"]}).encode()  # fmt: skip
        status, _, _ = self.request("POST", _login_url(), body=body, headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Referer": f"http://127.0.0.1:{self.port}{_login_url()}",
        })  # fmt: skip
        if status != 302 or "sessionid" not in self.cookies:
            raise RuntimeError(f"login of {username} failed ({status})")

    def htmx_post(
        self, path: str, values: dict, *, current: str, headers: dict | None = None
    ) -> tuple[int, dict, bytes]:
        """A POST as htmx.ajax sends it from the board (board.js): form-encoded values,
        HX-Request, the page's URL, and the CSRF token from the body's hx-headers."""
        return self.request("POST", path, body=urlencode(values).encode(), headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "HX-Request": "true",
            "HX-Current-URL": f"http://127.0.0.1:{self.port}{current}",
            "X-CSRFToken": self.cookies["csrftoken"],
            **(headers or {}),
        })  # fmt: skip
