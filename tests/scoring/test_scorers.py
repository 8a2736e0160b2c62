"""The four scorers, their options, and the numbers NUMERIC reads.

The GSM8K cases read real records from ../shared/datasets beside the
repository, never a copy of them; they skip, saying why, where it is absent.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from app.scoring import (
    Score,
    ScorerOptionsError,
    ScoringError,
    build_scorer,
    final_number,
)
from app.scoring.pattern import MAX_SEARCHED_CHARS

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
GSM8K = SHARED / "datasets" / "gsm8k" / "test.jsonl"


@pytest.mark.parametrize(
    ("output", "expected", "options", "passed"),
    [
        ("Paris", "Paris", None, True),
        ("  Paris\n", "Paris", {}, True),
        ("Paris", " Paris \n", {}, True),
        ("paris", "Paris", {}, False),
        ("paris", "Paris", {"ignoreCase": True}, True),
        ("STRASSE", "straße", {"ignoreCase": True}, True),
        ("paris", "Paris", {"ignoreCase": False}, False),
        ("paris", "Paris", {"ignoreCase": None}, False),
        ("Paris.", "Paris", {}, False),
        ("The capital is Paris", "Paris", {}, False),
        ("  ", "", {}, True),
    ],
)
def test_exact_match_compares_trimmed_text(output, expected, options, passed):
    score = build_scorer("EXACT_MATCH", options).score(output, expected)

    assert score == Score(1.0 if passed else 0.0, passed)


@pytest.mark.parametrize(
    ("output", "expected", "options", "passed"),
    [
        ("The capital is Paris.", "Paris", None, True),
        ("The capital is Paris.", "  Paris\n", {}, True),
        ("The capital is paris.", "Paris", {}, False),
        ("The capital is paris.", "Paris", {"ignoreCase": True}, True),
        ("THE CAPITAL IS PARIS", "capital is", {"ignoreCase": True}, True),
        ("Lyon", "Paris", {}, False),
        ("Par is", "Paris", {}, False),
    ],
)
def test_contains_looks_for_the_expected_output(output, expected, options, passed):
    score = build_scorer("CONTAINS", options).score(output, expected)

    assert score == Score(1.0 if passed else 0.0, passed)


def test_contains_refuses_an_empty_expected_output_that_every_output_contains():
    scorer = build_scorer("CONTAINS", {})

    with pytest.raises(ScoringError, match="empty"):
        scorer.score("anything at all", "  \n")


@pytest.mark.parametrize(
    ("options", "output", "passed"),
    [
        ({"pattern": r"\bParis\b"}, "It is Paris.", True),
        ({"pattern": r"\bParis\b"}, "It is Parisian.", False),
        ({"pattern": r"^Paris$"}, "It is Paris", False),
        ({"pattern": r"(?m)^Answer: \d+$"}, "Let me think.\nAnswer: 42\n", True),
        ({"pattern": r"^Answer: \d+$"}, "Let me think.\nAnswer: 42", False),
        ({"pattern": "yes"}, "YES", False),
        ({"pattern": "yes", "ignoreCase": True}, "YES", True),
        ({"pattern": "yes", "ignoreCase": False}, "YES", False),
        ({"pattern": r"(\d{3},)*\d+"}, "1,234", True),
        ({"pattern": r"a++b"}, "xaab", True),
    ],
)
def test_regex_searches_the_output_for_the_pattern(options, output, passed):
    score = build_scorer("REGEX", options).score(output, None)

    assert score == Score(1.0 if passed else 0.0, passed)


@pytest.mark.parametrize(
    ("position", "passed"),
    [(0, True), (MAX_SEARCHED_CHARS - 6, True), (MAX_SEARCHED_CHARS - 5, False)],
)
def test_regex_searches_only_the_head_of_a_long_output(position, passed):
    output = "." * position + "ANSWER" + "." * 20_000
    scorer = build_scorer("REGEX", {"pattern": "ANSWER"})

    assert scorer.score(output, None).passed is passed


def test_regex_with_a_slow_pattern_finishes_on_a_huge_output():
    # Quadratic in the text searched: minutes on a million characters, a
    # fraction of a second on the searched head.
    scorer = build_scorer("REGEX", {"pattern": r"\d+\s*%"})

    assert scorer.score("1" * 1_000_000, None) == Score(0.0, False)


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("72", Decimal(72)),
        ("The answer is 72.", Decimal(72)),
        ("1,234", Decimal(1234)),
        ("114,200 people came", Decimal(114200)),
        ("It costs 1,450,000 dollars", Decimal(1450000)),
        ("-3", Decimal(-3)),
        ("+3", Decimal(3)),
        ("\u22123", Decimal(-3)),
        ("x = -3.", Decimal(-3)),
        ("3.50", Decimal("3.5")),
        ("about .5 of it", Decimal("0.5")),
        ("$1,234.50", Decimal("1234.50")),
        ("-$5", Decimal(-5)),
        ("45%", Decimal(45)),
        ("16 - 3 - 4 = 9", Decimal(9)),
        ("16-3-4", Decimal(4)),
        ("COVID-19 cases", Decimal(19)),
        ("between 5 and 7 apples", Decimal(7)),
        ("答案是18。", Decimal(18)),
        ("\u09e7\u09e8\u09e9", Decimal(123)),
        ("#### 72", Decimal(72)),
        ("#### -10", Decimal(-10)),
        ("#### 1,600", Decimal(1600)),
        ("She makes 9 * 2 = $<<9*2=18>>18 a day.\n#### 18", Decimal(18)),
        ("It takes 2/2=<<2/2=1>>1 bolt", Decimal(1)),
        ("#### 72\n\nQuestion: what is 15 + 4?", Decimal(72)),
        ("no digits here", None),
        ("", None),
        ("#### none", None),
    ],
)
def test_numeric_reads_the_final_number(text, number):
    assert final_number(text) == number


@pytest.mark.parametrize(
    ("output", "expected", "options", "passed"),
    [
        ("72", "72", None, True),
        ("72.0", "72", {}, True),
        ("So she makes $72.", "#### 72", {}, True),
        ("73", "72", {}, False),
        ("-72", "72", {}, False),
        ("0.3", "0.1 + 0.2 = 0.3", {}, True),
        ("72.4", "72", {"tolerance": 0.5}, True),
        ("72.5", "72", {"tolerance": 0.5}, True),
        ("72.6", "72", {"tolerance": 0.5}, False),
        ("71.99", "72", {"tolerance": 0.01}, True),
        ("71.98", "72", {"tolerance": 0.01}, False),
        ("101", "100", {"relativeTolerance": 0.01}, True),
        ("102", "100", {"relativeTolerance": 0.01}, False),
        ("-101", "-100", {"relativeTolerance": 0.01}, True),
        ("1", "0", {"relativeTolerance": 0.5}, False),
        ("105", "100", {"tolerance": 5, "relativeTolerance": 0.01}, True),
        ("I do not know.", "72", {}, False),
    ],
)
def test_numeric_compares_final_numbers(output, expected, options, passed):
    score = build_scorer("NUMERIC", options).score(output, expected)

    assert score == Score(1.0 if passed else 0.0, passed)


def test_numeric_blames_the_test_case_when_its_expected_output_has_no_number():
    scorer = build_scorer("NUMERIC", {})

    with pytest.raises(ScoringError, match="expected output has no number"):
        scorer.score("72", "seventy-two")


@pytest.mark.parametrize("scorer_type", ["EXACT_MATCH", "CONTAINS", "NUMERIC"])
def test_scorers_that_need_an_expected_output_blame_a_test_case_without_one(
    scorer_type,
):
    scorer = build_scorer(scorer_type, None)

    assert scorer.needs_expected_output is True
    with pytest.raises(ScoringError, match="no expected output"):
        scorer.score("72", None)


def test_regex_needs_no_expected_output():
    scorer = build_scorer("REGEX", {"pattern": "7"})

    assert scorer.needs_expected_output is False
    assert scorer.score("72", "ignored") == Score(1.0, True)


@pytest.fixture(scope="module")
def gsm8k_records() -> list[dict]:
    """20 real GSM8K records: the first ten, and the first ten whose final
    answer is written with a thousands separator or a sign."""
    if not GSM8K.is_file():
        pytest.skip(f"the GSM8K test set is not at {GSM8K}")
    with GSM8K.open(encoding="utf-8") as lines:
        records = [json.loads(line) for line in lines]

    plain = records[:10]
    written_out = [r for r in records if not _answer_after_marker(r).isdigit()]
    assert len(written_out) >= 10
    return plain + written_out[:10]


def _answer_after_marker(record: dict) -> str:
    return record["answer"].rpartition("####")[2].strip()


@pytest.mark.parametrize("index", range(20))
def test_numeric_passes_a_gsm8k_solution_against_itself(gsm8k_records, index):
    answer = gsm8k_records[index]["answer"]
    scorer = build_scorer("NUMERIC", {})

    assert scorer.score(answer, answer) == Score(1.0, True)
    assert final_number(answer) == Decimal(
        _answer_after_marker(gsm8k_records[index]).replace(",", "")
    )


@pytest.mark.parametrize("index", range(20))
def test_numeric_fails_a_gsm8k_solution_with_its_final_number_changed(
    gsm8k_records, index
):
    answer = gsm8k_records[index]["answer"]
    final = Decimal(_answer_after_marker(gsm8k_records[index]).replace(",", ""))
    changed = answer.rpartition("####")[0] + f"#### {final + 1:,}"
    scorer = build_scorer("NUMERIC", {})

    assert scorer.score(changed, answer) == Score(0.0, False)
    assert scorer.score(answer, changed) == Score(0.0, False)


@pytest.mark.parametrize("index", range(20))
def test_numeric_passes_a_plain_sentence_giving_the_gsm8k_answer(
    gsm8k_records, index
):
    answer = gsm8k_records[index]["answer"]
    sentence = f"The answer is {_answer_after_marker(gsm8k_records[index])}."

    assert build_scorer("NUMERIC", {}).score(sentence, answer).passed


@pytest.mark.parametrize(
    ("scorer_type", "options", "path", "message"),
    [
        ("EXACT_MATCH", {"ignoreCase": "yes"}, "options.ignoreCase", "true or false"),
        ("CONTAINS", {"ignoreCase": 1}, "options.ignoreCase", "true or false"),
        ("EXACT_MATCH", {"pattern": "x"}, "options.pattern", "not an option"),
        ("CONTAINS", {"tolerance": 1}, "options.tolerance", "not an option"),
        ("REGEX", None, "options.pattern", "is required"),
        ("REGEX", {"ignoreCase": True}, "options.pattern", "is required"),
        ("REGEX", {"pattern": 5}, "options.pattern", "must be a string"),
        ("REGEX", {"pattern": ""}, "options.pattern", "must not be empty"),
        ("REGEX", {"pattern": "(unclosed"}, "options.pattern", "not a valid"),
        ("REGEX", {"pattern": "a" * 1_001}, "options.pattern", "limit is 1,000"),
        ("REGEX", {"pattern": "(a+)+$"}, "options.pattern", "exponential"),
        ("REGEX", {"pattern": r"(\w+\s?)*$"}, "options.pattern", "exponential"),
        ("REGEX", {"pattern": "(a*)*b"}, "options.pattern", "exponential"),
        ("REGEX", {"pattern": "x", "ignoreCase": "no"}, "options.ignoreCase",
         "true or false"),
        ("REGEX", {"pattern": "x", "flags": "m"}, "options.flags", "not an option"),
        ("NUMERIC", {"tolerance": "abc"}, "options.tolerance", "non-negative number"),
        ("NUMERIC", {"tolerance": -1}, "options.tolerance", "non-negative number"),
        ("NUMERIC", {"tolerance": True}, "options.tolerance", "non-negative number"),
        ("NUMERIC", {"tolerance": float("nan")}, "options.tolerance",
         "non-negative number"),
        ("NUMERIC", {"tolerance": 10**400}, "options.tolerance",
         "non-negative number"),
        ("NUMERIC", {"relativeTolerance": "1%"}, "options.relativeTolerance",
         "non-negative number"),
        ("NUMERIC", {"ignoreCase": True}, "options.ignoreCase", "not an option"),
        ("NUMERIC", ["tolerance"], "options", "must be a JSON object"),
        ("SIMILARITY", {}, "type", "must be one of"),
    ],
)
def test_bad_options_are_refused_naming_the_option(
    scorer_type, options, path, message
):
    with pytest.raises(ScorerOptionsError, match=message) as raised:
        build_scorer(scorer_type, options)

    assert raised.value.path == path


@pytest.mark.parametrize(
    ("scorer_type", "options"),
    [
        ("EXACT_MATCH", {"ignoreCase": True}),
        ("CONTAINS", None),
        ("REGEX", {"pattern": r"\d"}),
        ("NUMERIC", {"tolerance": 0.5}),
        ("NUMERIC", {"relativeTolerance": 0.1}),
    ],
)
@pytest.mark.parametrize(
    ("output", "expected"),
    [("72", "72"), ("72", "73"), ("", "0"), ("Paris 2", "paris 2"),
     ("1e308", "#### 1,000"), ("\u2212" * 50, "-0")],
)
def test_every_score_is_between_0_and_1_and_passes_only_at_1(
    scorer_type, options, output, expected
):
    score = build_scorer(scorer_type, options).score(output, expected)

    assert 0.0 <= score.value <= 1.0
    assert score.passed is (score.value == 1.0)


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_a_score_outside_0_to_1_cannot_be_made(value):
    with pytest.raises(ValueError, match="between 0 and 1"):
        Score(value, False)
