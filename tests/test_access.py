"""Who may do what: every operation of the API, tried with every kind of key.

Two workspaces, alpha and beta, each with a viewer, an editor and an admin
key. The tables below try every query, mutation and subscription with no key,
a malformed key, a revoked key, an expired key, each role of alpha's keys and
beta's admin key, against alpha's things. Then every id alpha owns is tried
from beta against every operation that takes an id, and must behave exactly as
an id that names nothing.

The stack here has no worker, so evaluations stay QUEUED until cancelled and
each operation gets fresh things to act on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2
import pytest
import pytest_asyncio
import websockets

from app import auth
from app.server import build_schema
from app.store import api_keys as key_store
from tests.factories import CREATE_EVALUATION, CREATE_TEST_SET, arithmetic_cases
from tests.stack import Stack, make_key, running_stack

ROLES = ("viewer", "editor", "admin")
MISSING = {"ts": "ts_987654321", "ev": "ev_987654321", "key": "key_987654321",
           "cat": "cat_987654321"}


@dataclasses.dataclass
class World:
    stack: Stack
    alpha: str
    beta: str
    keys: dict[tuple[str, str], str]  # (workspace, role) -> key
    revoked: str
    expired: str

    def key(self, workspace: str, role: str) -> str:
        return self.keys[(workspace, role)]


@pytest_asyncio.fixture(scope="module")
async def world(settings):
    # A queue of its own: the session's worker must not run these evaluations.
    # Keys are re-checked rarely here, so that only revoking through the API
    # can close a socket in time (the check itself has a test of its own).
    own = settings.replace(redis_prefix=f"{settings.redis_prefix}-access",
                           key_check_s=60)
    async with running_stack(own, with_worker=False) as stack:
        alpha, beta = (f"{name}-{uuid.uuid4().hex[:8]}" for name in ("alpha", "beta"))
        keys = {(workspace, role): await make_key(own, workspace, role)
                for workspace in (alpha, beta) for role in ROLES}
        revoked = await make_key(own, alpha, "admin")
        expired = await make_key(
            own, alpha, "admin",
            expires_at=datetime.datetime.now(datetime.UTC)
            - datetime.timedelta(minutes=1))
        pool = stack.app.state.services.pool
        await key_store.revoke_key(pool, await key_id_of(pool, revoked))
        yield World(stack, alpha, beta, keys, revoked, expired)


async def key_id_of(pool, key: str) -> int:
    return (await auth.authenticate(pool, key)).key_id


# --- Things to act on, made fresh in alpha by its admin -------------------------


async def _ask(world: World, document: str, **variables: Any) -> dict[str, Any]:
    return await world.stack.query_as(world.key(world.alpha, "admin"), document,
                                      **variables)


async def fresh_test_set(world: World) -> dict[str, Any]:
    data = await _ask(world, CREATE_TEST_SET, input={
        "name": f"access {uuid.uuid4().hex[:8]}", "testCases": arithmetic_cases(2)})
    return data["createTestSet"]


async def fresh_evaluation(world: World, *, cancelled: bool = False) -> str:
    test_set = await fresh_test_set(world)
    data = await _ask(world, CREATE_EVALUATION, input={
        "testSetId": test_set["id"], "model": "m",
        "promptTemplate": "{{ question }}", "scorer": {"type": "NUMERIC"}})
    evaluation_id = data["createEvaluation"]["id"]
    if cancelled:
        await _ask(world, "mutation($id: ID!) { cancelEvaluation(id: $id) { id } }",
                   id=evaluation_id)
    return evaluation_id


async def fresh_key_id(world: World) -> str:
    data = await _ask(world, "mutation { createApiKey(input: {role: VIEWER})"
                      " { apiKey { id } } }")
    return data["createApiKey"]["apiKey"]["id"]


# --- The operations ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Operation:
    name: str
    role: str  # the least role that may run it
    document: str
    # The variables, from alpha's things (made fresh for each try).
    variables: Callable[[World], Awaitable[dict[str, Any]]]
    # For operations that take ids: the variables naming nothing at all.
    missing: dict[str, Any] | None = None
    subscription: bool = False


async def _none(world: World) -> dict[str, Any]:
    return {}


async def _test_set_id(world: World) -> dict[str, Any]:
    return {"id": (await fresh_test_set(world))["id"]}


async def _category_id(world: World) -> dict[str, Any]:
    test_set = await fresh_test_set(world)
    return {"id": test_set["id"], "category": test_set["categories"][0]["id"]}


async def _queued_evaluation(world: World) -> dict[str, Any]:
    return {"id": await fresh_evaluation(world)}


async def _cancelled_evaluation(world: World) -> dict[str, Any]:
    return {"id": await fresh_evaluation(world, cancelled=True)}


async def _key_id(world: World) -> dict[str, Any]:
    return {"id": await fresh_key_id(world)}


OPERATIONS = [
    Operation("me", "viewer", "{ me { workspace role } }", _none),
    Operation("testSets", "viewer",
              "{ testSets { totalCount edges { node { id } } } }", _none),
    Operation("testSet", "viewer",
              "query($id: ID!) { testSet(id: $id) { id name testCaseCount"
              " categories { id } testCases { totalCount } evaluations"
              " { totalCount } } }", _test_set_id, {"id": MISSING["ts"]}),
    Operation("testSet.testCases(categoryId)", "viewer",
              "query($id: ID!, $category: ID) { testSet(id: $id) { id"
              " testCases(categoryId: $category) { totalCount } } }",
              _category_id, {"id": MISSING["ts"], "category": MISSING["cat"]}),
    Operation("evaluations", "viewer",
              "{ evaluations { totalCount edges { node { id } } } }", _none),
    Operation("evaluations(testSetId)", "viewer",
              "query($id: ID) { evaluations(testSetId: $id) { totalCount } }",
              _test_set_id, {"id": MISSING["ts"]}),
    Operation("evaluation", "viewer",
              "query($id: ID!) { evaluation(id: $id) { id status testSet { id }"
              " categoryScores { score } results { totalCount } } }",
              _queued_evaluation, {"id": MISSING["ev"]}),
    Operation("apiKeys", "admin", "{ apiKeys { id role status } }", _none),
    Operation("createTestSet", "editor",
              "mutation($name: String!) { createTestSet(input: {name: $name,"
              " testCases: [{input: {question: \"1 + 1?\"}}]}) { id } }",
              lambda world: _named()),
    Operation("appendTestCases", "editor",
              "mutation($id: ID!) { appendTestCases(testSetId: $id, testCases:"
              " [{input: {question: \"2 + 2?\"}}]) { id testCaseCount } }",
              _test_set_id, {"id": MISSING["ts"]}),
    Operation("appendTestCaseLines", "editor",
              "mutation($id: ID!) { appendTestCaseLines(testSetId: $id,"
              " jsonLines: \"{\\\"input\\\": {\\\"question\\\": \\\"3 + 3?\\\"}}\")"
              " { id testCaseCount } }",
              _test_set_id, {"id": MISSING["ts"]}),
    Operation("deleteTestSet", "editor",
              "mutation($id: ID!) { deleteTestSet(id: $id) }",
              _test_set_id, {"id": MISSING["ts"]}),
    Operation("createEvaluation", "editor",
              "mutation($id: ID!) { createEvaluation(input: {testSetId: $id,"
              " model: \"m\", promptTemplate: \"{{ question }}\","
              " scorer: {type: NUMERIC}}) { id } }",
              _test_set_id, {"id": MISSING["ts"]}),
    Operation("cancelEvaluation", "editor",
              "mutation($id: ID!) { cancelEvaluation(id: $id) { id status } }",
              _queued_evaluation, {"id": MISSING["ev"]}),
    Operation("rerunEvaluation", "editor",
              "mutation($id: ID!) { rerunEvaluation(id: $id) { id status } }",
              _cancelled_evaluation, {"id": MISSING["ev"]}),
    Operation("createApiKey", "admin",
              "mutation { createApiKey(input: {role: VIEWER}) { apiKey { id } } }",
              _none),
    Operation("revokeApiKey", "admin",
              "mutation($id: ID!) { revokeApiKey(id: $id) { id status } }",
              _key_id, {"id": MISSING["key"]}),
    *(Operation(f"evaluationProgress ({protocol})", "viewer",
                "subscription($id: ID!) { evaluationProgress(evaluationId: $id)"
                " { kind status } }", _cancelled_evaluation, {"id": MISSING["ev"]},
                subscription=True)
      for protocol in ("graphql-transport-ws", "graphql-ws")),
]


def test_the_table_holds_every_operation_of_the_schema():
    graphql_schema = build_schema()._schema
    fields = {name for root in (graphql_schema.query_type,
                                graphql_schema.mutation_type,
                                graphql_schema.subscription_type)
              for name in root.fields}
    named = {operation.name.split(" ")[0].split("(")[0].split(".")[0]
             for operation in OPERATIONS}
    assert fields == named


async def _named() -> dict[str, Any]:
    return {"name": f"made {uuid.uuid4().hex[:8]}"}


# --- Running an operation and naming its outcome ---------------------------------


def bearer(key: str) -> str:
    return f"Bearer {key}"


async def said(world: World, operation: Operation, authorization: str | None,
               variables: dict[str, Any]) -> tuple[str, Any]:
    """The outcome (OK; NULL when a query of one thing found nothing; or the
    error's code) and what the server said, over HTTP or a new websocket."""
    if operation.subscription:
        protocol = ("graphql-ws" if operation.name.endswith("(graphql-ws)")
                    else "graphql-transport-ws")
        return await subscribe(world.stack, authorization, protocol,
                               operation.document, variables)
    return await over_http(world.stack, authorization, operation.document,
                           variables)


async def over_http(stack: Stack, authorization: str | None, document: str,
                    variables: dict[str, Any]) -> tuple[str, Any]:
    headers = {"Authorization": authorization} if authorization is not None else {}
    async with httpx2.AsyncClient(timeout=30) as http:
        response = await http.post(stack.graphql_url, headers=headers,
                                   json={"query": document, "variables": variables})
    body = response.json()
    if body.get("errors"):
        code = body["errors"][0]["extensions"]["code"]
        assert (response.status_code == 401) == (code == "UNAUTHENTICATED"), body
        return code, body
    data = body["data"]
    return ("NULL" if any(value is None for value in data.values()) else "OK"), body


async def subscribe(stack: Stack, authorization: str | None, protocol: str,
                    document: str, variables: dict[str, Any]) -> tuple[str, Any]:
    """Subscribe on a new socket; the outcome and what the server said."""
    legacy = protocol == "graphql-ws"
    payload = {"authorization": authorization} if authorization is not None else {}
    async with websockets.connect(stack.ws_url, subprotocols=[protocol]) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
        try:
            answer = await next_message(ws)
        except websockets.ConnectionClosed as closed:
            assert closed.rcvd.code == 4403, closed
            return "UNAUTHENTICATED", closed.rcvd.reason
        if answer["type"] == "connection_error":
            assert legacy
            return answer["payload"]["code"], answer["payload"]
        assert answer["type"] == "connection_ack", answer
        return await _subscription_outcome(ws, legacy, document, variables)


async def _subscription_outcome(ws, legacy: bool, document: str,
                                variables: dict[str, Any],
                                operation_id: str = "1") -> tuple[str, Any]:
    await ws.send(json.dumps({
        "type": "start" if legacy else "subscribe", "id": operation_id,
        "payload": {"query": document, "variables": variables}}))
    message = await next_message(ws)
    while message.get("id") != operation_id:  # the end of an earlier one
        message = await next_message(ws)
    if message["type"] == "error":
        errors = message["payload"]
        errors = errors if isinstance(errors, list) else [errors]
        return errors[0]["extensions"]["code"], errors
    if message["type"] in ("next", "data"):
        if message["payload"].get("errors"):
            return (message["payload"]["errors"][0]["extensions"]["code"],
                    message["payload"]["errors"])
        return "OK", message["payload"]["data"]
    raise AssertionError(f"unexpected {message}")


async def next_message(ws) -> dict[str, Any]:
    """The next message that is not a keep-alive."""
    async with asyncio.timeout(10):
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == "ping":
                await ws.send(json.dumps({"type": "pong"}))
            elif message["type"] not in ("ka", "pong"):
                return message


def expected(operation: Operation, role: str) -> str:
    return "OK" if ROLES.index(role) >= ROLES.index(operation.role) else "FORBIDDEN"


# --- The tables ----------------------------------------------------------------

KEY_STATES = ["no key", "not a bearer key", "unknown key", "revoked key",
              "expired key", "viewer", "editor", "admin"]


def _authorization(world: World, state: str) -> str | None:
    if state in ROLES:
        return bearer(world.key(world.alpha, state))
    return {
        "no key": None,
        "not a bearer key": "Basic dXNlcjpwYXNzd29yZA==",
        "unknown key": bearer(auth.KEY_PREFIX + "x" * 43),
        "revoked key": bearer(world.revoked),
        "expired key": bearer(world.expired),
    }[state]


@pytest.mark.parametrize("state", KEY_STATES)
async def test_every_operation_with_each_kind_of_key(world, state):
    """Each outcome as the table says, and a refused operation changes
    nothing."""
    authorization = _authorization(world, state)
    pool = world.stack.app.state.services.pool
    got, wanted, changed_by_refusals = {}, {}, []
    for operation in OPERATIONS:
        variables = await operation.variables(world)
        before = await stored_state(pool)
        got[operation.name] = (await said(world, operation, authorization,
                                          variables))[0]
        wanted[operation.name] = (expected(operation, state) if state in ROLES
                                  else "UNAUTHENTICATED")
        if got[operation.name] != "OK" and await stored_state(pool) != before:
            changed_by_refusals.append(operation.name)

    assert got == wanted
    assert changed_by_refusals == []


async def stored_state(pool) -> tuple:
    """Everything an operation could change, in a few numbers."""
    return tuple(await pool.fetchrow(
        "SELECT (SELECT count(*) FROM test_sets) AS test_sets,"
        " (SELECT count(*) FROM test_cases) AS test_cases,"
        " (SELECT count(*) FROM evaluations) AS evaluations,"
        " (SELECT string_agg(status || attempt, ',' ORDER BY id) FROM evaluations)"
        "   AS statuses,"
        " (SELECT count(*) FROM api_keys) AS keys,"
        " (SELECT count(*) FROM api_keys WHERE revoked_at IS NOT NULL) AS revoked"))


async def test_the_other_workspace_sees_nothing_of_this_one(world):
    """Beta's admin key: every id of alpha's is one that does not exist, and
    lists hold only beta's things."""
    beta_admin = bearer(world.key(world.beta, "admin"))
    alpha_admin = bearer(world.key(world.alpha, "admin"))
    got, wanted = {}, {}
    for operation in [op for op in OPERATIONS if op.missing is not None]:
        variables = await operation.variables(world)
        with_alpha_id = await said(world, operation, beta_admin, variables)
        with_no_id = await said(world, operation, beta_admin, operation.missing)
        got[operation.name] = _anonymised(with_alpha_id, variables)
        wanted[operation.name] = _anonymised(with_no_id, operation.missing)
        # The ids were alpha's, and beta's tries left them as they were.
        assert (await said(world, operation, alpha_admin, variables))[0] == "OK"

    assert got == wanted


def _anonymised(said: tuple[str, Any], variables: dict[str, Any]) -> str:
    """What the server said, with the ids asked for replaced by placeholders,
    so that answers about two different ids can be compared."""
    text = json.dumps(said, sort_keys=True)
    for name, value in variables.items():
        text = text.replace(json.dumps(value)[1:-1], f"<{name}>")
    return text


async def test_lists_and_counts_hold_only_the_callers_workspace(world):
    """Two workspaces of this test's own: one with a test set and an
    evaluation, one with a test set of the same name."""
    settings, stack = world.stack.settings, world.stack
    gamma, delta = (f"{name}-{uuid.uuid4().hex[:8]}" for name in ("gamma", "delta"))
    gamma_key = await make_key(settings, gamma, "editor")
    delta_key = await make_key(settings, delta, "editor")
    gamma_set = (await stack.query_as(gamma_key, CREATE_TEST_SET, input={
        "name": "same name", "testCases": arithmetic_cases(1)}))["createTestSet"]
    gamma_evaluation = (await stack.query_as(gamma_key, CREATE_EVALUATION, input={
        "testSetId": gamma_set["id"], "model": "m", "promptTemplate": "{{ question }}",
        "scorer": {"type": "NUMERIC"}}))["createEvaluation"]
    delta_set = (await stack.query_as(delta_key, CREATE_TEST_SET, input={
        "name": "same name", "testCases": arithmetic_cases(1)}))["createTestSet"]

    listing = "{ testSets { totalCount edges { node { id } } }" \
              " evaluations { totalCount edges { node { id } } } }"
    gamma_view = await stack.query_as(gamma_key, listing)
    delta_view = await stack.query_as(delta_key, listing)

    assert gamma_view == {
        "testSets": {"totalCount": 1, "edges": [{"node": {"id": gamma_set["id"]}}]},
        "evaluations": {"totalCount": 1,
                        "edges": [{"node": {"id": gamma_evaluation["id"]}}]}}
    assert delta_view == {
        "testSets": {"totalCount": 1, "edges": [{"node": {"id": delta_set["id"]}}]},
        "evaluations": {"totalCount": 0, "edges": []}}


async def test_idempotency_keys_are_each_workspaces_own(world):
    request = {"name": f"idem {uuid.uuid4().hex[:8]}",
               "testCases": arithmetic_cases(1), "idempotencyKey": "same-key"}
    made = {}
    for workspace in (world.alpha, world.beta):
        data = await world.stack.query_as(world.key(workspace, "editor"),
                                          CREATE_TEST_SET, input=request)
        made[workspace] = data["createTestSet"]["id"]

    assert made[world.alpha] != made[world.beta]


async def test_a_denied_subscription_then_complete_leaves_the_socket_usable(world):
    allowed = await fresh_evaluation(world, cancelled=True)
    document = OPERATIONS[-1].document
    for protocol, stop in (("graphql-transport-ws", "complete"),
                           ("graphql-ws", "stop")):
        async with websockets.connect(world.stack.ws_url,
                                      subprotocols=[protocol]) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": {
                "apiKey": world.key(world.alpha, "viewer")}}))
            assert (await next_message(ws))["type"] == "connection_ack"
            legacy = protocol == "graphql-ws"

            denied = await _subscription_outcome(
                ws, legacy, document, {"id": await _beta_evaluation(world)})
            await ws.send(json.dumps({"type": stop, "id": "1"}))
            again = await _subscription_outcome(ws, legacy, document,
                                                {"id": allowed}, operation_id="2")

            assert denied[0] == "NOT_FOUND", protocol
            assert again[0] == "OK", (protocol, again)
            assert again[1]["evaluationProgress"]["kind"] == "SNAPSHOT"


