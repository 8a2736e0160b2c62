"""Test sets through the GraphQL API over HTTP."""

from __future__ import annotations

import json

import pytest

from tests.factories import CREATE_TEST_SET, arithmetic_cases, create_test_set, unique
from tests.stack import GraphQLError

TEST_SET_PAGE = """
query($id: ID!, $first: Int, $after: String, $categoryId: ID) {
  testSet(id: $id) {
    id name description testCaseCount createdAt
    categories { id name description testCaseCount }
    testCases(first: $first, after: $after, categoryId: $categoryId) {
      totalCount
      pageInfo { hasNextPage endCursor }
      edges { cursor node { id input expectedOutput metadata category { name } } }
    }
  }
}"""


# Nested one level deeper than the API accepts.
DEEP_JSON: list = [1]
for _ in range(33):
    DEEP_JSON = [DEEP_JSON]


async def test_a_created_test_set_reads_back_with_its_categories_and_cases(stack):
    created = await create_test_set(
        stack, arithmetic_cases(5), description="small sums",
        categories=[{"name": "sums", "description": "adding two numbers"},
                    {"name": "empty"}])

    data = await stack.query(TEST_SET_PAGE, id=created["id"], first=10)

    test_set = data["testSet"]
    assert test_set["testCaseCount"] == 5
    assert test_set["description"] == "small sums"
    categories = {c["name"]: c for c in test_set["categories"]}
    assert categories["sums"]["description"] == "adding two numbers"
    assert categories["sums"]["testCaseCount"] == 3
    assert categories["products"]["testCaseCount"] == 2
    assert categories["empty"]["testCaseCount"] == 0
    nodes = [edge["node"] for edge in test_set["testCases"]["edges"]]
    assert [n["input"]["question"] for n in nodes] == [
        c["input"]["question"] for c in arithmetic_cases(5)]
    assert nodes[1]["category"] == {"name": "products"}


async def test_test_cases_page_through_with_cursors_and_a_category_filter(stack):
    created = await create_test_set(stack, arithmetic_cases(7))
    sums_id = next(c["id"] for c in created["categories"] if c["name"] == "sums")

    seen, after = [], None
    while True:
        page = (await stack.query(TEST_SET_PAGE, id=created["id"], first=3,
                                  after=after))["testSet"]["testCases"]
        seen += [edge["node"]["id"] for edge in page["edges"]]
        assert page["totalCount"] == 7
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    sums = (await stack.query(TEST_SET_PAGE, id=created["id"],
                              categoryId=sums_id))["testSet"]["testCases"]

    assert len(seen) == len(set(seen)) == 7
    assert sums["totalCount"] == 4
    assert {e["node"]["category"]["name"] for e in sums["edges"]} == {"sums"}


async def test_unicode_and_nested_json_are_stored_exactly_as_given(stack):
    case = {"input": {"question": "مرحبا 👋 ‘quotes’", "context": {"deep": [1, 2.5,
            None, True, {"x": "y"}]}}, "expectedOutput": "  spaced  ",
            "metadata": {"source_line": 3}}

    created = await create_test_set(stack, [case])
    node = (await stack.query(TEST_SET_PAGE, id=created["id"]))[
        "testSet"]["testCases"]["edges"][0]["node"]

    assert node["input"] == case["input"]
    assert node["expectedOutput"] == "  spaced  "
    assert node["metadata"] == {"source_line": 3}


async def test_append_test_cases_adds_after_the_last_case(stack):
    created = await create_test_set(stack, arithmetic_cases(2))

    data = await stack.query(
        "mutation($id: ID!, $cases: [TestCaseInput!]!) {"
        " appendTestCases(testSetId: $id, testCases: $cases) { testCaseCount } }",
        id=created["id"], cases=[{"input": {"question": "last"}, "category": "new"}])
    page = await stack.query(TEST_SET_PAGE, id=created["id"])

    assert data["appendTestCases"]["testCaseCount"] == 3
    nodes = [e["node"] for e in page["testSet"]["testCases"]["edges"]]
    assert nodes[-1]["input"] == {"question": "last"}
    assert nodes[-1]["category"] == {"name": "new"}


async def test_test_cases_written_in_the_document_keep_every_field(stack):
    created = await create_test_set(stack, arithmetic_cases(1))

    await stack.query(
        'mutation($id: ID!) { appendTestCases(testSetId: $id, testCases: ['
        ' {input: {question: "all", n: [1, {k: null}]}, expectedOutput: "x",'
        '  category: "lit", metadata: {line: 7}},'
        ' {input: {question: "bare"}},'
        ' {input: {question: "nulls"}, expectedOutput: null, category: null,'
        '  metadata: null}]) { testCaseCount } }', id=created["id"])
    page = await stack.query(TEST_SET_PAGE, id=created["id"])

    nodes = [e["node"] for e in page["testSet"]["testCases"]["edges"]][1:]
    assert nodes[0] == {"id": nodes[0]["id"],
                        "input": {"question": "all", "n": [1, {"k": None}]},
                        "expectedOutput": "x", "metadata": {"line": 7},
                        "category": {"name": "lit"}}
    for node, question in zip(nodes[1:], ["bare", "nulls"]):
        assert node["input"] == {"question": question}
        assert (node["expectedOutput"], node["metadata"], node["category"]) == (
            None, None, None)


