"""Typed errors: every exception portraitkit raises on purpose, one per stable code.

The SQL functions raise SQLSTATE ``PGRST`` whose message is the JSON body PostgREST
answers with (``{code, message, details, hint}``) and whose detail holds the HTTP status.
Both transports end up with the same four fields, so both map through
:func:`error_from_payload` and a caller sees the same exception whichever carried it.

The whole hierarchy lives here (as in httpx's ``_exceptions.py``)::

    PortraitkitError
    ├── ConfigurationError
    ├── DatabaseUnavailable ── DatabaseBusy, TransportTimeout,
    │                          EmbeddedError ── ServerAccountError
    ├── MigrationError ── MigrationHistoryError
    ├── NotAuthenticated, NotAllowed
    ├── InvalidInput ── EmptyStyleList, TooManyStyles, DuplicateStyle, UnknownStyle,
    │                   InactiveStyle, PromptTooLong, InvalidImage, PayloadTooLarge,
    │                   UnsupportedMediaType
    ├── InsufficientCredits
    ├── NotFound ── BatchNotFound, ProfileNotFound, SourceNotFound, ObjectNotFound,
    │               UserNotFound
    ├── Conflict ── BatchFinished, NothingToRetry, IdempotencyConflict, UserExists
    ├── StorageError
    ├── GenerationError ── RetryableGenerationError, PermanentGenerationError
    └── WorkerFailed
"""

from __future__ import annotations

import json
from collections.abc import Mapping
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


class DatabaseBusy(DatabaseUnavailable):
    """The server rolled the call back for a reason that passes (a deadlock, a serialization
    failure, a lock or statement timeout, a shutdown): the same call may be made again."""

    code = "database_busy"
    http_status = 503


class TransportTimeout(DatabaseUnavailable):
    """The API did not answer in time (after the retries a safe call is allowed)."""

    code = "timeout"
    http_status = 504


class EmbeddedError(DatabaseUnavailable):
    """The embedded server could not be prepared, started or stopped."""

    code = "embedded_server_error"
    http_status = 503


class ServerAccountError(EmbeddedError):
    """The system user the embedded server runs as (when we are root) could not be made."""

    code = "server_account_error"


class MigrationError(PortraitkitError):
    """A migration could not be applied; nothing of that file was kept."""

    code = "migration_failed"
    http_status = 500

    def __init__(self, message: str, *, version: str | None = None) -> None:
        super().__init__(message, details={"version": version} if version else None)
        self.version = version


class MigrationHistoryError(MigrationError):
    """The database records versions this checkout does not have (as `supabase db push`)."""

    code = "migration_history_mismatch"

    def __init__(self, missing: list[str]) -> None:
        super().__init__(
            "Remote migration versions not found in local migrations directory: "
            + ", ".join(missing)
        )
        self.missing = missing
        self.details = {"missing": missing}


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


class InvalidImage(InvalidInput):
    """The source is not an image we can stylise (format, size or pixel count)."""

    code = "invalid_image"


class PayloadTooLarge(InvalidInput):
    """An upload over the size limit; ``details`` hold ``max_bytes``."""

    code = "payload_too_large"
    http_status = 413


class UnsupportedMediaType(InvalidInput):
    """A request body of a type the endpoint does not take."""

    code = "unsupported_media_type"
    http_status = 415


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


class SourceNotFound(NotFound):
    """The source photo is not an object of the caller's (another user's looks the same)."""

    code = "source_not_found"


class ObjectNotFound(NotFound):
    """No stored object at that path (or not one this identity may see)."""

    code = "object_not_found"


class StorageError(PortraitkitError):
    """Storage refused a request for a reason none of the other errors names."""

    code = "storage_error"
    http_status = 502


class UserNotFound(NotFound):
    """No local user with that email or id (embedded and direct-Postgres modes)."""

    code = "user_not_found"


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