async def _beta_evaluation(world: World) -> str:
    beta_editor = world.key(world.beta, "editor")
    test_set = (await world.stack.query_as(beta_editor, CREATE_TEST_SET, input={
        "name": f"beta {uuid.uuid4().hex[:8]}",
        "testCases": arithmetic_cases(1)}))["createTestSet"]
    return (await world.stack.query_as(beta_editor, CREATE_EVALUATION, input={
        "testSetId": test_set["id"], "model": "m", "promptTemplate": "{{ question }}",
        "scorer": {"type": "NUMERIC"}}))["createEvaluation"]["id"]


# --- Keys that stop working while a stream is open --------------------------------


async def _open_stream(world: World, key: str, protocol: str):
    """A socket following a QUEUED evaluation (which, with no worker, never
    ends), past its SNAPSHOT."""
    evaluation_id = await fresh_evaluation(world)
    ws = await websockets.connect(world.stack.ws_url, subprotocols=[protocol])
    await ws.send(json.dumps({"type": "connection_init",
                              "payload": {"authorization": f"Bearer {key}"}}))
    assert (await next_message(ws))["type"] == "connection_ack"
    said = await _subscription_outcome(ws, protocol == "graphql-ws",
                                       OPERATIONS[-1].document, {"id": evaluation_id})
    assert said[0] == "OK"
    return ws


