"""``/v1/functions``: deploy, list, read and delete functions."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

from pydantic import TypeAdapter, ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from soulbox.core.errors import InvalidRequest, PayloadTooLarge
from soulbox.core.schemas import NAME_RE, Limits, Permissions, RetryPolicy, Runtime, Tier
from soulbox.core.settings import Settings
from soulbox.runtimes.catalog import CATALOG
from soulbox.runtimes.js.bundle import BuildFailed, Bundler, dependencies_of
from soulbox.runtimes.js.config import ENV_NAME_RE, FunctionConfig
from soulbox.runtimes.js.config import Permissions as JsPermissions
from soulbox.runtimes.js.detect import ABSTRACT as ABSTRACT_JS
from soulbox.runtimes.js.detect import SUFFIXES as JS_SUFFIXES
from soulbox.runtimes.js.detect import Detection, detect_runtime
from soulbox.runtimes.wasm.grants import GrantRefused, check_read_grants

from .models import FunctionList, FunctionOut
from .platform import platform
from .principal import principal


def function_name(request: Request) -> str:
    name: str = request.path_params["name"]
    if not NAME_RE.match(name):
        raise InvalidRequest(
            f"invalid function name {name!r}: use 1-63 of a-z, 0-9, '-' and '_', starting with a letter or digit"
        )
    return name


def _runtime(value: object, filename: str | None) -> Runtime | None:
    """The runtime named, or None when Bun or Deno is to be detected from the code (``js``/``ts``,
    or no runtime and a JS/TS file name)."""
    if value is None or value == "":
        return None if filename and filename.lower().endswith(JS_SUFFIXES) else Runtime.WASI
    if isinstance(value, str) and value in ABSTRACT_JS:
        return None
    if not isinstance(value, str) or value not in {r.value for r in CATALOG}:
        names = sorted({r.value for r in CATALOG} | ABSTRACT_JS)
        raise InvalidRequest(f"runtime must be one of {', '.join(names)}")
    return Runtime(value)


def _text_field(form_value: object, field: str) -> str | None:
    if form_value is None or form_value == "":
        return None
    if not isinstance(form_value, str):
        raise InvalidRequest(f"{field} must be a text field (the file's contents), not a file")
    return form_value


def _json_field(form_value: object, field: str, shape: Any) -> Any:
    """A JSON-encoded form field validated against ``shape``, or None when absent."""
    if form_value is None or form_value == "":
        return None
    if not isinstance(form_value, str):
        raise InvalidRequest(f"{field} must be JSON text")
    try:
        return TypeAdapter(shape).validate_json(form_value)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or field}: {e['msg']}" for e in exc.errors())
        raise InvalidRequest(f"invalid {field}: {problems}") from None


def _wasm(runtime: Runtime) -> bool:
    return CATALOG[runtime].tiers == (Tier.WASM,)


def _check_bindings(settings: Settings, runtime: Runtime, env: dict[str, str], permissions: Permissions) -> None:
    """Env names and grants are checked at deploy; the JS and Wasmtime tiers apply their own rules."""
    for key in env:
        if not ENV_NAME_RE.match(key) or key.startswith("SOULBOX_"):
            raise InvalidRequest(f"bad env binding name {key!r}")
    if runtime in (Runtime.BUN, Runtime.DENO):
        FunctionConfig(
            env=env,
            permissions=JsPermissions(*(tuple(getattr(permissions, k)) for k in ("net", "read", "write", "run"))),
        )
    elif _wasm(runtime):
        if permissions.model_copy(update={"read": []}) != Permissions():
            raise GrantRefused(f"{runtime.value} functions take no permissions except `read` directories (read-only)")
        check_read_grants(permissions.read, settings.wasm.read_roots)
    elif permissions != Permissions():
        raise InvalidRequest(f"{runtime.value} functions take no permissions: they get no host access at all")


def bundler(request: Request) -> Bundler:
    """The gateway's dependency bundler, made on first use; without one a deploy with dependencies is refused."""
    state = request.app.state
    found: Bundler | str | None = getattr(state, "bundler", None)
    if found is None:
        settings = platform(request).settings
        found = state.bundler = Bundler.find(settings.js)
    if isinstance(found, str):
        raise BuildFailed(found)
    return found


def _int_field(form_value: object, field: str) -> int | None:
    if form_value is None or form_value == "":
        return None
    if not isinstance(form_value, str):
        raise InvalidRequest(f"{field} must be a number")
    try:
        return int(form_value)
    except ValueError:
        raise InvalidRequest(f"{field} must be an integer, got {form_value!r}") from None


