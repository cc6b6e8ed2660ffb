"""The PKCS#11 token that holds pli's seal key, and how to reach it.

pli never holds a private key in memory: the seal key and the development
root key are generated inside the token as sensitive, non-extractable
objects, and every signature is computed by the token. This module is the
only place (with its siblings in ``pli.hsm``) that opens PKCS#11 sessions.

In development and tests the token is a SoftHSM2 token whose files live
under ``$PLI_HOME/hsm``; production points ``PLI_PKCS11_MODULE`` at the
operator's HSM module.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.util.ec import encode_ecdsa_signature

__all__ = [
    "DEFAULT_MODULE",
    "PKCS11_LOCK",
    "ROOT_KEY_LABEL",
    "SEAL_KEY_LABEL",
    "TSA_KEY_LABEL",
    "TokenConfig",
    "TokenUnavailable",
    "Token",
]

logger = logging.getLogger(__name__)

DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
SEAL_KEY_LABEL = "pli-seal"
ROOT_KEY_LABEL = "pli-dev-root"
TSA_KEY_LABEL = "pli-tsa"

T = TypeVar("T")

# python-pkcs11 initialises the module without asking it for OS locking, so
# two threads calling into it at once can corrupt its state; every PKCS#11
# call of this process (event seals and PDF seals alike) takes this lock.
PKCS11_LOCK = threading.RLock()

# Digests of PINs the token rejected in this process. A hardware token locks
# its PIN after a few wrong tries, so pli never offers a rejected PIN twice:
# it fails closed until the PIN it is configured with changes.
_REJECTED_PINS: set[str] = set()


class TokenUnavailable(Exception):
    """The token cannot be reached, logged into, or lacks the expected key."""


@dataclass(frozen=True)
class TokenConfig:
    """Where the token is and how to log into it."""

    hsm_dir: Path
    module: str
    token_label: str
    pin_file: Path
    pin_from_env: str | None = None

    @classmethod
    def from_env(cls, home: Path) -> TokenConfig:
        """Read the token settings from ``PLI_*`` environment variables."""
        hsm_dir = Path(os.environ.get("PLI_HSM_DIR", home / "hsm")).resolve()
        return cls(
            hsm_dir=hsm_dir,
            module=os.environ.get("PLI_PKCS11_MODULE", DEFAULT_MODULE),
            token_label=os.environ.get("PLI_TOKEN_LABEL", "pli"),
            pin_file=Path(os.environ.get("PLI_HSM_PIN_FILE", hsm_dir / "pin")),
            pin_from_env=os.environ.get("PLI_HSM_PIN") or None,
        )

    @property
    def softhsm_conf(self) -> Path:
        """The SoftHSM2 configuration file that points at this home's tokens."""
        return self.hsm_dir / "softhsm2.conf"

    @property
    def certs_dir(self) -> Path:
        """Folder of the PEM copies of the certificates kept in the token."""
        return self.hsm_dir / "certs"

    def pin(self) -> str:
        """The user PIN, from the environment or the 0600 file."""
        if self.pin_from_env:
            return self.pin_from_env
        try:
            return self.pin_file.read_text().strip()
        except OSError as exc:
            raise TokenUnavailable(f"no PIN available ({self.pin_file})") from exc

    def login_pin(self) -> str:
        """The PIN to log in with, unless the token already rejected it."""
        pin = self.pin()
        if self._pin_digest(pin) in _REJECTED_PINS:
            raise TokenUnavailable("the token rejected this PIN; not retried")
        return pin

    def reject_pin(self, pin: str) -> None:
        """Remember that the token rejected ``pin``."""
        _REJECTED_PINS.add(self._pin_digest(pin))
        logger.error(
            "token rejected the PIN; it will not be offered again token=%s",
            self.token_label,
        )

    def _pin_digest(self, pin: str) -> str:
        material = f"{self.hsm_dir}\0{self.token_label}\0{pin}".encode()
        return hashlib.sha256(material).hexdigest()

    def activate(self) -> None:
        """Point SoftHSM2 at this home's configuration before the module loads."""
        if self.softhsm_conf.exists():
            os.environ["SOFTHSM2_CONF"] = str(self.softhsm_conf)


class Token:
    """A logged-in session with the token, shared by threads under a lock.

    The session is opened lazily and reopened after a failure, so a token that
    comes back after an outage is used again without a restart; while it is
    away, every operation raises :class:`TokenUnavailable`.
    """

    def __init__(self, config: TokenConfig) -> None:
        self.config = config
        self._lock = PKCS11_LOCK
        self._session: Any = None

    def close(self) -> None:
        """Close the session, if one is open."""
        with self._lock:
            self._discard()

    def _discard(self) -> None:
        # A session dropped without C_CloseSession keeps the process logged in
        # to the token for as long as the module stays loaded.
        session, self._session = self._session, None
        if session is not None:
            try:
                session.close()
            except pkcs11.PKCS11Error:
                logger.warning("token session close failed")

    def _open(self) -> Any:
        self.config.activate()
        lib = pkcs11.lib(self.config.module)
        token = lib.get_token(token_label=self.config.token_label)
        pin = self.config.login_pin()
        try:
            session = token.open(user_pin=pin, rw=True)
        except pkcs11.PinIncorrect:
            self.config.reject_pin(pin)
            raise
        except pkcs11.UserAlreadyLoggedIn:
            # PKCS#11 logins are per process: another session of this process
            # (the PDF sealer's) already logged in, and a new session shares it.
            session = token.open(rw=True)
        logger.info(
            "token session opened token=%s module=%s",
            self.config.token_label,
            self.config.module,
        )
        return session

    def run(self, operation: Callable[[Any], T]) -> T:
        """Run ``operation(session)`` with the lock held, failing closed."""
        with self._lock:
            try:
                if self._session is None:
                    self._session = self._open()
                return operation(self._session)
            except TokenUnavailable:
                self._discard()
                raise
            except (pkcs11.PKCS11Error, OSError, RuntimeError) as exc:
                self._discard()
                logger.error(
                    "token operation failed token=%s error=%s",
                    self.config.token_label,
                    type(exc).__name__,
                )
                raise TokenUnavailable(type(exc).__name__) from exc

    @contextmanager
    def session(self) -> Iterator[Any]:
        """Hold the lock and yield the open session."""
        with self._lock:
            yield self.run(lambda session: session)

    def sign_ecdsa_sha256(self, key_label: str, data: bytes) -> bytes:
        """Sign ``data`` with the labelled EC key; return a DER ECDSA signature."""

        def sign(session: Any) -> bytes:
            try:
                key = session.get_key(
                    object_class=ObjectClass.PRIVATE_KEY,
                    key_type=KeyType.EC,
                    label=key_label,
                )
            except (pkcs11.NoSuchKey, pkcs11.MultipleObjectsReturned) as exc:
                raise TokenUnavailable(f"key {key_label!r} not usable") from exc
            # Hashing here and signing the digest with plain CKM_ECDSA works on
            # every token, SoftHSM2 2.6 included, which lacks CKM_ECDSA_SHA256.
            raw = key.sign(hashlib.sha256(data).digest(), mechanism=Mechanism.ECDSA)
            return encode_ecdsa_signature(raw)

        return self.run(sign)

    def has_private_key(self, session: Any, label: str) -> bool:
        """Whether the token holds exactly one private key with this label."""
        found = list(
            session.get_objects(
                {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: label}
            )
        )
        return len(found) == 1
