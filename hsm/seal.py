"""Event seals: the token signs, anyone with the certificate verifies.

A seal is an ECDSA P-256 signature by the token's seal key over a message
the caller builds (``pli.infrastructure.envelope`` says what it covers).
Verification needs only the seal certificate, so an auditor checks seals
with no token and no PIN. Keys are named by a key id, the SHA-256 of the
certificate's SubjectPublicKeyInfo, so a rotated key's old seals still find
their certificate.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pli.domain.key_ceremony import KeyRole
from pli.hsm.keys import ActiveKeyWatcher
from pli.hsm.token import SEAL_KEY_LABEL, Token, TokenUnavailable

__all__ = ["Seal", "EventSealer", "SealVerifier", "UnknownSealKey", "key_id_of"]


class UnknownSealKey(Exception):
    """A seal names a key for which no certificate is known."""


@dataclass(frozen=True)
class Seal:
    """A signature and the id of the key that made it."""

    key_id: str
    signature: bytes


def key_id_of(certificate: x509.Certificate) -> str:
    """The key id of a certificate: SHA-256 of its public key info, in hex."""
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


class EventSealer:
    """Seals messages with the token's active seal key.

    The active key is the one ``active.json`` names (``pli.hsm.keys``); the
    sealer follows a rotation without a restart. A sealer given a certificate
    uses the seal key labelled ``key_label`` (``pli-seal`` by default) instead.
    """

    def __init__(
        self,
        token: Token,
        certificate: x509.Certificate | None = None,
        *,
        key_label: str = SEAL_KEY_LABEL,
    ):
        self.token = token
        self._fixed = certificate
        self._fixed_label = key_label
        self._watcher = ActiveKeyWatcher(token.config.certs_dir, KeyRole.SEAL)
        self._loaded: tuple[Path, x509.Certificate] | None = None

    @property
    def certificate(self) -> x509.Certificate:
        """The certificate of the key this sealer signs with now."""
        return self._current()[1]

    @property
    def key_id(self) -> str:
        """The id of the key this sealer signs with now."""
        return key_id_of(self.certificate)

    def seal(self, message: bytes) -> Seal:
        """Sign ``message`` in the token; raises TokenUnavailable if it cannot."""
        label, certificate = self._current()
        signature = self.token.sign_ecdsa_sha256(label, message)
        return Seal(key_id_of(certificate), signature)

    def _current(self) -> tuple[str, x509.Certificate]:
        if self._fixed is not None:
            return self._fixed_label, self._fixed
        active = self._watcher.current()
        loaded = self._loaded
        if loaded is None or loaded[0] != active.certificate:
            path = active.certificate
            try:
                certificate = x509.load_pem_x509_certificate(path.read_bytes())
            except (OSError, ValueError) as exc:
                raise TokenUnavailable(f"no seal certificate at {path}") from exc
            if active.key_id is not None and key_id_of(certificate) != active.key_id:
                raise TokenUnavailable(f"{path} does not certify key {active.label}")
            loaded = self._loaded = (path, certificate)
        return active.label, loaded[1]


class SealVerifier:
    """Checks seals against known seal certificates; no token needed."""

    def __init__(
        self, certificates: list[x509.Certificate], certs_dir: Path | None = None
    ) -> None:
        self.certificates = {key_id_of(c): c for c in certificates}
        self._certs_dir = certs_dir

    @classmethod
    def from_dir(cls, certs_dir: Path) -> SealVerifier:
        """Trust every seal certificate (``seal.pem``, ``seal.2.pem``, ...) there.

        A seal by a key not seen yet makes the verifier look at the folder
        again, so a server follows a rotation made by ``pli hsm rotate``.
        """
        return cls(_seal_certificates(certs_dir), certs_dir)

    def is_valid(self, message: bytes, seal: Seal) -> bool:
        """Whether ``seal`` is a valid seal of ``message`` by a known key."""
        certificate = self.certificates.get(seal.key_id)
        if certificate is None and self._certs_dir is not None:
            self.certificates.update(
                (key_id_of(c), c) for c in _seal_certificates(self._certs_dir)
            )
            certificate = self.certificates.get(seal.key_id)
        if certificate is None:
            raise UnknownSealKey(seal.key_id)
        public_key = certificate.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        try:
            public_key.verify(seal.signature, message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


def _seal_certificates(certs_dir: Path) -> list[x509.Certificate]:
    pems = sorted(certs_dir.glob("seal*.pem"))
    return [x509.load_pem_x509_certificate(p.read_bytes()) for p in pems]
