"""The narrow interface a client needs from a transport, whichever carries the calls.

A transport is bound to one identity (a user's access token, the service key, or none).
It calls functions of the SQL contract and reads tables, as PostgREST would for that
identity, and raises the typed errors of :mod:`portraitkit.errors`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tenacity import AsyncRetrying

from portraitkit.retrying import is_transient, retrying


@dataclass(frozen=True)
class RetryPolicy:
    """How a retry-safe call is resent after a transient failure (a dropped connection, a
    timeout, a deadlock): ``attempts`` tries in all, with exponential delays from
    ``base_delay`` up to ``max_delay``. Both transports resend through :meth:`retrying`."""

    attempts: int = 3
    base_delay: float = 0.2
    max_delay: float = 2.0

    def retrying(
        self, what: str, retry_on: Callable[[BaseException], bool] = is_transient
    ) -> AsyncRetrying:
        return retrying(
            what,
            attempts=self.attempts,
            initial=self.base_delay,
            max_delay=self.max_delay,
            retry_on=retry_on,
        )


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
