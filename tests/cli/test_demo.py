"""`portraitkit demo` as a real process on an empty state directory, as a newcomer runs it;
then again; then the embedded database it left behind, through `batches list/show`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from .conftest import FOREIGN_ENV, Cli

PORTRAITKIT = Path(sys.executable).parent / "portraitkit"
DEMO_USER = "demo@portraitkit.local"


def portraitkit(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
    return subprocess.run(
        [str(PORTRAITKIT), "--state-dir", str(state_dir), *args],
        cwd=state_dir.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def decodes(path: Path) -> bool:
    with Image.open(path) as image:
        image.verify()
    return True


@dataclass
class FirstRun:
    state_dir: Path
    result: subprocess.CompletedProcess[str]
    seconds: float


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FirstRun]:
    state_dir = tmp_path_factory.mktemp("demo") / "state"  # does not exist yet
    started = time.monotonic()
    result = portraitkit(state_dir, "demo")
    yield FirstRun(state_dir, result, time.monotonic() - started)
    portraitkit(state_dir, "db", "stop")


def test_demo_makes_a_batch_of_portraits_from_nothing(first_run: FirstRun) -> None:
    out = first_run.result.stdout

    assert first_run.result.returncode == 0, first_run.result.stderr
    assert first_run.seconds < 60
    summary = next(
        line for line in out.splitlines() if line.startswith("batch ") and " in " in line
    )
    assert summary.endswith(": 8/8 photos, 0 failed, 0 cancelled; 14 credits charged")
    images = [Path(line.split()[-1]) for line in out.splitlines() if line.endswith(".png")]
    sheet = Path(
        next(line for line in out.splitlines() if line.startswith("contact sheet")).split()[-1]
    )
    assert len(images) == 9  # eight results and the contact sheet
    assert all(decodes(path) for path in images)
    assert sheet.parent == first_run.state_dir / "demo"
    assert decodes(sheet)
    # The next steps are commands this shell can run: the venv is not activated here.
    steps = out[out.index("next:") :].splitlines()[1:]
    assert steps and all(line.split()[0] == str(PORTRAITKIT) for line in steps)
    assert any(" db stop" in line for line in steps)


def test_demo_runs_again(first_run: FirstRun) -> None:
    result = portraitkit(first_run.state_dir, "demo", "--json")

    assert result.returncode == 0, result.stderr
    demo = json.loads(result.stdout)
    batch = demo["batch"]
    assert (batch["status"], batch["completed_count"], batch["total_count"]) == ("completed", 8, 8)
    storage = first_run.state_dir / "storage" / "portraits"
    assert [image["storage_path"] for image in demo["images"]] == [
        item["generated_image_url"] for item in batch["items"]
    ]
    for image in demo["images"]:
        assert Path(image["file"]) == storage / image["storage_path"]
        assert decodes(Path(image["file"]))
    sheet = Path(demo["contact_sheet"])
    assert sheet == first_run.state_dir / "demo" / f"contact-sheet-{batch['id']}.png"
    assert decodes(sheet)


def test_the_demo_batch_is_in_the_gallery(first_run: FirstRun, clean_env: None) -> None:
    cli = Cli(None, first_run.state_dir)  # embedded mode: the demo's own database

    page = cli.json("batches", "list", "--user", DEMO_USER)
    shown = cli.run("batches", "show", page["items"][0]["id"], "--user", DEMO_USER).stdout

    assert {b["status"] for b in page["items"]} == {"completed"}
    assert "Pencil Sketch" in shown and "Vintage Photo" in shown
    assert str(first_run.state_dir / "storage" / "portraits") in shown


def test_every_user_command_works_on_the_embedded_database(
    first_run: FirstRun, clean_env: None
) -> None:
    cli = Cli(None, first_run.state_dir)
    email = f"embedded-{os.getpid()}@example.test"

    cli.json("users", "create", email, "--credits", "3")
    assert cli.json("credits", "grant", email, "4")["balance"] == 7
    assert len(cli.json("styles")) == 15
    kept = cli.json("batches", "create", "-u", email, "--sample", "-s", "noir,poster")["batch_id"]
    dropped = cli.json("batches", "create", "-u", email, "--sample", "-s", "charcoal")["batch_id"]
    assert cli.json("batches", "cancel", dropped, "-u", email)["refunded"] == 1
    assert cli.json("worker", "--once", "--generator", "noop")["completed"] == 2
    assert cli.json("batches", "watch", kept, "-u", email)["status"] == "completed"
    assert cli.json("batches", "delete", dropped, "-u", email, "--yes")["deleted"] is True
    stats = cli.json("stats", "-u", email)
    assert (stats["batches"], stats["completed"], stats["balance"]) == (1, 2, 5)
    assert email in [u["email"] for u in cli.json("users", "list")]


def test_ctrl_c_stops_watching_but_not_the_batch(first_run: FirstRun, clean_env: None) -> None:
    cli = Cli(None, first_run.state_dir)
    batch_id = cli.json("batches", "create", "-u", DEMO_USER, "--sample", "-s", "noir")["batch_id"]
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
    watcher = subprocess.Popen(
        [
            str(PORTRAITKIT),
            "--state-dir",
            str(first_run.state_dir),
            "batches",
            "watch",
            batch_id,
            "-u",
            DEMO_USER,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert watcher.stdout is not None
    first_line = watcher.stdout.readline()  # no worker runs: the batch waits

    watcher.send_signal(signal.SIGINT)
    _out, err = watcher.communicate(timeout=30)

    assert "Film Noir" in first_line
    assert (watcher.returncode, err) == (130, "stopped watching; the batch goes on\n")
    assert cli.json("batches", "show", batch_id, "-u", DEMO_USER)["status"] == "pending"
    cli.run("batches", "cancel", batch_id, "-u", DEMO_USER)
