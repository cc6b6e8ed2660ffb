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
    """Seals messages with the token's seal key."""

    def __init__(self, token: Token, certificate: x509.Certificate | None = None):
        self.token = token
        self._certificate = certificate

    @property
    def certificate(self) -> x509.Certificate:
        """The seal certificate that ``pli hsm init`` stored beside the token."""
        if self._certificate is None:
            path = self.token.config.certs_dir / "seal.pem"
            try:
                self._certificate = x509.load_pem_x509_certificate(path.read_bytes())
            except (OSError, ValueError) as exc:
                raise TokenUnavailable(f"no seal certificate at {path}") from exc
        return self._certificate

    @property
    def key_id(self) -> str:
        """The id of the key this sealer uses."""
        return key_id_of(self.certificate)

    def seal(self, message: bytes) -> Seal:
        """Sign ``message`` in the token; raises TokenUnavailable if it cannot."""
        key_id = self.key_id
        signature = self.token.sign_ecdsa_sha256(SEAL_KEY_LABEL, message)
        return Seal(key_id, signature)


class SealVerifier:
    """Checks seals against known seal certificates; no token needed."""

    def __init__(self, certificates: list[x509.Certificate]) -> None:
        self.certificates = {key_id_of(c): c for c in certificates}

    @classmethod
    def from_dir(cls, certs_dir: Path) -> SealVerifier:
        """Trust every seal certificate (``seal*.pem``) in a folder."""
        pems = sorted(certs_dir.glob("seal*.pem"))
        return cls([x509.load_pem_x509_certificate(p.read_bytes()) for p in pems])

    def is_valid(self, message: bytes, seal: Seal) -> bool:
        """Whether ``seal`` is a valid seal of ``message`` by a known key."""
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
