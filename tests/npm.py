"""npm packages the tests drive (the Supabase CLI, its linter, TypeScript, postgres-meta),
installed once per machine under ~/.cache/portraitkit, one installer at a time."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest


def npm_install(
    package: str,
    version: str,
    *,
    ready: Callable[[Path], bool],
    name: str | None = None,
    timeout: float = 600,
) -> Path:
    """The prefix holding ``package@version``, installed there with npm unless ``ready(prefix)``
    already says it is there and works; skips the test where npm is missing."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    prefix = base / "portraitkit" / (name or package.replace("/", "+")) / version
    if ready(prefix):
        return prefix
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip(f"npm is not installed: cannot install {package}@{version}")
    prefix.mkdir(parents=True, exist_ok=True)
    with open(prefix.parent / f".{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer at a time (parallel test runs)
        if not ready(prefix):
            # Binaries come in per-platform optional dependencies: no postinstall download.
            done = subprocess.run(
                [
                    npm,
                    "install",
                    "--prefix",
                    str(prefix),
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                    f"{package}@{version}",
                ],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            assert done.returncode == 0, f"npm install {package}@{version} failed:\n{done.stderr}"
    assert ready(prefix), f"{package}@{version} in {prefix} does not work"
    return prefix