async def deploy(request: Request) -> Response:
    """Deploy (or redeploy) a function from a multipart form: name, runtime, code (or module), limits.

    Runtime ``js``/``ts`` (or none, with a JS/TS file name) picks Bun or Deno from the code and the
    optional ``package_json``/``deno_json``/``bunfig_toml`` text fields (runtimes/js/detect.py).

    Limits: ``memory_mb``, ``timeout_ms``, ``max_output_bytes`` and, on the Wasmtime
    tier, ``fuel`` (a CPU budget; absent: none).

    ``secrets`` (JSON ``{"ENV_VAR": "secret-name"}``) binds the tenant's secrets by name; each
    must exist (else 400 ``unknown_secret``). The worker puts the values into the function's
    environment at run time; the spec holds only the names.
    """
    p = platform(request)
    settings = p.settings
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest("send the function as multipart/form-data with fields `name` and `module`")
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > settings.gateway.max_module_bytes + 64 * 1024:
        raise PayloadTooLarge(f"the upload exceeds the {settings.gateway.max_module_bytes} byte module limit")
    async with request.form(max_files=1, max_fields=16, max_part_size=settings.gateway.max_module_bytes) as form:
        name = form.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise InvalidRequest("field `name` is required: 1-63 of a-z, 0-9, '-' and '_'")
        upload = form.get("code") or form.get("module")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("field `code` (or `module`) must be the function's file")
        named = _runtime(form.get("runtime"), upload.filename)
        manifests = {k: _text_field(form.get(k), k) for k in ("package_json", "deno_json", "bunfig_toml")}
        module = await upload.read(settings.gateway.max_module_bytes + 1)
        if len(module) > settings.gateway.max_module_bytes:
            raise PayloadTooLarge(f"the code exceeds the {settings.gateway.max_module_bytes} byte limit")
        defaults = settings.functions
        memory_mb = _int_field(form.get("memory_mb"), "memory_mb") or defaults.memory_mb
        timeout_ms = _int_field(form.get("timeout_ms"), "timeout_ms") or defaults.timeout_ms
        max_output = _int_field(form.get("max_output_bytes"), "max_output_bytes")
        env = _json_field(form.get("env"), "env", dict[str, str]) or {}
        secret_refs = _json_field(form.get("secrets"), "secrets", dict[str, str]) or {}
        permissions = _json_field(form.get("permissions"), "permissions", Permissions) or Permissions()
        retry = _json_field(form.get("retry"), "retry", RetryPolicy)
        max_concurrency = _int_field(form.get("max_concurrency"), "max_concurrency")
        fuel = _int_field(form.get("fuel"), "fuel")
    detected: Detection | None = None
    if named is None:  # the spec stores the concrete runtime chosen here, never `js`
        default = Runtime(settings.js.default_runtime)
        detected = await asyncio.to_thread(partial(detect_runtime, module, default=default, **manifests))
        runtime = detected.runtime
    else:
        runtime = named
    if not 1 <= memory_mb <= defaults.max_memory_mb:
        raise InvalidRequest(f"memory_mb must be between 1 and {defaults.max_memory_mb}")
    if not 1 <= timeout_ms <= defaults.max_timeout_ms:
        raise InvalidRequest(f"timeout_ms must be between 1 and {defaults.max_timeout_ms}")
    if max_concurrency is not None and max_concurrency < 1:
        raise InvalidRequest("max_concurrency must be at least 1")
    if max_output is not None and not 0 <= max_output <= 64 * 1024 * 1024:
        raise InvalidRequest("max_output_bytes must be between 0 and 67108864")
    if fuel is not None and not _wasm(runtime):
        raise InvalidRequest(f"fuel is a budget of the Wasmtime tier: {runtime.value} functions take no fuel")
    if fuel is not None and not 1 <= fuel <= settings.wasm.max_fuel:
        raise InvalidRequest(f"fuel must be between 1 and {settings.wasm.max_fuel} (SOULBOX_WASM__MAX_FUEL)")
    limits = Limits(
        memory_mb=memory_mb,
        timeout_ms=timeout_ms,
        max_output_bytes=defaults.max_output_bytes if max_output is None else max_output,
        fuel=fuel,
    )
    if set(env) & set(secret_refs):
        raise InvalidRequest(f"env and secrets both bind {', '.join(sorted(set(env) & set(secret_refs)))}")
    _check_bindings(settings, runtime, {**env, **dict.fromkeys(secret_refs, "")}, permissions)
    await request.app.state.secrets.check_exist(principal(request).tenant, set(secret_refs.values()))
    packages: dict[str, str] = {}
    deps = dependencies_of(manifests["package_json"]) if runtime in (Runtime.BUN, Runtime.DENO) else {}
    if deps:  # resolved now, once: the bundle is the artifact and invocations fetch nothing
        built = await bundler(request).build(module, upload.filename, deps, max_bytes=settings.gateway.max_module_bytes)
        module, packages = built.module, built.packages
    await asyncio.to_thread(CATALOG[runtime].validate, module)  # compiling is CPU work: off the event loop
    spec, created = await p.registry.deploy(
        principal(request).tenant,
        name,
        runtime,
        module,
        limits,
        env=env,
        secrets=secret_refs,
        permissions=permissions,
        retry=retry,
        max_concurrency=max_concurrency,
        packages=packages,
    )
    out = FunctionOut.of(spec).model_copy(update={"detected_from": detected and detected.reason})
    return JSONResponse(out.model_dump(mode="json"), status_code=201 if created else 200)


async def list_functions(request: Request) -> Response:
    p = platform(request)
    specs = await p.registry.list(principal(request).tenant)
    return JSONResponse(FunctionList(functions=[FunctionOut.of(s) for s in specs]).model_dump(mode="json"))


async def get_function(request: Request) -> Response:
    p = platform(request)
    spec = await p.registry.get(principal(request).tenant, function_name(request))
    return JSONResponse(FunctionOut.of(spec).model_dump(mode="json"))


async def delete_function(request: Request) -> Response:
    p = platform(request)
    await p.registry.delete(principal(request).tenant, function_name(request))
    return Response(status_code=204)
