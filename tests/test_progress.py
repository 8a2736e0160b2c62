"""evaluationProgress over real websockets, on both subprotocols."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets

from tests.factories import arithmetic_cases, create_evaluation, create_test_set

PROGRESS = """
subscription($id: ID!, $after: Int) {
  evaluationProgress(evaluationId: $id, afterSequence: $after) {
    sequence kind evaluationId status totalCases completedCases failedCases score
    result { id passed score testCase { id } }
  }
}"""

PROTOCOLS = ["graphql-transport-ws", "graphql-ws"]
_START = {"graphql-transport-ws": "subscribe", "graphql-ws": "start"}
_NEXT = {"graphql-transport-ws": "next", "graphql-ws": "data"}


async def subscribe(stack, protocol: str, evaluation_id: str,
                    after: int | None = None, *, stop_after: int | None = None,
                    timeout_s: float = 60, document: str = PROGRESS,
                    ) -> tuple[list[dict[str, Any]], Any]:
    """Events of one subscription until it completes (or `stop_after` events,
    when the client leaves); returns them and any error payload."""
    events: list[dict[str, Any]] = []
    async with websockets.connect(stack.ws_url, subprotocols=[protocol]) as ws:
        await ws.send(json.dumps({"type": "connection_init",
                                  "payload": stack.init_payload}))
        while json.loads(await ws.recv())["type"] != "connection_ack":
            pass
        await ws.send(json.dumps({
            "id": "1", "type": _START[protocol],
            "payload": {"query": document,
                        "variables": {"id": evaluation_id, "after": after}}}))
        async with asyncio.timeout(timeout_s):
            while True:
                message = json.loads(await ws.recv())
                if message["type"] == _NEXT[protocol]:
                    payload = message["payload"]
                    if payload.get("errors"):
                        return events, payload["errors"]
                    events.append(payload["data"]["evaluationProgress"])
                    if stop_after is not None and len(events) >= stop_after:
                        return events, None
                elif message["type"] == "error":
                    return events, message["payload"]
                elif message["type"] == "complete":
                    return events, None


def assert_contiguous(events: list[dict[str, Any]], first_sequence: int) -> None:
    sequences = [event["sequence"] for event in events]
    assert sequences == list(range(first_sequence, first_sequence + len(events)))


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_subscriber_sees_a_snapshot_then_every_event_once_in_order(
        stack, protocol):
    test_set = await create_test_set(stack, arithmetic_cases(60))
    created = await create_evaluation(stack, test_set["id"], concurrency=3)

    events, error = await subscribe(stack, protocol, created["id"])

    assert error is None
    snapshot, rest = events[0], events[1:]
    assert snapshot["kind"] == "SNAPSHOT"
    assert_contiguous(rest, snapshot["sequence"] + 1)
    results = [e for e in rest if e["kind"] == "RESULT_ADDED"]
    assert len(results) == 60 - snapshot["completedCases"]
    case_ids = [e["result"]["testCase"]["id"] for e in results]
    assert len(set(case_ids)) == len(case_ids)
    assert rest[-1]["kind"] == "STATUS_CHANGED"
    assert rest[-1]["status"] == "COMPLETED"
    assert rest[-1]["completedCases"] == 60
    for before, after in zip(rest, rest[1:]):
        grew = after["completedCases"] - before["completedCases"]
        assert grew == (1 if after["kind"] == "RESULT_ADDED" else 0)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_late_subscriber_gets_the_final_snapshot_and_the_stream_ends(
        stack, protocol):
    test_set = await create_test_set(stack, arithmetic_cases(10))
    created = await create_evaluation(stack, test_set["id"])
    await stack.wait_for_status(created["id"], "COMPLETED")

    events, error = await subscribe(stack, protocol, created["id"], timeout_s=10)

    assert error is None
    assert len(events) == 1
    assert events[0]["kind"] == "SNAPSHOT"
    assert events[0]["status"] == "COMPLETED"
    assert events[0]["completedCases"] == 10
    # IN_PROGRESS, ten results, COMPLETED.
    assert events[0]["sequence"] == 12


async def test_resuming_with_after_sequence_replays_exactly_the_rest(stack):
    test_set = await create_test_set(stack, arithmetic_cases(30))
    created = await create_evaluation(stack, test_set["id"], concurrency=2)

    head, _ = await subscribe(stack, "graphql-transport-ws", created["id"],
                              stop_after=8)
    last_seen = head[-1]["sequence"]
    tail, error = await subscribe(stack, "graphql-transport-ws", created["id"],
                                  after=last_seen)
    everything, _ = await subscribe(stack, "graphql-transport-ws", created["id"],
                                    after=0)

    assert error is None
    assert tail[0]["kind"] != "SNAPSHOT"
    assert_contiguous(tail, last_seen + 1)
    assert tail[-1]["status"] == "COMPLETED"
    assert_contiguous(everything, 1)
    assert everything[-len(tail):] == tail
    assert [e["kind"] for e in everything].count("RESULT_ADDED") == 30


async def test_several_subscribers_follow_one_run_and_one_leaving_disturbs_none(
        stack):
    test_set = await create_test_set(stack, arithmetic_cases(80))
    created = await create_evaluation(stack, test_set["id"], concurrency=2)

    followers = [subscribe(stack, "graphql-transport-ws", created["id"], after=0)
                 for _ in range(3)]
    leaver = subscribe(stack, "graphql-ws", created["id"], after=0, stop_after=3)
    *finished, (left, _) = await asyncio.gather(*followers, leaver)

    assert len(left) == 3
    for events, error in finished:
        assert error is None
        assert_contiguous(events, 1)
        assert events[-1]["status"] == "COMPLETED"
        assert events == finished[0][0]
    assert (await stack.wait_for_status(created["id"], "COMPLETED"))[
        "completedCases"] == 80


@pytest.mark.parametrize(("evaluation_id", "after", "code"), [
    ("ev_999999999", None, "NOT_FOUND"),
    ("not-an-id", None, "BAD_USER_INPUT"),
    (None, -1, "BAD_USER_INPUT"),
    (None, 10_000, "BAD_USER_INPUT"),
])
async def test_bad_subscriptions_end_with_a_coded_error(stack, evaluation_id, after,
                                                         code):
    if evaluation_id is None:
        test_set = await create_test_set(stack, arithmetic_cases(2))
        evaluation_id = (await create_evaluation(stack, test_set["id"]))["id"]
        await stack.wait_for_status(evaluation_id, "COMPLETED")

    events, error = await subscribe(stack, "graphql-transport-ws", evaluation_id,
                                    after=after, timeout_s=10)

    assert events == []
    assert error[0]["extensions"]["code"] == code


async def test_a_third_party_client_follows_a_run_over_graphql_transport_ws(stack):
    from gql import Client, GraphQLRequest
    from gql.transport.websockets import WebsocketsTransport

    test_set = await create_test_set(stack, arithmetic_cases(25))
    created = await create_evaluation(stack, test_set["id"])
    transport = WebsocketsTransport(url=stack.ws_url,
                                    subprotocols=["graphql-transport-ws"],
                                    init_payload=stack.init_payload)

    events = []
    async with Client(transport=transport) as session:
        request = GraphQLRequest(PROGRESS, variable_values={"id": created["id"]})
        async for data in session.subscribe(request):
            events.append(data["evaluationProgress"])

    assert events[0]["kind"] == "SNAPSHOT"
    assert_contiguous(events[1:], events[0]["sequence"] + 1)
    assert events[-1]["status"] == "COMPLETED"
    assert sum(e["kind"] == "RESULT_ADDED" for e in events) == (
        25 - events[0]["completedCases"])


def test_an_event_is_converted_once_for_the_row_every_subscriber_shares():
    from app.resolvers.progress import _ConvertedEvents
    from app.store.rows import ProgressEventRow

    def row(score: float | None) -> ProgressEventRow:
        return ProgressEventRow(evaluation_id=7, sequence=3, kind="STATUS_CHANGED",
                                status="IN_PROGRESS", total_cases=2,
                                completed_cases=1, failed_cases=0, score=score,
                                result=None)

    converted = _ConvertedEvents(max_events=2)
    live = row(1.0)
    # The same row (as the hub hands it to each subscriber): one conversion.
    assert converted.event(live) is converted.event(live)
    # The same event read again, changed since: converted anew, never stale.
    replayed = row(None)
    assert converted.event(replayed).score is None
    assert converted.event(live).score == 1.0
