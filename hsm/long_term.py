"""Offline validation data for long-term PDF seals (PAdES baseline B-LT).

A proof must still validate years after its certificates expired and their
CA stopped answering, so every seal is a PAdES baseline B-LT signature (ETSI
EN 319 142-1): the document's security store (DSS) carries the certificates
and the revocation data of the seal and of its signature time stamp. pyHanko
collects them while it validates both certificates before signing; this
module hands it what to validate against, read from the certificates folder
and never fetched: the trust anchors pli is configured with (the development
root always among them) and every CRL kept there as ``*.crl`` (the
development root's ``root.crl``, and the CRLs an operator puts there for its
own CAs). A seal therefore never waits on the network, and what the DSS
records is exactly what pli checked.

Every end-entity and intermediate certificate on those paths needs a CRL of
its issuer that is current now; without one (or when it lists the
certificate) sealing fails with :class:`LongTermValidationUnavailable` and
nothing is sealed. Revocation data is accepted whatever its ``thisUpdate``
(``retroactive_revinfo``): pli's chains revoke for good, never on hold, so
a CRL issued a moment later than the clock that asks (a CA whose clock runs
ahead, a development clock set in the past) says the same about now. The
development root's CRL is reissued by the token once half its validity has
passed, as ``pli hsm init`` does, so the embedded default keeps sealing; an
operator's CRLs are the operator's to keep current.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from asn1crypto import crl as asn1_crl
from asn1crypto import pem
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from pyhanko_certvalidator import ValidationContext
from pyhanko_certvalidator.policy_decl import (
    CertRevTrustPolicy,
    RevocationCheckingPolicy,
    RevocationCheckingRule,
)

from pli.hsm.provision import ROOT_CERT_FILE, ROOT_CRL_FILE, refresh_crl
from pli.hsm.token import Token, TokenUnavailable

__all__ = [
    "CRL_SUFFIX",
    "REVOCATION_POLICY",
    "LongTermValidation",
    "LongTermValidationUnavailable",
]

logger = logging.getLogger(__name__)

CRL_SUFFIX = ".crl"

# ETSI EN 319 142-1 B-LT: revocation data for every certificate of the paths
# except the trust anchors; pli embeds CRLs (OCSP answers cannot be had offline).
REVOCATION_POLICY = CertRevTrustPolicy(
    RevocationCheckingPolicy(
        ee_certificate_rule=RevocationCheckingRule.CRL_REQUIRED,
        intermediate_ca_cert_rule=RevocationCheckingRule.CRL_REQUIRED,
    ),
    retroactive_revinfo=True,
)


class LongTermValidationUnavailable(TokenUnavailable):
    """The seal's validation data is missing or refuses it; nothing is sealed.

    A CRL missing, stale, unreadable or listing the certificate, or a path to
    no trust anchor: sealing stays impossible until the certificates folder
    is put right, like a token that is away.
    """


class LongTermValidation:
    """The trust anchors and CRLs a B-LT seal is validated and archived with."""

    def __init__(
        self,
        certs_dir: Path,
        trust_roots: Sequence[x509.Certificate] = (),
        *,
        token: Token | None = None,
    ) -> None:
        self.certs_dir = certs_dir
        self.trust_roots = list(trust_roots)
        self._token = token

    def context(
        self, extra_roots: Iterable[asn1_x509.Certificate] = ()
    ) -> ValidationContext:
        """A context that fetches nothing and needs a CRL for each non-anchor."""
        development = self._development_root()
        if self._token is not None:
            refresh_crl(self._token, development, self.certs_dir / ROOT_CRL_FILE)
        anchors: dict[bytes, asn1_x509.Certificate] = {}
        for certificate in [development, *self.trust_roots]:
            loaded = asn1_x509.Certificate.load(certificate.public_bytes(Encoding.DER))
            anchors[loaded.sha256] = loaded
        for loaded in extra_roots:
            anchors[loaded.sha256] = loaded
        return ValidationContext(
            trust_roots=list(anchors.values()),
            crls=self.crls(),
            allow_fetching=False,
            revinfo_policy=REVOCATION_POLICY,
        )

    def crls(self) -> list[asn1_crl.CertificateList]:
        """Every CRL of the certificates folder (DER or PEM), in name order."""
        found = []
        for path in sorted(self.certs_dir.glob(f"*{CRL_SUFFIX}")):
            try:
                data = path.read_bytes()
                if pem.detect(data):
                    _, _, data = pem.unarmor(data)
                crl = asn1_crl.CertificateList.load(data)
                crl.native  # noqa: B018 - parses every field now, not while sealing
            except (OSError, ValueError, TypeError) as exc:
                logger.error("CRL unreadable file=%s", path.name)
                raise LongTermValidationUnavailable(
                    f"CRL unreadable ({path.name})"
                ) from exc
            found.append(crl)
        return found

    def _development_root(self) -> x509.Certificate:
        path = self.certs_dir / ROOT_CERT_FILE
        try:
            return x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise LongTermValidationUnavailable(
                f"development root unreadable ({path})"
            ) from exc
