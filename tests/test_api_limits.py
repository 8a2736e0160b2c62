"""Hostile requests get a clear client error, never a server error."""

from __future__ import annotations

import base64
import json

import pytest
import websockets

from tests.factories import CREATE_TEST_SET, arithmetic_cases, create_test_set, unique
from tests.stack import GraphQLError


async def post_raw(stack, body: bytes):
    return await stack.http.post(stack.graphql_url, content=body,
                                 headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("body, reason", [
    (b'{"query": "{ testSets { totalCount } }", "variables": ' + b"[" * 5000
     + b"]" * 5000 + b"}", "nested too deeply"),
    (b'{"query": "{ testSets { totalCount } }\xff"}', "not UTF-8"),
    (b'{"query": "{ testSets { totalCount } }", "variables": {"n": ' + b"9" * 5000
     + b"}}", "cannot be read"),
    (b'{"query": "{ __typename', "not valid JSON: Unterminated string"),
    (b'{"query": "{ __typename }",\n "variables": {,}}',
     "not valid JSON: Expecting property name enclosed in double quotes at line 2"),
], ids=["deep", "not-utf8", "huge-number", "unterminated", "stray-comma"])
async def test_unreadable_json_bodies_are_a_400_saying_why(stack, body, reason):
    response = await post_raw(stack, body)

    assert response.status_code == 400
    assert reason in response.text


async def test_a_body_over_the_size_limit_is_refused_before_it_is_parsed(stack):
    too_big = stack.settings.max_request_bytes + 1
    body = json.dumps({"query": "{ testSets { totalCount } }",
                       "variables": {"pad": "x" * too_big}}).encode()

    response = await post_raw(stack, body)

    assert response.status_code == 413
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


@pytest.mark.parametrize("number", ["Infinity", "-Infinity", "1e999", "NaN"])
async def test_numbers_json_cannot_hold_are_refused_naming_the_field(stack, number):
    body = ('{"query": ' + json.dumps(CREATE_TEST_SET) + ', "variables": {"input":'
            ' {"name": "' + unique("inf") + '", "testCases": [{"input": {"x": '
            + number + '}}]}}}').encode()

    response = await post_raw(stack, body)

    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert "input.testCases[0].input.x" in error["message"]


@pytest.mark.parametrize(("document", "variables", "where"), [
    ("query($id: ID!) { testSet(id: $id) { id } }", {"id": "ts_" + "9" * 5000}, "id"),
    ("query($a: String) { testSets(after: $a) { totalCount } }",
     {"a": base64.urlsafe_b64encode(b"c:9223372036854775808").decode()}, "after"),
    ("query($a: String) { evaluations(after: $a) { totalCount } }",
     {"a": base64.urlsafe_b64encode(b"c:" + b"9" * 40).decode()}, "after"),
])
async def test_out_of_range_ids_and_cursors_are_bad_user_input(stack, document,
                                                              variables, where):
    with pytest.raises(GraphQLError) as error:
        await stack.query(document, **variables)

    assert error.value.code == "BAD_USER_INPUT"
    assert where in error.value.message


async def test_a_position_cursor_past_int32_is_bad_user_input(stack):
    test_set = await create_test_set(stack, arithmetic_cases(1))
    cursor = base64.urlsafe_b64encode(b"c:3000000000").decode()

    with pytest.raises(GraphQLError) as error:
        await stack.query("query($id: ID!, $a: String) { testSet(id: $id) {"
                          " testCases(after: $a) { totalCount } } }",
                          id=test_set["id"], a=cursor)

    assert error.value.code == "BAD_USER_INPUT"


def _deep_query(levels: int) -> str:
    """testSets -> evaluations -> testSet -> evaluations -> ... `levels` deep."""
    selection = "id"
    for level in range(levels):
        field = "evaluations { edges { node" if level % 2 else "testSet"
        closing = "} } }" if level % 2 else "}"
        selection = f"{field} {{ {selection} {closing}"
    return f"{{ testSets {{ edges {{ node {{ {selection} }} }} }} }}"


DEEP_QUERY = _deep_query(8)


@pytest.mark.parametrize(("document", "reason"), [
    (DEEP_QUERY, "depth"),
    ("{ " + " ".join(f"a{i}: testSets {{ totalCount }}" for i in range(100)) + " }",
     "aliases"),
    ("{ testSets { " + "totalCount " * 6000 + "} }", "tokens"),
])
async def test_too_deep_too_aliased_or_too_long_queries_are_refused(stack, document,
                                                                   reason):
    with pytest.raises(GraphQLError) as error:
        await stack.query(document)

    assert error.value.code == "BAD_USER_INPUT"
    assert reason in error.value.message


async def test_a_query_over_the_subscription_only_protocol_says_so(stack):
    async with websockets.connect(stack.ws_url, subprotocols=["graphql-ws"]) as ws:
        await ws.send(json.dumps({"type": "connection_init",
                                  "payload": stack.init_payload}))
        while json.loads(await ws.recv())["type"] != "connection_ack":
            pass
        await ws.send(json.dumps({"id": "1", "type": "start", "payload": {
            "query": "{ testSets { totalCount } }"}}))
        while (message := json.loads(await ws.recv()))["type"] == "ka":
            pass

    errors = message["payload"].get("errors") or [message["payload"]]
    assert errors[0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "graphql-transport-ws" in errors[0]["message"]


async def test_page_and_request_limits_follow_their_settings(settings, model_url):
    from tests.stack import running_stack

    tight = settings.replace(redis_prefix=settings.redis_prefix + "-limits",
                             openai_base_url=model_url, max_page_size=5,
                             max_cases_per_request=3)
    async with running_stack(tight, with_worker=False) as stack:
        with pytest.raises(GraphQLError) as page:
            await stack.query("{ testSets(first: 6) { totalCount } }")
        with pytest.raises(GraphQLError) as cases:
            await create_test_set(stack, arithmetic_cases(4))
        test_set = await create_test_set(stack, arithmetic_cases(1))
        with pytest.raises(GraphQLError) as lines:
            await stack.query(
                "mutation($id: ID!, $lines: String!) {"
                " appendTestCaseLines(testSetId: $id, jsonLines: $lines) { id } }",
                id=test_set["id"], lines='{"input": {"q": 1}}\n' * 4)
        default_page = await stack.query(
            "{ testSets { edges { node { id } } } }")

    assert page.value.code == "BAD_USER_INPUT"
    assert page.value.message == "first: must be between 0 and 5, got 6"
    assert cases.value.code == "BAD_USER_INPUT"
    assert cases.value.message.startswith("input.testCases: 4 test cases in one"
                                          " request; at most 3")
    assert lines.value.message == ("jsonLines: more than 3 test cases in one"
                                   " request (send the rest in another)")
    assert len(default_page["testSets"]["edges"]) <= 5


def test_every_limit_is_a_setting_read_from_the_environment():
    from app.settings import Settings

    settings = Settings.from_env({
        "ASSAY_MAX_PAGE_SIZE": "20", "ASSAY_MAX_CASES_PER_REQUEST": "100",
        "ASSAY_MAX_REQUEST_BYTES": "2048", "ASSAY_MAX_QUERY_DEPTH": "5",
        "ASSAY_MAX_QUERY_ALIASES": "3", "ASSAY_MAX_QUERY_TOKENS": "200",
        "ASSAY_WS_KEEPALIVE_S": "2.5", "ASSAY_IDEMPOTENCY_KEY_HOURS": "1",
        "ASSAY_RATE_LIMIT_MAX_WAIT_S": "30"})

    assert (settings.max_page_size, settings.max_cases_per_request,
            settings.max_request_bytes, settings.max_query_depth,
            settings.max_query_aliases, settings.max_query_tokens,
            settings.ws_keepalive_s, settings.idempotency_key_hours,
            settings.rate_limit_max_wait_s) == (20, 100, 2048, 5, 3, 200, 2.5,
                                                1.0, 30.0)


async def test_a_document_past_the_character_limit_is_refused_before_parsing(stack):
    padded = "{ __typename " + " " * (stack.settings.max_query_chars + 1) + "}"
    response = await stack.http.post(stack.graphql_url, json={"query": padded})

    assert response.status_code == 400
    assert "ASSAY_MAX_QUERY_CHARS" in response.text


async def test_a_websocket_message_over_the_size_limit_closes_the_socket(stack):
    name = unique("too big")
    too_big = stack.settings.max_request_bytes + 1
    ws = await websockets.connect(stack.ws_url, subprotocols=["graphql-transport-ws"],
                                  max_size=None)
    closed_by_server = False
    try:
        await ws.send(json.dumps({"type": "connection_init",
                                  "payload": stack.init_payload}))
        await ws.recv()
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {
            "query": CREATE_TEST_SET, "variables": {"input": {
                "name": name, "description": "x" * too_big,
                "testCases": arithmetic_cases(1)}}}}))
        await ws.recv()
    except (websockets.ConnectionClosed, ConnectionResetError):
        # The server closes with 1009 while the client may still be sending,
        # so the close frame can be lost to a reset.
        closed_by_server = True
    finally:
        await ws.close()
    names = await stack.query("{ testSets(first: 100) { edges { node { name } } } }")

    assert closed_by_server
    assert ws.close_code in (1009, 1006)
    assert name not in {e["node"]["name"] for e in names["testSets"]["edges"]}
