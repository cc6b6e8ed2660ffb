"""Verifying OpenID Connect ID tokens from the identity providers pli trusts.

The recipient desk hands over an ID token (OpenID Connect Core 1.0, section
2) that a trusted identity provider such as FranceConnect issued for one
letter's identification. :class:`IdTokenVerifier` checks it as section
3.1.3.7 asks (signature with the issuer's published key, issuer, audience
and authorised party, expiry, issue time, nonce) and reads the eIDAS level
of assurance from ``acr``; the result is an
:class:`~pli.domain.identity.AssertedIdentity` for the domain to match.

Time comes from the caller, never from the wall clock, so a verification
can be replayed. Signatures use PyJWT with asymmetric algorithms only: a
token that names ``none`` or an HMAC algorithm is refused before any key is
used, which closes the door to algorithm confusion.

Trusted issuers come from a JSON file::

    {"issuers": [{"issuer": "https://idp.example",
                  "audience": "pli-desk",
                  "jwks_file": "idp-jwks.json",
                  "qualified": true}]}

where ``jwks_file`` is a JSON Web Key Set (RFC 7517) and a relative path is
read from the configuration file's folder.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pli.domain.identity import ACR_LEVELS, AssertedIdentity, subject_digest
from pli.domain.values import Assurance, check_name

__all__ = [
    "ACCEPTED_ALGORITHMS",
    "IdTokenRejected",
    "IdTokenVerifier",
    "TrustedIssuer",
    "TrustedIssuersError",
    "load_trusted_issuers",
]

# Asymmetric only (RFC 8725 section 3.1): never "none", never HMAC.
ACCEPTED_ALGORITHMS = ("ES256", "RS256", "PS256")
MINIMUM_RSA_BITS = 2048
MAX_TOKEN_LENGTH = 16_384
# What an `acr` must look like before a refusal may quote it.
QUOTABLE = re.compile(r"[A-Za-z0-9:._/-]{1,64}")
FULL_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
COMPANY_CLAIMS = {"siret": re.compile(r"\d{14}"), "siren": re.compile(r"\d{9}")}


class TrustedIssuersError(ValueError):
    """The trusted issuers configuration or one of its key sets is unusable."""


class IdTokenRejected(Exception):
    """An ID token failed a check; ``reason`` is safe to record and show."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class TrustedIssuer:
    """An identity provider pli accepts ID tokens from, with its keys."""

    issuer: str
    audience: str
    jwks: dict[str, Any]
    qualified: bool


def load_trusted_issuers(path: Path) -> list[TrustedIssuer]:
    """The trusted issuers a JSON configuration file lists, keys loaded."""
    document = _read_json(path, "trusted issuers file")
    entries = document.get("issuers") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise TrustedIssuersError(f"{path}: expected an object with an 'issuers' list")
    issuers = [_issuer_from_entry(entry, path) for entry in entries]
    names = [issuer.issuer for issuer in issuers]
    if len(set(names)) != len(names):
        raise TrustedIssuersError(f"{path}: an issuer is listed twice")
    return issuers


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise TrustedIssuersError(f"{path}: cannot read {what}: {error}") from error
    except ValueError as error:
        raise TrustedIssuersError(f"{path}: {what} is not JSON: {error}") from error


def _issuer_from_entry(entry: object, path: Path) -> TrustedIssuer:
    if not isinstance(entry, dict):
        raise TrustedIssuersError(f"{path}: each issuer must be an object")
    issuer = _required_text(entry, "issuer", path)
    audience = _required_text(entry, "audience", path)
    qualified = entry.get("qualified")
    if not isinstance(qualified, bool):
        raise TrustedIssuersError(
            f"{path}: issuer {issuer}: 'qualified' must be true or false"
        )
    jwks_path = path.parent / _required_text(entry, "jwks_file", path)
    jwks = _read_json(jwks_path, f"key set of issuer {issuer}")
    trusted = TrustedIssuer(issuer, audience, jwks, qualified)
    _signing_keys(trusted)
    return trusted


def _required_text(entry: dict[str, Any], key: str, path: Path) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise TrustedIssuersError(f"{path}: each issuer needs a non-empty '{key}'")
    return value


@dataclass(frozen=True)
class _SigningKey:
    """A public key from an issuer's key set, and the algorithm it names."""

    public: ec.EllipticCurvePublicKey | rsa.RSAPublicKey
    algorithm: str | None

    def fits(self, algorithm: str) -> bool:
        """Whether a token signed with ``algorithm`` may be checked with it."""
        if self.algorithm is not None and self.algorithm != algorithm:
            return False
        if algorithm == "ES256":
            return isinstance(self.public, ec.EllipticCurvePublicKey)
        return isinstance(self.public, rsa.RSAPublicKey)


