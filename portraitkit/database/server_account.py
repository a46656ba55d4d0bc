"""The operating-system account that runs the embedded PostgreSQL.

PostgreSQL refuses to run as root. When portraitkit itself runs as root (containers, CI) it
runs the server as an unprivileged system user instead, and grants that user just enough
access to reach its data directory and the binaries: traverse (o+x) on parent folders.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from portraitkit.errors import ServerAccountError

SYSTEM_USER = "portraitkit"


@dataclass(frozen=True)
class ServerAccount:
    """Who the server processes run as; `None` in its place means the current user."""

    name: str
    uid: int
    gid: int


def server_account(name: str = SYSTEM_USER) -> ServerAccount | None:
    """The account to run PostgreSQL as: None unless we are root, then `name` (created once)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        _create_system_user(name)
        entry = pwd.getpwnam(name)
    return ServerAccount(name=name, uid=entry.pw_uid, gid=entry.pw_gid)


def _create_system_user(name: str) -> None:
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    nologin = "/usr/sbin/nologin" if Path("/usr/sbin/nologin").exists() else "/bin/false"
    command = [useradd, "--system", "--no-create-home", "--shell", nologin, name]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise ServerAccountError(
            f"running as root needs a system user {name!r} for PostgreSQL, and useradd is "
            f"missing: create the user yourself or run portraitkit as a normal user"
        ) from exc
    # Exit 9: another process created it meanwhile, which is what we wanted.
    if result.returncode not in (0, 9):
        raise ServerAccountError(f"could not create system user {name!r}: {result.stderr.strip()}")


def grant_traverse(path: Path) -> None:
    """Let any user walk through every parent of `path` (o+x only: no listing, no reading)."""
    for parent in reversed(path.resolve().parents):
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def hand_over(path: Path, account: ServerAccount | None, mode: int = 0o700) -> None:
    """Create `path` as a private folder of `account` (or of the current user)."""
    path.mkdir(parents=True, exist_ok=True)
    if account is not None:
        os.chown(path, account.uid, account.gid)
    path.chmod(mode)


def run_as(
    account: ServerAccount | None, command: list[str], *, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL tool as the server account.

    Output goes through temporary files, not pipes: `pg_ctl start` leaves a server behind
    that could hold a pipe open and make a pipe-reading parent wait forever.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    with tempfile.TemporaryFile("w+") as out:
        completed = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd="/",
            timeout=timeout,
            check=False,
            text=True,
            user=None if account is None else account.uid,
            group=None if account is None else account.gid,
            # Drop root's supplementary groups in the child.
            extra_groups=None if account is None else [],
        )
        out.seek(0)
        return subprocess.CompletedProcess(command, completed.returncode, out.read(), "")
