"""A development identity provider that signs OpenID Connect ID tokens.

Tests and the demo need ID tokens without FranceConnect. This provider keeps
an EC P-256 key in a folder (``var/dev-idp/`` under ``PLI_HOME``), publishes
its public half as a JSON Web Key Set, and writes a trusted issuers file for
:func:`pli.infrastructure.oidc.load_trusted_issuers`. The desk trusts it only
when an operator points the configuration at that file, and then as a
non-qualified issuer; every token it signs also carries ``"pli_dev": true``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pli.infrastructure.files import write_atomically

__all__ = ["DEV_AUDIENCE", "DEV_ISSUER", "DevIdentityProvider"]

logger = logging.getLogger(__name__)

# The .invalid top-level domain (RFC 2606) can never name a real provider.
DEV_ISSUER = "https://dev-idp.pli.invalid"
DEV_AUDIENCE = "pli-desk"
ALGORITHM = "ES256"


class DevIdentityProvider:
    """A signing key in a folder, and the ID tokens it signs."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.key_file = folder / "key.pem"
        self.jwks_file = folder / "jwks.json"
        self.issuers_file = folder / "issuers.json"

    def ensure(self) -> None:
        """Create the key, key set and issuers file where they are missing."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.key_file.exists():
            _write_new_key(self.key_file)
            logger.info("dev_idp_key_created folder=%s", self.folder)
        _write_if_changed(self.jwks_file, {"keys": [self._public_jwk()]})
        _write_if_changed(self.issuers_file, _issuers_config(self.jwks_file.name))

    def issue(
        self,
        *,
        given_name: str,
        family_name: str,
        nonce: str,
        at: dt.datetime,
        birthdate: dt.date | None = None,
        acr: str = "eidas2",
        lifetime: dt.timedelta = dt.timedelta(minutes=5),
        audience: str = DEV_AUDIENCE,
        siret: str | None = None,
        subject: str | None = None,
    ) -> str:
        """An ID token for this identity, issued at ``at`` for ``nonce``."""
        self.ensure()
        claims: dict[str, object] = {
            "iss": DEV_ISSUER,
            "sub": subject or _pseudonymous_subject(given_name, family_name, birthdate),
            "aud": audience,
            "iat": int(at.timestamp()),
            "exp": int((at + lifetime).timestamp()),
            "nonce": nonce,
            "acr": acr,
            "given_name": given_name,
            "family_name": family_name,
            "pli_dev": True,
        }
        if birthdate is not None:
            claims["birthdate"] = birthdate.isoformat()
        if siret is not None:
            claims["siret"] = siret
        return jwt.encode(
            claims, self._private_key(), algorithm=ALGORITHM, headers={"kid": self.kid}
        )

    @property
    def kid(self) -> str:
        """The key id: the key's JWK thumbprint (RFC 7638)."""
        return _thumbprint(_public_numbers_jwk(self._private_key().public_key()))

    def _private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_file.read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{self.key_file} does not hold an EC private key")
        return key

    def _public_jwk(self) -> dict[str, str]:
        public = _public_numbers_jwk(self._private_key().public_key())
        return {**public, "kid": _thumbprint(public), "use": "sig", "alg": ALGORITHM}


def _write_new_key(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomically(path, pem)


def _write_if_changed(path: Path, document: dict[str, object]) -> None:
    data = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
    if not path.exists() or path.read_bytes() != data:
        write_atomically(path, data)


def _issuers_config(jwks_file: str) -> dict[str, object]:
    issuer = {
        "issuer": DEV_ISSUER,
        "audience": DEV_AUDIENCE,
        "jwks_file": jwks_file,
        "qualified": False,
    }
    return {"issuers": [issuer]}


def _public_numbers_jwk(public: ec.EllipticCurvePublicKey) -> dict[str, str]:
    numbers = public.public_numbers()
    return {
        "crv": "P-256",
        "kty": "EC",
        "x": _base64url(numbers.x.to_bytes(32, "big")),
        "y": _base64url(numbers.y.to_bytes(32, "big")),
    }


def _thumbprint(jwk: dict[str, str]) -> str:
    # RFC 7638 section 3.2: the required members only, sorted, no whitespace.
    required = {name: jwk[name] for name in ("crv", "kty", "x", "y")}
    canonical = json.dumps(required, separators=(",", ":"), sort_keys=True)
    return _base64url(hashlib.sha256(canonical.encode()).digest())


def _base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _pseudonymous_subject(
    given_name: str, family_name: str, birthdate: dt.date | None
) -> str:
    # Stable per identity, like a provider's pairwise subject identifier.
    seen = json.dumps([given_name, family_name, str(birthdate)]).encode()
    return hashlib.sha256(seen).hexdigest()[:32]
