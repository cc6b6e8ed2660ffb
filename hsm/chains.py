"""Checking an operator's certificate chain before it is installed for a key.

A chain is a PEM file, leaf first. It may be installed for a token key only
when its leaf certifies that key, each certificate is issued by the next (a
CA), up to the last; the leaf is valid now and can sign; and a time-stamping
unit's leaf carries exactly one extended key usage, id-kp-timeStamping,
marked critical (RFC 3161 §2.3). Each way a chain can fail has its own
exception, so the command says exactly what is wrong and changes nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from pli.domain.key_ceremony import KeyRole
from pli.hsm.certpath import issued_by

__all__ = [
    "BrokenChain",
    "CertificateProblem",
    "MissingTimeStampingUsage",
    "NotTheTokenKey",
    "UnreadableChain",
    "UnsuitableCertificate",
    "check_chain",
    "fingerprint",
    "UntrustedChain",
    "is_development_chain",
    "links_up_to",
    "read_chain",
    "spki_key_id",
]


class CertificateProblem(ValueError):
    """A certificate chain cannot be installed; nothing was changed."""


class UntrustedChain(CertificateProblem):
    """The chain does not lead to a root that the chain's users trust."""


class UnreadableChain(CertificateProblem):
    """The file holds no PEM certificate, or something else."""


class NotTheTokenKey(CertificateProblem):
    """The leaf certifies a public key that is not the token key's."""


class BrokenChain(CertificateProblem):
    """A certificate is not issued by the next one, or an issuer is no CA."""


class MissingTimeStampingUsage(CertificateProblem):
    """A TSA certificate lacks the one critical id-kp-timeStamping usage."""


class UnsuitableCertificate(CertificateProblem):
    """The leaf is outside its validity period or cannot seal."""


def fingerprint(certificate: x509.Certificate) -> str:
    """The certificate's SHA-256 fingerprint, in hex."""
    return certificate.fingerprint(hashes.SHA256()).hex()


def spki_key_id(public_key: CertificatePublicKeyTypes) -> str:
    """The key id seals use: SHA-256 of the SubjectPublicKeyInfo, in hex."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def is_development_chain(
    chain: list[x509.Certificate], root: x509.Certificate | None
) -> bool:
    """Whether the chain ends at (or just below) the development root."""
    if root is None or not chain:
        return False
    last = chain[-1]
    return last == root or issued_by(last, root)


def read_chain(pem: bytes) -> list[x509.Certificate]:
    """The certificates of a PEM file, in file order (leaf first)."""
    try:
        chain = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise UnreadableChain(
            "the file holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ) from exc
    return chain


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        constraints = certificate.extensions.get_extension_for_class(
            x509.BasicConstraints
        )
    except x509.ExtensionNotFound:
        return False
    return constraints.value.ca


def links_up_to(
    chain: list[x509.Certificate], roots: list[x509.Certificate]
) -> bool:
    """Whether ``chain`` (leaf first) links up to one of ``roots``.

    Every certificate must be issued by the next, and the last must be one of
    the roots or be issued by one.
    """
    if not chain or not roots:
        return False
    for child, parent in zip(chain, chain[1:], strict=False):
        if not issued_by(child, parent):
            return False
    last = chain[-1]
    return any(last == root or issued_by(last, root) for root in roots)


def check_chain(
    chain: list[x509.Certificate],
    public_key: CertificatePublicKeyTypes,
    role: KeyRole,
    label: str,
    at: dt.datetime,
) -> None:
    """Raise a CertificateProblem unless ``chain`` may be installed for the key."""
    leaf = chain[0]
    if spki_key_id(leaf.public_key()) != spki_key_id(public_key):
        raise NotTheTokenKey(
            f"the first certificate ({leaf.subject.rfc4514_string()}) does not "
            f"certify the token key {label}; the leaf must come first and carry "
            "the public key of the request made with pli hsm csr"
        )
    links = zip(chain, chain[1:], strict=False)
    for position, (child, parent) in enumerate(links, start=1):
        if not _is_ca(parent) or not issued_by(child, parent):
            raise BrokenChain(
                f"certificate {position} ({child.subject.rfc4514_string()}) is not "
                f"issued by certificate {position + 1} "
                f"({parent.subject.rfc4514_string()}), or that one is no CA"
            )
    last = chain[-1]
    if last.issuer == last.subject and len(chain) > 1 and not issued_by(last, last):
        raise BrokenChain("the last certificate's self-signature does not verify")
    if not leaf.not_valid_before_utc <= at <= leaf.not_valid_after_utc:
        raise UnsuitableCertificate(
            f"the leaf is valid from {leaf.not_valid_before_utc.isoformat()} to "
            f"{leaf.not_valid_after_utc.isoformat()}, not now"
        )
    if _is_ca(leaf):
        raise UnsuitableCertificate("the leaf is a CA certificate")
    if role is KeyRole.TSA:
        _check_time_stamping_usage(leaf)
    else:
        _check_seal_usage(leaf)


def _check_time_stamping_usage(leaf: x509.Certificate) -> None:
    # RFC 3161 §2.3: exactly one extended key usage, id-kp-timeStamping, critical.
    try:
        usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        usage = None
    if (
        usage is None
        or not usage.critical
        or list(usage.value) != [ExtendedKeyUsageOID.TIME_STAMPING]
    ):
        raise MissingTimeStampingUsage(
            "a TSA certificate must carry one critical extended key usage, "
            "id-kp-timeStamping (RFC 3161 §2.3)"
        )


def _check_seal_usage(leaf: x509.Certificate) -> None:
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not (usage.digital_signature or usage.content_commitment):
        raise UnsuitableCertificate(
            "the leaf's key usage allows neither digitalSignature nor "
            "nonRepudiation, so it cannot seal"
        )
