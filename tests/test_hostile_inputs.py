"""Hostile input to every mutation and query argument of the API.

Each value is either refused with its code and the place it is at fault (the
variable or field path in the message, or the document location of a
literal), or stored exactly as given and read back unchanged. A refused
request leaves nothing behind: the rows of every table are counted before and
after it.

The cases here extend tests/test_api_test_sets.py, test_api_evaluations.py and
test_api_limits.py; what those already check is not repeated.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio

from app.jobs.evaluation import RENDER_TIME_LIMIT_S
from app.resolvers.evaluations import TRIAL_RENDERS
from tests.factories import (
    CREATE_EVALUATION,
    CREATE_TEST_SET,
    arithmetic_cases,
    create_evaluation,
    create_test_set,
    unique,
)

APPEND = """
mutation($id: ID!, $cases: [TestCaseInput!]!) {
  appendTestCases(testSetId: $id, testCases: $cases) { id testCaseCount }
}"""
DELETE = "mutation($id: ID!) { deleteTestSet(id: $id) }"
CANCEL = "mutation($id: ID!) { cancelEvaluation(id: $id) { id status } }"
RERUN = "mutation($id: ID!) { rerunEvaluation(id: $id) { id status } }"

TEST_SET = """
query($id: ID!) {
  testSet(id: $id) {
    id name description testCaseCount
    categories { name description testCaseCount }
    testCases(first: 500) {
      edges { node { input expectedOutput metadata category { name } } }
    }
  }
}"""

EVALUATION = """
query($id: ID!) {
  evaluation(id: $id) {
    id name model promptTemplate systemPrompt temperature maxTokens concurrency
    status failedCases totalCases scorer { type options }
    results(first: 500) { edges { node { output error passed } } }
  }
}"""

# The largest row id PostgreSQL's bigint holds.
MAX_ROW_ID = 2**63 - 1


# --- helpers -----------------------------------------------------------------


async def send(stack, document: str, **variables: Any) -> dict[str, Any]:
    """The response body. The request is encoded here rather than by the HTTP
    client: lone surrogates have to travel as JSON escapes (`"\\ud800"`),
    which the client refuses to encode, and NaN and Infinity as the bare
    words Python's json module writes for them."""
    body = json.dumps({"query": document, "variables": variables})
    response = await stack.http.post(
        stack.graphql_url, content=body.encode("ascii"),
        headers={"Content-Type": "application/json"})
    return response.json()


async def refusal(stack, document: str, **variables: Any) -> dict[str, Any]:
    """The one error a request is refused with."""
    body = await send(stack, document, **variables)
    assert body.get("errors"), f"not refused: {body}"
    assert len(body["errors"]) == 1, body["errors"]
    data = body.get("data") or {}
    assert all(value is None for value in data.values()), data
    return body["errors"][0]


def code_of(error: dict[str, Any]) -> str:
    return error["extensions"]["code"]


def canonical(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, sort_keys=True).encode("utf-8")


async def row_counts(pool) -> dict[str, int]:
    """How many rows each table a request could write to holds."""
    record = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM test_sets) AS test_sets,"
        " (SELECT count(*) FROM categories) AS categories,"
        " (SELECT count(*) FROM test_cases) AS test_cases,"
        " (SELECT count(*) FROM evaluations) AS evaluations,"
        " (SELECT count(*) FROM idempotency_keys) AS idempotency_keys")
    return dict(record)


async def num_test_sets_named(pool, name: str) -> int:
    return await pool.fetchval("SELECT count(*) FROM test_sets WHERE name = $1", name)


def storable(text: str) -> bool:
    """Whether PostgreSQL could hold `text` at all, so it can be looked for."""
    return not any(char == "\x00" or 0xD800 <= ord(char) <= 0xDFFF
                   for char in text)


