"""What hardens a shared deployment: CORS and websocket origins, introspection
and GraphiQL switches, authentication that is off only when asked, templates
that cannot reach Python, and secrets that never reach a log or a response.

(Query depth, alias, token, document and body limits are in
test_api_limits.py; who may do what is in test_access.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid

import httpx2
import pytest
import websockets

from app import auth
from app.settings import Settings, SettingsError
from app.store import api_keys as key_store
from tests.factories import CREATE_EVALUATION, CREATE_TEST_SET, arithmetic_cases
from tests.fake_model import Answer, FakeModel, Status, fake_model
from tests.stack import make_key, running_stack

SPA = "https://app.example.test"
ELSEWHERE = "https://evil.example.test"


def _own(settings: Settings, name: str, **changes) -> Settings:
    return settings.replace(redis_prefix=f"{settings.redis_prefix}-{name}", **changes)


# --- CORS and websocket origins -----------------------------------------------


async def test_cors_preflight_is_answered_for_listed_origins_only(settings):
    async with running_stack(_own(settings, "cors", cors_origins=(SPA,)),
                             with_worker=False) as stack:
        def preflight(origin: str):
            return stack.http.options(stack.graphql_url, headers={
                "Origin": origin, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type"})

        allowed, refused = await preflight(SPA), await preflight(ELSEWHERE)
        answered = await stack.http.post(stack.graphql_url, headers={"Origin": SPA},
                                         json={"query": "{ me { role } }"})
        unanswered = await stack.http.post(
            stack.graphql_url, headers={"Origin": ELSEWHERE},
            json={"query": "{ me { role } }"})
        async with httpx2.AsyncClient() as keyless:
            unauthenticated = await keyless.post(
                stack.graphql_url, headers={"Origin": SPA},
                json={"query": "{ me { role } }"})

    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == SPA
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers
    assert answered.headers["access-control-allow-origin"] == SPA
    assert "access-control-allow-origin" not in unanswered.headers
    # A browser shows the page why it was refused.
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["access-control-allow-origin"] == SPA


async def test_no_origin_is_allowed_by_default(stack):
    response = await stack.http.options(stack.graphql_url, headers={
        "Origin": SPA, "Access-Control-Request-Method": "POST"})

    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


async def test_websockets_from_unlisted_browser_origins_are_refused(settings):
    async with running_stack(_own(settings, "ws-origin", cors_origins=(SPA,)),
                             with_worker=False) as stack:
        host = stack.url.removeprefix("http://")
        outcomes = {}
        for origin in (SPA, ELSEWHERE, f"http://{host}", None):
            headers = {"Origin": origin} if origin else {}
            try:
                async with websockets.connect(
                        stack.ws_url, subprotocols=["graphql-transport-ws"],
                        additional_headers=headers) as ws:
                    await ws.send(json.dumps({"type": "connection_init",
                                              "payload": stack.init_payload}))
                    outcomes[origin] = json.loads(await ws.recv())["type"]
            except websockets.InvalidStatus as refused:
                outcomes[origin] = refused.response.status_code

    assert outcomes == {SPA: "connection_ack", ELSEWHERE: 403,
                        f"http://{host}": "connection_ack", None: "connection_ack"}


def test_origins_must_be_listed_one_by_one():
    parsed = Settings.from_env({"ASSAY_CORS_ORIGINS": f" {SPA}/ , http://localhost:5173"})

    assert parsed.cors_origins == (SPA, "http://localhost:5173")
    # As browsers send it: lower case, no port of the scheme's own.
    assert Settings.from_env({"ASSAY_CORS_ORIGINS": "HTTPS://App.Example.Test:443,"
                              "http://x.test:80,https://[::1]:8443"}).cors_origins \
        == (SPA, "http://x.test", "https://[::1]:8443")
    for bad in ("*", "app.example.test", "https://app.example.test/path", "ftp://x",
                "http://x.test:abc", "http://x.test:99999"):
        with pytest.raises(SettingsError, match="ASSAY_CORS_ORIGINS"):
            Settings.from_env({"ASSAY_CORS_ORIGINS": bad})


# --- Introspection, GraphiQL and authentication switches -------------------------

INTROSPECTION = "{ __schema { queryType { name } } }"


async def test_introspection_and_graphiql_can_each_be_switched_off(settings, stack):
    on_schema = await stack.query(INTROSPECTION)
    async with running_stack(_own(settings, "closed", introspection=False,
                                  graphiql=False), with_worker=False) as closed:
        with pytest.raises(AssertionError) as refused:
            await closed.query(INTROSPECTION)
        still_works = await closed.query("{ me { role } }")
        page = await closed.http.get(closed.graphql_url,
                                     headers={"Accept": "text/html"})

    assert on_schema == {"__schema": {"queryType": {"name": "Query"}}}
    assert refused.value.code == "BAD_USER_INPUT"
    assert "introspection" in refused.value.message.lower()
    assert still_works == {"me": {"role": "ADMIN"}}
    assert page.status_code == 404


async def test_graphiql_itself_is_served_without_a_key_but_nothing_else_is(stack):
    async with httpx2.AsyncClient() as keyless:
        page = await keyless.get(stack.graphql_url, headers={"Accept": "text/html"})
        query = await keyless.get(stack.graphql_url,
                                  params={"query": "{ me { role } }"},
                                  headers={"Accept": "text/html"})

    assert page.status_code == 200 and "graphiql" in page.text.lower()
    assert query.status_code == 401
    assert query.headers["www-authenticate"] == "Bearer"
    assert query.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_authentication_is_off_only_when_asked_and_says_so_loudly(
        settings, caplog):
    assert Settings.from_env({}).auth_enabled
    with pytest.raises(SettingsError, match="ASSAY_AUTH must be on or off"):
        Settings.from_env({"ASSAY_AUTH": "maybe"})

    caplog.set_level(logging.WARNING, logger="app.server")
    async with running_stack(_own(settings, "open", auth_enabled=False),
                             with_worker=False) as stack:
        async with httpx2.AsyncClient() as keyless:
            response = await keyless.post(stack.graphql_url,
                                          json={"query": "{ me { workspace role } }"})
        async with websockets.connect(stack.ws_url,
                                      subprotocols=["graphql-transport-ws"]) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
            ack = json.loads(await ws.recv())

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("AUTHENTICATION IS OFF" in message for message in warnings)
    assert response.json() == {"data": {"me": {"workspace": "default",
                                                "role": "ADMIN"}}}
    assert ack["type"] == "connection_ack"


# --- Templates cannot reach Python, files or the environment ----------------------

ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ question.__class__ }}",
    "{{ cycler.__init__.__globals__.os.environ }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ self._TemplateReference__context }}",
    "{{ self }}",
    "{% include '/etc/passwd' %}",
    "{% import 'os' as os %}",
    "{% extends '/etc/passwd' %}",
    "{% from '/etc/passwd' import x %}",
    "{{ question|attr('__class__') }}",
    "{{ question|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
    "{{ question['__class__'] }}",
    "{{ [question]|map(attribute='__class__')|list }}",
    "{% set x = question.__class__ %}{{ x }}",
    "{% for c in ().__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{{ namespace.__init__ }}",
    "{{ range.__self__ }}",
    "{{ dict(a=1) }}",
    # Only the input tells what these reach: caught by trying the template on
    # the test set's first cases.
    "{% set name = '__cla' ~ 'ss__' %}{{ question[name] }}",
    "{{ question[question[:0] ~ '__class__'] }}",
    "{{ 'x{0.__class__}'.format(question) }}",
    "{{ '{q.__class__}'.format_map({'q': question}) }}",
]


@pytest.mark.parametrize("template", ESCAPES)
async def test_templates_that_reach_for_python_are_refused_at_create(
        stack, pool, template):
    test_set = (await stack.query(CREATE_TEST_SET, input={
        "name": f"escapes {uuid.uuid4().hex[:8]}",
        "testCases": arithmetic_cases(2)}))["createTestSet"]
    before = await pool.fetchval("SELECT count(*) FROM evaluations")

    with pytest.raises(AssertionError) as refused:
        await stack.query(CREATE_EVALUATION, input={
            "testSetId": test_set["id"], "model": "m", "promptTemplate": template,
            "scorer": {"type": "NUMERIC"}})

    assert refused.value.code == "BAD_USER_INPUT"
    assert refused.value.message.startswith("input.promptTemplate: ")
    assert await pool.fetchval("SELECT count(*) FROM evaluations") == before


# --- Secrets -------------------------------------------------------------------

MODEL_CREDENTIAL = "sk-model-credential-" + uuid.uuid4().hex


async def test_no_key_or_model_credential_is_ever_logged_or_answered(settings, caplog):
    """One of everything that handles a key or the model credential, with every
    logger at DEBUG: the API's requests and refusals, websockets, key
    management, and a run whose model endpoint refuses the credential."""
    caplog.set_level(logging.DEBUG)
    own = _own(settings, "secrets", openai_api_key=MODEL_CREDENTIAL)
    async with fake_model() as model:
        model.script("refuse me", Status(401))
        async with running_stack(own.replace(openai_base_url=model.base_url)) as stack:
            workspace = f"secrets-{uuid.uuid4().hex[:8]}"
            admin = await make_key(own, workspace, "admin")
            revoked = await make_key(own, workspace, "viewer")
            pool = stack.app.state.services.pool
            revoked_id = (await auth.authenticate(pool, revoked)).key_id
            await key_store.revoke_key(pool, revoked_id)
            unknown = auth.KEY_PREFIX + uuid.uuid4().hex
            secrets = [admin, revoked, unknown, MODEL_CREDENTIAL]

            answers, made = await _use_everything(stack, model, admin, revoked,
                                                  unknown)
            api_url = stack.url
            secrets.append(made)

    # The test's own clients log what they send to the API (frames, URLs);
    # the worker's client to the model is kept in.
    logged = "\n".join(_everything_in(record) for record in caplog.records
                       if not _is_the_tests_own(record, api_url))
    assert len(caplog.records) > 50, "the capture saw the API and the worker"
    for secret in secrets:
        assert secret not in logged
        assert secret[len(auth.KEY_PREFIX):] not in logged
        assert all(secret not in answer for answer in answers)


async def _use_everything(stack, model: FakeModel, admin: str, revoked: str,
                          unknown: str) -> tuple[list[str], str]:
    """Everything a client does with keys; the raw answers (but the one that
    is meant to hold a new key) and that new key."""
    answers = []

    async def post(key: str | None, document: str, **variables) -> dict:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with httpx2.AsyncClient(timeout=30) as http:
            response = await http.post(stack.graphql_url, headers=headers, json={
                "query": document, "variables": variables})
        answers.append(response.text)
        return response.json()

    for key in (revoked, unknown, f"{unknown} trailing", None):
        await post(key, "{ me { role } }")
    # Keys where they do not belong: in the URL.
    async with httpx2.AsyncClient(timeout=30) as http:
        answers.append((await http.get(stack.graphql_url, params={
            "query": "{ me { role } }", "apiKey": admin})).text)
    async with websockets.connect(f"{stack.ws_url}?apiKey={admin}",
                                  subprotocols=["graphql-transport-ws"]) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
        with contextlib.suppress(websockets.ConnectionClosed):
            answers.append(await ws.recv())
    for payload in ({"authorization": f"Bearer {revoked}"}, {"apiKey": unknown}):
        async with websockets.connect(stack.ws_url,
                                      subprotocols=["graphql-ws"]) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
            answers.append(await ws.recv())

    cases = [{"input": {"question": question}, "expectedOutput": "42"}
             for question in ("fine", "refuse me", "fine too")]
    test_set = (await post(admin, CREATE_TEST_SET, input={
        "name": "secrets", "testCases": cases}))["data"]["createTestSet"]
    model.default = Answer("42")
    evaluation = (await post(admin, CREATE_EVALUATION, input={
        "testSetId": test_set["id"], "model": "m", "promptTemplate": "{{ question }}",
        "scorer": {"type": "CONTAINS"}, "concurrency": 1}))["data"]["createEvaluation"]
    async with websockets.connect(stack.ws_url,
                                  subprotocols=["graphql-transport-ws"]) as ws:
        await ws.send(json.dumps({"type": "connection_init",
                                  "payload": {"apiKey": admin}}))
        answers.append(await ws.recv())
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {
            "query": "subscription($id: ID!) { evaluationProgress(evaluationId: $id)"
                     " { kind status result { output error } } }",
            "variables": {"id": evaluation["id"]}}}))
        while True:
            message = await ws.recv()
            answers.append(message)
            if json.loads(message)["type"] == "complete":
                break
    await post(admin, "query($id: ID!) { evaluation(id: $id) { status error"
               " results { edges { node { output error } } } } }", id=evaluation["id"])
    assert "unauthorized" in answers[-1] or "credentials" in answers[-1]

    made = await post(admin, "mutation { createApiKey(input: {role: EDITOR}) {"
                      " key apiKey { id } } }")
    answers.pop()
    await post(admin, "mutation($id: ID!) { revokeApiKey(id: $id) { id } }",
               id=made["data"]["createApiKey"]["apiKey"]["id"])
    await post(admin, "{ apiKeys { id keyStart status } me { role } }")
    return answers, made["data"]["createApiKey"]["key"]


def _is_the_tests_own(record: logging.LogRecord, api_url: str) -> bool:
    return (record.name.startswith("websockets.client")
            or (record.name.startswith(("httpx", "httpcore"))
                and api_url in _everything_in(record)))


def _everything_in(record: logging.LogRecord) -> str:
    parts = [record.getMessage(), repr(record.args)]
    if record.exc_info:
        parts.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(parts)


async def test_a_client_that_leaves_mid_request_is_no_error(stack, caplog):
    caplog.set_level(logging.INFO)
    host, port = stack.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /graphql HTTP/1.1\r\nHost: x\r\n"
                 b"Authorization: Bearer " + stack.key.encode() + b"\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                 b'{"query":')
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.3)

    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert "a client left before sending its whole request" in caplog.text
