"""Checking the one signer of a CMS SignedData (RFC 5652) without any key.

The checks a verifier of a time-stamp token (or of any CMS signature with
signed attributes) owes: the signer's certificate is found by its
identifier among the embedded certificates; the signed attributes carry one
content-type equal to the encapsulated type and one message-digest of the
encapsulated content (RFC 5652 §5.3, §11); an ESS signing-certificate
(RFC 2634) or signing-certificate-v2 (RFC 5816) attribute names that very
certificate; an algorithm-protection attribute (RFC 6211), when present,
names the algorithms used; and the signature over the attributes verifies
with the certificate's public key (ECDSA, RSA PKCS#1 v1.5, RSA-PSS or
Ed25519, with SHA-256, SHA-384 or SHA-512).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from asn1crypto import algos, cms, core, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from pli.hsm.cms import signed_attributes_der

__all__ = ["BadSignedData", "check_signer", "same_name", "signer_certificate"]

HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_ASN1_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError)


class BadSignedData(Exception):
    """The signer of a SignedData failed a check; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def signer_certificate(
    signer_info: cms.SignerInfo, certificates: list[asn1_x509.Certificate]
) -> asn1_x509.Certificate:
    """The embedded certificate the signer identifier points at."""
    sid = signer_info["sid"]
    for certificate in certificates:
        if sid.name == "issuer_and_serial_number":
            chosen = sid.chosen
            if (
                certificate.serial_number == chosen["serial_number"].native
                and certificate.issuer == chosen["issuer"]
            ):
                return certificate
        elif certificate.key_identifier == sid.chosen.native:
            return certificate
    raise BadSignedData("signer certificate not in the token")


def check_signer(
    signer_info: cms.SignerInfo,
    *,
    content_type: str,
    content: bytes,
    certificate: asn1_x509.Certificate,
) -> None:
    """Check the signed attributes and the signature of ``signer_info``."""
    try:
        # The bytes as received, taken before reading the attributes: the
        # signature covers them, and asn1crypto would re-encode them after.
        signed = signed_attributes_der(signer_info["signed_attrs"])
        _check_signer_info(signer_info)
        _check_signed_attributes(signer_info, content_type, content, certificate)
        public_key = x509.load_der_x509_certificate(certificate.dump()).public_key()
        _check_signature(signer_info, public_key, signed)
    except (*_ASN1_ERRORS, x509.InvalidVersion) as exc:
        raise BadSignedData("signer information unreadable") from exc


def same_name(one: asn1_x509.Name, other: asn1_x509.Name) -> bool:
    """RFC 5280 §7.1 name matching, with identical encodings decided at once.

    asn1crypto's comparison prepares every string (RFC 4518), which costs
    more than the rest of a token's checks; equal DER needs none of it.
    """
    return one.untag().dump() == other.untag().dump() or one == other


def hash_name(name: str) -> str:
    """``name`` if it is a digest algorithm these checks accept."""
    if name not in HASHES:
        raise BadSignedData(f"digest algorithm {name} not accepted")
    return name


def _check_signer_info(signer_info: cms.SignerInfo) -> None:
    # RFC 5652 §5.3: version 1 goes with an issuer and serial number, 3 with
    # a subject key identifier.
    by_name = signer_info["sid"].name == "issuer_and_serial_number"
    if signer_info["version"].native != ("v1" if by_name else "v3"):
        raise BadSignedData("signer version does not fit its identifier")
    # RFC 5754 §2: SHA-2 parameters are absent or NULL.
    if signer_info["digest_algorithm"]["parameters"].native is not None:
        raise BadSignedData("digest algorithm has parameters")


def _single_attribute(attrs: cms.CMSAttributes, name: str) -> object | None:
    found = [a for a in attrs if a["type"].native == name]
    if not found:
        return None
    if len(found) > 1 or len(found[0]["values"]) != 1:
        raise BadSignedData(f"signed attribute {name} must have one value")
    return found[0]["values"][0]