def nested_list(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


def valid_cases(count: int) -> list[dict[str, Any]]:
    """Cases that each bring a category of their own, so a case stored before
    a bad one would show as a stray category as well as a stray case."""
    return [{"input": {"q": f"question {n}"}, "expectedOutput": str(n),
             "category": f"first cases {n}"} for n in range(count)]


@pytest_asyncio.fixture(scope="module")
async def existing(stack):
    """A test set with a finished evaluation, for arguments that need them."""
    test_set = await create_test_set(stack, arithmetic_cases(2), name="existing")
    evaluation = await create_evaluation(stack, test_set["id"])
    await stack.wait_for_status(evaluation["id"], "COMPLETED")
    return {"test_set": test_set["id"], "evaluation": evaluation["id"],
            "category": test_set["categories"][0]["id"]}


# --- variables of the wrong shape --------------------------------------------


def at_fourth_case(**case: Any) -> dict[str, Any]:
    """A createTestSet input whose fourth case is `case`."""
    return {"name": unique("hostile"),
            "testCases": [*valid_cases(3), {"input": {"q": "x"}, **case}]}


EVALUATION_INPUT = {"testSetId": "ts_1", "model": "m", "promptTemplate": "{{ q }}",
                    "scorer": {"type": "EXACT_MATCH"}}


@pytest.mark.parametrize(("document", "variables", "variable", "where"), [
    pytest.param(CREATE_TEST_SET, {"input": {"name": 5}}, "input", ".name",
                 id="createTestSet-name-number"),
    pytest.param(CREATE_TEST_SET, {"input": {}}, "input", "'name'",
                 id="createTestSet-name-missing"),
    pytest.param(CREATE_TEST_SET, {"input": {"name": None}}, "input", ".name",
                 id="createTestSet-name-null"),
    pytest.param(CREATE_TEST_SET, {"input": None}, "input", "",
                 id="createTestSet-input-null"),
    pytest.param(CREATE_TEST_SET, {}, "input", "", id="createTestSet-input-absent"),
    pytest.param(CREATE_TEST_SET, {"input": "name"}, "input", "",
                 id="createTestSet-input-string"),
    pytest.param(CREATE_TEST_SET, {"input": {"name": "x", "bogus": 1}}, "input",
                 "'bogus'", id="createTestSet-unknown-field"),
    pytest.param(CREATE_TEST_SET, {"input": {"name": "x", "description": {"a": 1}}},
                 "input", ".description", id="createTestSet-description-object"),
    pytest.param(CREATE_TEST_SET, {"input": {"name": "x", "categories": [{}]}},
                 "input", ".categories[0]", id="createTestSet-category-name-missing"),
    pytest.param(CREATE_TEST_SET, {"input": {"name": "x", "testCases": "cases"}},
                 "input", ".testCases", id="createTestSet-testCases-string"),
    pytest.param(CREATE_TEST_SET, {"input": at_fourth_case(input=None)}, "input",
                 ".testCases[3].input", id="createTestSet-case-input-null"),
    pytest.param(CREATE_TEST_SET, {"input": {"name": "x", "testCases": [
                     *valid_cases(3), {"expectedOutput": "1"}]}},
                 "input", ".testCases[3]", id="createTestSet-case-input-missing"),
    pytest.param(CREATE_TEST_SET, {"input": at_fourth_case(expectedOutput=4)}, "input",
                 ".testCases[3].expectedOutput", id="createTestSet-expected-number"),
    pytest.param(CREATE_TEST_SET, {"input": at_fourth_case(category=["a"])}, "input",
                 ".testCases[3].category", id="createTestSet-category-list"),
    pytest.param(APPEND, {"id": None, "cases": []}, "id", "",
                 id="appendTestCases-id-null"),
    pytest.param(APPEND, {"id": "ts_1", "cases": None}, "cases", "",
                 id="appendTestCases-cases-null"),
    pytest.param(APPEND, {"id": "ts_1", "cases": [{"input": {}}, {"input": {},
                                                               "category": True}]},
                 "cases", "[1].category", id="appendTestCases-category-boolean"),
    pytest.param(DELETE, {"id": 1.5}, "id", "", id="deleteTestSet-id-float"),
    pytest.param(DELETE, {"id": ["ts_1"]}, "id", "", id="deleteTestSet-id-list"),
    pytest.param(CANCEL, {"id": {"id": "ev_1"}}, "id", "",
                 id="cancelEvaluation-id-object"),
    pytest.param(CREATE_EVALUATION, {"input": {**EVALUATION_INPUT,
                                               "temperature": "hot"}},
                 "input", ".temperature", id="createEvaluation-temperature-string"),
    pytest.param(CREATE_EVALUATION, {"input": {**EVALUATION_INPUT,
                                               "temperature": float("nan")}},
                 "input", ".temperature", id="createEvaluation-temperature-nan"),
    pytest.param(CREATE_EVALUATION, {"input": {**EVALUATION_INPUT,
                                               "temperature": float("inf")}},
                 "input", ".temperature", id="createEvaluation-temperature-infinity"),
    pytest.param(CREATE_EVALUATION, {"input": {**EVALUATION_INPUT,
                                               "maxTokens": 2**31}},
                 "input", ".maxTokens", id="createEvaluation-maxTokens-past-int32"),
    pytest.param(CREATE_EVALUATION, {"input": {**EVALUATION_INPUT,
                                               "concurrency": "8"}},
                 "input", ".concurrency", id="createEvaluation-concurrency-string"),
    pytest.param(CREATE_EVALUATION, {"input": {**EVALUATION_INPUT,
                                               "concurrency": 2.5}},
                 "input", ".concurrency", id="createEvaluation-concurrency-fraction"),
    pytest.param(CREATE_EVALUATION, {"input": {**EVALUATION_INPUT,
                                               "scorer": {"type": "FUZZY"}}},
                 "input", ".scorer.type", id="createEvaluation-scorer-unknown"),
    pytest.param(CREATE_EVALUATION, {"input": {**EVALUATION_INPUT,
                                               "scorer": {"type": "exact_match"}}},
                 "input", ".scorer.type", id="createEvaluation-scorer-lower-case"),
    pytest.param(CREATE_EVALUATION, {"input": {**EVALUATION_INPUT, "scorer": None}},
                 "input", ".scorer", id="createEvaluation-scorer-null"),
    pytest.param(CREATE_EVALUATION, {"input": {**EVALUATION_INPUT,
                                               "testSetId": True}},
                 "input", ".testSetId", id="createEvaluation-testSetId-boolean"),
    pytest.param("query($f: Int) { testSets(first: $f) { totalCount } }",
                 {"f": "ten"}, "f", "", id="testSets-first-string"),
    pytest.param("query($f: Int) { testSets(first: $f) { totalCount } }",
                 {"f": 2**40}, "f", "", id="testSets-first-past-int32"),
    pytest.param("query($a: String) { testSets(after: $a) { totalCount } }",
                 {"a": 12}, "a", "", id="testSets-after-number"),
    pytest.param("query($s: EvaluationStatus) { evaluations(status: $s) {"
                 " totalCount } }", {"s": "DONE"}, "s", "",
                 id="evaluations-status-unknown"),
    pytest.param("query($s: EvaluationStatus) { evaluations(status: $s) {"
                 " totalCount } }", {"s": "queued"}, "s", "",
                 id="evaluations-status-lower-case"),
    pytest.param("query($t: ID) { evaluations(testSetId: $t) { totalCount } }",
                 {"t": {"id": 1}}, "t", "", id="evaluations-testSetId-object"),
    pytest.param("query($id: ID!) { testSet(id: $id) { id } }", {"id": None}, "id",
                 "", id="testSet-id-null"),
    pytest.param("query($id: ID!) { evaluation(id: $id) { id } }", {"id": False},
                 "id", "", id="evaluation-id-boolean"),
    pytest.param("query($id: ID!, $c: ID) { testSet(id: $id) {"
                 " testCases(categoryId: $c) { totalCount } } }",
                 {"id": "ts_1", "c": [1]}, "c", "", id="testCases-categoryId-list"),
    pytest.param("query($id: ID!, $p: Boolean) { evaluation(id: $id) {"
                 " results(passed: $p) { totalCount } } }",
                 {"id": "ev_1", "p": "yes"}, "p", "", id="results-passed-string"),
])
async def test_a_variable_of_the_wrong_shape_is_refused_naming_the_variable(
        stack, pool, document, variables, variable, where):
    before = await row_counts(pool)

    error = await refusal(stack, document, **variables)

    assert code_of(error) == "BAD_USER_INPUT"
    assert error["message"].startswith(f"Variable '${variable}' "), error["message"]
    assert where in error["message"]
    assert await row_counts(pool) == before


LITERAL_WITHOUT_LOCATION = pytest.mark.xfail(strict=True, reason=(
    "graphql-core 3.3's literal validation reports a list or object given"
    " for a scalar or enum (`first: [1]`) with neither a location nor a"
    " path: the message alone does not say which argument is wrong"))


@pytest.mark.parametrize(("document", "literal"), [
    pytest.param('{ testSets(first: "ten") { totalCount } }', '"ten"',
                 id="string-for-Int"),
    pytest.param("{ testSets(first: 1.5) { totalCount } }", "1.5",
                 id="fraction-for-Int"),
    pytest.param("{ evaluations(status: DONE) { totalCount } }", "DONE",
                 id="unknown-enum-value"),
    pytest.param('mutation {\n  createTestSet(input: {\n    name: 5\n  }) { id }\n}',
                 "5", id="number-for-String-on-line-3"),
    pytest.param('mutation { createTestSet(input: {name: "x", testCases: [\n'
                 '  {input: {}}, {input: {}, expectedOutput: 4}]}) { id } }',
                 "4", id="number-for-String-in-the-second-case"),
    pytest.param("mutation { deleteTestSet(id: 1.5) }", "1.5", id="fraction-for-ID"),
    pytest.param('{ evaluations(status: "QUEUED") { totalCount } }', '"QUEUED"',
                 id="string-for-enum"),
    pytest.param('mutation { createTestSet(input: {name: "x", testCases: [\n'
                 '  {input: {}}, {input: {}, expectedOutput: [1]}]}) { id } }',
                 "[1]", id="list-for-String-in-the-second-case",
                 marks=LITERAL_WITHOUT_LOCATION),
    pytest.param("{ testSets(first: [1]) { totalCount } }", "[1]",
                 id="list-for-Int", marks=LITERAL_WITHOUT_LOCATION),
    pytest.param("mutation { deleteTestSet(id: {a: 1}) }", "{a: 1}",
                 id="object-for-ID", marks=LITERAL_WITHOUT_LOCATION),
    pytest.param("{ evaluations(status: [QUEUED]) { totalCount } }", "[QUEUED]",
                 id="list-for-enum", marks=LITERAL_WITHOUT_LOCATION),
])
async def test_a_literal_of_the_wrong_type_is_refused_at_its_place_in_the_document(
        stack, pool, document, literal):
    before = await row_counts(pool)
    offset = document.index(literal)
    line = document.count("\n", 0, offset) + 1
    column = offset - (document.rfind("\n", 0, offset) + 1) + 1

    error = await refusal(stack, document)

    assert code_of(error) == "BAD_USER_INPUT"
    assert {"line": line, "column": column} in error.get("locations", [])
    assert await row_counts(pool) == before


# --- createTestSet: values no type rules out ---------------------------------


BAD_TEST_SETS = [
    pytest.param({"name": ""}, "input.name: must not be empty", id="name-empty"),
    pytest.param({"name": "\t\r\n\u3000\u2028"}, "input.name: must not be empty",
                 id="name-unicode-whitespace-only"),
    pytest.param({"name": "a\x00b"}, "input.name: contains a NUL", id="name-nul"),
    pytest.param({"name": "a\ud800b"}, "input.name: contains a lone surrogate",
                 id="name-lone-surrogate"),
    pytest.param({"name": "\U0001f600" * 201}, "input.name: is 201 characters",
                 id="name-201-emoji"),
    pytest.param({"name": "n" * 100_000}, "input.name: is 100000 characters",
                 id="name-a-hundred-thousand-characters"),
    pytest.param({"description": "a\x00"}, "input.description: contains a NUL",
                 id="description-nul"),
    pytest.param({"description": "\udfff"}, "input.description: contains a lone",
                 id="description-lone-low-surrogate"),
    pytest.param({"description": "d" * 100_001},
                 "input.description: is 100001 characters", id="description-too-long"),
    pytest.param({"categories": [{"name": "a"}, {"name": "  "}]},
                 "input.categories[1].name: must not be empty",
                 id="category-name-blank"),
    pytest.param({"categories": [{"name": "a"}, {"name": " a "}]},
                 "input.categories[1].name: 'a' is listed twice",
                 id="category-name-twice-once-padded"),
    pytest.param({"categories": [{"name": "a\x00"}]},
                 "input.categories[0].name: contains a NUL", id="category-name-nul"),
    pytest.param({"categories": [{"name": "c" * 201}]},
                 "input.categories[0].name: is 201 characters",
                 id="category-name-too-long"),
    pytest.param({"categories": [{"name": "a", "description": "\ud800"}]},
                 "input.categories[0].description: contains a lone surrogate",
                 id="category-description-lone-surrogate"),
    pytest.param(at_fourth_case(input="just text"),
                 "input.testCases[3].input: must be a JSON object",
                 id="case-input-string"),
    pytest.param(at_fourth_case(input=42), "input.testCases[3].input: must be a JSON",
                 id="case-input-number"),
    pytest.param(at_fourth_case(input={"q": "\ud83d"}),
                 "input.testCases[3].input.q: contains a lone surrogate",
                 id="case-input-value-lone-high-surrogate"),
    pytest.param(at_fourth_case(input={"q": ["fine", "a\x00"]}),
                 "input.testCases[3].input.q[1]: contains a NUL",
                 id="case-input-nul-in-a-list"),
    pytest.param(at_fourth_case(input={"k\x00": "v"}),
                 "input.testCases[3].input (a key): contains a NUL",
                 id="case-input-key-nul"),
    pytest.param(at_fourth_case(input={"q": {"\udc00": 1}}),
                 "input.testCases[3].input.q (a key): contains a lone surrogate",
                 id="case-input-nested-key-lone-surrogate"),
    pytest.param(at_fourth_case(input={"q": nested_list(40)}),
                 "input.testCases[3].input.q" + "[0]" * 32 + ": is nested deeper",
                 id="case-input-40-levels-deep"),
    pytest.param(at_fourth_case(expectedOutput="a\x00"),
                 "input.testCases[3].expectedOutput: contains a NUL",
                 id="case-expected-nul"),
    pytest.param(at_fourth_case(expectedOutput="\ud800\ud800"),
                 "input.testCases[3].expectedOutput: contains a lone surrogate",
                 id="case-expected-two-high-surrogates"),
    pytest.param(at_fourth_case(expectedOutput="7" * 100_001),
                 "input.testCases[3].expectedOutput: is 100001 characters",
                 id="case-expected-too-long"),
    pytest.param(at_fourth_case(category=""),
                 "input.testCases[3].category: must not be empty",
                 id="case-category-empty"),
    pytest.param(at_fourth_case(category="\x00"),
                 "input.testCases[3].category: contains a NUL", id="case-category-nul"),
    pytest.param(at_fourth_case(category="\ud800"),
                 "input.testCases[3].category: contains a lone surrogate",
                 id="case-category-lone-surrogate"),
    pytest.param(at_fourth_case(category="c" * 201),
                 "input.testCases[3].category: is 201 characters",
                 id="case-category-too-long"),
    pytest.param(at_fourth_case(metadata={"deep": nested_list(40)}),
                 "input.testCases[3].metadata.deep" + "[0]" * 32 + ": is nested",
                 id="case-metadata-40-levels-deep"),
    pytest.param(at_fourth_case(metadata={"\x00": 1}),
                 "input.testCases[3].metadata (a key): contains a NUL",
                 id="case-metadata-key-nul"),
    pytest.param(at_fourth_case(metadata=["ok", "\ud800"]),
                 "input.testCases[3].metadata[1]: contains a lone surrogate",
                 id="case-metadata-list-lone-surrogate"),
    pytest.param({"idempotencyKey": "key \ud800"},
                 "input.idempotencyKey: contains a lone surrogate",
                 id="idempotency-key-lone-surrogate"),
    pytest.param({"idempotencyKey": "\u3000\u2028"},
                 "input.idempotencyKey: must not be empty",
                 id="idempotency-key-unicode-blank"),
]


@pytest.mark.parametrize(("test_set_input", "message"), BAD_TEST_SETS)
async def test_a_bad_test_set_is_refused_naming_the_field_and_nothing_is_stored(
        stack, pool, test_set_input, message):
    name = test_set_input.get("name", unique("hostile"))
    before = await row_counts(pool)

    error = await refusal(stack, CREATE_TEST_SET,
                          input={**test_set_input, "name": name})

    assert code_of(error) == "BAD_USER_INPUT"
    assert error["message"].startswith(message), error["message"]
    assert len(error["message"]) < 500
    assert await row_counts(pool) == before
    if storable(name):
        assert await num_test_sets_named(pool, name) == 0


# --- values stored exactly ---------------------------------------------------

STORABLE_TEXT = [
    pytest.param("👋🏽 👨‍👩‍👧‍👦 🇰🇪 \U0001f9ea", id="emoji-with-modifiers-and-joiners"),
    pytest.param("مرحبا بالعالم — שלום עולם", id="right-to-left"),
    pytest.param("\u202eevil\u202c \u2066isolated\u2069 \u200fmark",
                 id="bidi-controls"),
    pytest.param("e\u0301 \u00e9 a\u0308\u0323 Z\u0351\u0352\u0353",
                 id="combining-marks-unnormalised"),
    pytest.param("zero\u200bwidth\u200c\u200d\ufeffbom", id="zero-width-and-bom"),
    pytest.param("bell\x07 escape\x1b[31m del\x7f", id="control-characters"),
    pytest.param("a\u2028b\u2029c\x85d\re\nf", id="line-separators-inside"),
    pytest.param("\ufffe\uffff \U0010ffff \U0001d11e", id="noncharacters-and-astral"),
    pytest.param('\\u0000 \\ud800 "quoted" \\n', id="escapes-as-plain-text"),
    pytest.param("'; DROP TABLE test_sets; -- <script>{{ x }}</script> %s {0}",
                 id="sql-html-and-format-text"),
]
# Free text (unlike names, which are trimmed) keeps blanks as they are.
BLANK_TEXT = [
    pytest.param("", id="empty"),
    pytest.param(" \t\r\n \u3000", id="whitespace-only"),
    pytest.param("  padded  \n", id="padded"),
]


def holding(value: str, *, in_names: bool = True) -> dict[str, Any]:
    """A createTestSet input with `value` in every text field, in JSON keys
    as well as values; in the test set's and a category's name only if
    `in_names`, as names must not be blank."""
    case: dict[str, Any] = {
        "input": {"q": value, f"{value}!": {value: [value]}},
        "expectedOutput": value,
        "metadata": {"note": value, f"{value}?": [value, None, True]},
    }
    test_set: dict[str, Any] = {
        "name": unique("exact"), "description": value,
        "categories": [{"name": "described", "description": value}],
        "testCases": [case],
    }
    if in_names:
        test_set["name"] = f"{value} {uuid.uuid4().hex[:8]}"
        case["category"] = value
    return test_set


def fields_of(test_set: dict[str, Any]) -> dict[str, Any]:
    """The text fields of a test set as given to createTestSet or as read
    back with TEST_SET, side by side."""
    if "edges" in test_set["testCases"]:
        case = test_set["testCases"]["edges"][0]["node"]
        category = (case["category"] or {}).get("name")
    else:
        case = test_set["testCases"][0]
        category = case.get("category")
    described = next(c for c in test_set["categories"] if c["name"] == "described")
    return {"name": test_set["name"], "description": test_set["description"],
            "category name": category,
            "category description": described["description"],
            "input": case["input"], "expectedOutput": case["expectedOutput"],
            "metadata": case["metadata"]}


async def assert_stored_exactly(stack, given: dict[str, Any]) -> None:
    created = await send(stack, CREATE_TEST_SET, input=given)
    assert "errors" not in created, created

    read = (await send(stack, TEST_SET, id=created["data"]["createTestSet"]["id"]))[
        "data"]["testSet"]

    stored = fields_of(read)
    for field, value in fields_of(given).items():
        assert stored[field] == value, field
        # Equal strings are equal code points; the bytes are compared too, to
        # say so. Objects come back with their keys in PostgreSQL's order
        # (jsonb sorts them), which JSON leaves free.
        assert canonical(stored[field]) == canonical(value), field


@pytest.mark.parametrize("value", STORABLE_TEXT)
async def test_unusual_text_in_every_field_is_read_back_exactly(stack, value):
    await assert_stored_exactly(stack, holding(value))


@pytest.mark.parametrize("value", BLANK_TEXT)
async def test_empty_and_blank_free_text_is_stored_as_given(stack, value):
    await assert_stored_exactly(stack, holding(value, in_names=False))


@pytest.mark.parametrize(("field", "value"), [
    pytest.param("name", "\U0001f600" * 200, id="name-of-200-emoji"),
    pytest.param("category", "\u05d0" * 200, id="category-of-200-hebrew-letters"),
    pytest.param("expectedOutput", "\U0001f600" * 100_000,
                 id="expected-output-of-100000-emoji"),
    pytest.param("description", "d" * 100_000, id="description-at-the-limit"),
    pytest.param("input", {"q": "x" * 2_000_000}, id="input-of-two-million-chars"),
])
async def test_text_at_its_length_limit_is_stored_whole(stack, field, value):
    # Limits count characters, not bytes or UTF-16 units.
    given = holding("x")
    if field in ("name", "description"):
        given[field] = value
    else:
        given["testCases"][0][field] = value

    await assert_stored_exactly(stack, given)


async def test_numbers_json_can_hold_are_stored_with_their_values(stack):
    # Compared as decimals: PostgreSQL keeps the number a client wrote, and
    # may write it back in another form (1e+308 as 1 and 308 zeros).
    numbers = {"big": 2**64 + 1, "negative": -(10**30), "tiny": 5e-324,
               "huge": 1.7976931348623157e308, "tenth": 0.1, "zero": 0,
               "negative zero": -0.0, "precise": 0.30000000000000004,
               "digits": int("9" * 4000)}
    created = await create_test_set(stack, [{"input": numbers,
                                             "metadata": numbers}])

    response = await stack.http.post(stack.graphql_url, json={
        "query": TEST_SET, "variables": {"id": created["id"]}})

    node = json.loads(response.text, parse_float=Decimal, parse_int=Decimal)[
        "data"]["testSet"]["testCases"]["edges"][0]["node"]
    sent = json.loads(json.dumps(numbers), parse_float=Decimal, parse_int=Decimal)
    assert node["input"] == sent
    assert node["metadata"] == sent


async def test_names_differing_only_in_normalisation_or_case_are_distinct(stack,
                                                                          pool):
    suffix = uuid.uuid4().hex[:8]
    names = [f"Caf\u00e9 {suffix}", f"Cafe\u0301 {suffix}", f"CAF\u00c9 {suffix}"]

    for name in names:
        await stack.query(CREATE_TEST_SET, input={"name": name})

    for name in names:
        assert await num_test_sets_named(pool, name) == 1


# --- duplicate names ---------------------------------------------------------


async def test_a_name_that_differs_only_by_padding_is_a_duplicate(stack, pool):
    created = await create_test_set(stack, valid_cases(2))
    before = await row_counts(pool)

    error = await refusal(stack, CREATE_TEST_SET, input={
        "name": f" \t{created['name']}\n ", "testCases": valid_cases(3)})

    assert code_of(error) == "CONFLICT"
    assert error["message"].startswith("input.name: ")
    assert repr(created["name"]) in error["message"]
    assert await row_counts(pool) == before


async def test_concurrent_creates_of_one_name_store_exactly_one(stack, pool):
    name = unique("race")
    before = await row_counts(pool)

    bodies = await asyncio.gather(*(
        send(stack, CREATE_TEST_SET, input={"name": name,
                                            "testCases": valid_cases(5)})
        for _ in range(6)))

    created = [b for b in bodies if "errors" not in b]
    refused = [b["errors"][0] for b in bodies if "errors" in b]
    assert len(created) == 1
    assert {code_of(error) for error in refused} == {"CONFLICT"}
    assert await num_test_sets_named(pool, name) == 1
    after = await row_counts(pool)
    assert after["test_sets"] == before["test_sets"] + 1
    assert after["test_cases"] == before["test_cases"] + 5
    assert after["categories"] == before["categories"] + 5


async def test_a_category_named_by_cases_with_and_without_padding_is_one(stack):
    # Category names are trimmed, as test set names are, so the three below
    # are one category; its description is the one listed.
    created = await create_test_set(stack, [
        {"input": {"q": 1}, "category": "sums"},
        {"input": {"q": 2}, "category": "  sums\t"}],
        categories=[{"name": "\u3000sums ", "description": "adding"}])

    read = (await send(stack, TEST_SET, id=created["id"]))["data"]["testSet"]

    assert read["categories"] == [
        {"name": "sums", "description": "adding", "testCaseCount": 2}]


# --- idempotency keys --------------------------------------------------------


async def test_a_create_refused_after_claiming_its_key_leaves_the_key_free(
        stack, pool):
    # A taken name is found only by the INSERT, after the key was claimed in
    # the same transaction: the refusal must take the claim back with it.
    taken = await create_test_set(stack, valid_cases(1))
    key = unique("key")
    before = await row_counts(pool)

    error = await refusal(stack, CREATE_TEST_SET, input={
        "name": taken["name"], "testCases": valid_cases(2), "idempotencyKey": key})
    after_refusal = await row_counts(pool)
    retried = await send(stack, CREATE_TEST_SET, input={
        "name": unique("free"), "testCases": valid_cases(2), "idempotencyKey": key})

    assert code_of(error) == "CONFLICT"
    assert error["message"].startswith("input.name: ")
    assert after_refusal == before
    assert "errors" not in retried, retried


async def test_idempotency_keys_are_compared_exactly_as_given(stack):
    keys = ["Cl\u00e9 \U0001f511", "Cle\u0301 \U0001f511",
            " Cl\u00e9 \U0001f511", "\u202eCl\u00e9 \U0001f511",
            "\U0001f511" * 200]
    inputs = [{"name": unique("keyed"), "idempotencyKey": key} for key in keys]

    first = [await send(stack, CREATE_TEST_SET, input=given) for given in inputs]
    again = [await send(stack, CREATE_TEST_SET, input=given) for given in inputs]

    ids = [body["data"]["createTestSet"]["id"] for body in first]
    assert len(set(ids)) == len(keys)
    assert [body["data"]["createTestSet"]["id"] for body in again] == ids


# --- ids -----------------------------------------------------------------------

MALFORMED_IDS = [
    pytest.param("", id="empty"),
    pytest.param("ts_", id="prefix-only"),
    pytest.param("_1", id="no-prefix"),
    pytest.param("TS_1", id="upper-case-prefix"),
    pytest.param("ts-1", id="dash"),
    pytest.param("ts_abc", id="letters"),
    pytest.param("ts_-1", id="negative"),
    pytest.param("ts_+1", id="plus-sign"),
    pytest.param("ts_1.0", id="decimal"),
    pytest.param("ts_1e3", id="exponent"),
    pytest.param("ts_0x1f", id="hexadecimal"),
    pytest.param(" ts_1", id="leading-space"),
    pytest.param("ts_1\n", id="trailing-newline"),
    pytest.param("ts_\u0661\u0662", id="arabic-indic-digits"),
    pytest.param("ts_\uff11", id="full-width-digit"),
    pytest.param("ts_1\x00", id="nul"),
    pytest.param("ts_\ud800", id="lone-surrogate"),
    pytest.param("ts_" + "9" * 20, id="twenty-digits"),
    pytest.param(f"ts_{MAX_ROW_ID + 1}", id="one-past-the-largest-bigint"),
    pytest.param("ts_" + "1" * 100_000, id="a-hundred-thousand-digits"),
    pytest.param("ts_1_2", id="two-underscores"),
    pytest.param("ts_1; DROP TABLE test_sets", id="sql"),
]

# Where each operation takes an id, with the prefix it expects.
ID_ARGUMENTS = {
    "testSet": ("query($id: ID!) { testSet(id: $id) { id } }", "ts", "id"),
    "evaluation": ("query($id: ID!) { evaluation(id: $id) { id } }", "ev", "id"),
    "evaluations": ("query($id: ID) { evaluations(testSetId: $id) { totalCount } }",
                    "ts", "testSetId"),
    "testCases": ("query($ts: ID!, $id: ID) { testSet(id: $ts) {"
                  " testCases(categoryId: $id) { totalCount } } }", "cat",
                  "categoryId"),
    "results": ("query($ev: ID!, $id: ID) { evaluation(id: $ev) {"
                " results(categoryId: $id) { totalCount } } }", "cat", "categoryId"),
    "deleteTestSet": (DELETE, "ts", "id"),
    "appendTestCases": (APPEND, "ts", "testSetId"),
    "createEvaluation": (CREATE_EVALUATION, "ts", "input.testSetId"),
    "cancelEvaluation": (CANCEL, "ev", "id"),
    "rerunEvaluation": (RERUN, "ev", "id"),
}
WRONG_KIND = {"ts": "ev_1", "ev": "ts_1", "cat": "tc_1"}


def id_variables(operation: str, api_id: str, existing: dict[str, str]
                 ) -> dict[str, Any]:
    if operation == "appendTestCases":
        return {"id": api_id, "cases": [{"input": {"q": "never stored"}}]}
    if operation == "createEvaluation":
        return {"input": {"testSetId": api_id, "model": "m",
                          "promptTemplate": "{{ question }}",
                          "scorer": {"type": "NUMERIC"}}}
    return {"id": api_id, "ts": existing["test_set"], "ev": existing["evaluation"]}


def retarget(api_id: str, prefix: str) -> str:
    """A malformed test set id made into a malformed id of `prefix`'s kind."""
    return api_id.replace("ts_", f"{prefix}_", 1).replace("TS_", prefix.upper() + "_")


def malformed_id_cases() -> list[Any]:
    """Every malformed id for a query and a mutation; for the other
    operations, which share the same decoding, the ones most likely to slip
    through a looser check."""
    thorough = ("testSet", "deleteTestSet")
    sample = {"negative", "nul", "lone-surrogate"}
    return [
        pytest.param(operation, case.values[0], id=f"{operation}-{case.id}")
        for operation in ID_ARGUMENTS for case in MALFORMED_IDS
        if operation in thorough or case.id in sample
    ]


@pytest.mark.parametrize(("operation", "api_id"), malformed_id_cases())
async def test_a_malformed_id_is_refused_naming_the_argument(
        stack, pool, existing, operation, api_id):
    document, prefix, field = ID_ARGUMENTS[operation]
    api_id = retarget(api_id, prefix)
    before = await row_counts(pool)

    error = await refusal(stack, document, **id_variables(operation, api_id, existing))

    assert code_of(error) == "BAD_USER_INPUT"
    assert error["message"].startswith(f"{field}: ")
    assert f"{prefix}_123" in error["message"] or "out of range" in error["message"]
    assert len(error["message"]) < 300
    assert await row_counts(pool) == before


@pytest.mark.parametrize("operation", list(ID_ARGUMENTS))
async def test_an_id_of_another_kind_is_refused_naming_the_argument(
        stack, pool, existing, operation):
    document, prefix, field = ID_ARGUMENTS[operation]
    before = await row_counts(pool)

    error = await refusal(stack, document, **id_variables(
        operation, WRONG_KIND[prefix], existing))

    assert code_of(error) == "BAD_USER_INPUT"
    assert error["message"].startswith(f"{field}: '{WRONG_KIND[prefix]}' is not a")
    assert await row_counts(pool) == before


@pytest.mark.parametrize("operation", list(ID_ARGUMENTS))
@pytest.mark.parametrize("row_id", [
    pytest.param(0, id="zero"),
    pytest.param(MAX_ROW_ID, id="largest-bigint"),
])
async def test_an_unknown_id_reads_as_nothing_or_is_not_found(
        stack, pool, existing, operation, row_id):
    document, prefix, field = ID_ARGUMENTS[operation]
    before = await row_counts(pool)

    body = await send(stack, document, **id_variables(
        operation, f"{prefix}_{row_id}", existing))

    if operation in ("testSet", "evaluation"):
        assert body == {"data": {operation: None}}
    elif operation == "evaluations":
        assert body == {"data": {"evaluations": {"totalCount": 0}}}
    elif operation in ("testCases", "results"):
        parent = "testSet" if operation == "testCases" else "evaluation"
        assert body == {"data": {parent: {operation: {"totalCount": 0}}}}
    else:
        [error] = body["errors"]
        assert code_of(error) == "NOT_FOUND"
        assert error["message"].startswith(f"{field}: no ")
    assert await row_counts(pool) == before


async def test_a_category_of_another_test_set_filters_to_nothing(stack, existing):
    other = await create_test_set(stack, arithmetic_cases(2))

    body = await send(stack, ID_ARGUMENTS["testCases"][0], ts=other["id"],
                      id=existing["category"])

    assert body == {"data": {"testSet": {"testCases": {"totalCount": 0}}}}


# --- pages -------------------------------------------------------------------

PAGED_FIELDS = {
    "testSets": "query($first: Int, $after: String) {"
                " testSets(first: $first, after: $after) { totalCount } }",
    "evaluations": "query($first: Int, $after: String) {"
                   " evaluations(first: $first, after: $after) { totalCount } }",
    "testSet.testCases": "query($ts: ID!, $first: Int, $after: String) {"
                         " testSet(id: $ts) { testCases(first: $first,"
                         " after: $after) { totalCount } } }",
    "testSet.evaluations": "query($ts: ID!, $first: Int, $after: String) {"
                           " testSet(id: $ts) { evaluations(first: $first,"
                           " after: $after) { totalCount } } }",
    "evaluation.results": "query($ev: ID!, $first: Int, $after: String) {"
                          " evaluation(id: $ev) { results(first: $first,"
                          " after: $after) { totalCount } } }",
}


def page_variables(stack, field: str, existing: dict[str, str], **page: Any
                   ) -> dict[str, Any]:
    variables = {name: stack.settings.max_page_size + 1
                 if value is PAST_THE_MAXIMUM else value
                 for name, value in page.items()}
    if field.startswith("testSet."):
        variables["ts"] = existing["test_set"]
    if field.startswith("evaluation."):
        variables["ev"] = existing["evaluation"]
    return variables


# Stands for one more than the page size the API allows (ASSAY_MAX_PAGE_SIZE).
PAST_THE_MAXIMUM = object()

BAD_PAGES = [
    pytest.param({"first": -1}, "first", id="first-negative"),
    pytest.param({"first": PAST_THE_MAXIMUM}, "first", id="first-past-the-maximum"),
    pytest.param({"first": -(2**31)}, "first", id="first-smallest-int32"),
    pytest.param({"after": ""}, "after", id="after-empty"),
    pytest.param({"after": "c:1"}, "after", id="after-not-base64"),
    pytest.param({"after": "Yzot"}, "after", id="after-negative-position"),
    pytest.param({"after": "eDox"}, "after", id="after-wrong-tag"),
    pytest.param({"after": "\u00e9t\u00e9"}, "after", id="after-non-ascii"),
    pytest.param({"after": "\ud800"}, "after", id="after-lone-surrogate"),
    pytest.param({"after": "YzoxAA=="}, "after", id="after-with-a-nul"),
    pytest.param({"after": "x" * 100_000}, "after", id="after-huge"),
]


def bad_page_cases() -> list[Any]:
    """Every bad page argument for the results of an evaluation (which
    tests/test_api_test_sets.py does not reach); a few for the other lists,
    which share the same checks."""
    sample = {"first-past-the-maximum", "after-lone-surrogate"}
    return [
        pytest.param(field, *case.values, id=f"{field}-{case.id}")
        for field in PAGED_FIELDS for case in BAD_PAGES
        if field == "evaluation.results" or case.id in sample
    ]


@pytest.mark.parametrize(("field", "page", "argument"), bad_page_cases())
async def test_a_bad_page_argument_is_refused_naming_it(stack, existing, field, page,
                                                        argument):
    error = await refusal(stack, PAGED_FIELDS[field],
                          **page_variables(stack, field, existing, **page))

    assert code_of(error) == "BAD_USER_INPUT"
    assert error["message"].startswith(f"{argument}: ")
    assert len(error["message"]) < 300


@pytest.mark.parametrize("field", list(PAGED_FIELDS))
async def test_page_sizes_at_the_bounds_are_accepted(stack, existing, field):
    for first in (0, stack.settings.max_page_size):
        body = await send(stack, PAGED_FIELDS[field],
                          **page_variables(stack, field, existing, first=first))

        assert "errors" not in body, (first, body)


# --- appendTestCases and deleteTestSet ---------------------------------------


@pytest.mark.parametrize(("cases", "message"), [
    pytest.param([*valid_cases(2), {"input": ["a"]}],
                 "testCases[2].input: must be a JSON object", id="input-a-list"),
    pytest.param([*valid_cases(2), {"input": {"q": "\x00"}}],
                 "testCases[2].input.q: contains a NUL", id="input-nul"),
    pytest.param([*valid_cases(2), {"input": {}, "category": "\ud800"}],
                 "testCases[2].category: contains a lone surrogate",
                 id="category-lone-surrogate"),
    pytest.param([*valid_cases(2), {"input": {}, "expectedOutput": "x" * 100_001}],
                 "testCases[2].expectedOutput: is 100001 characters",
                 id="expected-too-long"),
])
async def test_a_bad_append_adds_nothing(stack, pool, cases, message):
    test_set = await create_test_set(stack, arithmetic_cases(3))
    before = await row_counts(pool)

    error = await refusal(stack, APPEND, id=test_set["id"], cases=cases)

    assert code_of(error) == "BAD_USER_INPUT"
    assert error["message"].startswith(message)
    assert await row_counts(pool) == before
    read = (await send(stack, TEST_SET, id=test_set["id"]))["data"]["testSet"]
    assert read["testCaseCount"] == 3
    assert {c["name"] for c in read["categories"]} == {"sums", "products"}


async def test_an_empty_append_changes_nothing(stack, pool):
    test_set = await create_test_set(stack, arithmetic_cases(3))
    before = await row_counts(pool)

    data = await stack.query(APPEND, id=test_set["id"], cases=[])

    assert data["appendTestCases"] == {"id": test_set["id"], "testCaseCount": 3}
    assert await row_counts(pool) == before


async def test_appended_unusual_text_is_stored_exactly(stack):
    test_set = await create_test_set(stack, arithmetic_cases(1))
    case = {"input": {"שאלה 🧪": "\u202e\u0301x\x07", "": ""},
            "expectedOutput": " \r\n", "category": "קטגוריה 🧪",
            "metadata": {"\U0010ffff": ["\ufeff"]}}

    await send(stack, APPEND, id=test_set["id"], cases=[case])
    read = (await send(stack, TEST_SET, id=test_set["id"]))["data"]["testSet"]

    node = read["testCases"]["edges"][-1]["node"]
    assert node == {**case, "category": {"name": case["category"]}}


async def test_a_deleted_test_set_leaves_no_rows(stack, pool):
    before = await row_counts(pool)
    test_set = await create_test_set(stack, valid_cases(4))

    await stack.query(DELETE, id=test_set["id"])

    assert await row_counts(pool) == before


# --- createEvaluation --------------------------------------------------------


@pytest_asyncio.fixture(scope="module")
async def hostile_cases(stack):
    """A test set whose inputs hold what a template might use to escape."""
    test_set = await create_test_set(stack, [
        {"input": {"question": "What is 2 + 2?", "key": "__class__",
                   "fmt": "{0.__class__.__mro__}", "items": [1, 2]},
         "expectedOutput": "4"}], name="hostile cases")
    return test_set["id"]


def evaluation_input(test_set_id: str, **overrides: Any) -> dict[str, Any]:
    return {"testSetId": test_set_id, "model": "assay-simulator",
            "promptTemplate": "Q: {{ question }}",
            "scorer": {"type": "REGEX", "options": {"pattern": "."}}, **overrides}


BAD_TEMPLATES = [
    pytest.param("{{ question.__class__ }}", "line 1: attribute '__class__'",
                 id="dunder-attribute"),
    pytest.param("{{ question['__class__'] }}", "line 1: item '__class__'",
                 id="dunder-item"),
    pytest.param("{{ question|attr('__class__') }}", "line 1: filter 'attr'",
                 id="attr-filter-with-a-dunder"),
    pytest.param("{{ items|map(attribute='__class__')|list }}",
                 "line 1: filter 'map'", id="map-attribute-dunder"),
    pytest.param("{{ items|map(attribute='real._x')|list }}",
                 "line 1: filter 'map'", id="map-attribute-dotted-private"),
    pytest.param("{{ question.upper.__self__ }}", "line 1: attribute '__self__'",
                 id="method-self"),
    pytest.param("{% set c = question.__class__ %}{{ c }}",
                 "line 1: attribute '__class__'", id="set-a-dunder"),
    pytest.param("{{ question._private }}", "line 1: attribute '_private'",
                 id="single-underscore"),
    pytest.param("{{ self }}", "'self' is not available", id="self"),
    pytest.param("{{ self._TemplateReference__context }}",
                 "line 1: attribute '_TemplateReference__context'",
                 id="self-context"),
    pytest.param("{{ range(10) }}", "range() is not available", id="range"),
    pytest.param("{{ lipsum() }}", "lipsum() is not available", id="lipsum"),
    pytest.param("{{ cycler(1, 2) }}", "cycler() is not available", id="cycler"),
    pytest.param("{{ namespace() }}", "namespace() is not available",
                 id="namespace"),
    pytest.param("{% include 'secrets.txt' %}", "cannot include, import or extend",
                 id="include"),
    pytest.param("{% import 'macros' as m %}", "cannot include, import or extend",
                 id="import"),
    pytest.param("{% extends 'base' %}", "cannot include, import or extend",
                 id="extends"),
    pytest.param("ok\nok\n{{ question }", "line 3: ", id="syntax-error-on-line-3"),
    pytest.param("{% for x in items %}{{ x }}", "line 1: ", id="unclosed-block"),
    pytest.param("", "the template is empty", id="empty"),
    pytest.param(" \n\t ", "the template is empty", id="whitespace-only"),
    pytest.param("{{ question }}\x00", "contains a NUL", id="nul"),
    pytest.param("{{ question }}\ud800", "contains a lone surrogate",
                 id="lone-surrogate"),
    pytest.param("{{ question }}" + "x" * 100_000, "is 100014 characters",
                 id="over-100000-characters"),
    pytest.param("{{ question }} {{ answer }}", "the variable 'answer' is missing",
                 id="missing-variable"),
    pytest.param("{% for x in missing_list %}{{ x }}{% endfor %}",
                 "the variable 'missing_list' is missing", id="missing-loop-source"),
]


@pytest.mark.parametrize(("template", "message"), BAD_TEMPLATES)
async def test_a_template_reaching_for_internals_is_refused_before_storing(
        stack, pool, hostile_cases, template, message):
    before = await row_counts(pool)

    error = await refusal(stack, CREATE_EVALUATION, input=evaluation_input(
        hostile_cases, promptTemplate=template))

    assert code_of(error) == "BAD_USER_INPUT"
    assert error["message"].startswith("input.promptTemplate: ")
    assert message in error["message"]
    assert await row_counts(pool) == before


# Templates that compile, since what they reach for is only known once they
# run with an input. createEvaluation tries each on the first test cases, so
# the sandbox refuses them before anything is stored.
SANDBOXED_TEMPLATES = [
    pytest.param("{{ question|attr(key) }}", "not allowed",
                 id="attr-with-a-name-from-the-input"),
    pytest.param("{{ question[key] }}", "not allowed",
                 id="item-with-a-name-from-the-input"),
    pytest.param("{{ question|attr('__cl' ~ 'ass__') }}", "not allowed",
                 id="attr-with-a-built-name"),
    pytest.param("{{ (question|attr(key))|attr('mro') }}", "not allowed",
                 id="attr-of-a-refused-attr"),
    pytest.param("{{ fmt.format(question) }}", "str.format is not available",
                 id="str-format-with-a-dunder-field"),
    pytest.param("{{ '{0.__class__}'.format(question) }}",
                 "str.format is not available", id="str-format-literal"),
    pytest.param("{{ question.format_map }}", "str.format is not available",
                 id="str-format-map"),
    pytest.param("{{ question * 10000000 }}", "not allowed",
                 id="a-prompt-ten-million-long"),
]


@pytest.mark.parametrize(("template", "reason"), SANDBOXED_TEMPLATES)
async def test_a_template_the_sandbox_refuses_with_the_input_is_refused_at_create(
        stack, pool, hostile_cases, template, reason):
    before = await row_counts(pool)

    error = await refusal(stack, CREATE_EVALUATION, input=evaluation_input(
        hostile_cases, promptTemplate=template))

    assert code_of(error) == "BAD_USER_INPUT"
    assert error["message"].startswith(
        "input.promptTemplate: with the input of test case tc_")
    assert reason in error["message"]
    assert "<class" not in error["message"]
    assert " at 0x" not in error["message"]
    assert await row_counts(pool) == before


async def test_a_case_past_the_tried_ones_that_the_sandbox_refuses_fails_harmlessly(
        stack):
    """Only the first cases are tried at create: a later one whose input makes
    the template reach for Python fails alone, and reaches no model."""
    safe = [{"input": {"data": {"a": "x"}, "key": "a"}, "expectedOutput": "x"}]
    test_set = await create_test_set(stack, safe * TRIAL_RENDERS + [
        {"input": {"data": {"a": "x"}, "key": "__class__"}, "expectedOutput": "x"}],
        name="late escape")
    created = (await stack.query(CREATE_EVALUATION, input=evaluation_input(
        test_set["id"], promptTemplate="{{ data[key] }}")))["createEvaluation"]
    await stack.wait_for_status(created["id"], "COMPLETED", "FAILED")
    evaluation = (await send(stack, EVALUATION, id=created["id"]))["data"]["evaluation"]

    failed = [edge["node"] for edge in evaluation["results"]["edges"]
              if edge["node"]["error"]]
    assert evaluation["status"] == "COMPLETED"
    assert evaluation["failedCases"] == 1 == len(failed)
    assert failed[0]["output"] is None and failed[0]["passed"] is None
    assert failed[0]["error"].startswith("template_error: line 1: ")
    assert "not allowed" in failed[0]["error"]
    assert "<class" not in failed[0]["error"]


LOOPS = ("{% for a in xs %}{% for b in xs %}{% for c in xs %}{% endfor %}"
         "{% endfor %}{% endfor %}ok")


async def test_a_template_too_slow_for_the_first_cases_is_refused_at_create(
        stack, pool):
    test_set = await create_test_set(stack, [
        {"input": {"xs": list(range(1000))}, "expectedOutput": "ok"}],
        name="slow template")
    before = await row_counts(pool)

    error = await refusal(stack, CREATE_EVALUATION, input=evaluation_input(
        test_set["id"], promptTemplate=LOOPS))

    assert code_of(error) == "BAD_USER_INPUT"
    assert error["message"].startswith(
        "input.promptTemplate: with the input of test case tc_")
    assert "rendering took longer than" in error["message"]
    assert await row_counts(pool) == before


async def test_a_case_too_slow_to_render_fails_alone_after_its_time_limit(stack):
    quick = [{"input": {"xs": [1]}, "expectedOutput": "ok"}]
    test_set = await create_test_set(stack, quick * TRIAL_RENDERS + [
        {"input": {"xs": list(range(1000))}, "expectedOutput": "ok"}],
        name="late slow template")
    created = (await stack.query(CREATE_EVALUATION, input=evaluation_input(
        test_set["id"], promptTemplate=LOOPS)))["createEvaluation"]
    await stack.wait_for_status(created["id"], "COMPLETED", "FAILED")
    evaluation = (await send(stack, EVALUATION, id=created["id"]))["data"]["evaluation"]

    errors = [edge["node"]["error"] for edge in evaluation["results"]["edges"]]
    assert evaluation["status"] == "COMPLETED"
    assert errors[:TRIAL_RENDERS] == [None] * TRIAL_RENDERS
    assert errors[TRIAL_RENDERS] == (f"template_error: rendering took longer than"
                                     f" {RENDER_TIME_LIMIT_S:g} s")


async def test_a_template_that_fails_otherwise_is_left_to_the_run(
        stack, hostile_cases):
    """Only what the sandbox refuses is refused at create: other errors may hit
    a few cases only, and fail those cases alone."""
    created = (await stack.query(CREATE_EVALUATION, input=evaluation_input(
        hostile_cases, promptTemplate="{{ question.mro() }}")))["createEvaluation"]
    await stack.wait_for_status(created["id"], "COMPLETED", "FAILED")
    evaluation = (await send(stack, EVALUATION, id=created["id"]))["data"]["evaluation"]

    [result] = [edge["node"] for edge in evaluation["results"]["edges"]]
    assert result["error"].startswith("template_error: line 1: ")
    assert "missing variable" in result["error"]
    assert evaluation["failedCases"] == evaluation["totalCases"] == 1


BAD_SCORERS = [
    pytest.param({"type": "REGEX", "options": {"pattern": "(a+)+$"}},
                 "input.scorer.options.pattern: repeats something that itself",
                 id="regex-nested-plus"),
    pytest.param({"type": "REGEX", "options": {"pattern": "(?:x|y*)*z"}},
                 "input.scorer.options.pattern: repeats something that itself",
                 id="regex-repeat-of-an-alternative-that-repeats"),
    pytest.param({"type": "REGEX", "options": {"pattern": "((ab)*c?)+"}},
                 "input.scorer.options.pattern: repeats something that itself",
                 id="regex-repeat-inside-a-group-repeat"),
    pytest.param({"type": "REGEX", "options": {"pattern": "[a-"}},
                 "input.scorer.options.pattern: is not a valid regular expression",
                 id="regex-unclosed-set"),
    pytest.param({"type": "REGEX", "options": {"pattern": "a{2,1}"}},
                 "input.scorer.options.pattern: is not a valid regular expression",
                 id="regex-reversed-repeat-range"),
    pytest.param({"type": "REGEX", "options": {"pattern": "(?P<x>a)(?P<x>b)"}},
                 "input.scorer.options.pattern: is not a valid regular expression",
                 id="regex-group-named-twice"),
    pytest.param({"type": "REGEX", "options": {"pattern": "\\N{NO SUCH NAME}"}},
                 "input.scorer.options.pattern: is not a valid regular expression",
                 id="regex-unknown-character-name"),
    pytest.param({"type": "REGEX", "options": {"pattern": "(?<=a|bc)"}},
                 "input.scorer.options.pattern: is not a valid regular expression",
                 id="regex-look-behind-of-two-widths"),
    pytest.param({"type": "REGEX", "options": {"pattern": "a" * 1_001}},
                 "input.scorer.options.pattern: is 1,001 characters long",
                 id="regex-too-long"),
    pytest.param({"type": "REGEX", "options": {"pattern": ""}},
                 "input.scorer.options.pattern: must not be empty",
                 id="regex-empty"),
    pytest.param({"type": "REGEX", "options": {"pattern": ["a"]}},
                 "input.scorer.options.pattern: must be a string",
                 id="regex-pattern-a-list"),
    pytest.param({"type": "REGEX", "options": {"pattern": "a\x00"}},
                 "input.scorer.options.pattern: contains a NUL", id="regex-nul"),
    pytest.param({"type": "REGEX", "options": {"pattern": "\ud800"}},
                 "input.scorer.options.pattern: contains a lone surrogate",
                 id="regex-lone-surrogate"),
    pytest.param({"type": "REGEX", "options": {"pattern": ".", "ignoreCase": "yes"}},
                 "input.scorer.options.ignoreCase: must be true or false",
                 id="regex-ignore-case-a-string"),
    pytest.param({"type": "NUMERIC", "options": {"tolerance": -0.5}},
                 "input.scorer.options.tolerance: must be a non-negative number",
                 id="numeric-negative-tolerance"),
    pytest.param({"type": "NUMERIC", "options": {"relativeTolerance": -1}},
                 "input.scorer.options.relativeTolerance: must be a non-negative",
                 id="numeric-negative-relative-tolerance"),
    pytest.param({"type": "NUMERIC", "options": {"tolerance": float("nan")}},
                 "input.scorer.options.tolerance: nan is not a JSON number",
                 id="numeric-tolerance-nan"),
    pytest.param({"type": "NUMERIC", "options": {"tolerance": float("inf")}},
                 "input.scorer.options.tolerance: inf is not a JSON number",
                 id="numeric-tolerance-infinity"),
    pytest.param({"type": "NUMERIC", "options": {"relativeTolerance":
                                                 float("-inf")}},
                 "input.scorer.options.relativeTolerance: -inf is not a JSON",
                 id="numeric-relative-tolerance-minus-infinity"),
    pytest.param({"type": "NUMERIC", "options": {"tolerance": 10**400}},
                 "input.scorer.options.tolerance: must be a non-negative number",
                 id="numeric-tolerance-a-400-digit-integer"),
    pytest.param({"type": "NUMERIC", "options": {"tolerance": True}},
                 "input.scorer.options.tolerance: must be a non-negative number",
                 id="numeric-tolerance-true"),
    pytest.param({"type": "NUMERIC", "options": {"tolerance": "0.1"}},
                 "input.scorer.options.tolerance: must be a non-negative number",
                 id="numeric-tolerance-a-string"),
    pytest.param({"type": "NUMERIC", "options": {"tolerance": {"x": nested_list(40)}}},
                 "input.scorer.options.tolerance.x" + "[0]" * 31 + ": is nested",
                 id="options-40-levels-deep"),
    pytest.param({"type": "NUMERIC", "options": {"tol\x00": 1}},
                 "input.scorer.options (a key): contains a NUL", id="options-key-nul"),
    pytest.param({"type": "CONTAINS", "options": {"\ud800": 1}},
                 "input.scorer.options (a key): contains a lone surrogate",
                 id="options-key-lone-surrogate"),
    pytest.param({"type": "CONTAINS", "options": ["ignoreCase"]},
                 "input.scorer.options: must be a JSON object", id="options-a-list"),
    pytest.param({"type": "CONTAINS", "options": "ignoreCase"},
                 "input.scorer.options: must be a JSON object",
                 id="options-a-string"),
    pytest.param({"type": "EXACT_MATCH", "options": {"__class__": True}},
                 "input.scorer.options.__class__: is not an option",
                 id="options-a-dunder-name"),
]


@pytest.mark.parametrize(("scorer", "message"), BAD_SCORERS)
async def test_bad_scorer_options_are_refused_naming_the_option(
        stack, pool, hostile_cases, scorer, message):
    before = await row_counts(pool)

    error = await refusal(stack, CREATE_EVALUATION,
                          input=evaluation_input(hostile_cases, scorer=scorer))

    assert code_of(error) == "BAD_USER_INPUT"
    assert error["message"].startswith(message), error["message"]
    assert len(error["message"]) < 500
    assert await row_counts(pool) == before


@pytest.mark.parametrize(("pattern", "refusal"), [
    pytest.param("[[a]", None, id="possible-nested-set"),
    pytest.param("[a--b]", "bad character range", id="possible-set-difference"),
])
async def test_a_pattern_python_warns_about_is_judged_on_what_it_is_today(
        stack, hostile_cases, pattern, refusal):
    # `re` warns that `[[` and `--` in a set may mean something else in a
    # later Python; with warnings as errors (as here) that must not turn into
    # a server error, only into what the pattern deserves today.
    body = await send(stack, CREATE_EVALUATION, input=evaluation_input(
        hostile_cases, scorer={"type": "REGEX", "options": {"pattern": pattern}}))

    if refusal is None:
        assert "errors" not in body, body
        assert body["data"]["createEvaluation"]["id"].startswith("ev_")
    else:
        error = body["errors"][0]
        assert code_of(error) == "BAD_USER_INPUT"
        assert error["message"].startswith("input.scorer.options.pattern: ")
        assert refusal in error["message"]


@pytest.mark.parametrize(("pattern", "wording"), [
    pytest.param("a{4294967296}", "too large", id="repeat-count-past-the-maximum"),
    pytest.param("(?<=a+)b", "look-behind requires fixed-width pattern",
                 id="variable-width-look-behind"),
])
async def test_a_refused_pattern_says_truly_what_is_wrong(
        stack, hostile_cases, pattern, wording):
    error = await refusal(stack, CREATE_EVALUATION, input=evaluation_input(
        hostile_cases, scorer={"type": "REGEX", "options": {"pattern": pattern}}))

    assert code_of(error) == "BAD_USER_INPUT"
    assert error["message"].startswith("input.scorer.options.pattern: ")
    assert wording in error["message"]
    assert "nested" not in error["message"]
    assert "None" not in error["message"]


BAD_EVALUATION_FIELDS = [
    pytest.param({"temperature": -0.001}, "input.temperature: must be between 0 and 2",
                 id="temperature-just-below-0"),
    pytest.param({"temperature": 2.000001},
                 "input.temperature: must be between 0 and 2",
                 id="temperature-just-above-2"),
    pytest.param({"temperature": 1e308}, "input.temperature: must be between",
                 id="temperature-huge"),
    pytest.param({"maxTokens": -1}, "input.maxTokens: must be between 1 and",
                 id="max-tokens-negative"),
    pytest.param({"maxTokens": 1_000_001}, "input.maxTokens: must be between 1 and",
                 id="max-tokens-past-a-million"),
    pytest.param({"maxTokens": -(2**31)}, "input.maxTokens: must be between 1 and",
                 id="max-tokens-smallest-int32"),
    pytest.param({"concurrency": -1}, "input.concurrency: must be between 1 and 64",
                 id="concurrency-negative"),
    pytest.param({"concurrency": 65}, "input.concurrency: must be between 1 and 64",
                 id="concurrency-one-past-the-maximum"),
    pytest.param({"concurrency": 2**31 - 1}, "input.concurrency: must be between",
                 id="concurrency-largest-int32"),
    pytest.param({"name": "a\x00"}, "input.name: contains a NUL", id="name-nul"),
    pytest.param({"name": "\udc80"}, "input.name: contains a lone surrogate",
                 id="name-lone-surrogate"),
    pytest.param({"name": "n" * 201}, "input.name: is 201 characters",
                 id="name-too-long"),
    pytest.param({"model": ""}, "input.model: must not be empty", id="model-empty"),
    pytest.param({"model": "\u2003\n"}, "input.model: must not be empty",
                 id="model-unicode-blank"),
    pytest.param({"model": "gpt\x00"}, "input.model: contains a NUL",
                 id="model-nul"),
    pytest.param({"model": "m" * 201}, "input.model: is 201 characters",
                 id="model-too-long"),
    pytest.param({"systemPrompt": "be\x00nice"}, "input.systemPrompt: contains a NUL",
                 id="system-prompt-nul"),
    pytest.param({"systemPrompt": "\ud800"},
                 "input.systemPrompt: contains a lone surrogate",
                 id="system-prompt-lone-surrogate"),
    pytest.param({"idempotencyKey": "k\x00"},
                 "input.idempotencyKey: contains a NUL", id="idempotency-key-nul"),
    pytest.param({"idempotencyKey": "\U0001f511" * 201},
                 "input.idempotencyKey: is 201 characters",
                 id="idempotency-key-201-emoji"),
    pytest.param({"systemPrompt": "s" * 100_001},
                 "input.systemPrompt: is 100001 characters",
                 id="system-prompt-too-long"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_EVALUATION_FIELDS)
async def test_an_evaluation_field_out_of_range_is_refused_before_storing(
        stack, pool, hostile_cases, overrides, message):
    before = await row_counts(pool)

    error = await refusal(stack, CREATE_EVALUATION,
                          input=evaluation_input(hostile_cases, **overrides))

    assert code_of(error) == "BAD_USER_INPUT"
    assert error["message"].startswith(message), error["message"]
    assert await row_counts(pool) == before


@pytest.mark.parametrize("overrides", [
    pytest.param({"temperature": 0.0, "maxTokens": 1, "concurrency": 1},
                 id="lowest-bounds"),
    pytest.param({"temperature": 2.0, "maxTokens": 1_000_000, "concurrency": 64},
                 id="highest-bounds"),
    pytest.param({"name": "  \U0001f9ea تقييم \u202e ", "model": "assay-simulator",
                  "systemPrompt": " \r\n\u05e9\u05dc\u05d5\u05dd\x07 ",
                  "promptTemplate": "\ufeffQ 👋: {{ question }}\u2028 \n",
                  "scorer": {"type": "REGEX", "options": {
                      "pattern": "(?i)\u0645\u0631\u062d\u0628\u0627|👋|\\d+",
                      "ignoreCase": False}}},
                 id="unusual-text-everywhere"),
])
async def test_an_evaluation_at_the_bounds_is_stored_exactly(
        stack, hostile_cases, overrides):
    given = evaluation_input(hostile_cases, **overrides)

    body = await send(stack, CREATE_EVALUATION, input=given)
    assert "errors" not in body, body
    created = body["data"]["createEvaluation"]
    read = (await send(stack, EVALUATION, id=created["id"]))["data"]["evaluation"]
    await stack.wait_for_status(created["id"], "COMPLETED")

    for field in ("name", "model", "promptTemplate", "systemPrompt", "temperature",
                  "maxTokens", "concurrency"):
        if field in given:
            assert read[field] == given[field], field
    assert read["scorer"] == {"type": given["scorer"]["type"],
                              "options": given["scorer"]["options"]}


async def test_an_evaluation_refused_for_a_later_reason_stores_nothing(
        stack, pool, hostile_cases):
    # Everything but the last check passes: the test set, the template and
    # the scorer are good, the concurrency is not.
    before = await row_counts(pool)

    error = await refusal(stack, CREATE_EVALUATION, input=evaluation_input(
        hostile_cases, name="late refusal", concurrency=0))

    assert code_of(error) == "BAD_USER_INPUT"
    assert await row_counts(pool) == before
    assert await pool.fetchval(
        "SELECT count(*) FROM evaluations WHERE name = 'late refusal'") == 0


# --- cancelEvaluation --------------------------------------------------------


async def test_cancelling_twice_is_a_conflict_naming_the_status(stack, pool):
    # Long enough, one call at a time, to be cancelled while it runs.
    test_set = await create_test_set(stack, arithmetic_cases(300))
    created = await create_evaluation(stack, test_set["id"], concurrency=1)

    first = await stack.query(CANCEL, id=created["id"])
    error = await refusal(stack, CANCEL, id=created["id"])

    assert first["cancelEvaluation"]["status"] == "CANCELLED"
    assert code_of(error) == "CONFLICT"
    assert error["message"] == "id: the evaluation is already CANCELLED"
    assert await pool.fetchval("SELECT status FROM evaluations WHERE id = $1",
                               int(created["id"].removeprefix("ev_"))) == "CANCELLED"
