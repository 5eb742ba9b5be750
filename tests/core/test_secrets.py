"""Envelope encryption, the master key file, and the secrets store on a real NATS server."""

from __future__ import annotations

import base64
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from soulbox.core import names
from soulbox.core.bus import Buckets
from soulbox.core.codec import decode
from soulbox.core.errors import InvalidRequest
from soulbox.core.ledger import AuditRecord
from soulbox.core.logging import configure_logging, get_logger
from soulbox.core.secrets import MasterKeys, SecretsError, UnknownMasterKey, key_id, load_or_create_key_file
from soulbox.core.secrets_store import SecretEntry, SecretNotFound, SecretStore, secret_context
from soulbox.core.settings import Settings

OLD, NEW = os.urandom(32), os.urandom(32)
VALUE = "s3cr3t-value-that-must-not-leak"


def test_seal_open_round_trip_and_binding() -> None:
    keys = MasterKeys.of(NEW)
    sealed = keys.seal(VALUE.encode(), secret_context("acme", "db"))
    assert VALUE.encode() not in sealed.ciphertext + sealed.wrapped_key
    assert keys.open(sealed, secret_context("acme", "db")) == VALUE.encode()
    for elsewhere in (secret_context("other", "db"), secret_context("acme", "db2")):
        with pytest.raises(SecretsError):
            keys.open(sealed, elsewhere)
    flipped = sealed.model_copy(update={"ciphertext": bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:]})
    with pytest.raises(SecretsError):
        keys.open(flipped, secret_context("acme", "db"))


def test_rotation_rewraps_data_keys_without_touching_ciphertext() -> None:
    context = secret_context("acme", "db")
    sealed = MasterKeys.of(OLD).seal(VALUE.encode(), context)
    rotated = MasterKeys.of(NEW, OLD)
    assert rotated.open(sealed, context) == VALUE.encode()  # the old key still unwraps
    rewrapped = rotated.rewrap(sealed, context)
    assert rewrapped.kid == key_id(NEW) != sealed.kid and rewrapped.ciphertext == sealed.ciphertext
    assert MasterKeys.of(NEW).open(rewrapped, context) == VALUE.encode()  # the old key can go now
    with pytest.raises(UnknownMasterKey):
        MasterKeys.of(NEW).open(sealed, context)


def test_key_file_made_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "master.key"
    with ThreadPoolExecutor(8) as pool:  # concurrent first starts agree on one key
        found = set(pool.map(lambda _: load_or_create_key_file(path), range(16)))
    assert len(found) == 1 and len(found.pop()) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["master.key"]  # no temporary left behind


def test_master_key_from_settings_wins_over_file(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        secrets={
            "master_key": base64.b64encode(NEW).decode(),
            "previous_master_keys": [base64.b64encode(OLD).decode()],
        },  # type: ignore[arg-type]
        _env_file=None,  # type: ignore[call-arg]
    )
    keys = MasterKeys.from_settings(settings)
    assert keys.active == key_id(NEW) and set(keys.keys) == {key_id(NEW), key_id(OLD)}
    assert not (tmp_path / "secrets").exists()
    bad = Settings(data_dir=tmp_path, secrets={"master_key": "bm90IDMyIGJ5dGVz"}, _env_file=None)  # type: ignore[arg-type, call-arg]
    with pytest.raises(SecretsError, match="32 bytes"):
        MasterKeys.from_settings(bad)


async def test_store_keeps_ciphertext_only_and_audits_every_read(
    buckets: Buckets, js: JetStreamContext, nc: NATS
) -> None:
    store = SecretStore(buckets.secrets, MasterKeys.of(NEW))
    info, created = await store.put("acme", "DB_PASSWORD", VALUE)
    assert created and info.version == 1 and info.master_key_id == key_id(NEW)
    info, created = await store.put("acme", "DB_PASSWORD", VALUE + "2")
    assert not created and info.version == 2
    raw = (await buckets.secrets.get(names.secret_key("acme", "DB_PASSWORD"))).value
    assert raw and VALUE.encode() not in raw
    assert decode(SecretEntry, raw).tenant == "acme"
    assert [i.name for i in await store.list("acme")] == ["DB_PASSWORD"]
    assert await store.list("other") == []
    with pytest.raises(SecretNotFound):
        await store.info("other", "DB_PASSWORD")
    with pytest.raises(InvalidRequest) as refused:
        await store.check_exist("other", {"DB_PASSWORD"})
    assert refused.value.code == "unknown_secret"

    intake = await nc.subscribe(names.AUDIT_INTAKE_SECRETS_SUBJECT)
    values = await store.reveal(
        js, "acme", {"DB": "DB_PASSWORD"}, actor="function:f", source="worker:w", detail={"invocation_id": "inv1"}
    )
    assert values == {"DB": VALUE + "2"}
    msg = await intake.next_msg(timeout=5)
    assert VALUE.encode() not in msg.data
    record = decode(AuditRecord, msg.data)
    assert (record.tenant, record.action, record.resource, record.actor) == (
        "acme",
        "secret.read",
        "secrets/DB_PASSWORD",
        "function:f",
    )
    assert record.detail["invocation_id"] == "inv1" and record.detail["env"] == "DB"
    with pytest.raises(SecretNotFound):
        await store.reveal(js, "other", {"DB": "DB_PASSWORD"}, actor="function:f", source="w", detail={})


async def test_moved_ciphertext_does_not_open(buckets: Buckets, js: JetStreamContext) -> None:
    store = SecretStore(buckets.secrets, MasterKeys.of(NEW))
    await store.put("acme", "token", VALUE)
    stolen = await buckets.secrets.get(names.secret_key("acme", "token"))
    assert stolen.value is not None
    await buckets.secrets.put(names.secret_key("evil", "token"), stolen.value)
    with pytest.raises(SecretsError):
        await store.reveal(js, "evil", {"T": "token"}, actor="function:f", source="w", detail={})


async def test_rewrap_all_moves_every_secret_to_the_new_master_key(buckets: Buckets, js: JetStreamContext) -> None:
    await SecretStore(buckets.secrets, MasterKeys.of(OLD)).put("acme", "a", VALUE)
    await SecretStore(buckets.secrets, MasterKeys.of(OLD)).put("beta", "b", VALUE)
    rotated = SecretStore(buckets.secrets, MasterKeys.of(NEW, OLD))
    assert await rotated.rewrap_all() == 2
    assert await rotated.rewrap_all() == 0
    only_new = SecretStore(buckets.secrets, MasterKeys.of(NEW))
    assert {i.master_key_id for i in await only_new.list("acme") + await only_new.list("beta")} == {key_id(NEW)}
    assert await only_new.reveal(js, "beta", {"B": "b"}, actor="function:f", source="w", detail={}) == {"B": VALUE}


def test_log_lines_show_environments_by_name_only(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json", component="test")
    try:
        get_logger("t").info("spawn", env={"API_TOKEN": VALUE}, env_vars={"B": VALUE}, other="kept")
        line = capsys.readouterr().err
    finally:
        structlog.reset_defaults()  # the configuration holds capsys's stream
        structlog.contextvars.clear_contextvars()
    assert VALUE not in line and '"env": ["API_TOKEN"]' in line and '"other": "kept"' in line
