"""PAdES sealing of PDF documents with the provider's seal key in the token.

Proof documents must carry the provider's advanced electronic seal (CPCE
R.53-2, eIDAS art. 44(1)(d)) in a form that independent tools validate, so
pli seals them as PAdES baseline signatures with pyHanko. The signature is
computed by the PKCS#11 token through pyHanko's ``PKCS11Signer``; the seal key
never leaves the token. The signer's certificate is read from the token (the
object labelled like the key) and the rest of its chain from the PEM copies
kept next to it (the key's installed chain, or the development root), so a
validator finds the whole chain inside the document. The key is the active
seal key (``pli.hsm.keys``): after a rotation the next seal uses the new key.

SoftHSM2 2.6 offers plain ``CKM_ECDSA`` but not ``CKM_ECDSA_SHA256``, so the
signer runs in pyHanko's raw mode: pyHanko hashes, the token signs the digest.
That works with every PKCS#11 token that holds an EC key.

Every seal is a PAdES baseline B-LT signature (ETSI EN 319 142-1): it
carries a signature time stamp from the configured TSA (RFC 3161, asked by
pyHanko through the time stamper pli hands it), and the document security
store (DSS) holds the certificates and CRLs of the seal and of the time
stamp, gathered offline by :mod:`pli.hsm.long_term`. The DSS is written in
the seal's own revision, so the seal stays the last revision and covers the
whole file. Before a seal is handed out it is checked to be complete: a
time stamp, a CRL, and the seal's and the TSA's certificates in the DSS. The
time stamper learns the TSA's certificates from its first stamp; when a
later stamp comes from another TSA certificate (the TSA's key was rotated),
the seal is made again with a fresh time stamper. A TSA that cannot stamp,
a token that is away or validation data that is missing fails the seal and
returns nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import pkcs11
from asn1crypto import x509
from pyhanko.config.pkcs11 import TokenCriteria
from pyhanko.keys import load_cert_from_pemder, load_certs_from_pemder
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign import fields, signers
from pyhanko.sign.general import (
    NonexistentAttributeError,
    SigningError,
    extract_certificate_info,
    find_unique_cms_attribute,
)
from pyhanko.sign.pkcs11 import PKCS11Signer, open_pkcs11_session
from pyhanko.sign.signers.pdf_signer import (
    DSSContentSettings,
    SigDSSPlacementPreference,
)
from pyhanko.sign.timestamps.api import TimeStamper
from pyhanko.sign.validation.dss import DocumentSecurityStore
from pyhanko.sign.validation.errors import NoDSSFoundError
from pyhanko_certvalidator.errors import PathError, ValidationError

from pli.domain.key_ceremony import KeyRole
from pli.hsm.keys import ActiveKeyWatcher
from pli.hsm.long_term import LongTermValidation, LongTermValidationUnavailable
from pli.hsm.provision import ROOT_CERT_FILE
from pli.hsm.token import PKCS11_LOCK, TokenConfig, TokenUnavailable

__all__ = [
    "SEAL_FIELD_NAME",
    "LongTermValidationUnavailable",
    "PdfSealer",
    "long_term_gaps",
]

logger = logging.getLogger(__name__)

SEAL_FIELD_NAME = "pli-seal"

# B-LT in one revision: the DSS goes in with the seal, which then covers it.
# (VRI dictionaries cannot be written before the signature exists.)
_DSS_WITH_SEAL = DSSContentSettings(
    placement=SigDSSPlacementPreference.TOGETHER_WITH_SIGNATURE, include_vri=False
)


class PdfSealer:
    """Seals PDF documents as PAdES B-LT with the seal key held in the token.

    One PKCS#11 session per sealer, opened on first use and shared by threads
    under a lock; any failure drops it, so the next call logs in afresh and a
    token that comes back after an outage is used again without a restart.
    When the process is already logged in to the token, the session joins
    that login instead of logging in again.

    ``timestamper`` makes the pyHanko time stamper that asks the configured
    TSA. pyHanko calls it while this sealer holds the process-wide PKCS#11
    lock, so a TSA that signs in this process's token must answer in the
    calling thread, never over this process's own HTTP server.
    """

    def __init__(
        self,
        config: TokenConfig,
        timestamper: Callable[[], TimeStamper],
        *,
        validation: LongTermValidation | None = None,
        key_label: str | None = None,
    ) -> None:
        self.config = config
        self.validation = validation or LongTermValidation(config.certs_dir)
        self._new_timestamper = timestamper
        self._timestamper: TimeStamper | None = None
        self._fixed_label = key_label
        self._watcher = ActiveKeyWatcher(config.certs_dir, KeyRole.SEAL)
        self.key_label = key_label or ""
        self._generation = -1
        self._lock = PKCS11_LOCK
        self._session: Any = None
        self._signer: PKCS11Signer | None = None
        self._chain_anchors: list[x509.Certificate] = []

    def seal(self, pdf: bytes, *, reason: str, location: str = "pli") -> bytes:
        """Return ``pdf`` with the provider's PAdES B-LT seal as its last revision."""
        with self._lock:
            sealed = self._seal(pdf, reason, location)
            gaps = long_term_gaps(sealed)
            if gaps:
                # The time stamper learnt the TSA's certificates from its first
                # stamp; after the TSA's key changed, a fresh one learns anew.
                logger.info(
                    "time stamper renewed token=%s key=%s",
                    self.config.token_label,
                    self.key_label,
                )
                self._timestamper = None
                sealed = self._seal(pdf, reason, location)
                gaps = long_term_gaps(sealed)
        if gaps:
            logger.error("seal lacks validation data key=%s", self.key_label)
            raise LongTermValidationUnavailable("; ".join(gaps))
        return sealed

    def _seal(self, pdf: bytes, reason: str, location: str) -> bytes:
        writer = IncrementalPdfFileWriter(BytesIO(pdf), strict=False)
        try:
            signer = self._signer_or_open()
            metadata = signers.PdfSignatureMetadata(
                field_name=SEAL_FIELD_NAME,
                reason=reason,
                location=location,
                md_algorithm="sha256",
                subfilter=fields.SigSeedSubFilter.PADES,
                embed_validation_info=True,
                validation_context=self.validation.context(self._chain_anchors),
                # pli hsm import-cert checked the leaf's key usage; here the
                # path and its revocation are what is checked.
                signer_key_usage=set(),
                dss_settings=_DSS_WITH_SEAL,
            )
            if self._timestamper is None:
                self._timestamper = self._new_timestamper()
            sealed = signers.sign_pdf(
                writer, metadata, signer=signer, timestamper=self._timestamper
            )
        except TokenUnavailable:
            self._drop()
            raise
        except (pkcs11.PKCS11Error, OSError) as exc:
            self._drop()
            logger.error(
                "seal failed token=%s key=%s error=%s",
                self.config.token_label,
                self.key_label,
                type(exc).__name__,
            )
            raise TokenUnavailable(type(exc).__name__) from exc
        except (SigningError, PathError, ValidationError) as exc:
            cause = exc if not isinstance(exc, SigningError) else exc.__cause__
            if not isinstance(cause, PathError | ValidationError):
                raise
            logger.error(
                "seal refused by its validation data key=%s error=%s",
                self.key_label,
                type(cause).__name__,
            )
            raise LongTermValidationUnavailable(str(cause)) from exc
        return sealed.getvalue()

    def close(self) -> None:
        """Close the session, if one is open."""
        with self._lock:
            self._drop()

    def _signer_or_open(self) -> PKCS11Signer:
        label, chain_source = self._target()
        if self._signer is not None and self._generation == self._watcher.generation:
            return self._signer

        self._drop()
        ca_chain = self._ca_chain(chain_source)
        # An installed chain that ends at a self-signed root (import-cert
        # checked its signature) names the operator's anchor: trust it too.
        self._chain_anchors = [c for c in ca_chain if c.self_issued]
        self.config.activate()
        session = self._open_session()
        self._session = session
        self.key_label = label
        self._generation = self._watcher.generation
        self._signer = PKCS11Signer(
            session,
            cert_label=self.key_label,
            key_label=self.key_label,
            ca_chain=ca_chain,
            embed_roots=True,
            use_raw_mechanism=True,
        )
        logger.info(
            "seal session opened token=%s key=%s module=%s",
            self.config.token_label,
            self.key_label,
            self.config.module,
        )
        return self._signer

    def _open_session(self) -> Any:
        criteria = TokenCriteria(label=self.config.token_label)
        pin = self.config.login_pin()
        try:
            return open_pkcs11_session(
                self.config.module, token_criteria=criteria, user_pin=pin
            )
        except pkcs11.PinIncorrect:
            self.config.reject_pin(pin)
            raise
        except pkcs11.UserAlreadyLoggedIn:
            # PKCS#11 keeps one login per process and token, shared by all its
            # sessions: when another part of pli (the event sealer) is logged
            # in, a second C_Login fails, and a new session joins that login.
            logger.info(
                "seal session joins the process login token=%s",
                self.config.token_label,
            )
            return open_pkcs11_session(self.config.module, token_criteria=criteria)

    def _target(self) -> tuple[str, Path | None]:
        if self._fixed_label is not None:
            return self._fixed_label, None
        active = self._watcher.current()
        return active.label, active.chain

    def _ca_chain(self, chain_source: Path | None) -> list[x509.Certificate]:
        if chain_source is None:
            path = self.config.certs_dir / ROOT_CERT_FILE
            try:
                return [load_cert_from_pemder(str(path))]
            except (OSError, ValueError) as exc:
                raise TokenUnavailable(f"root certificate unreadable ({path})") from exc
        try:
            chain = list(load_certs_from_pemder([str(chain_source)]))
        except (OSError, ValueError) as exc:
            raise TokenUnavailable(f"chain unreadable ({chain_source})") from exc
        return chain[1:]

    def _drop(self) -> None:
        session, self._session, self._signer = self._session, None, None
        if session is None:
            return
        try:
            session.close()
        except pkcs11.PKCS11Error:
            logger.warning(
                "seal session close failed token=%s", self.config.token_label
            )


def long_term_gaps(sealed: bytes) -> list[str]:
    """What a sealed PDF lacks to be B-LT; empty when its last seal is complete.

    The last signature must carry a signature time stamp, and the DSS must
    hold a CRL and the certificates of the seal and of the time stamp.
    """
    reader = PdfFileReader(BytesIO(sealed), strict=False)
    signature = reader.embedded_signatures[-1]
    try:
        dss = DocumentSecurityStore.read_dss(reader)
    except NoDSSFoundError:
        return ["no document security store"]
    held = {certificate.sha256 for certificate in dss.load_certs()}
    gaps = [] if dss.crls else ["no CRL in the document security store"]
    signers_of = [("seal", signature.signer_cert)]
    try:
        stamp = find_unique_cms_attribute(
            signature.signer_info["unsigned_attrs"], "signature_time_stamp_token"
        )
    except NonexistentAttributeError:
        return [*gaps, "no signature time stamp"]
    signers_of.append(("TSA", extract_certificate_info(stamp["content"]).signer_cert))
    for role, certificate in signers_of:
        if certificate.sha256 not in held:
            gaps.append(f"the {role} certificate is not in the DSS")
    return gaps
