"""The files in deploy/ do what docs/supabase.md says they do.

- The systemd units pass `systemd-analyze verify` (Debian's `systemd` package, installed on
  first use when we are root with apt-get), with a warning counted as a failure; they run
  the `portraitkit` console script of the virtual environment the guide installs into.
- The Containerfile (parsed with `dockerfile-parse`; nothing is built, as no image registry
  is reachable here) starts from a slim Python image, builds the project's wheel from the
  files it copies (built here from exactly those files), installs it, and runs
  `portraitkit worker` as a non-root user.
- The worker command both of them run finishes a real batch on the test database with
  `--once` added, and the server unit's command answers `/readyz`.
- The environment file templates name only settings portraitkit reads, and load as the
  Supabase setup each process needs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dockerfile_parse import DockerfileParser  # type: ignore[import-untyped]
from PIL import Image
from pydantic import AliasChoices

from portraitkit.settings import Settings
from tests.debian import debian_program

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CONTAINERFILE = DEPLOY / "Containerfile"
WORKER_UNIT = DEPLOY / "portraitkit-worker.service"
SERVE_UNIT = DEPLOY / "portraitkit-serve.service"
UNITS = (WORKER_UNIT, SERVE_UNIT)
# Where docs/supabase.md installs the project; the units' ExecStart point into it.
INSTALLED_BIN = "/opt/portraitkit/venv/bin/"
PORTRAITKIT = Path(sys.executable).parent / "portraitkit"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")  # sysinit.target and friends, for --root
# Environment that would point a process elsewhere than the test asks.
FOREIGN_ENV = (
    "DATABASE_URL",
    "SUPABASE_URL",
    "SUPABASE_PUBLISHABLE_KEY",
    "SUPABASE_ANON_KEY",
    "SUPABASE_SECRET_KEY",
    "SUPABASE_SERVICE_ROLE_KEY",
    "SUPABASE_JWT_SECRET",
    "PORTRAITKIT_STATE_DIR",
    "PORTRAITKIT_JWT_SECRET",
    "PORTRAITKIT_GENERATOR",
)


# -- systemd --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def systemd_analyze() -> str:
    return debian_program("systemd-analyze", "systemd")


def unit_settings(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file's sections and their settings (a key may repeat), as systemd reads them."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: a setting outside any section: {raw!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def exec_start(path: Path) -> list[str]:
    (command,) = unit_settings(path)["Service"]["ExecStart"]
    return shlex.split(command)


def verify(systemd_analyze: str, root: Path, unit: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` of ``unit`` in a root holding the system's own units and the
    test's `portraitkit` where the unit expects the installed one."""
    (root / "etc/systemd/system").mkdir(parents=True, exist_ok=True)
    if not (root / "usr/lib/systemd/system").exists():
        shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    installed = root / INSTALLED_BIN.lstrip("/") / "portraitkit"
    installed.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(PORTRAITKIT, installed)
    shutil.copy(unit, root / "etc/systemd/system" / unit.name)
    return subprocess.run(
        [systemd_analyze, "verify", f"--root={root}", unit.name],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_the_unit_passes_systemd_analyze_verify_without_a_warning(
    systemd_analyze: str, tmp_path: Path, unit: Path
) -> None:
    done = verify(systemd_analyze, tmp_path, unit)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_systemd_analyze_verify_reports_a_misspelt_setting(
    systemd_analyze: str, tmp_path: Path
) -> None:
    """What the check above relies on: a mistake is reported, not silently ignored."""
    broken = tmp_path / "units" / WORKER_UNIT.name
    broken.parent.mkdir()
    broken.write_text(WORKER_UNIT.read_text().replace("Restart=on-failure", "Restart=onfailure"))
    done = verify(systemd_analyze, tmp_path / "root", broken)
    assert "restart specifier" in done.stdout + done.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_the_unit_runs_the_installed_console_script_without_root(unit: Path) -> None:
    service = unit_settings(unit)["Service"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]

    program = exec_start(unit)[0]
    assert program == INSTALLED_BIN + "portraitkit" and "portraitkit" in scripts
    assert service["DynamicUser"] == ["yes"] and "User" not in service
    assert service["Restart"] == ["on-failure"]
    (env_file,) = service["EnvironmentFile"]
    template = DEPLOY / (Path(env_file).name + ".example")
    assert env_file.startswith("/etc/portraitkit/") and template.is_file(), env_file
    assert unit_settings(unit)["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_worker_unit_waits_out_the_workers_grace_period() -> None:
    """systemd must not SIGKILL the worker while in-flight items may still finish."""
    from portraitkit.worker import WorkerOptions

    service = unit_settings(WORKER_UNIT)["Service"]
    assert exec_start(WORKER_UNIT)[1:] == ["worker"]
    assert int(service["TimeoutStopSec"][0]) > WorkerOptions().shutdown_grace_seconds


# -- the Containerfile ----------------------------------------------------------------


def containerfile_stages() -> list[list[dict[str, Any]]]:
    """The Containerfile's instructions, one list per stage (each starting with its FROM)."""
    with CONTAINERFILE.open("rb") as source:
        structure = DockerfileParser(fileobj=source).structure
    stages: list[list[dict[str, Any]]] = []
    for instruction in structure:
        if instruction["instruction"] == "FROM":
            stages.append([])
        if instruction["instruction"] != "COMMENT":
            assert stages, "an instruction before the first FROM"
            stages[-1].append(instruction)
    return stages


def instructions(stage: list[dict[str, Any]], name: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == name]


def test_every_stage_starts_from_slim_python_of_the_oldest_supported_version() -> None:
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    oldest = re.fullmatch(r">=(\d+\.\d+)", requires)
    assert oldest is not None, requires
    for stage in containerfile_stages():
        image = stage[0]["value"].split()[0]
        assert re.fullmatch(rf"python:{re.escape(oldest[1])}-slim(-\w+)?", image), image


def test_the_image_runs_portraitkit_worker_as_a_non_root_user() -> None:
    final = containerfile_stages()[-1]
    users = instructions(final, "USER")
    assert users, "no USER: the image would run as root"
    user, _, group = users[-1].partition(":")
    assert user not in ("root", "0") and group not in ("root", "0")
    assert instructions(final, "ENTRYPOINT") == []
    assert [json.loads(cmd) for cmd in instructions(final, "CMD")] == [["portraitkit", "worker"]]
    # The user is created before it is used, with that uid.
    assert any(f"--uid {user}" in run for run in instructions(final, "RUN"))


def test_the_image_installs_the_wheel_built_from_the_checkout() -> None:
    build, final = containerfile_stages()
    assert build[0]["value"].endswith(" AS build")
    assert "pip wheel --no-deps --wheel-dir /wheels ." in instructions(build, "RUN")
    assert "--from=build /wheels /wheels" in instructions(final, "COPY")
    assert any(run.startswith("pip install /wheels/*.whl") for run in instructions(final, "RUN"))


def copy_context(stage: list[dict[str, Any]], into: Path) -> None:
    """Lay out in ``into`` what the stage's COPY instructions take from the build context."""
    for value in instructions(stage, "COPY"):
        *sources, destination = shlex.split(value)
        assert not any(s.startswith("--") for s in sources), value
        for source in sources:
            origin = ROOT / source
            assert origin.exists(), f"COPY {source}: not in the repository"
            if origin.is_dir():
                shutil.copytree(origin, into / destination, dirs_exist_ok=True)
            else:
                target = into / destination
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy(origin, target / origin.name)


def test_the_files_the_image_copies_build_a_complete_wheel(tmp_path: Path) -> None:
    """The wheel built from only what the build stage copies holds the CLI, its console
    script, the licence and every migration (a file the COPY lines miss fails here)."""
    context, wheels = tmp_path / "context", tmp_path / "wheels"
    copy_context(containerfile_stages()[0], context)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "--wheel-dir", str(wheels), "."],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]

    (wheel,) = wheels.glob("portraitkit-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n) for n in names if n.endswith("entry_points.txt"))
    migrations = sorted(p.name for p in (ROOT / "supabase" / "migrations").glob("*.sql"))
    packaged = sorted(
        Path(n).name for n in names if n.startswith("portraitkit/_schema/supabase/migrations/")
    )
    assert packaged == migrations
    assert "portraitkit_cli/app.py" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "portraitkit = portraitkit_cli.app:main" in entry_points.decode()


# -- the commands they run -------------------------------------------------------------


def clean_env(**more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
    return {**env, **more}


def portraitkit(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(PORTRAITKIT), *args], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, f"portraitkit {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


def installed_here(argv: list[str]) -> list[str]:
    """A deploy file's command with its program resolved in this test's environment."""
    program = Path(argv[0]).name
    assert program == "portraitkit", argv
    return [str(PORTRAITKIT), *argv[1:]]


WORKER_COMMANDS: dict[str, Callable[[], list[str]]] = {
    "Containerfile CMD": lambda: json.loads(instructions(containerfile_stages()[-1], "CMD")[-1]),
    "portraitkit-worker.service ExecStart": lambda: exec_start(WORKER_UNIT),
}


@pytest.mark.parametrize("where", WORKER_COMMANDS)
def test_the_deployed_worker_command_finishes_a_batch(
    where: str, db_url: str, tmp_path: Path
) -> None:
    """The command as deployed, plus `--once`, on a real database: the default (local)
    generator renders the batch and the result is a PNG in storage."""
    env = clean_env(DATABASE_URL=db_url, PORTRAITKIT_STATE_DIR=str(tmp_path / "state"))
    email = f"deploy-{uuid.uuid4().hex[:8]}@example.test"
    portraitkit(env, "users", "create", email, "--credits", "5")
    created = portraitkit(env, "--json", "batches", "create", "-u", email, "--sample", "-s", "noir")
    batch_id = json.loads(created.stdout)["batch_id"]

    command = [*installed_here(WORKER_COMMANDS[where]()), "--once"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)

    assert done.returncode == 0, done.stderr
    batch = json.loads(portraitkit(env, "--json", "batches", "show", batch_id, "-u", email).stdout)
    (item,) = batch["items"]
    assert (batch["status"], item["status"]) == ("completed", "completed")
    image = tmp_path / "state" / "storage" / "portraits" / item["generated_image_url"]
    with Image.open(image) as rendered:
        assert rendered.format == "PNG"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(db_url: str, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """The serve unit's command, on a free port instead of its 8000, with `-v` so that
    uvicorn logs its shutdown."""
    command = installed_here(exec_start(SERVE_UNIT))
    port = str(_free_port())
    command[command.index("--port") + 1] = port
    command.append("-v")
    env = clean_env(DATABASE_URL=db_url, PORTRAITKIT_STATE_DIR=str(tmp_path / "state"))
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_the_serve_unit_command_answers_and_stops_cleanly_on_sigterm(
    served: tuple[str, subprocess.Popen[str]],
) -> None:
    """uvicorn shuts the app down, then re-raises the SIGTERM it caught, so the process
    ends by that signal: systemd counts that as a clean exit (SuccessExitStatus: exit 0,
    SIGHUP, SIGINT, SIGTERM, SIGPIPE), so Restart=on-failure does not restart it."""
    base, proc = served
    deadline = time.monotonic() + 60
    ready: int | None = None
    while ready != 200 and time.monotonic() < deadline and proc.poll() is None:
        try:
            ready = httpx.get(base + "/readyz", timeout=1).status_code
        except httpx.HTTPError:
            time.sleep(0.2)
    if ready != 200:
        proc.kill()
        pytest.fail(f"serve did not answer /readyz in 60 s: {proc.communicate()[1]}")

    proc.send_signal(signal.SIGTERM)  # what `systemctl stop` sends
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert "Application shutdown complete" in err


# -- the environment file templates ------------------------------------------------------


def setting_names() -> set[str]:
    """Every environment variable name Settings reads."""
    names: set[str] = set()
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
        names.update(c for c in choices if isinstance(c, str) and c.isupper())
    return names


def template_names(path: Path) -> dict[str, bool]:
    """NAME -> set (True) or only shown in a comment (False)."""
    names: dict[str, bool] = {}
    for line in path.read_text().splitlines():
        found = re.fullmatch(r"(#\s*)?([A-Z][A-Z0-9_]*)=\S*", line.strip())
        if found:
            names[found[2]] = found[1] is None
    return names


@pytest.mark.parametrize("template", ["worker.env.example", "serve.env.example"])
def test_the_env_templates_name_only_settings_portraitkit_reads(template: str) -> None:
    names = template_names(DEPLOY / template)
    assert names and set(names) <= setting_names(), set(names) - setting_names()


@pytest.mark.parametrize(
    ("template", "needed"),
    [
        ("worker.env.example", "supabase_service_role_key"),
        ("serve.env.example", "supabase_anon_key"),
    ],
)
def test_an_env_template_makes_the_supabase_setup_its_process_needs(
    template: str, needed: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in setting_names():
        monkeypatch.delenv(name, raising=False)
    settings = Settings(_env_file=DEPLOY / template)
    assert settings.mode == "supabase"
    assert getattr(settings, needed) is not None
