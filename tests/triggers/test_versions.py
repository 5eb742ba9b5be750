"""Function versions (content hashes) and aliases with weighted splits and rollback."""

from __future__ import annotations

import httpx

from tests.guests import wasm
from tests.triggers.helpers import deploy


async def test_versions_aliases_split_and_rollback(api: httpx.AsyncClient) -> None:
    v1 = (await deploy(api, "greet", wasm("echo")))["version"]
    v2 = (await deploy(api, "greet", wasm("hello")))["version"]
    assert v1 != v2 and len(v1) == 12
    assert (await deploy(api, "greet", wasm("hello")))["version"] == v2  # same content, same version
    listed = (await api.get("/v1/functions/greet/versions")).json()["versions"]
    assert {v["version"] for v in listed} == {v1, v2}

    pinned = await api.post(f"/v1/functions/greet/invoke?version={v1}", content=b"old code")
    assert pinned.content == b"old code"  # the echo, though hello is deployed last
    assert (await api.post("/v1/functions/greet/invoke")).content == b"hello from wasm\n"
    unknown = await api.post("/v1/functions/greet/invoke?version=000000000000")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "version_not_found"

    created = await api.put("/v1/functions/greet/aliases/live", json={"targets": [{"version": v1}]})
    assert created.status_code == 201
    assert (await api.post("/v1/functions/greet/invoke?alias=live", content=b"x")).content == b"x"

    split = {"targets": [{"version": v1, "weight": 1}, {"version": v2, "weight": 1}]}
    assert (await api.put("/v1/functions/greet/aliases/live", json=split)).status_code == 200
    outputs = {(await api.post("/v1/functions/greet/invoke?alias=live", content=b"x")).content for _ in range(30)}
    assert outputs == {b"x", b"hello from wasm\n"}  # both versions take traffic (each missed with p = 2^-30)

    rolled = await api.post("/v1/functions/greet/aliases/live/rollback")
    assert rolled.status_code == 200 and rolled.json()["targets"] == [{"version": v1, "weight": 1}]
    outputs = {(await api.post("/v1/functions/greet/invoke?alias=live", content=b"x")).content for _ in range(10)}
    assert outputs == {b"x"}
    assert (await api.get("/v1/functions/greet/aliases")).json()["aliases"][0]["previous"] == split["targets"]

    bad = await api.put("/v1/functions/greet/aliases/live", json={"targets": [{"version": "ffffffffffff"}]})
    assert bad.status_code == 404
    assert (await api.post("/v1/functions/greet/invoke?alias=nope")).json()["error"]["code"] == "alias_not_found"
    assert (await api.delete("/v1/functions/greet/aliases/live")).status_code == 204
