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

The signature carries no time stamp yet; the signing time in it is the
server's clock, which is not qualified.
"""

from __future__ import annotations

import logging
from io import BytesIO
from pathlib import Path
from typing import Any

import pkcs11
from asn1crypto import x509
from pyhanko.config.pkcs11 import TokenCriteria
from pyhanko.keys import load_cert_from_pemder, load_certs_from_pemder
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.sign import fields, signers
from pyhanko.sign.pkcs11 import PKCS11Signer, open_pkcs11_session

from pli.domain.key_ceremony import KeyRole
from pli.hsm.keys import ActiveKeyWatcher
from pli.hsm.provision import ROOT_CERT_FILE
from pli.hsm.token import PKCS11_LOCK, TokenConfig, TokenUnavailable

__all__ = ["SEAL_FIELD_NAME", "PdfSealer"]

logger = logging.getLogger(__name__)

SEAL_FIELD_NAME = "pli-seal"


class PdfSealer:
    """Seals PDF documents as PAdES with the seal key held in the token.

    One PKCS#11 session per sealer, opened on first use and shared by threads
    under a lock; any failure drops it, so the next call logs in afresh and a
    token that comes back after an outage is used again without a restart.
    When the process is already logged in to the token, the session joins
    that login instead of logging in again.
    """

    def __init__(self, config: TokenConfig, *, key_label: str | None = None) -> None:
        self.config = config
        self._fixed_label = key_label
        self._watcher = ActiveKeyWatcher(config.certs_dir, KeyRole.SEAL)
        self.key_label = key_label or ""
        self._generation = -1
        self._lock = PKCS11_LOCK
        self._session: Any = None
        self._signer: PKCS11Signer | None = None

    def seal(self, pdf: bytes, *, reason: str, location: str = "pli") -> bytes:
        """Return ``pdf`` with the provider's PAdES seal as its last revision."""
        metadata = signers.PdfSignatureMetadata(
            field_name=SEAL_FIELD_NAME,
            reason=reason,
            location=location,
            md_algorithm="sha256",
            subfilter=fields.SigSeedSubFilter.PADES,
        )
        writer = IncrementalPdfFileWriter(BytesIO(pdf), strict=False)

        with self._lock:
            try:
                signer = self._signer_or_open()
                sealed = signers.sign_pdf(writer, metadata, signer=signer)
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
