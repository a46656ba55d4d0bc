"""The lowest versions pyproject.toml allows are versions the code runs on (issue 11).

Every direct dependency is installed at the lowest version its bound allows (uv's
`--resolution lowest-direct`; what they need in turn at its newest) into a virtual
environment kept under ~/.cache/portraitkit/lowest-deps/<hash of the bounds>, made once per
machine and set of bounds. From there the checkout's CLI runs for real: its help, every
module imported, and a batch made by the worker on the test database.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import subprocess
import sys
import tomllib
import uuid
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
UV_VERSION = "0.13.9"  # the resolver (pinned: a new one may resolve differently)


def declared_dependencies() -> list[str]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return list(tomllib.load(file)["project"]["dependencies"])


def lower_bound(requirement: Requirement) -> Version | None:
    bounds = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    return max(bounds) if bounds else None


def run(*command: str | Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    done = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, env=env, timeout=timeout
    )
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stderr}"
    return done.stdout


def lowest_environment() -> tuple[Path, dict[str, Version]]:
    """The cached environment and the version of each direct dependency in it."""
    dependencies = declared_dependencies()
    key = hashlib.sha256(
        json.dumps([dependencies, sys.version_info[:2], UV_VERSION]).encode()
    ).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    home = cache / "portraitkit" / "lowest-deps" / key
    python = home / "venv" / "bin" / "python"
    pins = home / "lowest.txt"
    home.mkdir(parents=True, exist_ok=True)
    with open(home.parent / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer at a time (parallel test runs)
        if not (home / "ready").exists():
            venv.create(home / "venv", with_pip=True, clear=True)
            run(python, "-m", "pip", "install", "-q", f"uv=={UV_VERSION}")
            (home / "requirements.in").write_text("\n".join(dependencies) + "\n")
            uv = (python.parent / "uv", "pip")
            run(*uv, "compile", "-q", "--resolution", "lowest-direct", "--python", python,
                home / "requirements.in", "-o", pins)  # fmt: skip
            run(*uv, "install", "-q", "--python", python, "-r", pins)
            (home / "ready").touch()
    installed = {}
    for line in pins.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line):
            installed[canonicalize_name(match[1])] = Version(match[2])
    return python, installed


@pytest.fixture(scope="module")
def lowest() -> tuple[Path, dict[str, Version]]:
    return lowest_environment()


@pytest.fixture
def lowest_env(tmp_path: Path, clean_env: None) -> dict[str, str]:
    """The environment that runs the checkout on the lowest versions: the checkout on the
    path, and its cli/ folder as `portraitkit_cli` (as the wheel installs it)."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "portraitkit_cli").symlink_to(ROOT / "cli", target_is_directory=True)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(shim)])}


@pytest.fixture
def lowest_cli(lowest: tuple[Path, dict[str, Version]]) -> list[str]:
    return [
        str(lowest[0]),
        "-c",
        "from portraitkit_cli.app import app; app(prog_name='portraitkit')",
    ]


def test_every_lower_bound_is_what_gets_installed(lowest: tuple[Path, dict[str, Version]]) -> None:
    """A bound below what can be installed beside the others promises a version nobody gets."""
    raised = {}
    for requirement in map(Requirement, declared_dependencies()):
        bound = lower_bound(requirement)
        got = lowest[1][canonicalize_name(requirement.name)]
        if bound is None or got.release[: len(bound.release)] != bound.release:
            raised[requirement.name] = f"{bound} declared, {got} installed"

    assert raised == {}


def test_the_cli_runs_on_the_lowest_versions(
    lowest_cli: list[str], lowest_env: dict[str, str]
) -> None:
    out = run(*lowest_cli, "--help", env=lowest_env)
    create_help = run(*lowest_cli, "batches", "create", "--help", env=lowest_env)

    assert "Usage: portraitkit [OPTIONS] COMMAND [ARGS]..." in out
    assert "--style" in create_help


def test_every_module_imports_on_the_lowest_versions(
    lowest: tuple[Path, dict[str, Version]], lowest_env: dict[str, str]
) -> None:
    script = (
        "import importlib, pkgutil, portraitkit, portraitkit_cli\n"
        "for package in (portraitkit, portraitkit_cli):\n"
        "    for module in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
        "        importlib.import_module(module.name)\n"
        "print('imported')\n"
    )

    assert run(lowest[0], "-c", script, env=lowest_env).strip() == "imported"


def test_a_batch_is_made_on_the_lowest_versions(
    lowest_cli: list[str], lowest_env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    """The worker renders with the local generator; and --state-dir wins over the
    environment's PORTRAITKIT_STATE_DIR (settings from code before settings from env)."""
    state = tmp_path / "state"
    env = {**lowest_env, "PORTRAITKIT_STATE_DIR": str(tmp_path / "elsewhere")}
    cli = [*lowest_cli, "--json", "--database-url", db_url, "--state-dir", str(state)]
    email = f"low-{uuid.uuid4().hex[:8]}@example.test"
    run(*cli, "users", "create", email, "--credits", "10", env=env)
    created = json.loads(
        run(*cli, "batches", "create", "-u", email, "--sample", "-s", "noir,pop_art", env=env)
    )

    run(*cli, "worker", "--once", "--generator", "local", env=env)
    batch = json.loads(run(*cli, "batches", "show", created["batch_id"], "-u", email, env=env))

    assert (batch["status"], batch["completed_count"]) == ("completed", 2)
    for item in batch["items"]:
        assert (state / "storage" / "portraits" / item["generated_image_url"]).is_file()
    assert not (tmp_path / "elsewhere").exists()