async def _closed_with(ws) -> int:
    with pytest.raises(websockets.ConnectionClosed) as closed:
        async with asyncio.timeout(5):
            while True:
                await ws.recv()
    return closed.value.rcvd.code


@pytest.mark.parametrize("protocol", ["graphql-transport-ws", "graphql-ws"])
async def test_revoking_a_key_through_the_api_ends_its_streams_at_once(world,
                                                                       protocol):
    created = await _ask(world, "mutation { createApiKey(input: {role: VIEWER})"
                         " { key apiKey { id } } }")
    key = created["createApiKey"]["key"]
    key_id = created["createApiKey"]["apiKey"]["id"]
    ws = await _open_stream(world, key, protocol)
    other = await _open_stream(world, world.key(world.alpha, "viewer"), protocol)

    await _ask(world, "mutation($id: ID!) { revokeApiKey(id: $id) { id } }", id=key_id)

    assert await _closed_with(ws) == 4403
    assert (await over_http(world.stack, bearer(key), "{ me { role } }", {}))[0] \
        == "UNAUTHENTICATED"
    # Another key's stream goes on.
    await other.send(json.dumps({"type": "ping"} if protocol == "graphql-transport-ws"
                                else {"type": "stop", "id": "nothing"}))
    await asyncio.sleep(0.3)
    assert other.state is websockets.State.OPEN
    await other.close()


