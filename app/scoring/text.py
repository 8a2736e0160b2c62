"""Scorers that compare the output's text with the expected output's text."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from app.scoring.base import (
    FAIL,
    PASS,
    Score,
    ScoringError,
    bool_option,
    require_expected,
)


@dataclass(frozen=True)
class ExactMatchScorer:
    """EXACT_MATCH: the output equals the expected output once both are
    trimmed of surrounding whitespace; `ignoreCase` compares case-folded text.
    """

    ignore_case: bool = False

    needs_expected_output = True
    option_names = ("ignoreCase",)

    @classmethod
    def from_options(cls, options: Mapping[str, object]) -> ExactMatchScorer:
        return cls(ignore_case=bool_option(options, "ignoreCase"))

    def score(self, output: str, expected_output: str | None) -> Score:
        expected = _normalise(
            require_expected("EXACT_MATCH", expected_output), self.ignore_case
        )
        return PASS if _normalise(output, self.ignore_case) == expected else FAIL


@dataclass(frozen=True)
class ContainsScorer:
    """CONTAINS: the trimmed expected output occurs somewhere in the output;
    `ignoreCase` compares case-folded text.
    """

    ignore_case: bool = False

    needs_expected_output = True
    option_names = ("ignoreCase",)

    @classmethod
    def from_options(cls, options: Mapping[str, object]) -> ContainsScorer:
        return cls(ignore_case=bool_option(options, "ignoreCase"))

    def score(self, output: str, expected_output: str | None) -> Score:
        expected = _normalise(
            require_expected("CONTAINS", expected_output), self.ignore_case
        )
        # An empty string occurs in every output, so such a test case would
        # pass whatever the model said: that is a mistake in the test case.
        if not expected:
            raise ScoringError(
                "the expected output is empty, so CONTAINS would pass any output"
            )

        haystack = output.casefold() if self.ignore_case else output
        return PASS if expected in haystack else FAIL


def _normalise(text: str, ignore_case: bool) -> str:
    text = text.strip()
    return text.casefold() if ignore_case else text
