"""The OpenAPI document covers every routed operation, is a valid, self-contained OpenAPI 3.1 document,
and says what the gateway answers.

The document's own checks build it from the route table alone; the last test
compares it with real answers of the gateway (in process, on a NATS server).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from jsonschema import Draft202012Validator
from nats.js import JetStreamContext
from openapi_spec_validator import validate
from starlette.routing import Route

from soulbox.core import names
from soulbox.core.bus import Buckets
from soulbox.core.codec import encode
from soulbox.core.schemas import (
    DeadLetter,
    FunctionAlias,
    FunctionSpec,
    InvocationError,
    InvocationRequest,
    Status,
)
from soulbox.core.settings import Settings
from soulbox.events import run
from soulbox.gateway import (
    openapi,
    openapi_admin,
    openapi_identity,
    openapi_limits,
    openapi_logs,
    openapi_secrets,
    openapi_triggers,
)
from soulbox.gateway.app import create_app, routes
from soulbox.triggers.signatures import sign_hmac

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi.openapi_document(routes())


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield path, method, op


def refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def test_every_routed_method_is_documented(document: dict[str, Any]) -> None:
    missing = [
        f"{method} {route.path}"
        for route in routes()
        if isinstance(route, Route) and route.include_in_schema
        for method in sorted(route.methods or ())
        if method != "HEAD" and method.lower() not in document["paths"].get(route.path, {})
    ]
    assert missing == []


def test_every_operation_is_routed(document: dict[str, Any]) -> None:
    # An operation whose route is gone is dropped from the document: the table must not keep it.
    routed = {
        (route.path, method.lower())
        for route in routes()
        if isinstance(route, Route) and route.include_in_schema
        for method in route.methods or ()
    }
    tables = (
        openapi.OPERATIONS,
        openapi.sandbox_api.OPERATIONS,
        openapi_triggers.OPERATIONS,
        openapi_admin.OPERATIONS,
        openapi_secrets.OPERATIONS,
        openapi_logs.OPERATIONS,
        openapi_identity.OPERATIONS,
        openapi_limits.OPERATIONS,
    )
    merged = {key for table in tables for key in table}
    assert sorted(set(merged) - routed) == []
    assert {(path, method) for path, method, _ in operations(document)} == merged


def test_every_ref_resolves(document: dict[str, Any]) -> None:
    found = list(refs(document))
    assert found
    schemas = document["components"]["schemas"]
    unresolved = [r for r in found if not r.startswith("#/components/schemas/") or r.rsplit("/", 1)[1] not in schemas]
    assert unresolved == []


def test_components_do_not_clash() -> None:
    # Models are merged by class name (their nested models too): one name must mean one schema.
    seen: dict[str, Any] = {}
    for model in openapi._MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, part in {**schema.pop("$defs", {}), model.__name__: schema}.items():
            assert seen.setdefault(name, part) == part, f"two different schemas named {name}"


def test_path_parameters_are_declared(document: dict[str, Any]) -> None:
    for path, method, op in operations(document):
        in_template = set(re.findall(r"{([^}:]+)(?::[^}]*)?}", path))
        params = [*document["paths"][path].get("parameters", []), *op.get("parameters", [])]
        declared = {p["name"] for p in params if p.get("in") == "path"}
        assert declared == in_template, f"{method} {path}"
        assert all(p["required"] is True for p in params if p.get("in") == "path"), f"{method} {path}"


def test_errors_are_error_responses(document: dict[str, Any]) -> None:
    for path, method, op in operations(document):
        assert op["responses"], f"{method} {path}"
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")):
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, f"{method} {path} {status}"


def test_new_operations_reference_their_models(document: dict[str, Any]) -> None:
    paths = document["paths"]
    body = paths["/v1/triggers"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/TriggerIn"}
    alias_body = paths["/v1/functions/{name}/aliases/{alias}"]["put"]["requestBody"]["content"]["application/json"]
    assert alias_body["schema"] == {"$ref": "#/components/schemas/AliasIn"}
    assert set(paths["/v1/triggers/{trigger_id}"]) == {"get", "put", "delete"}
    assert set(paths["/v1/hooks/{tenant}/{trigger_id}"]["post"]["responses"]) >= {"202", "401", "404"}
    assert "trigger_not_found" in paths["/v1/hooks/{tenant}/{trigger_id}"]["post"]["responses"]["404"]["description"]
    schemas = document["components"]["schemas"]
    assert schemas["TriggerList"]["properties"]["triggers"]["items"] == {"$ref": "#/components/schemas/TriggerOut"}


def test_alias_out_is_the_stored_alias_without_tenant() -> None:
    # aliases.py answers with FunctionAlias.model_dump(exclude={"v", "tenant"}); AliasOut documents that.
    assert set(openapi_admin.AliasOut.model_fields) == set(FunctionAlias.model_fields) - {"v", "tenant"}


def test_valid_openapi_3_1(document: dict[str, Any]) -> None:
    validate(document)  # a dev dependency, so this never skips
    assert document["openapi"].startswith("3.1")


# The documented shapes, checked against real answers: the gateway in process on a real NATS server.


class Documented:
    """Asserts each answer's status is documented for its operation and its JSON body fits the schema."""

    def __init__(self, client: httpx.AsyncClient, document: dict[str, Any]) -> None:
        self.client = client
        self.document = document
        self.seen: set[tuple[str, str, int]] = set()

    async def call(self, method: str, template: str, path: str, status: int, **kwargs: Any) -> Any:
        response = await self.client.request(method, path, **kwargs)
        assert response.status_code == status, f"{method} {path}: {response.status_code} {response.text}"
        documented = self.document["paths"][template][method.lower()]["responses"]
        assert str(status) in documented, f"{method} {template} answered an undocumented {status}"
        self.seen.add((method.lower(), template, status))
        content = documented[str(status)].get("content", {})
        if "application/json" not in content:
            return None
        schema = {"components": self.document["components"], **content["application/json"]["schema"]}
        body = response.json()
        Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER).validate(body)
        return body


