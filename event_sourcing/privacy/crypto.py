"""Key-encryption keys (KeyProvider: from MLEVENTS_KEK, or your KMS) and AES-256-GCM sealing
of single values under a subject's data key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from event_sourcing.errors import ConfigurationError, KeyEncryptionKeyError

KEK_ENV = "MLEVENTS_KEK"
NONCE_BYTES = 12


@runtime_checkable
class KeyProvider(Protocol):
    """Wraps and unwraps subjects' data keys with a key-encryption key (KEK).

    `kek_id` names the KEK (stored beside each wrapped key, so a wrong KEK is named in
    errors). `unwrap` must raise (anything) when the KEK cannot unwrap `wrapped`; the
    store turns that into KeyEncryptionKeyError. `context` is bound to the wrapped key
    (AES-GCM associated data, or a KMS encryption context).
    """

    kek_id: str

    def wrap(self, key: bytes, context: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes: ...


class LocalKeyProvider:
    """A 32-byte KEK held in memory (e.g. from $MLEVENTS_KEK), wrapping with AES-256-GCM."""

    def __init__(self, kek: bytes) -> None:
        if not isinstance(kek, bytes) or len(kek) != 32:
            raise ConfigurationError(
                "a key-encryption key is 32 bytes (base64 in $MLEVENTS_KEK); make one with "
                "`openssl rand -base64 32`"
            )
        self._aes = AESGCM(kek)
        self.kek_id = "local:" + hashlib.sha256(b"mlevents-kek-id" + kek).hexdigest()[:16]

    @classmethod
    def from_env(cls, variable: str = KEK_ENV) -> LocalKeyProvider | None:
        """The provider of the base64 KEK in `variable`; None if it is unset."""
        text = os.environ.get(variable)
        if not text:
            return None
        try:
            kek = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigurationError(
                f"${variable} is not base64 text; make a key with `openssl rand -base64 32`"
            ) from None
        if len(kek) != 32:
            raise ConfigurationError(
                f"${variable} decodes to {len(kek)} bytes; a key-encryption key is 32 bytes "
                "(base64 of os.urandom(32))"
            )
        return cls(kek)

    def wrap(self, key: bytes, context: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aes.encrypt(nonce, key, context)

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        return self._aes.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], context)


def unwrap_key(
    provider: KeyProvider | None, wrapped_text: str, kek_id: str, key_id: str
) -> bytes:
    """The data key `key_id` unwrapped; KeyEncryptionKeyError if the KEK is
    missing or is not the one that wrapped it."""
    if provider is None:
        raise KeyEncryptionKeyError(
            f"the store holds personal data encrypted under keys wrapped by {kek_id!r}, and "
            f"no key-encryption key is configured: set ${KEK_ENV} (or pass key_provider=) to "
            "the key the data was written with"
        )
    try:
        key = provider.unwrap(base64.b64decode(wrapped_text), key_id.encode())
        if len(key) != 32:
            raise ValueError("not a 32-byte key")
        return key
    except Exception as exc:
        raise KeyEncryptionKeyError(
            f"the key-encryption key {provider.kek_id!r} cannot unwrap data key {key_id} "
            f"(wrapped by {kek_id!r}): wrong or rotated KEK? Set ${KEK_ENV} (or "
            f"key_provider=) to the key the data was written with ({type(exc).__name__})"
        ) from None


def seal(aes: AESGCM, plaintext: bytes, context: bytes) -> str:
    nonce = os.urandom(NONCE_BYTES)
    return base64.b64encode(nonce + aes.encrypt(nonce, plaintext, context)).decode()


def open_sealed(aes: AESGCM, sealed: str, context: bytes, what: str) -> bytes:
    try:
        data = base64.b64decode(sealed)
        return aes.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], context)
    except (InvalidTag, binascii.Error, ValueError):
        raise KeyEncryptionKeyError(
            f"{what} does not decrypt under its subject's key: the stored ciphertext or the "
            "key table was altered, or the key was replaced"
        ) from None


def wrapped_text(provider: KeyProvider, key: bytes, key_id: str) -> str:
    return base64.b64encode(provider.wrap(key, key_id.encode())).decode()
