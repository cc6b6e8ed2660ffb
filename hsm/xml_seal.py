"""Enveloped XML signatures (XMLDSig) made with the seal key in the token.

pli's ETSI REM evidence documents (``pli.services.etsi_evidence``) carry the
provider's advanced seal as an enveloped ``ds:Signature``, the last child of
the evidence element, so that any XMLDSig validator (``xmlsec1``, Apache
Santuario, DSS) checks them with the seal certificate alone. The profile is
the one those validators share, from W3C XML Signature 1.1:

- one ``ds:Reference`` with ``URI=""`` (the whole document), the
  enveloped-signature transform and exclusive canonicalisation
  (``xml-exc-c14n#``, no comments), digested with SHA-256;
- ``ds:SignedInfo`` canonicalised the same way and signed with ECDSA P-256
  over SHA-256 (RFC 4051 ``ecdsa-sha256``). The token returns a DER
  signature; XMLDSig wants the two integers r and s, each 32 bytes,
  concatenated (RFC 4050 section 3.3);
- ``ds:KeyInfo`` with the seal certificate and the certificates up to the
  root, so a validator that trusts the root needs nothing else.

The private key never leaves the token: this module builds the bytes to be
signed and hands them to :meth:`pli.hsm.token.Token.sign_ecdsa_sha256`.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from lxml import etree

from pli.hsm.certpath import issued_by
from pli.hsm.provision import ROOT_CERT_FILE, SEAL_CERT_FILE
from pli.hsm.token import SEAL_KEY_LABEL, Token, TokenUnavailable

__all__ = [
    "C14N_EXCLUSIVE",
    "DSIG_NS",
    "ECDSA_SHA256",
    "ENVELOPED_SIGNATURE",
    "SHA256",
    "XmlSealer",
]

DSIG_NS = "http://www.w3.org/2000/09/xmldsig#"
C14N_EXCLUSIVE = "http://www.w3.org/2001/10/xml-exc-c14n#"
ENVELOPED_SIGNATURE = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
ECDSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
_P256_BYTES = 32


def _ds(name: str) -> str:
    return f"{{{DSIG_NS}}}{name}"


def _canonical(element: etree._Element) -> bytes:
    """Exclusive XML canonicalisation 1.0 without comments."""
    return etree.tostring(element, method="c14n", exclusive=True, with_comments=False)


def _raw_signature(der: bytes) -> bytes:
    """The r || s form of a DER ECDSA P-256 signature (RFC 4050 section 3.3)."""
    r, s = decode_dss_signature(der)
    return r.to_bytes(_P256_BYTES, "big") + s.to_bytes(_P256_BYTES, "big")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class XmlSealer:
    """Seals XML documents with an enveloped signature by the token's seal key.

    The seal certificate and the development root are the PEM copies that
    ``pli hsm init`` keeps beside the token (``certs/seal.pem`` and
    ``certs/root.pem``); they are read once, on first use.
    """

    def __init__(
        self, token: Token, certs_dir: Path, *, key_label: str = SEAL_KEY_LABEL
    ) -> None:
        self.token = token
        self.certs_dir = certs_dir
        self.key_label = key_label
        self._chain: tuple[list[x509.Certificate], bool] | None = None

    @property
    def chain(self) -> list[x509.Certificate]:
        """The seal certificate first, then its issuers up to the root."""
        return self._loaded()[0]

    @property
    def certificate(self) -> x509.Certificate:
        """The seal certificate."""
        return self.chain[0]

    @property
    def chains_to_development_root(self) -> bool:
        """Whether the seal certificate was issued by the development root.

        Everything such a chain seals is non-qualified, whatever else holds.
        """
        return self._loaded()[1]

    def seal(self, root: etree._Element) -> bytes:
        """Append an enveloped ``ds:Signature`` to ``root``; return the document.

        ``root`` must not be changed afterwards: the signature covers its
        canonical form as it stands when this is called.
        """
        digest = hashlib.sha256(_canonical(root)).digest()

        signature = etree.SubElement(root, _ds("Signature"), nsmap={"ds": DSIG_NS})
        signed_info = self._signed_info(signature, digest)
        value = etree.SubElement(signature, _ds("SignatureValue"))
        self._key_info(signature)

        der = self.token.sign_ecdsa_sha256(self.key_label, _canonical(signed_info))
        value.text = _b64(_raw_signature(der))
        return etree.tostring(root, xml_declaration=True, encoding="UTF-8")

    def _signed_info(self, signature: etree._Element, digest: bytes) -> etree._Element:
        signed_info = etree.SubElement(signature, _ds("SignedInfo"))
        etree.SubElement(
            signed_info, _ds("CanonicalizationMethod"), Algorithm=C14N_EXCLUSIVE
        )
        etree.SubElement(signed_info, _ds("SignatureMethod"), Algorithm=ECDSA_SHA256)
        reference = etree.SubElement(signed_info, _ds("Reference"), URI="")
        transforms = etree.SubElement(reference, _ds("Transforms"))
        for algorithm in (ENVELOPED_SIGNATURE, C14N_EXCLUSIVE):
            etree.SubElement(transforms, _ds("Transform"), Algorithm=algorithm)
        etree.SubElement(reference, _ds("DigestMethod"), Algorithm=SHA256)
        etree.SubElement(reference, _ds("DigestValue")).text = _b64(digest)
        return signed_info

    def _key_info(self, signature: etree._Element) -> None:
        key_info = etree.SubElement(signature, _ds("KeyInfo"))
        data = etree.SubElement(key_info, _ds("X509Data"))
        for certificate in self.chain:
            der = certificate.public_bytes(serialization.Encoding.DER)
            etree.SubElement(data, _ds("X509Certificate")).text = _b64(der)

    def _loaded(self) -> tuple[list[x509.Certificate], bool]:
        if self._chain is None:
            seal = self._load(SEAL_CERT_FILE)
            root = self._load(ROOT_CERT_FILE)
            development = issued_by(seal, root)
            self._chain = ([seal, root] if development else [seal], development)
        return self._chain

    def _load(self, name: str) -> x509.Certificate:
        path = self.certs_dir / name
        try:
            return x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise TokenUnavailable(f"certificate unreadable ({path})") from exc
