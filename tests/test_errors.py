"""Every error has a stable code, an HTTP status and a typed exception, in both directions."""

from __future__ import annotations

import re
from pathlib import Path

from portraitkit import errors
from portraitkit.database.schema_files import schema_dirs

# private.raise_error('code', status, ...) as the migrations call it.
RAISED = re.compile(r"raise_error\(\s*'([a-z_]+)',\s*(\d{3})")


def _raised_codes() -> set[tuple[str, int]]:
    found: set[tuple[str, int]] = set()
    for path in sorted(schema_dirs().migrations.glob("*.sql")):
        found |= {(code, int(status)) for code, status in RAISED.findall(path.read_text())}
    return found


def _all_error_classes() -> list[type[errors.PortraitkitError]]:
    seen: list[type[errors.PortraitkitError]] = []
    pending = [errors.PortraitkitError]
    while pending:
        cls = pending.pop()
        seen.append(cls)
        pending.extend(cls.__subclasses__())
    return seen


def test_every_code_the_contract_raises_has_its_exception_and_status() -> None:
    raised = _raised_codes()
    assert len(raised) >= 15
    for code, status in sorted(raised):
        kind = errors.ERRORS_BY_CODE.get(code)
        assert kind is not None, f"{code} has no exception class in portraitkit/errors.py"
        assert kind.http_status == status, (
            f"{code}: SQL answers {status}, Python {kind.http_status}"
        )


def test_every_exception_has_its_own_code_and_a_status() -> None:
    classes = _all_error_classes()
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes)), sorted(c for c in codes if codes.count(c) > 1)
    for cls in classes:
        assert re.fullmatch(r"[a-z_]+", cls.code), cls
        assert 400 <= cls.http_status <= 599, cls
        assert errors.ERRORS_BY_CODE[cls.code] is cls, f"{cls.__name__} is not in the code table"


def test_every_exception_is_defined_in_errors_py() -> None:
    """One module holds the hierarchy, so the code table sees every class."""
    for cls in _all_error_classes():
        assert cls.__module__ == "portraitkit.errors", f"{cls.__name__} is in {cls.__module__}"


def test_every_contract_code_is_documented() -> None:
    contract = (Path(__file__).parents[1] / "docs" / "contract.md").read_text()
    for code, status in sorted(_raised_codes()):
        assert re.search(rf"\| `{code}` \| {status} \|", contract), f"{code} missing in contract.md"


def test_a_payload_with_a_contract_code_becomes_its_exception() -> None:
    error = errors.error_from_payload("source_not_found", "No such photo.", '{"field": "x"}')
    assert type(error) is errors.SourceNotFound
    assert (error.code, error.http_status, error.details) == (
        "source_not_found",
        404,
        {"field": "x"},
    )


def test_a_data_exception_before_the_function_ran_is_invalid_input() -> None:
    error = errors.error_from_payload("22003", "value out of range", None, None, 400)
    assert type(error) is errors.InvalidInput
    assert error.details == {"sqlstate": "22003"}


def test_a_refusal_without_a_code_is_typed_by_its_status() -> None:
    """Supabase's gateway answers a bad API key with 401 and no code."""
    error = errors.error_from_payload(None, "Invalid API key", None, None, 401)
    assert type(error) is errors.NotAuthenticated and error.http_status == 401
    other = errors.error_from_payload(None, "Bad gateway", None, None, 502)
    assert (type(other), other.code, other.http_status) == (errors.PortraitkitError, "error", 502)