APPEND_LINES = """
mutation($id: ID!, $lines: String!) {
  appendTestCaseLines(testSetId: $id, jsonLines: $lines) { testCaseCount }
}"""


async def test_test_cases_sent_as_json_lines_are_appended_in_order(stack):
    created = await create_test_set(stack, arithmetic_cases(1))
    lines = [
        {"input": {"question": "é ‘q’ 👋", "n": [1, 2.5, None, {"k": True}]},
         "expectedOutput": "x", "category": "lines", "metadata": {"line": 7}},
        {"input": {"question": "bare"}},
        {"input": {"question": "nulls"}, "expectedOutput": None,
         "category": None, "metadata": None},
    ]
    text = "\n".join(json.dumps(line, ensure_ascii=False) for line in lines)

    data = await stack.query(APPEND_LINES, id=created["id"],
                             lines="\r\n\n" + text.replace("\n", "\r\n\n  \n") + "\n")
    page = await stack.query(TEST_SET_PAGE, id=created["id"])

    assert data["appendTestCaseLines"]["testCaseCount"] == 4
    nodes = [e["node"] for e in page["testSet"]["testCases"]["edges"]][1:]
    assert [n["input"] for n in nodes] == [line["input"] for line in lines]
    assert [n["expectedOutput"] for n in nodes] == ["x", None, None]
    assert [n["metadata"] for n in nodes] == [{"line": 7}, None, None]
    assert [n["category"] for n in nodes] == [{"name": "lines"}, None, None]


@pytest.mark.parametrize(("bad_line", "message"), [
    ('{"input": {"q": 1}', "jsonLines line 3: not valid JSON (Expecting ',' "
     "delimiter at column 19)"),
    ('["input"]', "jsonLines line 3: must be a JSON object holding one test case"),
    ('{"input": {}, "answer": "4"}', "jsonLines line 3: unknown field 'answer' "
     "(a test case has input, expectedOutput, category and metadata)"),
    ('{"expectedOutput": "4"}', "jsonLines line 3.input: is required"),
    ('{"input": "2 + 2?"}', "jsonLines line 3.input: must be a JSON object of "
     "template variables"),
    ('{"input": {}, "expectedOutput": 4}',
     "jsonLines line 3.expectedOutput: must be a string or null"),
    ('{"input": {}, "category": ["a"]}',
     "jsonLines line 3.category: must be a string or null"),
    ('{"input": {}, "category": "  "}', "jsonLines line 3.category: must not be "
     "empty"),
    ('{"input": {"x": NaN}}', "jsonLines line 3: not valid JSON (NaN is not a "
     "JSON number)"),
    ('{"input": {"x": 1e999}}', "jsonLines line 3.input.x: inf is not a JSON "
     "number (too large, infinite or NaN)"),
    ('{"input": {"x": "a\\u0000b"}}', "jsonLines line 3.input.x: contains a NUL"
     " character, which cannot be stored"),
    ('{"input": {"x": "\\ud800"}}', "jsonLines line 3.input.x: contains a lone "
     "surrogate, which is not valid Unicode"),
    ('{"input": {"x": ' + json.dumps(DEEP_JSON) + '}}',
     "jsonLines line 3.input.x" + "[0]" * 32 + ": is nested deeper than 32 levels"),
])
async def test_a_bad_json_line_is_named_and_nothing_is_appended(stack, bad_line,
                                                                message):
    created = await create_test_set(stack, arithmetic_cases(2))
    lines = '{"input": {"q": 1}}\n\n' + bad_line + '\n{"input": {"q": 2}}'

    with pytest.raises(GraphQLError) as refused:
        await stack.query(APPEND_LINES, id=created["id"], lines=lines)
    after = await stack.query(TEST_SET_PAGE, id=created["id"])

    assert refused.value.code == "BAD_USER_INPUT"
    assert refused.value.message == message
    assert after["testSet"]["testCaseCount"] == 2


async def test_test_sets_list_newest_first_with_a_total(stack):
    first = await create_test_set(stack, arithmetic_cases(1))
    second = await create_test_set(stack, arithmetic_cases(1))

    data = await stack.query(
        "{ testSets(first: 2) { totalCount edges { node { id } } } }")

    ids = [edge["node"]["id"] for edge in data["testSets"]["edges"]]
    assert ids == [second["id"], first["id"]]
    assert data["testSets"]["totalCount"] >= 2