def _signing_keys(issuer: TrustedIssuer) -> dict[str, _SigningKey]:
    """The issuer's public signing keys by key id; refuses a doubtful set."""
    entries = issuer.jwks.get("keys") if isinstance(issuer.jwks, dict) else None
    if not isinstance(entries, list) or not entries:
        raise TrustedIssuersError(f"issuer {issuer.issuer}: key set has no 'keys'")
    keys: dict[str, _SigningKey] = {}
    for entry in entries:
        kid, key = _signing_key(issuer.issuer, entry)
        if kid in keys:
            raise TrustedIssuersError(f"issuer {issuer.issuer}: key id {kid} twice")
        keys[kid] = key
    return keys


def _signing_key(issuer: str, entry: object) -> tuple[str, _SigningKey]:
    if not isinstance(entry, dict):
        raise TrustedIssuersError(f"issuer {issuer}: each key must be an object")
    kid = entry.get("kid")
    if not isinstance(kid, str) or not kid:
        raise TrustedIssuersError(f"issuer {issuer}: each key needs a 'kid'")
    if "d" in entry:
        raise TrustedIssuersError(f"issuer {issuer}: key {kid} is a private key")
    if entry.get("use", "sig") != "sig":
        raise TrustedIssuersError(f"issuer {issuer}: key {kid} is not for signing")
    algorithm = entry.get("alg")
    if algorithm is not None and algorithm not in ACCEPTED_ALGORITHMS:
        raise TrustedIssuersError(
            f"issuer {issuer}: key {kid} names an algorithm that is not accepted"
        )
    try:
        public = jwt.PyJWK(entry).key
    except (jwt.PyJWKError, jwt.InvalidKeyError) as error:
        raise TrustedIssuersError(f"issuer {issuer}: key {kid}: {error}") from error
    _check_key_strength(issuer, kid, public)
    return kid, _SigningKey(public, algorithm)


def _check_key_strength(issuer: str, kid: str, public: object) -> None:
    if isinstance(public, ec.EllipticCurvePublicKey):
        if not isinstance(public.curve, ec.SECP256R1):
            raise TrustedIssuersError(f"issuer {issuer}: key {kid} is not on P-256")
    elif isinstance(public, rsa.RSAPublicKey):
        if public.key_size < MINIMUM_RSA_BITS:
            raise TrustedIssuersError(
                f"issuer {issuer}: key {kid} is shorter than {MINIMUM_RSA_BITS} bits"
            )
    else:
        raise TrustedIssuersError(f"issuer {issuer}: key {kid} is not EC or RSA")


@dataclass(frozen=True)
class _Issuer:
    """A trusted issuer with its signing keys ready by key id."""

    trusted: TrustedIssuer
    keys: dict[str, _SigningKey]


class IdTokenVerifier:
    """Checks ID tokens against the trusted issuers at a given instant."""

    def __init__(
        self,
        issuers: Iterable[TrustedIssuer],
        *,
        leeway_seconds: int = 60,
        max_age_seconds: int = 600,
    ) -> None:
        self._issuers = {
            issuer.issuer: _Issuer(issuer, _signing_keys(issuer)) for issuer in issuers
        }
        self._leeway = leeway_seconds
        self._max_age = max_age_seconds

    def verify(self, id_token: str, *, nonce: str, at: dt.datetime) -> AssertedIdentity:
        """The identity ``id_token`` asserts, if it passes every check at ``at``.

        ``nonce`` is the one the desk sent to the provider for this letter's
        identification; ``at`` is an aware instant, usually the clock's now.
        """
        if not nonce or at.tzinfo is None:
            raise ValueError("verify needs a non-empty nonce and an aware instant")
        header = _header(id_token)
        issuer = self._issuer(_unverified_claims(id_token))
        claims = _verified_claims(id_token, header, issuer.keys)
        self._check_audience(claims, issuer.trusted.audience)
        self._check_times(claims, at.timestamp())
        _check_nonce(claims, nonce)
        return _identity(claims, issuer.trusted)

    def _issuer(self, claims: dict[str, Any]) -> _Issuer:
        named = claims.get("iss")
        issuer = self._issuers.get(named) if isinstance(named, str) else None
        if issuer is None:
            raise IdTokenRejected("issuer is not trusted")
        return issuer

    def _check_audience(self, claims: dict[str, Any], audience: str) -> None:
        # OpenID Connect Core 3.1.3.7 items 3 to 5.
        named = claims.get("aud")
        audiences = [named] if isinstance(named, str) else named
        if not isinstance(audiences, list) or audience not in audiences:
            raise IdTokenRejected("token is not meant for this desk (audience)")
        azp = claims.get("azp")
        if (len(audiences) > 1 or azp is not None) and azp != audience:
            raise IdTokenRejected("token's authorised party (azp) is not this desk")

    def _check_times(self, claims: dict[str, Any], now: float) -> None:
        expires = _number(claims, "exp")
        issued = _number(claims, "iat")
        if now > expires + self._leeway:
            raise IdTokenRejected("token has expired")
        if issued > now + self._leeway:
            raise IdTokenRejected("token is issued in the future")
        if now - issued > self._max_age + self._leeway:
            raise IdTokenRejected(
                f"token was issued more than {self._max_age} seconds ago"
            )
        if "nbf" in claims and _number(claims, "nbf") > now + self._leeway:
            raise IdTokenRejected("token is not valid yet")