async def test_a_key_revoked_elsewhere_or_expiring_ends_its_streams(world):
    """With keys re-checked every 0.2 s: a key revoked in the database (as
    `assay keys revoke` does) and one that expires close their sockets, and
    the API forgets every socket that closed."""
    quick = world.stack.settings.replace(
        redis_prefix=f"{world.stack.settings.redis_prefix}-key-check",
        key_check_s=0.2)
    async with running_stack(quick, with_worker=False) as stack:
        checked = dataclasses.replace(world, stack=stack)
        revoked_key = await make_key(quick, world.alpha, "viewer")
        expiring_key = await make_key(
            quick, world.alpha, "viewer",
            expires_at=datetime.datetime.now(datetime.UTC)
            + datetime.timedelta(seconds=4))
        expiring_ws = await _open_stream(checked, expiring_key, "graphql-ws")
        revoked_ws = await _open_stream(checked, revoked_key, "graphql-transport-ws")
        # Taken over HTTP, and so remembered by the API process.
        assert (await over_http(stack, bearer(revoked_key), "{ me { role } }",
                                {}))[0] == "OK"
        connections = stack.app.state.services.connections
        assert len(connections) == 2

        pool = stack.app.state.services.pool
        await key_store.revoke_key(pool, await key_id_of(pool, revoked_key))

        assert await _closed_with(revoked_ws) == 4403
        assert await _closed_with(expiring_ws) == 4403
        await asyncio.sleep(0.2)
        assert len(connections) == 0
        # Nor is the key still taken over HTTP once the same time has passed
        # since this process last read it.
        assert (await over_http(stack, bearer(revoked_key), "{ me { role } }",
                                {}))[0] == "UNAUTHENTICATED"


