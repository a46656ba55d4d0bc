"""Exit codes, one per kind of failure, and what to tell people about each.

  0  success
  1  any other error
  2  bad input: a usage error, an argument the database refused (InvalidInput), or a
     deletion without --yes and no terminal to confirm it on
  3  configuration: the settings name no usable database
  4  not found: no such batch, user or object
  5  not allowed: not signed in (a refused sign-in too), or the role may not do it
  6  insufficient credits
  7  database unavailable: cannot connect, timed out, or the embedded server won't start
  8  conflict: the batch's state does not allow it (already ended, nothing to retry)
130  interrupted (Ctrl-C)
"""

from __future__ import annotations

from enum import IntEnum

import psycopg

from portraitkit.errors import (
    ConfigurationError,
    Conflict,
    DatabaseUnavailable,
    EmbeddedError,
    InsufficientCredits,
    InvalidInput,
    NotAllowed,
    NotAuthenticated,
    NotFound,
)


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1
    BAD_INPUT = 2
    CONFIGURATION = 3
    NOT_FOUND = 4
    NOT_ALLOWED = 5
    INSUFFICIENT_CREDITS = 6
    DATABASE_UNAVAILABLE = 7
    CONFLICT = 8
    INTERRUPTED = 130


# First match wins: subclasses before the classes they extend.
EXIT_CODES: list[tuple[tuple[type[BaseException], ...], ExitCode]] = [
    ((InsufficientCredits,), ExitCode.INSUFFICIENT_CREDITS),
    ((InvalidInput,), ExitCode.BAD_INPUT),
    ((ConfigurationError,), ExitCode.CONFIGURATION),
    ((NotFound,), ExitCode.NOT_FOUND),
    ((NotAllowed, NotAuthenticated), ExitCode.NOT_ALLOWED),
    ((DatabaseUnavailable, psycopg.OperationalError, EmbeddedError), ExitCode.DATABASE_UNAVAILABLE),
    ((Conflict,), ExitCode.CONFLICT),
    ((KeyboardInterrupt,), ExitCode.INTERRUPTED),
]

# What to do next, by error code (the message already says what went wrong).
HINTS = {
    "unknown_style": "See the catalogue with `portraitkit styles`.",
    "inactive_style": "See the catalogue with `portraitkit styles`.",
    "insufficient_credits": "Add credits with `portraitkit credits grant USER N`.",
    "batch_not_found": "List the user's batches with `portraitkit batches list --user USER`.",
    "nothing_to_retry": "Only failed items can be retried.",
    "database_unavailable": (
        "Check --database-url / DATABASE_URL, or start the local one with `portraitkit db up`."
    ),
    "timeout": "Check the network and try again.",
}


def exit_code_for(exc: BaseException) -> int:
    for classes, code in EXIT_CODES:
        if isinstance(exc, classes):
            return int(code)
    return int(ExitCode.ERROR)


def message_for(exc: BaseException) -> str:
    """The error's message; a failed connection is named as one."""
    if isinstance(exc, psycopg.OperationalError):
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"The database cannot be reached: {detail}"
    return str(exc).strip() or type(exc).__name__


def hint_for(exc: BaseException) -> str | None:
    hint = getattr(exc, "hint", None)
    if isinstance(hint, str) and hint:
        return hint
    if isinstance(exc, psycopg.OperationalError):
        return HINTS["database_unavailable"]
    code = getattr(exc, "code", None)
    return HINTS.get(code) if isinstance(code, str) else None