def _check_signed_attributes(
    signer_info: cms.SignerInfo,
    content_type: str,
    content: bytes,
    certificate: asn1_x509.Certificate,
) -> None:
    attrs = signer_info["signed_attrs"]
    if isinstance(attrs, core.Void) or not len(attrs):
        raise BadSignedData("no signed attributes")

    declared = _single_attribute(attrs, "content_type")
    if declared is None or declared.native != content_type:
        raise BadSignedData(f"content-type attribute is not {content_type}")

    digest_name = hash_name(signer_info["digest_algorithm"]["algorithm"].native)
    message_digest = _single_attribute(attrs, "message_digest")
    expected = hashlib.new(digest_name, content).digest()
    if message_digest is None or message_digest.native != expected:
        raise BadSignedData("message-digest attribute does not match the content")

    _check_algorithm_protection(attrs, signer_info)
    _check_signing_certificate(attrs, certificate)


def _check_algorithm_protection(
    attrs: cms.CMSAttributes, signer_info: cms.SignerInfo
) -> None:
    protection = _single_attribute(attrs, "cms_algorithm_protection")
    if protection is None:
        return
    digest = protection["digest_algorithm"]["algorithm"].native
    signature = protection["signature_algorithm"]["algorithm"].native
    if (
        digest != signer_info["digest_algorithm"]["algorithm"].native
        or signature != signer_info["signature_algorithm"]["algorithm"].native
    ):
        raise BadSignedData("algorithm-protection attribute contradicts the signer")


def _check_signing_certificate(
    attrs: cms.CMSAttributes, certificate: asn1_x509.Certificate
) -> None:
    v2 = _single_attribute(attrs, "signing_certificate_v2")
    v1 = _single_attribute(attrs, "signing_certificate")
    if v1 is None and v2 is None:
        raise BadSignedData("no ESS signing-certificate attribute")
    der = certificate.dump()
    if v2 is not None:
        cert_id = v2["certs"][0]
        name = hash_name(cert_id["hash_algorithm"]["algorithm"].native)
        if cert_id["cert_hash"].native != hashlib.new(name, der).digest():
            raise BadSignedData("ESS signing-certificate-v2 names another certificate")
        _check_issuer_serial(cert_id["issuer_serial"], certificate)
    if v1 is not None:
        cert_id = v1["certs"][0]
        # RFC 2634 names the certificate by its SHA-1 hash: an identifier here,
        # not a signature, so SHA-1 is what the attribute has to be compared by.
        if cert_id["cert_hash"].native != hashlib.sha1(der).digest():
            raise BadSignedData("ESS signing-certificate names another certificate")
        _check_issuer_serial(cert_id["issuer_serial"], certificate)


def _check_issuer_serial(
    issuer_serial: tsp.IssuerSerial, certificate: asn1_x509.Certificate
) -> None:
    if isinstance(issuer_serial, core.Void) or issuer_serial.native is None:
        return
    names = [n.chosen for n in issuer_serial["issuer"] if n.name == "directory_name"]
    if issuer_serial["serial_number"].native != certificate.serial_number or not any(
        same_name(name, certificate.issuer) for name in names
    ):
        raise BadSignedData("ESS signing-certificate issuer and serial mismatch")


def _check_signature(
    signer_info: cms.SignerInfo, public_key: object, data: bytes
) -> None:
    signature = signer_info["signature"].native
    algorithm: algos.SignedDigestAlgorithm = signer_info["signature_algorithm"]
    kind = algorithm.signature_algo
    try:
        name = algorithm.hash_algo
    except ValueError:
        name = signer_info["digest_algorithm"]["algorithm"].native
    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey) and kind == "ed25519":
            public_key.verify(signature, data)
            return
        chosen = HASHES[hash_name(name)]()
        if isinstance(public_key, ec.EllipticCurvePublicKey) and kind == "ecdsa":
            public_key.verify(signature, data, ec.ECDSA(chosen))
        elif isinstance(public_key, rsa.RSAPublicKey) and kind == "rsassa_pkcs1v15":
            public_key.verify(signature, data, padding.PKCS1v15(), chosen)
        elif isinstance(public_key, rsa.RSAPublicKey) and kind == "rsassa_pss":
            public_key.verify(signature, data, _pss(algorithm), chosen)
        else:
            raise BadSignedData(f"signature algorithm {kind} does not fit the key")
    except (InvalidSignature, UnsupportedAlgorithm) as exc:
        raise BadSignedData("signature invalid") from exc


def _pss(algorithm: algos.SignedDigestAlgorithm) -> padding.PSS:
    params = algorithm["parameters"]
    mgf_hash = params["mask_gen_algorithm"]["parameters"]["algorithm"].native
    return padding.PSS(
        mgf=padding.MGF1(HASHES[hash_name(mgf_hash)]()),
        salt_length=params["salt_length"].native,
    )
