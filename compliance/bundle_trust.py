"""Which certificates of a bundle the verifier trusts, and why.

A bundle carries the provider's certificates (``certs/*.pem``, older rotated
seal certificates included) and any revocation lists (``certs/*.crl``). The
trust anchor is the bundle's root (a self-signed CA certificate in it) or,
with ``--trust``, a root the auditor holds; either way the report shows the
anchor's SHA-256 fingerprint so the auditor compares it out of band. A seal
certificate is trusted only if its path to the anchor validates (pyHanko's
certificate validator, offline: no fetching, the bundle's CRLs only) and its
key usage allows signing, so a certificate slipped into the bundle cannot
vouch for forged seals; a TSA certificate (extended key usage timeStamping)
never counts as one. A bundle with more than one root is a fault unless the
auditor names the provider's root with ``--trust``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field

from asn1crypto import crl as asn1_crl
from asn1crypto import pem as asn1_pem
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from pyhanko_certvalidator import CertificateValidator, ValidationContext
from pyhanko_certvalidator.errors import PathError, ValidationError

from pli.compliance.bundle_format import CERTS_DIR
from pli.compliance.bundle_io import BundleReader, Findings
from pli.hsm.seal import SealVerifier, key_id_of

__all__ = ["BundleTrust", "fingerprint", "is_tsa_certificate", "load_trust_root"]

PART = "certificates"
_MAX_CERT_FILE = 1024 * 1024


def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, as ``openssl x509 -fingerprint`` shows it."""
    digest = certificate.fingerprint(hashes.SHA256()).hex().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def load_trust_root(data: bytes) -> x509.Certificate:
    """The auditor's root certificate, PEM or DER; raises ValueError."""
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def _is_root(certificate: x509.Certificate) -> bool:
    try:
        constraints = certificate.extensions.get_extension_for_class(
            x509.BasicConstraints
        ).value
    except x509.ExtensionNotFound:
        return False
    if not constraints.ca or certificate.subject != certificate.issuer:
        return False
    try:
        certificate.verify_directly_issued_by(certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def is_tsa_certificate(certificate: x509.Certificate) -> bool:
    """Whether the certificate is a TSA's: its extended key usage is timeStamping."""
    try:
        usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.TIME_STAMPING in usage.value


def _may_seal(certificate: x509.Certificate) -> bool:
    """Whether the certificate's key may seal: an end entity with that usage.

    A TSA's key signs time stamps only (RFC 3161 §2.3), never events.
    """
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return False
    if is_tsa_certificate(certificate):
        return False
    return usage.digital_signature or usage.content_commitment


def _asn1(certificate: x509.Certificate) -> asn1_x509.Certificate:
    der = certificate.public_bytes(serialization.Encoding.DER)
    return asn1_x509.Certificate.load(der)


@dataclass
class BundleTrust:
    """The anchor, every certificate of the bundle, and the trusted seal keys."""

    anchors: list[x509.Certificate]
    anchor_source: str
    by_key_id: dict[str, x509.Certificate] = field(default_factory=dict)
    certificate_files: dict[str, x509.Certificate] = field(default_factory=dict)
    crls: list[asn1_crl.CertificateList] = field(default_factory=list)
    trusted_key_ids: set[str] = field(default_factory=set)

    @classmethod
    def build(
        cls,
        bundle: BundleReader,
        trust_root: x509.Certificate | None,
        findings: Findings,
    ) -> BundleTrust:
        """Read the bundle's certificates and decide which seal keys to trust."""
        files, crls = _read_certificates(bundle, findings)
        roots = [c for c in files.values() if _is_root(c)]
        if trust_root is not None:
            trust = cls([trust_root], "given with --trust", crls=crls)
            if not any(r == trust_root for r in roots):
                findings.fault(
                    PART,
                    CERTS_DIR,
                    "the bundle's root is not the root given with --trust",
                )
        else:
            trust = cls(roots, "the bundle's own root", crls=crls)
            if len(roots) != 1:
                findings.fault(
                    PART,
                    CERTS_DIR,
                    f"the bundle holds {len(roots)} root certificates where one is "
                    "the provider's: give the provider's root with --trust",
                )
        trust.certificate_files = files
        for path, certificate in files.items():
            if certificate in roots:
                continue
            key_id = key_id_of(certificate)
            trust.by_key_id[key_id] = certificate
            reason = trust._path_problem(certificate)
            if reason:
                findings.fault(PART, path, reason)
            elif _may_seal(certificate):
                trust.trusted_key_ids.add(key_id)
        for anchor in trust.anchors:
            findings.note(PART, "trust anchor", anchor.subject.rfc4514_string())
            findings.note(PART, "trust anchor source", trust.anchor_source)
            findings.note(PART, "trust anchor SHA-256 fingerprint", fingerprint(anchor))
        findings.note(PART, "seal certificates trusted", len(trust.trusted_key_ids))
        tsa = [c for c in files.values() if is_tsa_certificate(c)]
        findings.note(PART, "TSA certificates", len(tsa))
        return trust

    def seal_verifier(self) -> SealVerifier:
        """A verifier that knows only the seal keys whose path validated."""
        return SealVerifier([self.by_key_id[k] for k in sorted(self.trusted_key_ids)])

    def asn1_anchors(self) -> list[asn1_x509.Certificate]:
        """The anchors as pyHanko wants them."""
        return [_asn1(a) for a in self.anchors]

    def validation_context(self, moment: dt.datetime | None) -> ValidationContext:
        """An offline validation context: the anchors, the bundle's certificates."""
        return ValidationContext(
            trust_roots=self.asn1_anchors(),
            other_certs=[_asn1(c) for c in self.certificate_files.values()],
            crls=self.crls,
            allow_fetching=False,
            moment=moment,
            # A CRL issued after that moment still says the certificate was
            # not revoked then; an auditor checks old seals with today's CRL.
            retroactive_revinfo=True,
        )

    def verify_signature(self, key_id: str, signature: bytes, data: bytes) -> str:
        """Check a detached seal over ``data``; return what is wrong, or ''."""
        certificate = self.by_key_id.get(key_id)
        if certificate is None:
            return f"sealed by key {key_id}, which no certificate in the bundle holds"
        if key_id not in self.trusted_key_ids:
            return (
                "sealed by a certificate that does not chain to the trust anchor "
                "or may not seal"
            )
        public_key = certificate.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            return "the seal certificate's key is not an EC key"
        try:
            public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return "the seal does not verify"
        return ""

    def _path_problem(self, certificate: x509.Certificate) -> str:
        if not self.anchors:
            return "no trust anchor to validate this certificate against"
        # Rotated seal certificates may have expired since; their path is
        # checked as it stood when they were issued.
        moment = certificate.not_valid_before_utc + dt.timedelta(minutes=1)
        validator = CertificateValidator(
            _asn1(certificate), validation_context=self.validation_context(moment)
        )
        try:
            asyncio.run(validator.async_validate_path())
        except ValidationError as exc:
            return f"does not chain to the trust anchor ({exc.failure_msg})"
        except PathError as exc:
            return f"does not chain to the trust anchor ({exc})"
        return ""


def _read_certificates(
    bundle: BundleReader, findings: Findings
) -> tuple[dict[str, x509.Certificate], list[asn1_crl.CertificateList]]:
    files: dict[str, x509.Certificate] = {}
    crls: list[asn1_crl.CertificateList] = []
    for path in bundle.members(CERTS_DIR):
        try:
            data = bundle.read(path, _MAX_CERT_FILE)
            if path.endswith(".pem"):
                files[path] = x509.load_pem_x509_certificate(data)
            elif path.endswith(".crl"):
                crls.append(_load_crl(data))
        except (ValueError, TypeError, OSError) as exc:
            findings.fault(PART, path, f"unreadable ({exc.__class__.__name__})")
    findings.note(PART, "certificates", len(files))
    findings.note(PART, "revocation lists", len(crls))
    return files, crls


def _load_crl(data: bytes) -> asn1_crl.CertificateList:
    if asn1_pem.detect(data):
        _, _, data = asn1_pem.unarmor(data)
    certificate_list = asn1_crl.CertificateList.load(data)
    _ = certificate_list.native  # parse it all now, not while validating
    return certificate_list
