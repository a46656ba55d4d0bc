"""Typed errors: one exception per error code of the SQL contract, and the mapping to them.

The SQL functions raise SQLSTATE ``PGRST`` whose message is the JSON body PostgREST
answers with (``{code, message, details, hint}``) and whose detail holds the HTTP status.
Both transports end up with the same four fields, so both map through
:func:`error_from_payload` and a caller sees the same exception whichever carried it.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar


class PortraitkitError(Exception):
    """Base of every error portraitkit raises on purpose.

    ``code`` is stable (programs branch on it), ``message`` is for people, ``details``
    carries the machine-readable specifics (e.g. ``required``/``available`` credits).
    """

    code: ClassVar[str] = "error"
    http_status: ClassVar[int] = 500

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        hint: str | None = None,
        code: str | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}
        self.hint = hint
        if code is not None:
            self.code = code  # type: ignore[misc]
        if http_status is not None:
            self.http_status = http_status  # type: ignore[misc]

    def to_dict(self) -> dict[str, Any]:
        """The error as PostgREST's JSON shape, for ``--json`` output and logs."""
        return {
            "code": self.code,
            "message": self.message,
            "details": self.details,
            "hint": self.hint,
            "http_status": self.http_status,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class ConfigurationError(PortraitkitError):
    """Settings name no usable database (e.g. SUPABASE_URL without a key)."""

    code = "configuration_error"
    http_status = 500


class DatabaseUnavailable(PortraitkitError):
    """The database could not be reached or refused the connection."""

    code = "database_unavailable"
    http_status = 503


class TransportTimeout(DatabaseUnavailable):
    """The API did not answer in time (after the retries a safe call is allowed)."""

    code = "timeout"
    http_status = 504


class NotAuthenticated(PortraitkitError):
    """A user function was called without a signed-in user."""

    code = "not_authenticated"
    http_status = 401


class NotAllowed(PortraitkitError):
    """The role may not do this (e.g. a user calling a worker function)."""

    code = "not_allowed"
    http_status = 403


class InvalidInput(PortraitkitError):
    """The request is malformed; ``details["field"]`` names the argument when known."""

    code = "invalid_input"
    http_status = 400


class EmptyStyleList(InvalidInput):
    code = "empty_style_list"


class TooManyStyles(InvalidInput):
    code = "too_many_styles"


class DuplicateStyle(InvalidInput):
    code = "duplicate_style"


class UnknownStyle(InvalidInput):
    code = "unknown_style"


class InactiveStyle(InvalidInput):
    code = "inactive_style"


class PromptTooLong(InvalidInput):
    code = "prompt_too_long"


class InsufficientCredits(PortraitkitError):
    """The balance does not cover the cost; details hold ``required`` and ``available``."""

    code = "insufficient_credits"
    http_status = 402


class NotFound(PortraitkitError):
    code = "not_found"
    http_status = 404


class BatchNotFound(NotFound):
    """No such batch for this user (another user's batch looks exactly the same)."""

    code = "batch_not_found"


class ProfileNotFound(NotFound):
    code = "profile_not_found"


class Conflict(PortraitkitError):
    code = "conflict"
    http_status = 409


class BatchFinished(Conflict):
    """The batch already ended, so it cannot be cancelled."""

    code = "batch_finished"


class NothingToRetry(Conflict):
    code = "nothing_to_retry"


class IdempotencyConflict(Conflict):
    """The idempotency key was used before for a different request."""

    code = "idempotency_conflict"


def _all_subclasses(cls: type[PortraitkitError]) -> list[type[PortraitkitError]]:
    found: list[type[PortraitkitError]] = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found


ERRORS_BY_CODE: dict[str, type[PortraitkitError]] = {
    cls.code: cls for cls in _all_subclasses(PortraitkitError)
}


def _as_details(raw: Any) -> dict[str, Any]:
    """PostgREST's ``details`` is a string; ours hold a JSON object in it."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, dict):
        return raw
    try:
        parsed = json.loads(raw)
    except (TypeError, ValueError):
        return {"text": raw}
    return parsed if isinstance(parsed, dict) else {"value": parsed}


def error_from_payload(
    code: str | None,
    message: str | None,
    details: Any = None,
    hint: str | None = None,
    http_status: int | None = None,
) -> PortraitkitError:
    """The typed exception for an error body ``{code, message, details, hint}``.

    Contract codes map to their own class; PostgreSQL's privilege error and PostgREST's
    auth errors map to :class:`NotAllowed`/:class:`NotAuthenticated`; anything else keeps
    its code on a plain :class:`PortraitkitError`.
    """
    code = code or "error"
    text = message or code
    kind = ERRORS_BY_CODE.get(code)
    if kind is None:
        if code == "42501":
            kind = NotAuthenticated if http_status == 401 else NotAllowed
        elif code.startswith("08") or code == "57P01":
            kind = DatabaseUnavailable
        elif code in ("PGRST301", "PGRST302", "PGRST303"):
            kind = NotAuthenticated
    if kind is None:
        return PortraitkitError(
            text, details=_as_details(details), hint=hint, code=code, http_status=http_status
        )
    return kind(text, details=_as_details(details), hint=hint)


def error_from_postgres(
    sqlstate: str | None,
    message: str | None,
    detail: str | None,
    hint: str | None,
    http_status: int | None = None,
) -> PortraitkitError:
    """The typed exception for an error raised inside PostgreSQL (direct transport).

    A ``PGRST`` error carries PostgREST's response in its message and detail; decoding
    them here gives exactly what the HTTP transport gets. ``http_status`` is what
    PostgREST would answer where it depends on the request (42501: 401 when anonymous).
    """
    if sqlstate == "PGRST" and message:
        try:
            body = json.loads(message)
            status = json.loads(detail or "{}").get("status")
        except ValueError:
            body, status = {"code": "error", "message": message}, None
        return error_from_payload(
            body.get("code"), body.get("message"), body.get("details"), body.get("hint"), status
        )
    return error_from_payload(sqlstate, message, detail, hint, http_status)
