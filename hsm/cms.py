"""CMS SignedData (RFC 5652) whose signature the token computes.

RFC 3161 time-stamp tokens are CMS SignedData with signed attributes: the
signature covers the DER encoding of those attributes, which bind the
content through its digest (RFC 5652 §5.4) and the signer's certificate
through an ESS signing-certificate-v2 attribute (RFC 5816). ``asn1crypto``
builds the structures; the only private-key operation, the ECDSA P-256
signature over the attributes, is done by the token, so no key leaves it.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from asn1crypto import cms, core, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization

if TYPE_CHECKING:
    from pli.hsm.token import Token

__all__ = ["sign_content", "signed_attributes_der"]

_SET_TAG = 0x31


def signed_attributes_der(signed_attrs: cms.CMSAttributes) -> bytes:
    """The bytes a signature over signed attributes covers.

    In a SignerInfo the attributes are tagged [0] IMPLICIT; RFC 5652 §5.4
    has the signature computed over their explicit ``SET OF`` encoding, so
    only the first octet, the tag, differs from the stored bytes.
    """
    encoded = signed_attrs.dump()
    return bytes([_SET_TAG]) + encoded[1:]


def sign_content(
    token: Token,
    key_label: str,
    *,
    content_type: str,
    content: bytes,
    certificate: x509.Certificate,
    certificates: Sequence[x509.Certificate] = (),
) -> bytes:
    """DER ContentInfo of a SignedData over ``content``, signed in the token.

    ``content_type`` is an ``asn1crypto`` content type name or a dotted OID;
    ``certificates`` are embedded in the SignedData (the signer's certificate
    is embedded only when it is among them).
    """
    signer_der = certificate.public_bytes(serialization.Encoding.DER)
    issuer_serial, signing_certificate = _signer_parts(signer_der)
    signed_attrs = cms.CMSAttributes(
        [
            _attribute("content_type", cms.ContentType(content_type)),
            _attribute("message_digest", hashlib.sha256(content).digest()),
            _attribute(
                "signing_certificate_v2",
                tsp.SigningCertificateV2.load(signing_certificate),
            ),
        ]
    )
    signature = token.sign_ecdsa_sha256(key_label, signed_attributes_der(signed_attrs))

    signer_info = cms.SignerInfo(
        {
            "version": "v1",
            "sid": cms.SignerIdentifier(
                {
                    "issuer_and_serial_number": cms.IssuerAndSerialNumber.load(
                        issuer_serial
                    )
                }
            ),
            "digest_algorithm": {"algorithm": "sha256"},
            "signed_attrs": signed_attrs,
            "signature_algorithm": {"algorithm": "sha256_ecdsa"},
            "signature": signature,
        }
    )
    signed_data: dict[str, object] = {
        "version": "v3",
        "digest_algorithms": [{"algorithm": "sha256"}],
        "encap_content_info": {
            "content_type": content_type,
            "content": core.ParsableOctetString(content),
        },
        "signer_infos": [signer_info],
    }
    if certificates:
        signed_data["certificates"] = [_asn1_certificate(c) for c in certificates]
    return cms.ContentInfo(
        {"content_type": "signed_data", "content": cms.SignedData(signed_data)}
    ).dump()


@functools.lru_cache(maxsize=16)
def _signer_parts(certificate_der: bytes) -> tuple[bytes, bytes]:
    """The signer's IssuerAndSerialNumber and ESS signing-certificate-v2, in DER.

    Built once per certificate: asn1crypto re-encodes structures that embed
    parts of a parsed certificate, which would cost more than the signature.
    """
    signer = asn1_x509.Certificate.load(certificate_der)
    return (
        _issuer_and_serial(signer).dump(force=True),
        _signing_certificate(signer).dump(force=True),
    )


def _attribute(name: str, value: object) -> cms.CMSAttribute:
    return cms.CMSAttribute({"type": name, "values": [value]})


def _asn1_certificate(certificate: x509.Certificate) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(
        certificate.public_bytes(serialization.Encoding.DER)
    )


def _issuer_and_serial(certificate: asn1_x509.Certificate) -> cms.IssuerAndSerialNumber:
    return cms.IssuerAndSerialNumber(
        {"issuer": certificate.issuer, "serial_number": certificate.serial_number}
    )


def _signing_certificate(
    certificate: asn1_x509.Certificate,
) -> tsp.SigningCertificateV2:
    # RFC 5035: SHA-256 is the default hash of an ESSCertIDv2, so it is left
    # out of the encoding, as DER requires for a default value.
    return tsp.SigningCertificateV2(
        {
            "certs": [
                {
                    "cert_hash": hashlib.sha256(certificate.dump()).digest(),
                    "issuer_serial": {
                        "issuer": [
                            asn1_x509.GeneralName(
                                name="directory_name", value=certificate.issuer
                            )
                        ],
                        "serial_number": certificate.serial_number,
                    },
                }
            ]
        }
    )