class GenerationError(PortraitkitError):
    """A generation did not produce an image; the subclass says whether trying again helps."""

    code = "generation_error"
    http_status = 502


class RetryableGenerationError(GenerationError):
    """Worth another attempt later: rate limits, server errors, timeouts, lost connections."""

    code = "generation_retryable"
    http_status = 503


class PermanentGenerationError(GenerationError):
    """Trying again gives the same answer: unreadable photo, unknown style, rejected request."""

    code = "generation_failed"
    http_status = 422


class UserExists(Conflict):
    """A local user with that email already exists."""

    code = "user_exists"


# SQLSTATEs after which the same call may simply be made again: the server rolled the
# transaction back, or it never started (PostgreSQL docs, Appendix A).
TRANSIENT_SQLSTATES = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available (lock_timeout)
        "57014",  # query_canceled (statement_timeout)
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now
        "53300",  # too_many_connections
    }
)


class WorkerFailed(PortraitkitError):
    """A side task of the worker died of an error that retrying cannot fix; the worker
    stopped and gave its items back. ``__cause__`` is that error."""

    code = "worker_failed"
    http_status = 500


def _all_subclasses(cls: type[PortraitkitError]) -> list[type[PortraitkitError]]:
    found: list[type[PortraitkitError]] = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found


_EVERY_ERROR: list[type[PortraitkitError]] = [PortraitkitError, *_all_subclasses(PortraitkitError)]
ERRORS_BY_CODE: dict[str, type[PortraitkitError]] = {cls.code: cls for cls in _EVERY_ERROR}


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
    if not code:
        # A gateway's own refusal carries no code (Supabase's "Invalid API key"): its
        # status is all there is to go by.
        code = {401: "not_authenticated", 403: "not_allowed"}.get(http_status or 0, "error")
    text = message or code
    # The base class's code ("error") keeps the status it came with, so it is built below.
    kind = ERRORS_BY_CODE.get(code) if code != PortraitkitError.code else None
    if kind is None:
        if code == "42501":
            kind = NotAuthenticated if http_status == 401 else NotAllowed
        elif code in TRANSIENT_SQLSTATES:
            return DatabaseBusy(text, details={"sqlstate": code, **_as_details(details)}, hint=hint)
        elif code.startswith("08"):
            kind = DatabaseUnavailable
        elif code in ("PGRST301", "PGRST302", "PGRST303"):
            kind = NotAuthenticated
        elif code.startswith("22"):
            # A data exception before the function ran (PostgREST or psycopg could not
            # cast an argument, e.g. a number out of range): the request is malformed.
            return InvalidInput(text, details={"sqlstate": code, **_as_details(details)}, hint=hint)
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


# Realtime's reasons for refusing a join or closing a channel come as "<code>: <message>"
# (supabase/realtime lib/realtime_web/channels/realtime_channel.ex): the token's, which the
# same token can never pass, and the channel's policies. Anything else may pass (a restart,
# a rate limit, the project's database still connecting).
TOKEN_REFUSALS = frozenset(
    {"InvalidJWTToken", "JwtSignatureError", "InvalidJWTExpiration", "MalformedJWT"}
)
POLICY_REFUSALS = frozenset({"Unauthorized", "PrivateOnly"})


def realtime_refusal(response: Mapping[str, Any]) -> PortraitkitError:
    """The typed error for Realtime's answer to a refused join (``phx_reply`` with status
    ``error``: ``{"reason": ...}``) or a channel's error (``system``: ``{"message": ...}``)."""
    reason = str(response.get("reason") or response.get("message") or "no reason given")
    code = reason.partition(":")[0].strip()
    details = {"reason": reason}
    if code in TOKEN_REFUSALS:
        return NotAuthenticated(f"Realtime refused the access token: {reason}", details=details)
    if code in POLICY_REFUSALS:
        return NotAllowed(f"Realtime refused the channel: {reason}", details=details)
    return DatabaseUnavailable(f"Realtime refused the channel: {reason}", details=details)
