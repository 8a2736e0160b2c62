"""Websocket connections that stay up: pings on idle sockets, clean leaving,
and one bad operation never taking the others down."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
import websockets

from tests.factories import arithmetic_cases, create_evaluation, create_test_set
from tests.stack import GraphQLError, running_stack
from tests.test_progress import PROGRESS, subscribe

KEEPALIVE_S = 0.3
_KEEPALIVE_MESSAGE = {"graphql-transport-ws": "ping", "graphql-ws": "ka"}


@pytest.fixture
async def idle_stack(settings, model_url):
    """An API with no worker, so a queued evaluation stays silent."""
    own = settings.replace(redis_prefix=settings.redis_prefix + "-ws",
                           openai_base_url=model_url, ws_keepalive_s=KEEPALIVE_S)
    async with running_stack(own, with_worker=False) as stack:
        yield stack


async def queued_evaluation(stack) -> str:
    test_set = await create_test_set(stack, arithmetic_cases(3))
    return (await create_evaluation(stack, test_set["id"]))["id"]


async def connect(stack, protocol: str):
    ws = await websockets.connect(stack.ws_url, subprotocols=[protocol])
    await ws.send(json.dumps({"type": "connection_init",
                              "payload": stack.init_payload}))
    while json.loads(await ws.recv())["type"] != "connection_ack":
        pass
    return ws


def start_message(protocol: str, operation_id: str, query: str,
                  **variables) -> str:
    kind = "subscribe" if protocol == "graphql-transport-ws" else "start"
    return json.dumps({"id": operation_id, "type": kind,
                       "payload": {"query": query, "variables": variables}})


async def messages_for(ws, seconds: float) -> list[dict]:
    received = []
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(seconds):
            while True:
                received.append(json.loads(await ws.recv()))
    return received


@pytest.mark.parametrize("protocol", ["graphql-transport-ws", "graphql-ws"])
async def test_an_idle_subscription_gets_keepalive_messages(idle_stack, protocol):
    evaluation_id = await queued_evaluation(idle_stack)
    ws = await connect(idle_stack, protocol)
    try:
        await ws.send(start_message(protocol, "1", PROGRESS, id=evaluation_id))
        received = await messages_for(ws, 5 * KEEPALIVE_S)
        if protocol == "graphql-transport-ws":
            await ws.send(json.dumps({"type": "pong"}))
            # The socket is still in use after the client's pong.
            later = await messages_for(ws, 2.5 * KEEPALIVE_S)
        else:
            later = []
    finally:
        await ws.close()

    kinds = [m["type"] for m in received]
    assert kinds.count(_KEEPALIVE_MESSAGE[protocol]) >= 3
    assert [m["payload"]["data"]["evaluationProgress"]["kind"]
            for m in received if m.get("id") == "1"] == ["SNAPSHOT"]
    if protocol == "graphql-transport-ws":
        assert [m["type"] for m in later].count("ping") >= 1


async def test_clients_that_vanish_mid_run_release_everything_quietly(
        idle_stack, caplog):
    hub = idle_stack.app.state.services.hub
    pool = idle_stack.app.state.services.pool
    evaluation_id = await queued_evaluation(idle_stack)
    tasks_before = len(asyncio.all_tasks())

    sockets = []
    for _ in range(5):
        ws = await connect(idle_stack, "graphql-transport-ws")
        await ws.send(start_message("graphql-transport-ws", "1", PROGRESS,
                                    id=evaluation_id))
        json.loads(await ws.recv())  # the snapshot: the listener is in place
        sockets.append(ws)
    following = sum(len(v) for v in hub._listeners.values())

    with caplog.at_level(logging.WARNING):
        for ws in sockets:
            ws.transport.abort()  # no close frame: the client just vanishes
        async with asyncio.timeout(5):
            while hub._listeners or len(asyncio.all_tasks()) > tasks_before:
                await asyncio.sleep(0.05)

    assert following == 5
    assert pool.get_size() - pool.get_idle_size() == 0
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_an_error_in_one_operation_leaves_the_others_running(idle_stack):
    protocol = "graphql-transport-ws"
    evaluation_id = await queued_evaluation(idle_stack)
    ws = await connect(idle_stack, protocol)
    try:
        await ws.send(start_message(protocol, "live", PROGRESS, id=evaluation_id))
        await ws.send(start_message(protocol, "unknown", PROGRESS, id="ev_999999"))
        await ws.send(start_message(protocol, "malformed", PROGRESS, id="nope"))
        await ws.send(start_message(protocol, "broken", "subscription { nope }"))
        received = await messages_for(ws, 1.0)

        await idle_stack.query("mutation($id: ID!) { cancelEvaluation(id: $id) {"
                               " status } }", id=evaluation_id)
        after_cancel = await messages_for(ws, 1.5)
    finally:
        await ws.close()

    by_id: dict[str, list[dict]] = {}
    for message in received + after_cancel:
        by_id.setdefault(message.get("id"), []).append(message)
    for failed in ("unknown", "malformed", "broken"):
        first = by_id[failed][0]
        errors = (first["payload"] if first["type"] == "error"
                  else first["payload"]["errors"])
        assert errors[0]["extensions"]["code"] in {"NOT_FOUND", "BAD_USER_INPUT"}
    live = by_id["live"]
    assert live[0]["payload"]["data"]["evaluationProgress"]["kind"] == "SNAPSHOT"
    assert live[-2]["payload"]["data"]["evaluationProgress"]["status"] == "CANCELLED"
    assert live[-1]["type"] == "complete"


async def test_subscribers_selecting_test_cases_share_one_lookup_per_case(
        settings, model_url):
    lookups: list[str] = []

    def count(record) -> None:
        if "WHERE tc.id = any" in record.query:
            lookups.append(record.query)

    own = settings.replace(redis_prefix=settings.redis_prefix + "-cases",
                           openai_base_url=model_url)
    async with running_stack(own, with_worker=False, query_logger=count) as api:
        test_set = await create_test_set(api, arithmetic_cases(30))
        evaluation_id = (await create_evaluation(api, test_set["id"]))["id"]
        followers = [asyncio.create_task(subscribe(api, "graphql-transport-ws",
                                                   evaluation_id, after=0))
                     for _ in range(10)]
        await asyncio.sleep(0.5)
        async with running_stack(own):  # a worker, from now on
            outcomes = await asyncio.gather(*followers)

    for events, error in outcomes:
        assert error is None
        cases = [e["result"]["testCase"]["id"] for e in events
                 if e["kind"] == "RESULT_ADDED"]
        assert len(set(cases)) == 30
    # Ten subscribers, thirty results: at most one lookup per case, not 300.
    assert 1 <= len(lookups) <= 30


MALFORMED = [
    pytest.param("not json{", id="not-json"),
    pytest.param("[1, 2]", id="a-list"),
    pytest.param("5", id="a-number"),
    pytest.param({"type": "{start}", "payload": "str", "id": "1"}, id="payload-text"),
    pytest.param({"type": "{start}", "payload": {"query": 5}, "id": "1"},
                 id="query-number"),
    pytest.param({"type": "{start}", "payload": {"query": "subscription { x }"}},
                 id="no-id"),
    pytest.param({"type": "{start}", "payload": None, "id": "1"}, id="payload-null"),
    pytest.param({"type": "{start}", "id": "1",
                  "payload": {"query": "subscription { x }", "variables": "x"}},
                 id="variables-text"),
    pytest.param({"type": "{start}", "id": "1",
                  "payload": {"query": "subscription {" + " " * 200_000 + "}"}},
                 id="document-too-long"),
]


@pytest.mark.parametrize("protocol", ["graphql-transport-ws", "graphql-ws"])
@pytest.mark.parametrize("message", MALFORMED)
async def test_a_malformed_message_closes_the_socket_with_4400_quietly(
        idle_stack, caplog, protocol, message):
    start = "subscribe" if protocol == "graphql-transport-ws" else "start"
    if isinstance(message, dict):
        message = json.dumps({**message, "type": start})
    if protocol == "graphql-ws" and message == "not json{":
        await _text_that_is_not_json_is_ignored_on_graphql_ws(idle_stack, caplog)
        return
    ws = await connect(idle_stack, protocol)
    with caplog.at_level(logging.WARNING):
        await ws.send(message)
        with pytest.raises(websockets.ConnectionClosed):
            async with asyncio.timeout(5):
                while True:
                    await ws.recv()

    assert ws.close_code == 4400
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def _text_that_is_not_json_is_ignored_on_graphql_ws(stack, caplog) -> None:
    # The older protocol has no close code for it; Strawberry skips such text.
    evaluation_id = await queued_evaluation(stack)
    ws = await connect(stack, "graphql-ws")
    try:
        with caplog.at_level(logging.WARNING):
            await ws.send("not json{")
            await ws.send(start_message("graphql-ws", "1", PROGRESS, id=evaluation_id))
            reply = json.loads(await ws.recv())
            while reply.get("id") != "1":  # keep-alive messages come between
                reply = json.loads(await ws.recv())
    finally:
        await ws.close()

    assert reply["payload"]["data"]["evaluationProgress"]["kind"] == "SNAPSHOT"
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_graphql_ws_client_that_never_initialises_is_closed(
        idle_stack, monkeypatch):
    from app import websocket_protocols

    monkeypatch.setattr(websocket_protocols, "INIT_TIMEOUT_S", 0.3)
    ws = await websockets.connect(idle_stack.ws_url, subprotocols=["graphql-ws"])
    with pytest.raises(websockets.ConnectionClosed):
        async with asyncio.timeout(5):
            await ws.recv()

    assert ws.close_code == 4408


async def test_followers_that_vanish_while_events_flow_log_no_error(
        settings, model_url, caplog):
    own = settings.replace(redis_prefix=settings.redis_prefix + "-vanish",
                           openai_base_url=model_url)
    async with running_stack(own) as stack:
        test_set = await create_test_set(stack, arithmetic_cases(150))
        evaluation_id = (await create_evaluation(stack, test_set["id"],
                                                 concurrency=2))["id"]
        with caplog.at_level(logging.WARNING):
            for protocol in ("graphql-transport-ws", "graphql-ws"):
                for _ in range(3):
                    ws = await connect(stack, protocol)
                    await ws.send(start_message(protocol, "1", PROGRESS,
                                                id=evaluation_id))
                    await ws.recv()
                    await asyncio.sleep(0.1)
                    ws.transport.abort()
            await stack.wait_for_status(evaluation_id, "COMPLETED")
            await asyncio.sleep(0.5)

    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_subscription_over_http_is_told_to_use_a_websocket(idle_stack):
    evaluation_id = await queued_evaluation(idle_stack)
    with pytest.raises(GraphQLError) as raised:
        await idle_stack.query(PROGRESS, id=evaluation_id)

    assert raised.value.code == "BAD_USER_INPUT"
    assert "websockets" in raised.value.message


async def test_a_repeated_graphql_ws_init_is_refused_and_leaves_no_task(idle_stack):
    tasks_before = len(asyncio.all_tasks())
    ws = await connect(idle_stack, "graphql-ws")
    await ws.send(json.dumps({"type": "connection_init",
                              "payload": idle_stack.init_payload}))
    with pytest.raises(websockets.ConnectionClosed):
        async with asyncio.timeout(5):
            while True:
                await ws.recv()
    async with asyncio.timeout(5):
        while len(asyncio.all_tasks()) > tasks_before:
            await asyncio.sleep(0.05)

    assert ws.close_code == 4429


@pytest.mark.parametrize("protocol, stop", [("graphql-transport-ws", "complete"),
                                            ("graphql-ws", "stop")])
async def test_a_stop_without_an_id_closes_the_socket_with_4400(
        idle_stack, caplog, protocol, stop):
    ws = await connect(idle_stack, protocol)
    with caplog.at_level(logging.WARNING):
        await ws.send(json.dumps({"type": stop}))
        with pytest.raises(websockets.ConnectionClosed):
            async with asyncio.timeout(5):
                while True:
                    await ws.recv()

    assert ws.close_code == 4400
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
