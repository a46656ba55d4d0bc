"""`portraitkit serve` as a real process, and `portraitkit users token` for curl."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.cli.conftest import Cli

ROOT = Path(__file__).resolve().parents[2]
SECRET = "portraitkit-serve-test-secret-with-32-bytes-or-more"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(db_url: str, cli_state_dir: Path) -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "portraitkit"),
            "--database-url",
            db_url,
            "--state-dir",
            str(cli_state_dir),
            "serve",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PORTRAITKIT_JWT_SECRET": SECRET, "PORTRAITKIT_GENERATOR": "noop"},
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"serve did not come up: {proc.communicate()[1]}")
    yield base
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


def test_a_token_from_users_token_works_against_serve(
    cli: Cli, make_user: Callable[..., str], server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's curl flow: a token from the CLI, a batch made over HTTP, filled in by
    the server's own worker."""
    monkeypatch.setenv("PORTRAITKIT_JWT_SECRET", SECRET)
    email = make_user(credits=10)
    token = cli.run("users", "token", email).stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(server + "/api/user/stats", headers=headers).json()["balance"] == 10
    from portraitkit.generators.sample import sample_portrait_png

    created = httpx.post(
        server + "/api/generate/batch",
        headers=headers,
        files={"photo": ("me.png", sample_portrait_png(), "image/png")},
        data={"styles": ["noir", "poster"]},
    )
    assert created.status_code == 201, created.text
    batch_id = created.json()["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        batch = httpx.get(server + f"/api/user/batches/{batch_id}", headers=headers).json()
        if batch["status"] == "completed":
            break
        time.sleep(0.2)
    assert batch["status"] == "completed"


def test_users_token_json(
    cli: Cli, make_user: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    email = make_user()
    access = cli.json("users", "token", email, "--ttl", "600")
    assert access["email"] == email and access["expires_in"] == 600
    assert access["token_type"] == "bearer" and access["access_token"].count(".") == 2


def test_users_token_for_nobody_is_not_found(cli: Cli) -> None:
    cli.run("users", "token", "nobody@example.test", code=4)