@pytest_asyncio.fixture
async def gateway(
    settings: Settings, buckets: Buckets, js: JetStreamContext, document: dict[str, Any]
) -> AsyncIterator[Documented]:
    stop = asyncio.Event()
    audit = asyncio.create_task(run(settings, stop))  # the events process chains the erasure's tombstone
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        yield Documented(client, document)
    stop.set()
    await asyncio.wait_for(audit, 15)


def _spec(version: str) -> FunctionSpec:
    return FunctionSpec(tenant="default", name="resize", artifact="0" * 64, artifact_size=1, version=version)


async def test_answers_fit_the_document(gateway: Documented, buckets: Buckets, js: JetStreamContext) -> None:
    old, new = "a" * 12, "b" * 12
    for spec in (_spec(old), _spec(new)):
        await buckets.versions.put(names.version_key("default", "resize", spec.version or ""), encode(spec))
    await buckets.functions.put(names.function_key("default", "resize"), encode(_spec(new)))
    g = gateway

    hook = {"id": "on-push", "function": "resize", "kind": "webhook", "webhook": {"scheme": "hmac"}}
    created = await g.call("POST", "/v1/triggers", "/v1/triggers", 201, json=hook)
    await g.call("POST", "/v1/triggers", "/v1/triggers", 409, json=hook)
    await g.call("POST", "/v1/triggers", "/v1/triggers", 400, json={**hook, "kind": "cron"})
    await g.call("POST", "/v1/triggers", "/v1/triggers", 404, json={**hook, "id": "x", "function": "nope"})
    await g.call("POST", "/v1/triggers", "/v1/triggers", 413, content=b" " * (64 * 1024 + 1))
    assert (await g.call("GET", "/v1/triggers", "/v1/triggers", 200))["triggers"][0]["id"] == "on-push"
    one = "/v1/triggers/{trigger_id}"
    assert "secret" not in (await g.call("GET", one, "/v1/triggers/on-push", 200))["webhook"]
    await g.call("GET", one, "/v1/triggers/absent", 404)
    await g.call("PUT", one, "/v1/triggers/on-push", 200, json={**hook, "enabled": True})
    await g.call("PUT", one, "/v1/triggers/other", 400, json=hook)
    tick = {"id": "tick", "function": "resize", "kind": "cron", "cron": {"expression": "* * * * *"}}
    await g.call("PUT", one, "/v1/triggers/tick", 201, json=tick)
    await g.call("DELETE", one, "/v1/triggers/tick", 204)
    await g.call("DELETE", one, "/v1/triggers/tick", 404)

    hooks = "/v1/hooks/{tenant}/{trigger_id}"
    await g.call("POST", hooks, "/v1/hooks/default/on-push", 401, content=b"{}")
    stamp = int(time.time())
    signed = {
        "X-Soulbox-Timestamp": str(stamp),
        "X-Soulbox-Signature": sign_hmac(created["webhook"]["secret"], b"{}", stamp),
    }
    await g.call("POST", hooks, "/v1/hooks/default/on-push", 202, content=b"{}", headers=signed)
    await g.call("POST", hooks, "/v1/hooks/default/absent", 404, content=b"{}")

    base = "/v1/functions/{name}"
    versions = await g.call("GET", f"{base}/versions", "/v1/functions/resize/versions", 200)
    assert {v["version"] for v in versions["versions"]} == {old, new}
    await g.call("GET", f"{base}/versions", "/v1/functions/nope/versions", 404)
    await g.call("GET", f"{base}/versions", "/v1/functions/No!/versions", 400)
    alias, at = f"{base}/aliases/{{alias}}", "/v1/functions/resize/aliases/live"
    await g.call("PUT", alias, at, 201, json={"targets": [{"version": old}]})
    await g.call("POST", f"{alias}/rollback", f"{at}/rollback", 409)
    split = {"targets": [{"version": old, "weight": 90}, {"version": new, "weight": 10}]}
    await g.call("PUT", alias, at, 200, json=split)
    await g.call("PUT", alias, at, 404, json={"targets": [{"version": "c" * 12}]})
    await g.call("PUT", alias, at, 400, json={"targets": []})
    rolled = await g.call("POST", f"{alias}/rollback", f"{at}/rollback", 200)
    assert rolled["targets"] == [{"version": old, "weight": 1}]
    listed = await g.call("GET", f"{base}/aliases", "/v1/functions/resize/aliases", 200)
    assert [a["name"] for a in listed["aliases"]] == ["live"]
    await g.call("DELETE", alias, at, 204)
    await g.call("DELETE", alias, at, 404)
    await g.call("POST", f"{alias}/rollback", f"{at}/rollback", 404)

    request = InvocationRequest(id="dead-0001", tenant="default", function=_spec(new), input=b"again")
    letter = DeadLetter(
        request=request, attempts=3, status=Status.FAILED, error=InvocationError(kind="exit", message="1")
    )
    await js.publish(names.dead_letter_subject("default", "dead-0001"), encode(letter))
    dead = await g.call("GET", "/v1/dead-letters", "/v1/dead-letters", 200)
    assert [d["id"] for d in dead["dead_letters"]] == ["dead-0001"]
    await g.call("GET", "/v1/dead-letters", "/v1/dead-letters?limit=0", 400)
    replay = "/v1/dead-letters/{invocation_id}/replay"
    await g.call("POST", replay, "/v1/dead-letters/dead-0001/replay", 202)
    await g.call("POST", replay, "/v1/dead-letters/dead-0001/replay", 404)

    await g.call("GET", "/v1/audit/verify", "/v1/audit/verify", 200)
    export = await g.call("GET", "/v1/tenants/{tenant}/export", "/v1/tenants/default/export", 200)
    assert [f["name"] for f in export["functions"]] == ["resize"]
    await g.call("GET", "/v1/tenants/{tenant}/export", "/v1/tenants/default/export?to=s3", 400)
    await g.call("GET", "/v1/tenants/{tenant}/export", "/v1/tenants/Bad!/export", 400)
    erased = await g.call("DELETE", "/v1/tenants/{tenant}/data", "/v1/tenants/default/data", 200)
    assert erased["deleted"]["functions"] == 1
    new_operations = {**openapi_triggers.OPERATIONS, **openapi_admin.OPERATIONS}
    assert {(template, method) for method, template, _ in g.seen} == set(new_operations)
