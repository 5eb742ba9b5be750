"""Envelope encryption: values sealed under a fresh data key, data keys wrapped by the master key.

Every sealed value has its own random AES-256-GCM data key; the data key is
wrapped (AES-256-GCM again) by the master key, the key-encryption key (KEK),
and the KEK's id is stored next to it. Both layers authenticate ``context``
(for a secret: its tenant and name) as associated data, so a sealed value
copied under another tenant or name does not open. Rotating the master key
means: configure the new key, keep the old one among
``secrets.previous_master_keys`` (it still unwraps), and :func:`rewrap` every
envelope under the new one (the gateway does this at start); the values
themselves are never re-encrypted.

The master key comes from ``SOULBOX_SECRETS__MASTER_KEY`` or from a key file
(``secrets.master_key_file``, default ``<data_dir>/secrets/master.key``),
which is made with mode 0600 on first start when absent. Every process that
decrypts (the workers) and every gateway must use the same master key.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, ConfigDict

from .errors import SoulboxError
from .settings import Settings

KEY_BYTES = 32
NONCE_BYTES = 12


class SecretsError(SoulboxError):
    """The secrets store cannot do what was asked (bad master key, an envelope that does not open)."""

    code = "secrets_error"


class UnknownMasterKey(SecretsError):
    code = "unknown_master_key"


class Envelope(BaseModel):
    """A sealed value: ciphertext under a data key, the data key wrapped by master key ``kid``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kid: str
    wrapped_key: bytes  # nonce + AES-GCM(KEK, data key)
    nonce: bytes
    ciphertext: bytes  # AES-GCM(data key, value), tag included


def key_id(key: bytes) -> str:
    """A master key's id: 16 hex digits of a hash of the key (names it without revealing it)."""
    return hashlib.sha256(b"soulbox-kek-id\0" + key).hexdigest()[:16]


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SecretsError(f"the master key in {where} is not base64") from None
    if len(key) != KEY_BYTES:
        raise SecretsError(f"the master key in {where} must be {KEY_BYTES} bytes, is {len(key)}")
    return key


def load_or_create_key_file(path: Path) -> bytes:
    """The key in ``path``, made first (0600, atomically: concurrent starts agree) when absent."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, base64.b64encode(secrets.token_bytes(KEY_BYTES)) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        # link() fails if another process made the file first: then theirs is the key.
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
        os.unlink(temporary)
    return _decode_key(path.read_text(), str(path))


@dataclass(frozen=True, slots=True)
class MasterKeys:
    """The active master key and the retired ones that still unwrap, by key id."""

    active: str
    keys: dict[str, AESGCM]

    @classmethod
    def from_settings(cls, settings: Settings) -> MasterKeys:
        s = settings.secrets
        if s.master_key is not None:
            active = _decode_key(s.master_key.get_secret_value(), "SOULBOX_SECRETS__MASTER_KEY")
        else:
            path = s.master_key_file or settings.data_dir / "secrets" / "master.key"
            active = load_or_create_key_file(path)
        retired = [_decode_key(k.get_secret_value(), "secrets.previous_master_keys") for k in s.previous_master_keys]
        return cls.of(active, *retired)

    @classmethod
    def of(cls, active: bytes, *retired: bytes) -> MasterKeys:
        keys = {key_id(k): AESGCM(k) for k in (*retired, active)}
        return cls(active=key_id(active), keys=keys)

    def seal(self, value: bytes, context: bytes) -> Envelope:
        """``value`` under a fresh data key wrapped by the active master key; ``context`` is bound to both."""
        data_key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = AESGCM(data_key).encrypt(nonce, value, context)
        return Envelope(
            kid=self.active, wrapped_key=self._wrap(data_key, self.active, context), nonce=nonce, ciphertext=ciphertext
        )

    def open(self, envelope: Envelope, context: bytes) -> bytes:
        """The value sealed in ``envelope``; ``SecretsError`` if it was made for another context or altered."""
        data_key = self._unwrap(envelope, context)
        try:
            return AESGCM(data_key).decrypt(envelope.nonce, envelope.ciphertext, context)
        except InvalidTag:
            raise SecretsError("a sealed value does not open: altered, or moved from where it was stored") from None

    def rewrap(self, envelope: Envelope, context: bytes) -> Envelope:
        """The same envelope with its data key wrapped by the active master key (the ciphertext unchanged)."""
        if envelope.kid == self.active:
            return envelope
        data_key = self._unwrap(envelope, context)
        return envelope.model_copy(
            update={"kid": self.active, "wrapped_key": self._wrap(data_key, self.active, context)}
        )

    def _wrap(self, data_key: bytes, kid: str, context: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self.keys[kid].encrypt(nonce, data_key, _wrap_context(kid, context))

    def _unwrap(self, envelope: Envelope, context: bytes) -> bytes:
        kek = self.keys.get(envelope.kid)
        if kek is None:
            raise UnknownMasterKey(
                f"sealed by master key {envelope.kid}, which is not configured here (secrets.previous_master_keys)"
            )
        wrapped = envelope.wrapped_key
        try:
            return kek.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _wrap_context(envelope.kid, context))
        except InvalidTag:
            raise SecretsError("a data key does not unwrap: altered, or moved from where it was stored") from None


def _wrap_context(kid: str, context: bytes) -> bytes:
    return b"soulbox-dek\0" + kid.encode() + b"\0" + context
