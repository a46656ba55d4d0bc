"""Secrets kept as small private files in the state directory (mode 0600)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_private(path: Path, text: str) -> None:
    """Write `text` so that only the owner can ever read it, even briefly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def read_or_create_secret(path: Path, nbytes: int = 24) -> str:
    """Return the secret stored at `path`, generating it on first use.

    Hex only, so it is safe inside URLs and conninfo strings without escaping.
    """
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    value = secrets.token_hex(nbytes)
    write_private(path, value + "\n")
    return value
