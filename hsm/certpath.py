"""Certificate paths for time stamps: TSA profile and chain to a trust anchor.

RFC 3161 §2.3 fixes the TSA certificate's profile: exactly one extended key
usage, id-kp-timeStamping, marked critical. The path from it to one of the
trust anchors the caller names is built from the certificates the token
carries and checked as RFC 5280 §6 asks where a time stamp depends on it:
each signature, each issuer a CA allowed to sign certificates within its
path length, each certificate valid at the stamped time, and no critical
extension these checks do not understand.

Revocation and certificate policies are not processed: no CRL or OCSP
answer is required and no policy tree is built.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

__all__ = [
    "BadCertificatePath",
    "chain_to_anchor",
    "check_tsa_certificate",
    "issued_by",
]

_MAX_CHAIN = 8
# Critical extensions whose meaning is honoured here, or that restrict
# nothing a time stamp relies on; any other critical extension is refused.
_UNDERSTOOD_CRITICAL = {
    ExtensionOID.BASIC_CONSTRAINTS,
    ExtensionOID.KEY_USAGE,
    ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.CERTIFICATE_POLICIES,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
}


class BadCertificatePath(Exception):
    """A certificate or its path failed a check; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_tsa_certificate(certificate: x509.Certificate, at: dt.datetime) -> None:
    """Check the TSA certificate's profile and its validity at ``at``."""
    extensions = _extensions(certificate)
    try:
        usage = extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound as exc:
        raise BadCertificatePath("TSA certificate has no extended key usage") from exc
    if not usage.critical:
        raise BadCertificatePath("TSA certificate's extended key usage is not critical")
    if list(usage.value) != [ExtendedKeyUsageOID.TIME_STAMPING]:
        raise BadCertificatePath("TSA certificate's key usage is not timeStamping only")
    key_usage = _key_usage(extensions)
    if key_usage is not None and not (
        key_usage.digital_signature or key_usage.content_commitment
    ):
        raise BadCertificatePath("TSA certificate's key usage does not allow signing")
    _check_valid_at(certificate, at)


def chain_to_anchor(
    certificate: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    at: dt.datetime,
) -> x509.Certificate:
    """Build and check a path from ``certificate`` to an anchor; return the anchor."""
    path = [certificate]
    for _ in range(_MAX_CHAIN):
        current = path[-1]
        for anchor in anchors:
            if current == anchor:
                return anchor
            if issued_by(current, anchor):
                _check_issuer(anchor, at, below=len(path) - 1, anchor=True)
                return anchor
        issuer = next(
            (c for c in intermediates if c not in path and issued_by(current, c)),
            None,
        )
        if issuer is None:
            raise BadCertificatePath("no chain to a trusted root")
        _check_issuer(issuer, at, below=len(path) - 1)
        path.append(issuer)
    raise BadCertificatePath("certificate chain too long")


def _extensions(certificate: x509.Certificate) -> x509.Extensions:
    try:
        extensions = certificate.extensions
    except ValueError as exc:
        raise BadCertificatePath("certificate extensions unreadable") from exc
    for extension in extensions:
        if extension.critical and extension.oid not in _UNDERSTOOD_CRITICAL:
            raise BadCertificatePath(
                "certificate has an unsupported critical extension "
                f"{extension.oid.dotted_string}"
            )
    return extensions


def _key_usage(extensions: x509.Extensions) -> x509.KeyUsage | None:
    try:
        return extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def _check_valid_at(certificate: x509.Certificate, at: dt.datetime) -> None:
    if not certificate.not_valid_before_utc <= at <= certificate.not_valid_after_utc:
        raise BadCertificatePath(
            f"certificate {certificate.subject.rfc4514_string()} "
            "not valid at the stamped time"
        )


def issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    """Whether ``parent`` signed ``child`` (names and signature agree)."""
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _check_issuer(
    certificate: x509.Certificate, at: dt.datetime, *, below: int, anchor: bool = False
) -> None:
    """An issuing certificate: a CA allowed to sign certificates, valid at ``at``.

    ``below`` counts the intermediate CAs between it and the TSA certificate,
    which its path length constraint limits (RFC 5280 §4.2.1.9). A trust
    anchor is trusted by configuration, so it may lack basic constraints.
    """
    extensions = _extensions(certificate)
    try:
        constraints = extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound as exc:
        if not anchor:
            raise BadCertificatePath("issuing certificate is not marked CA") from exc
        constraints = x509.BasicConstraints(ca=True, path_length=None)
    if not constraints.ca:
        raise BadCertificatePath("issuing certificate is not a CA")
    if constraints.path_length is not None and below > constraints.path_length:
        raise BadCertificatePath("path length constraint exceeded")
    key_usage = _key_usage(extensions)
    if key_usage is not None and not key_usage.key_cert_sign:
        raise BadCertificatePath("issuing certificate may not sign certificates")
    _check_valid_at(certificate, at)
