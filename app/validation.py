"""Checks on test data and other user input that types alone cannot express.

Used by the API's resolvers and by `assay import`'s first pass, so that a file
the API would refuse is refused before anything is sent.

Each failure is a BadUserInput whose message starts with the path of the
offending field (`input.testCases[3].input.question: ...`), so a client can
point at it.
"""

from __future__ import annotations

import math
from typing import Any

from app.errors import BadUserInput

MAX_NAME_LENGTH = 200
MAX_TEXT_LENGTH = 100_000
MAX_JSON_DEPTH = 32


def text(value: str | None, path: str, *, required: bool = False,
         max_length: int = MAX_TEXT_LENGTH) -> str | None:
    """A string with no NUL or lone surrogate, within its length; names are
    trimmed, and an empty required one is refused."""
    if value is None:
        if required:
            raise BadUserInput(f"{path}: is required")
        return None
    _storable(value, path)
    if required:
        value = value.strip()
        if not value:
            raise BadUserInput(f"{path}: must not be empty")
    if len(value) > max_length:
        raise BadUserInput(
            f"{path}: is {len(value)} characters long; at most {max_length} allowed")
    return value


def json_value(value: Any, path: str) -> Any:
    """A JSON value PostgreSQL can store (no NUL, no lone surrogate) and
    nested no deeper than MAX_JSON_DEPTH."""
    # Nearly every value passes: look first without building the path of
    # every member (most of the cost of a bulk import), and walk again with
    # paths only to say where a refused value is wrong.
    if not _plainly_storable(value, 0):
        _refuse_json(value, path, 0)
        # The two walks must agree on what is refused.
        raise BadUserInput(f"{path}: cannot be stored")
    return value


def test_case(input: Any, expected_output: str | None, category: str | None,
              metadata: Any, path: str) -> tuple[dict[str, Any], str | None,
                                                 str | None, Any]:
    """The fields of one test case as they are stored, in the order the API
    checks them; `path` names the case (`testCases[3]`)."""
    if not isinstance(input, dict):
        raise BadUserInput(
            f"{path}.input: must be a JSON object of template variables")
    return (json_value(input, f"{path}.input"),
            text(expected_output, f"{path}.expectedOutput"),
            text(category, f"{path}.category", required=category is not None,
                 max_length=MAX_NAME_LENGTH),
            json_value(metadata, f"{path}.metadata"))


def _plainly_storable(value: Any, depth: int) -> bool:
    if isinstance(value, str):
        return "\x00" not in value and (value.isascii() or _encodable(value))
    if isinstance(value, dict):
        if depth >= MAX_JSON_DEPTH and value:
            return False
        for key, item in value.items():
            if not (_plainly_storable(key, depth)
                    and _plainly_storable(item, depth + 1)):
                return False
        return True
    if isinstance(value, list):
        if depth >= MAX_JSON_DEPTH and value:
            return False
        for item in value:
            if not _plainly_storable(item, depth + 1):
                return False
        return True
    return not isinstance(value, float) or math.isfinite(value)


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _refuse_json(value: Any, path: str, depth: int) -> None:
    if depth > MAX_JSON_DEPTH:
        raise BadUserInput(f"{path}: is nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        _storable(value, path)
    elif isinstance(value, dict):
        for key, item in value.items():
            _storable(key, f"{path} (a key)")
            _refuse_json(item, f"{path}.{key}", depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_json(item, f"{path}[{index}]", depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise BadUserInput(
            f"{path}: {value} is not a JSON number (too large, infinite or NaN)")


def _storable(value: str, path: str) -> None:
    if "\x00" in value:
        raise BadUserInput(f"{path}: contains a NUL character, which cannot be stored")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadUserInput(
            f"{path}: contains a lone surrogate, which is not valid Unicode"
        ) from None
