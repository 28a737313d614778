"""The chaos run's own PostgreSQL cluster and Redis, and its Celery worker and beats.

Everything here is a child of the run: a throw-away PostgreSQL cluster under var/chaos/pg on a
free port, a Redis without persistence on another, Celery processes in process groups of
their own (so a SIGKILL takes a worker's pool children with it). The machine's own
PostgreSQL and Redis are never touched. `Stack.close()` stops all of it.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.env import ROOT
from bench.server import free_port

HERE = ROOT / "var" / "chaos"


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if found:
        return found[-1].parent
    which = shutil.which("pg_ctl")
    if which:
        return Path(which).parent
    raise RuntimeError("PostgreSQL server binaries (pg_ctl, initdb) were not found")


class Postgres:
    """A private cluster: initdb into var/chaos/pg (as the postgres user when run as root)."""

    def __init__(self):
        self.port = free_port()
        self.dir = HERE / "pg"
        self.bin = _pg_bin()
        self.as_postgres = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/flux_chaos"

    def _run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_postgres else []
        return subprocess.run([*prefix, *command], check=check, capture_output=True, text=True)

    def create(self) -> None:
        self.destroy()
        self.dir.mkdir(parents=True)
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.dir), "-U", "postgres",
                  "--auth=trust", "-E", "UTF8", "--no-sync")  # fmt: skip
        with open(self.dir / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                "unix_socket_directories = ''\nmax_connections = 200\n"
                # A throw-away cluster: no need to wait for the disk the others share.
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            )

    def _ctl(self, *args: str) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.dir), "-l",
                  str(self.dir / "server.log"), "-w", "-t", "60", *args)  # fmt: skip

    def start(self) -> None:
        self._ctl("start")

    def restart(self) -> None:
        """A fast restart: connections are cut, transactions in flight roll back."""
        self._ctl("-m", "fast", "restart")

    def stop(self) -> None:
        if (self.dir / "postmaster.pid").exists():
            self._ctl("-m", "fast", "stop")

    def destroy(self) -> None:
        if self.dir.exists():
            if (self.dir / "postmaster.pid").exists():
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.dir), "-m", "immediate",
                          "-w", "stop", check=False)  # fmt: skip
            shutil.rmtree(self.dir)


class Redis:
    """A private redis-server (no persistence: a killed Redis comes back empty)."""

    def __init__(self):
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        HERE.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--logfile", str(HERE / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        import redis

        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the chaos Redis did not start") from None
                time.sleep(0.05)
            finally:
                client.close()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


class Celery:
    """`celery -A flux worker|beat` in a process group of its own, logging to var/chaos."""

    def __init__(self, name: str, args: list[str], env: dict[str, str]):
        self.name, self.args, self.env = name, args, env
        self.log = HERE / f"{name}.log"
        self.log.unlink(missing_ok=True)  # one run's log, not the last run's too
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "flux", *self.args],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the process and every child of its group (a worker's pool processes)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            self.kill()
        self.process = None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def worker(env: dict[str, str], number: int) -> Celery:
    return Celery(f"worker-{number}", ["worker", "--loglevel", "INFO", "--concurrency", "2",
                                       "-n", f"chaos-{number}@127.0.0.1", "--without-mingle",
                                       "--without-gossip"], env)  # fmt: skip


def beat(env: dict[str, str], number: int) -> Celery:
    schedule = HERE / f"beat-{number}-schedule"
    for stale in HERE.glob(f"beat-{number}-schedule*"):
        stale.unlink()
    return Celery(f"beat-{number}", ["beat", "--loglevel", "INFO", "--schedule", str(schedule)],
                  env)  # fmt: skip
