"""The NUMERIC scorer: compare the final number of the output with the final
number of the expected output.

Numbers are read the way answers are written: `1,234` and `114,200` with
thousands separators, signs (`-3`, `+3`, `−3`), decimals (`3.50`), a full stop
ending the sentence (`The answer is 72.`), currency and percent signs around
them (`$1,234.50`, `45%`). GSM8K solutions end in a line `#### 72` after
calculator notes such as `<<16-3-4=9>>`; when a text has that marker, its
answer is the first number after the last marker.

Known shortcoming: a decimal comma (`3,5`), spaces as thousands separators
(`1 234`) and exponents (`1e-5`) are not understood; each reads as two
numbers, so the final one is the part after the comma, space or `e`. That
stops mattering when an option to choose the locale is added.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from app.scoring.base import (
    FAIL,
    PASS,
    Score,
    ScoringError,
    non_negative_option,
    require_expected,
)

_CALCULATOR_NOTE = re.compile(r"<<[^<>]*>>")
_GSM8K_MARKER = "####"
_NUMBER = re.compile(
    r"""
    (?: (?<![\w.]) (?P<sign>[-+\u2212]) )?  # a sign glued to a word is a hyphen
    [$€£¥]?
    (?<![\d.])                              # not the middle of another number
    (?:
        (?P<whole> \d{1,3} (?:,\d{3})+ (?!\d) | \d+ )
        (?: \. (?P<fraction>\d+) )?          # "72." ends a sentence: no digits
      | \. (?P<bare_fraction>\d+)            # ".5"
    )
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class NumericScorer:
    """NUMERIC: passes when the final number in the output is within
    `tolerance` (absolute) or `relativeTolerance` (a fraction of the expected
    number) of the final number in the expected output; both default to 0, so
    by default the numbers must be equal (`72.0` equals `72`).

    An output with no number fails. An expected output with no number raises
    ScoringError: that test case cannot be scored.
    """

    tolerance: Decimal = Decimal(0)
    relative_tolerance: Decimal = Decimal(0)

    needs_expected_output = True
    option_names = ("tolerance", "relativeTolerance")

    @classmethod
    def from_options(cls, options: Mapping[str, object]) -> NumericScorer:
        # Through str() so that 0.01 becomes Decimal("0.01") and not the
        # binary float just above it.
        return cls(
            tolerance=Decimal(str(non_negative_option(options, "tolerance"))),
            relative_tolerance=Decimal(
                str(non_negative_option(options, "relativeTolerance"))
            ),
        )

    def score(self, output: str, expected_output: str | None) -> Score:
        expected = final_number(require_expected("NUMERIC", expected_output))
        if expected is None:
            raise ScoringError(
                "the expected output has no number for NUMERIC to compare with: "
                f"{_excerpt(expected_output)}"
            )

        actual = final_number(output)
        if actual is None:
            return FAIL

        difference = abs(actual - expected)
        close = (
            difference <= self.tolerance
            or difference <= self.relative_tolerance * abs(expected)
        )
        return PASS if close else FAIL


def final_number(text: str) -> Decimal | None:
    """The answer a text gives as a number, or None if it has no number.

    That is the first number after the last `####` marker if there is one
    (GSM8K), otherwise the last number in the text.
    """
    text = _CALCULATOR_NOTE.sub(" ", text)
    if _GSM8K_MARKER in text:
        match = _NUMBER.search(text.rpartition(_GSM8K_MARKER)[2])
    else:
        matches = list(_NUMBER.finditer(text))
        match = matches[-1] if matches else None
    return _to_decimal(match) if match else None


def _to_decimal(match: re.Match[str]) -> Decimal:
    digits = (match["whole"] or "0").replace(",", "")
    fraction = match["fraction"] or match["bare_fraction"]
    if fraction:
        digits = f"{digits}.{fraction}"

    # Decimal reads any Unicode decimal digits, so answers written in
    # Bengali or full-width digits compare like ASCII ones.
    number = Decimal(digits)
    return -number if match["sign"] in ("-", "\u2212") else number


def _excerpt(text: str | None) -> str:
    text = repr(text)
    return text if len(text) <= 80 else text[:77] + "..."
