"""Debian packages the tests drive (pgbouncer, systemd-analyze, chromium), installed with
apt-get on first use when we are root, as CI is on a fresh machine."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def apt_install(package: str, *, timeout: float = 600) -> str:
    """Why ``package`` could not be installed, or "" once it is."""
    apt = shutil.which("apt-get")
    if apt is None:
        return "apt-get is not available"
    if os.geteuid() != 0:
        return f"installing it needs root (apt-get install {package})"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "PATH": SYSTEM_PATH}
    for command in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", package]):
        try:
            done = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{' '.join(command[1:])} failed: {exc}"
        if done.returncode != 0:
            return f"{' '.join(command[1:])} failed: {done.stderr.strip()[-500:]}"
    return ""


def debian_program(program: str, package: str, *, timeout: float = 600) -> str:
    """The path of ``program``, installed from Debian's ``package`` if missing; skips the
    test, saying why, where it is missing and cannot be installed."""
    found = shutil.which(program) or shutil.which(program, path=SYSTEM_PATH)
    if found:
        return found
    problem = apt_install(package, timeout=timeout)
    found = shutil.which(program, path=SYSTEM_PATH)
    if not found:
        pytest.skip(f"No {program}: {problem or f'the {package} package installed none'}")
    return found