def _header(id_token: object) -> dict[str, Any]:
    if not isinstance(id_token, str) or len(id_token) > MAX_TOKEN_LENGTH:
        raise IdTokenRejected("token is not a well-formed JWT")
    try:
        header = jwt.get_unverified_header(id_token)
    except jwt.DecodeError as error:
        raise IdTokenRejected("token is not a well-formed JWT") from error
    if header.get("alg") not in ACCEPTED_ALGORITHMS:
        raise IdTokenRejected(
            "token algorithm is not accepted (" + ", ".join(ACCEPTED_ALGORITHMS) + ")"
        )
    if not isinstance(header.get("kid"), str):
        raise IdTokenRejected("token header names no key (kid)")
    return header


def _unverified_claims(id_token: str) -> dict[str, Any]:
    # Read only to choose the issuer's keys; trusted after the signature.
    try:
        return _claims_object(
            jwt.PyJWS().decode(id_token, options={"verify_signature": False})
        )
    except jwt.DecodeError as error:
        raise IdTokenRejected("token is not a well-formed JWT") from error


def _verified_claims(
    id_token: str, header: dict[str, Any], keys: dict[str, _SigningKey]
) -> dict[str, Any]:
    key = keys.get(header["kid"])
    if key is None:
        raise IdTokenRejected("token key id (kid) is not among the issuer's keys")
    algorithm = header["alg"]
    if not key.fits(algorithm):
        raise IdTokenRejected("token algorithm does not fit the issuer's key")
    try:
        payload = jwt.PyJWS().decode(id_token, key.public, algorithms=[algorithm])
    except jwt.InvalidSignatureError as error:
        raise IdTokenRejected("token signature does not verify") from error
    except jwt.InvalidTokenError as error:
        raise IdTokenRejected("token is not a well-formed JWT") from error
    return _claims_object(payload)


def _claims_object(payload: bytes) -> dict[str, Any]:
    try:
        claims = json.loads(payload)
    except ValueError as error:
        raise IdTokenRejected("token claims are not JSON") from error
    if not isinstance(claims, dict):
        raise IdTokenRejected("token claims are not a JSON object")
    return claims


def _number(claims: dict[str, Any], name: str) -> float:
    value = claims.get(name)
    if value is None:
        raise IdTokenRejected(f"token carries no '{name}' claim")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise IdTokenRejected(f"token claim '{name}' is not a time")
    return float(value)


def _check_nonce(claims: dict[str, Any], nonce: str) -> None:
    asserted = claims.get("nonce")
    if not isinstance(asserted, str):
        raise IdTokenRejected("token carries no nonce")
    if not hmac.compare_digest(asserted.encode(), nonce.encode()):
        raise IdTokenRejected("nonce does not match this letter's identification")


def _identity(claims: dict[str, Any], issuer: TrustedIssuer) -> AssertedIdentity:
    return AssertedIdentity(
        issuer=issuer.issuer,
        subject_digest=subject_digest(issuer.issuer, _text(claims, "sub")),
        given_name=_name(claims, "given_name"),
        family_name=_name(claims, "family_name"),
        birthdate=_birthdate(claims),
        company_id=_company_id(claims),
        assurance=_assurance(claims),
        qualified=issuer.qualified,
        usage_name=_usage_name(claims),
    )


def _text(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value.strip():
        raise IdTokenRejected(f"token carries no '{name}' claim")
    return value


def _name(claims: dict[str, Any], name: str) -> str:
    value = _text(claims, name)
    if check_name(value, name):
        raise IdTokenRejected(f"token claim '{name}' is not a printable name")
    return value


def _usage_name(claims: dict[str, Any]) -> str:
    # FranceConnect sends the usage name (nom d'usage) as preferred_username.
    if not claims.get("preferred_username"):
        return ""
    return _name(claims, "preferred_username")


def _birthdate(claims: dict[str, Any]) -> dt.date | None:
    # OpenID Connect allows a year alone or 0000 for an unknown year; such a
    # partial date is no date to compare with, so it counts as absent.
    value = claims.get("birthdate")
    if value is None:
        return None
    if not isinstance(value, str):
        raise IdTokenRejected("token claim 'birthdate' is not a string")
    if not FULL_DATE.fullmatch(value):
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        return None


def _company_id(claims: dict[str, Any]) -> str:
    for name, pattern in COMPANY_CLAIMS.items():
        value = claims.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise IdTokenRejected(f"token claim '{name}' is not a {name.upper()}")
        return value
    return ""


def _assurance(claims: dict[str, Any]) -> Assurance:
    acr = claims.get("acr")
    if acr is None:
        raise IdTokenRejected("token carries no level of assurance (acr)")
    level = ACR_LEVELS.get(acr) if isinstance(acr, str) else None
    if level is None:
        if isinstance(acr, str) and QUOTABLE.fullmatch(acr):
            raise IdTokenRejected(f"acr '{acr}' is not an eIDAS level")
        raise IdTokenRejected("acr is not an eIDAS level")
    return level
