"""Secrets kept encrypted under a key of the token (AES-256-GCM).

pli keeps a few secrets of its own, such as each sender's TOTP secret (CPCE
R.53-1: a dynamic second factor). They are stored in the event store, so
they are encrypted there under an AES-256 key that ``pli hsm init`` generates
inside the token as sensitive and non-extractable: the database alone never
reveals them, and decrypting needs the token and its PIN.

Encryption is AES-GCM (NIST SP 800-38D) computed by the token, with a fresh
random 96-bit IV per secret and associated data that the caller chooses to
bind a blob to its owner (an account id, say), so a blob copied onto another
owner does not open. A blob is one format byte, the IV, then the ciphertext
and its 128-bit tag.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.mechanisms import GCMParams

from pli.hsm.token import Token, TokenUnavailable

__all__ = [
    "SECRETS_KEY_LABEL",
    "SecretBox",
    "SecretUnreadable",
    "generate_secrets_key",
    "has_secret_key",
]

logger = logging.getLogger(__name__)

SECRETS_KEY_LABEL = "pli-secrets"
_FORMAT = b"\x01"
_IV_BYTES = 12
_TAG_BITS = 128
_KEY_BITS = 256
_TAG_FAILURES = (
    pkcs11.EncryptedDataInvalid,
    pkcs11.EncryptedDataLenRange,
    pkcs11.GeneralError,
    pkcs11.FunctionFailed,
)


class SecretUnreadable(Exception):
    """A sealed secret does not open: it was changed or belongs to other data."""


def has_secret_key(session: Any, label: str) -> bool:
    """Whether the token holds exactly one secret key with this label."""
    found = list(
        session.get_objects(
            {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label}
        )
    )
    return len(found) == 1


def generate_secrets_key(session: Any, label: str = SECRETS_KEY_LABEL) -> None:
    """Generate the AES-256 key inside the token: it can encrypt, nothing else."""
    session.generate_key(
        KeyType.AES,
        _KEY_BITS,
        label=label,
        id=os.urandom(8),
        store=True,
        template={
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.ENCRYPT: True,
            Attribute.DECRYPT: True,
            Attribute.WRAP: False,
            Attribute.UNWRAP: False,
            Attribute.SIGN: False,
            Attribute.VERIFY: False,
            Attribute.DERIVE: False,
        },
    )
    logger.info("key generated label=%s type=AES-256", label)


def _encrypt(key: Any, plaintext: bytes, params: GCMParams) -> bytes:
    return bytes(
        key.encrypt(plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=params)
    )


def _decrypt(key: Any, ciphertext: bytes, params: GCMParams) -> bytes:
    return bytes(
        key.decrypt(ciphertext, mechanism=Mechanism.AES_GCM, mechanism_param=params)
    )


def _round_trips(key: Any) -> bool:
    probe = os.urandom(16)
    params = GCMParams(os.urandom(_IV_BYTES), b"pli/secrets/probe", _TAG_BITS)
    try:
        return _decrypt(key, _encrypt(key, probe, params), params) == probe
    except pkcs11.PKCS11Error:
        return False


class SecretBox:
    """Seals and opens small secrets with the token's AES key, bound to data."""

    def __init__(self, token: Token, *, key_label: str = SECRETS_KEY_LABEL) -> None:
        self.token = token
        self.key_label = key_label

    def seal(self, plaintext: bytes, associated_data: bytes) -> bytes:
        """Encrypt ``plaintext`` bound to ``associated_data``; return the blob."""
        iv = os.urandom(_IV_BYTES)
        params = GCMParams(iv, associated_data, _TAG_BITS)

        def encrypt(session: Any) -> bytes:
            return _encrypt(self._key(session), plaintext, params)

        return _FORMAT + iv + self.token.run(encrypt)

    def open(self, blob: bytes, associated_data: bytes) -> bytes:
        """Decrypt a blob made by :meth:`seal` with the same associated data."""
        if len(blob) < 1 + _IV_BYTES + _TAG_BITS // 8 or blob[:1] != _FORMAT:
            raise SecretUnreadable("not a sealed secret")
        iv, ciphertext = blob[1 : 1 + _IV_BYTES], blob[1 + _IV_BYTES :]
        params = GCMParams(iv, associated_data, _TAG_BITS)

        def decrypt(session: Any) -> bytes:
            key = self._key(session)
            try:
                return _decrypt(key, ciphertext, params)
            except _TAG_FAILURES as exc:
                # Tokens report a failed GCM tag differently (SoftHSM2 says
                # CKR_GENERAL_ERROR); a token that still decrypts its own probe
                # is working, so the blob is what does not fit.
                if not _round_trips(key):
                    raise
                raise SecretUnreadable("sealed secret does not authenticate") from exc

        return self.token.run(decrypt)

    def _key(self, session: Any) -> Any:
        try:
            return session.get_key(
                object_class=ObjectClass.SECRET_KEY,
                key_type=KeyType.AES,
                label=self.key_label,
            )
        except (pkcs11.NoSuchKey, pkcs11.MultipleObjectsReturned) as exc:
            raise TokenUnavailable(
                f"key {self.key_label!r} not usable; run pli hsm init"
            ) from exc
