"""API ids and page cursors: the one place database row ids meet the API.

Every id the API hands out is `<kind prefix>_<row id>` (`ts_12` for a test
set, `ev_7` for an evaluation). Clients must treat them as opaque; the prefix
lets the API tell a malformed or wrong-kind id (BAD_USER_INPUT) from an id that
names nothing (NOT_FOUND).
"""

from __future__ import annotations

import base64
import enum

from app.errors import BadUserInput

_MAX_ROW_ID = 2**63 - 1
# Cursors over positions (int4 columns) and over row ids (bigint columns).
MAX_POSITION = 2**31 - 1
MAX_ROW_ID = _MAX_ROW_ID


class Kind(enum.Enum):
    TEST_SET = "ts"
    CATEGORY = "cat"
    TEST_CASE = "tc"
    EVALUATION = "ev"
    RESULT = "res"
    API_KEY = "key"


def encode(kind: Kind, row_id: int) -> str:
    return f"{kind.value}_{row_id}"


def decode(kind: Kind, api_id: str, *, field: str) -> int:
    """The row id behind `api_id`; BadUserInput naming `field` if malformed."""
    prefix, _, digits = api_id.partition("_")
    if (prefix != kind.value or not digits.isascii() or not digits.isdigit()
            or len(digits) > 19):
        raise BadUserInput(
            f"{field}: {api_id[:80]!r} is not a valid "
            f"{kind.name.lower().replace('_', ' ')} id "
            f"(ids look like {kind.value}_123)"
        )
    row_id = int(digits)
    if row_id > _MAX_ROW_ID:
        raise BadUserInput(f"{field}: {api_id[:80]!r} is out of range")
    return row_id


def encode_cursor(position: int) -> str:
    return base64.urlsafe_b64encode(f"c:{position}".encode()).decode()


def decode_cursor(cursor: str | None, *, field: str = "after",
                  maximum: int = MAX_POSITION) -> int | None:
    """The position after which a page starts; None for the first page."""
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor.encode("ascii")).decode("ascii")
        tag, _, digits = text.partition(":")
        if tag != "c" or not digits.isdigit() or len(digits) > 19:
            raise ValueError
        position = int(digits)
        if position > maximum:
            raise ValueError
        return position
    except (ValueError, UnicodeError):
        raise BadUserInput(
            f"{field}: {cursor[:80]!r} is not a cursor this API handed out"
        ) from None