async def test_a_socket_never_takes_a_key_from_what_the_api_remembers(world):
    """A key remembered from HTTP and revoked since (as `assay keys revoke`
    does) opens no new socket: a socket's key is always read afresh."""
    key = await make_key(world.stack.settings, world.alpha, "viewer")
    assert (await over_http(world.stack, bearer(key), "{ me { role } }",
                            {}))[0] == "OK"
    pool = world.stack.app.state.services.pool
    await key_store.revoke_key(pool, await key_id_of(pool, key))

    async with websockets.connect(world.stack.ws_url,
                                  subprotocols=["graphql-transport-ws"]) as ws:
        await ws.send(json.dumps({"type": "connection_init",
                                  "payload": {"authorization": bearer(key)}}))
        assert await _closed_with(ws) == 4403


async def test_an_expired_key_does_nothing_more_on_a_socket_still_open(world):
    # Keys are re-checked only every 60 s here: the socket stays open.
    key = await make_key(
        world.stack.settings, world.alpha, "editor",
        expires_at=datetime.datetime.now(datetime.UTC)
        + datetime.timedelta(seconds=1.5))
    async with websockets.connect(world.stack.ws_url,
                                  subprotocols=["graphql-transport-ws"]) as ws:
        await ws.send(json.dumps({"type": "connection_init",
                                  "payload": {"authorization": bearer(key)}}))
        assert (await next_message(ws))["type"] == "connection_ack"
        before = await _subscription_outcome(ws, False, "{ me { role } }", {},
                                             operation_id="before")
        await asyncio.sleep(1.6)
        after = await _subscription_outcome(ws, False, "{ me { role } }", {},
                                            operation_id="after")

    assert before[0] == "OK"
    assert after[0] == "UNAUTHENTICATED"
