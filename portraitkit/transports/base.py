"""The narrow interface a client needs from a transport, whichever carries the calls.

A transport is bound to one identity (a user's access token, the service key, or none).
It calls functions of the SQL contract and reads tables, as PostgREST would for that
identity, and raises the typed errors of :mod:`portraitkit.errors`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class RetryPolicy:
    """How a retry-safe call is resent after a dropped connection or a timeout:
    ``attempts`` tries in all, with exponential delays. Both transports use it."""

    attempts: int = 3
    base_delay: float = 0.2
    max_delay: float = 2.0

    def delay(self, retry: int) -> float:
        return float(min(self.max_delay, self.base_delay * 2**retry))


class Transport(Protocol):
    async def rpc(
        self, function: str, args: Mapping[str, Any] | None = None, *, retry_safe: bool = False
    ) -> Any:
        """Call ``public.<function>`` with named arguments; a scalar function's value, or a
        set's rows. ``retry_safe`` says the call may be repeated after a dropped connection
        or a timeout without doing the work twice (reads; creates with an idempotency key).
        """
        ...

    async def select(
        self, table: str, *, columns: Sequence[str] = ("*",), order: Sequence[str] = ()
    ) -> list[dict[str, Any]]:
        """Rows of ``public.<table>`` visible to this identity (RLS applies)."""
        ...

    @property
    def user_id(self) -> str | None:
        """The signed-in user's id (the token's ``sub``), if any."""
        ...

    async def aclose(self) -> None: ...
