"""The OpenAPI document covers every routed operation, and is a valid, self-contained OpenAPI 3.1 document."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from openapi_spec_validator import validate
from starlette.routing import Route

from soulbox.core.schemas import FunctionAlias
from soulbox.gateway import openapi, openapi_admin, openapi_triggers
from soulbox.gateway.app import routes

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
    tables = (openapi.OPERATIONS, openapi.sandbox_api.OPERATIONS, openapi_triggers.OPERATIONS, openapi_admin.OPERATIONS)
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
    assert set(paths["/v1/hooks/{trigger_id}"]["post"]["responses"]) >= {"202", "401", "404"}
    assert "trigger_not_found" in paths["/v1/hooks/{trigger_id}"]["post"]["responses"]["404"]["description"]
    schemas = document["components"]["schemas"]
    assert schemas["TriggerList"]["properties"]["triggers"]["items"] == {"$ref": "#/components/schemas/TriggerOut"}


def test_alias_out_is_the_stored_alias_without_tenant() -> None:
    # aliases.py answers with FunctionAlias.model_dump(exclude={"v", "tenant"}); AliasOut documents that.
    assert set(openapi_admin.AliasOut.model_fields) == set(FunctionAlias.model_fields) - {"v", "tenant"}


def test_valid_openapi_3_1(document: dict[str, Any]) -> None:
    validate(document)  # a dev dependency, so this never skips
    assert document["openapi"].startswith("3.1")
