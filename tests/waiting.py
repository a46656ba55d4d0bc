"""Waiting in tests for something another process or task makes true, with a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def until(
    condition: Callable[[], Awaitable[bool] | bool], what: str, seconds: float = 10.0
) -> None:
    """Return once ``condition()`` holds; fail the test, naming ``what``, after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        held = condition()
        if not isinstance(held, bool):
            held = await held
        if held:
            return
        assert time.monotonic() < deadline, f"{what} did not happen within {seconds} s"
        await asyncio.sleep(0.05)