async def test_delete_test_set_removes_it_and_a_second_delete_is_not_found(stack):
    created = await create_test_set(stack, arithmetic_cases(2))
    delete = "mutation($id: ID!) { deleteTestSet(id: $id) }"

    deleted = await stack.query(delete, id=created["id"])

    assert deleted["deleteTestSet"] == created["id"]
    assert (await stack.query(TEST_SET_PAGE, id=created["id"]))["testSet"] is None
    with pytest.raises(GraphQLError) as error:
        await stack.query(delete, id=created["id"])
    assert error.value.code == "NOT_FOUND"


async def test_queries_work_over_http_get(stack):
    response = await stack.http.get(stack.graphql_url,
                                    params={"query": "{ testSets { totalCount } }"})

    assert response.status_code == 200
    assert response.json()["data"]["testSets"]["totalCount"] >= 0


@pytest.mark.parametrize(("test_set_input", "code", "where"), [
    ({"name": "   "}, "BAD_USER_INPUT", "input.name"),
    ({"name": "x" * 201}, "BAD_USER_INPUT", "input.name"),
    ({"name": "nul", "testCases": [{"input": {"q": "a\u0000b"}}]},
     "BAD_USER_INPUT", "input.testCases[0].input.q"),
    ({"name": "list", "testCases": [{"input": ["not", "an", "object"]}]},
     "BAD_USER_INPUT", "input.testCases[0].input"),
    ({"name": "dup", "categories": [{"name": "a"}, {"name": "a"}]},
     "BAD_USER_INPUT", "input.categories[1].name"),
    ({"name": "blank category", "testCases": [{"input": {}, "category": " "}]},
     "BAD_USER_INPUT", "input.testCases[0].category"),
    ({"name": "deep", "testCases": [{"input": {"a": DEEP_JSON}}]},
     "BAD_USER_INPUT", "input.testCases[0].input.a"),
    ({"testCases": []}, "BAD_USER_INPUT", "name"),
])
async def test_bad_test_sets_are_refused_naming_the_field(stack, test_set_input, code,
                                                          where):
    if "name" in test_set_input and test_set_input["name"].strip():
        test_set_input = {**test_set_input, "name": unique(test_set_input["name"])}
    before = (await stack.query("{ testSets { totalCount } }"))["testSets"]

    with pytest.raises(GraphQLError) as error:
        await stack.query(CREATE_TEST_SET, input=test_set_input)

    assert error.value.code == code
    assert where in error.value.message
    after = (await stack.query("{ testSets { totalCount } }"))["testSets"]
    assert after == before


async def test_a_duplicate_name_is_a_conflict_and_leaves_the_first_intact(stack):
    created = await create_test_set(stack, arithmetic_cases(3))

    with pytest.raises(GraphQLError) as error:
        await stack.query(CREATE_TEST_SET, input={
            "name": created["name"], "testCases": arithmetic_cases(1)})

    assert error.value.code == "CONFLICT"
    page = await stack.query(TEST_SET_PAGE, id=created["id"])
    assert page["testSet"]["testCaseCount"] == 3


@pytest.mark.parametrize(("test_set_id", "code"), [
    ("ts_999999999", None),
    ("ev_1", "BAD_USER_INPUT"),
    ("nonsense", "BAD_USER_INPUT"),
    ("ts_99999999999999999999999", "BAD_USER_INPUT"),
])
async def test_unknown_ids_read_as_null_and_malformed_ids_are_refused(
        stack, test_set_id, code):
    document = "query($id: ID!) { testSet(id: $id) { id } }"
    if code is None:
        assert (await stack.query(document, id=test_set_id))["testSet"] is None
        return
    with pytest.raises(GraphQLError) as error:
        await stack.query(document, id=test_set_id)
    assert error.value.code == code
    assert "id" in error.value.message


async def test_a_bad_cursor_and_an_oversized_page_are_refused(stack):
    created = await create_test_set(stack, arithmetic_cases(1))

    with pytest.raises(GraphQLError) as bad_cursor:
        await stack.query(TEST_SET_PAGE, id=created["id"], after="garbage!")
    with pytest.raises(GraphQLError) as too_big:
        await stack.query(TEST_SET_PAGE, id=created["id"], first=100_000)

    assert bad_cursor.value.code == "BAD_USER_INPUT"
    assert "after" in bad_cursor.value.message
    assert too_big.value.code == "BAD_USER_INPUT"
    assert "first" in too_big.value.message


async def test_a_malformed_query_is_bad_user_input(stack):
    with pytest.raises(GraphQLError) as error:
        await stack.query("{ testSets { nope } }")

    assert error.value.code == "BAD_USER_INPUT"
    assert "nope" in error.value.message
