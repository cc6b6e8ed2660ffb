"""RFC 3161 time stamps: the request pli sends and the checks on the answer.

Qualified time (eIDAS art. 42, art. 44(1)(f)) reaches pli as time-stamp
tokens from a time-stamping authority (TSA). This module builds the
``TimeStampReq`` and checks a ``TimeStampResp`` or a stored token without
any network and without the token's PIN, so an auditor runs the very same
checks offline:

- the status is granted, the message imprint is the SHA-256 value asked
  for, the nonce is ours and the policy the one required (RFC 3161 §2.4.2);
- the CMS signature (RFC 5652 §5.4) covers signed attributes that bind the
  ``TSTInfo`` (content-type id-ct-TSTInfo, message-digest) and the signer
  (ESS signing-certificate, RFC 2634, or signing-certificate-v2, RFC 5816);
- the signer's certificate has a critical extended key usage of
  timeStamping only (RFC 3161 §2.3) and chains, through the certificates in
  the token, to a trust anchor, every certificate valid at ``genTime``.

A stamp is *qualified* only when its chain ends at a root the caller
declares qualified; pli's development root and its built-in TSA (whose
policy is :data:`NON_QUALIFIED_POLICY`) never are. pli's private OID arc is
the UUID OID ``2.25.179229662089608242088861685145132344764``; under it,
``.1`` holds time-stamp policies and ``.1.1`` is the built-in TSA's.

Revocation is not checked here: the chain is built and verified, but no
CRL or OCSP answer is fetched or required.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from asn1crypto import cms, core, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.x509.oid import NameOID

from pli.hsm.certpath import BadCertificatePath, chain_to_anchor, check_tsa_certificate
from pli.hsm.cms_verify import (
    BadSignedData,
    check_signer,
    same_name,
    signer_certificate,
)

__all__ = [
    "BadTimeStamp",
    "NON_QUALIFIED_POLICY",
    "NotQualifiedRoot",
    "PLI_OID_ARC",
    "StampInfo",
    "TimeStampResponse",
    "check_response",
    "check_token",
    "is_development_certificate",
    "refuse_development_roots",
    "request_for",
]

PLI_OID_ARC = "2.25.179229662089608242088861685145132344764"
NON_QUALIFIED_POLICY = f"{PLI_OID_ARC}.1.1"

_SHA256_LENGTH = 32
_ASN1_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError)


class TimeStampResponse(core.Sequence):
    """RFC 3161 §2.4.2 ``TimeStampResp``, whose token a rejection leaves out.

    ``asn1crypto.tsp.TimeStampResp`` requires the token, so it can neither
    encode a rejection nor tell a missing token apart.
    """

    _fields = [
        ("status", tsp.PKIStatusInfo),
        ("time_stamp_token", cms.ContentInfo, {"optional": True}),
    ]


@dataclass(frozen=True)
class StampInfo:
    """A checked time stamp: the token as received and what it asserts."""

    token: bytes = field(repr=False)
    time: dt.datetime
    serial: int
    policy: str
    tsa: str
    tsa_certificate: x509.Certificate
    qualified: bool
    accuracy: dt.timedelta | None = None


class BadTimeStamp(Exception):
    """A time-stamp response or token failed a check; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotQualifiedRoot(ValueError):
    """A development or non-qualified certificate was offered as qualified root."""


def request_for(digest: bytes, *, nonce: int, policy: str | None = None) -> bytes:
    """DER ``TimeStampReq`` for a SHA-256 value, asking for the TSA certificate."""
    if len(digest) != _SHA256_LENGTH:
        raise ValueError("a time stamp is asked for a 32-byte SHA-256 value")
    if nonce <= 0:
        raise ValueError("the nonce must be a positive integer")
    request = {
        "version": "v1",
        "message_imprint": {
            "hash_algorithm": {"algorithm": "sha256"},
            "hashed_message": digest,
        },
        "nonce": nonce,
        "cert_req": True,
    }
    if policy is not None:
        request["req_policy"] = policy
    return tsp.TimeStampReq(request).dump()


def check_response(
    response: bytes,
    *,
    digest: bytes,
    nonce: int,
    trust_roots: Sequence[x509.Certificate],
    policy: str | None = None,
    qualified_roots: Sequence[x509.Certificate] = (),
) -> StampInfo:
    """Check a DER ``TimeStampResp`` to our request; return the stamp."""
    refuse_development_roots(qualified_roots)
    try:
        parsed = TimeStampResponse.load(response, strict=True)
        status = parsed["status"]["status"].native
        token = parsed["time_stamp_token"]
        token_bytes = None if isinstance(token, core.Void) else token.dump()
    except _ASN1_ERRORS as exc:
        raise BadTimeStamp("answer is not a DER TimeStampResp") from exc

    if status not in ("granted", "granted_with_mods"):
        raise BadTimeStamp(_rejection(parsed["status"]))
    if token_bytes is None:
        raise BadTimeStamp("status granted but no time-stamp token")
    return _check(token_bytes, digest, nonce, policy, trust_roots, qualified_roots)


def check_token(
    token: bytes,
    *,
    digest: bytes,
    trust_roots: Sequence[x509.Certificate],
    qualified_roots: Sequence[x509.Certificate] = (),
    policy: str | None = None,
) -> StampInfo:
    """Check a stored time-stamp token (DER ContentInfo) offline."""
    refuse_development_roots(qualified_roots)
    return _check(token, digest, None, policy, trust_roots, qualified_roots)


def stamped_digest(token: bytes) -> bytes:
    """The digest a token claims to stamp (its message imprint), unchecked.

    Callers check the token against this digest with :func:`check_token`
    once they have matched it with what they expect it to cover.
    """
    # Only the path to the imprint is parsed: a replay asks this of every
    # event, and most tokens are shared by several events.
    try:
        signed_data = cms.ContentInfo.load(token)["content"]
        content = signed_data["encap_content_info"]["content"]
        if not isinstance(content, core.ParsableOctetString):
            raise BadTimeStamp("token has no TSTInfo content")
        info = tsp.TSTInfo.load(bytes(content))
        return bytes(info["message_imprint"]["hashed_message"].native)
    except _ASN1_ERRORS as exc:
        raise BadTimeStamp("token is not a DER CMS time-stamp token") from exc


def is_development_certificate(certificate: x509.Certificate) -> bool:
    """Whether a certificate belongs to pli's development, non-qualified chain."""
    subject = certificate.subject
    names = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    organisations = subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return any("non-qualified" in str(n.value).lower() for n in names) or any(
        o.value == "pli development" for o in organisations
    )


def refuse_development_roots(roots: Sequence[x509.Certificate]) -> None:
    """Raise :class:`NotQualifiedRoot` if a development root is among ``roots``."""
    for root in roots:
        if is_development_certificate(root):
            raise NotQualifiedRoot(
                f"{root.subject.rfc4514_string()} is a development, non-qualified "
                "certificate and cannot be a qualified root"
            )


@dataclass(frozen=True)
class _Parsed:
    """The parts of a time-stamp token the checks look at."""

    signer_info: cms.SignerInfo
    tst_bytes: bytes
    tst_info: tsp.TSTInfo
    certificates: list[asn1_x509.Certificate]


def _check(
    token: bytes,
    digest: bytes,
    nonce: int | None,
    policy: str | None,
    trust_roots: Sequence[x509.Certificate],
    qualified_roots: Sequence[x509.Certificate],
) -> StampInfo:
    parsed = _parse(token)
    info = parsed.tst_info
    try:
        version = info["version"].native
        gen_time = info["gen_time"].native
        stamped_policy = info["policy"].dotted
        serial = info["serial_number"].native
        accuracy = _accuracy(info["accuracy"])
    except _ASN1_ERRORS as exc:
        raise BadTimeStamp("TSTInfo fields unreadable") from exc
    if version != "v1":
        raise BadTimeStamp("TSTInfo version is not 1")
    if gen_time.tzinfo is None:
        raise BadTimeStamp("genTime is not in UTC")
    gen_time = gen_time.astimezone(dt.UTC)

    _check_imprint(info, digest)
    if nonce is not None and info["nonce"].native != nonce:
        raise BadTimeStamp("nonce mismatch")
    if policy is not None and stamped_policy != policy:
        raise BadTimeStamp(f"policy {stamped_policy} instead of {policy}")

    try:
        signer_asn1 = signer_certificate(parsed.signer_info, parsed.certificates)
        check_signer(
            parsed.signer_info,
            content_type="tst_info",
            content=parsed.tst_bytes,
            certificate=signer_asn1,
        )
        _check_tsa_name(info, signer_asn1)
        signer = x509.load_der_x509_certificate(signer_asn1.dump())
        check_tsa_certificate(signer, gen_time)
        intermediates = [
            x509.load_der_x509_certificate(c.dump())
            for c in parsed.certificates
            if c.dump() != signer_asn1.dump()
        ]
        anchors = [*qualified_roots, *trust_roots]
        anchor = chain_to_anchor(signer, intermediates, anchors, gen_time)
    except (BadSignedData, BadCertificatePath) as exc:
        raise BadTimeStamp(exc.reason) from exc
    except (*_ASN1_ERRORS, x509.InvalidVersion) as exc:
        raise BadTimeStamp("certificate in the token unreadable") from exc

    qualified = (
        any(anchor == root for root in qualified_roots)
        and stamped_policy != NON_QUALIFIED_POLICY
        and not is_development_certificate(signer)
    )
    return StampInfo(
        token=token,
        time=gen_time,
        serial=serial,
        policy=stamped_policy,
        tsa=signer.subject.rfc4514_string(),
        tsa_certificate=signer,
        qualified=qualified,
        accuracy=accuracy,
    )


def _rejection(status: tsp.PKIStatusInfo) -> str:
    try:
        name = status["status"].native
        fail_info = sorted(status["fail_info"].native or ())
        text = "; ".join(status["status_string"].native or ())
    except _ASN1_ERRORS:
        return "TSA refused the request (unreadable status)"
    reason = f"TSA answered {name}"
    if fail_info:
        reason += f" ({', '.join(fail_info)})"
    if text:
        reason += f": {text[:200]}"
    return reason


def _parse(token: bytes) -> _Parsed:
    try:
        content_info = cms.ContentInfo.load(token, strict=True)
        if content_info["content_type"].native != "signed_data":
            raise BadTimeStamp("token is not CMS SignedData")
        signed_data = content_info["content"]
        encap = signed_data["encap_content_info"]
        if encap["content_type"].native != "tst_info":
            raise BadTimeStamp("token does not carry a TSTInfo")
        content = encap["content"]
        if not isinstance(content, core.ParsableOctetString):
            raise BadTimeStamp("token has no TSTInfo content")
        tst_bytes = bytes(content)
        tst_info = tsp.TSTInfo.load(tst_bytes, strict=True)
        tst_info.native  # noqa: B018 - parses every field now, not later
        signer_infos = signed_data["signer_infos"]
        if len(signer_infos) != 1:
            raise BadTimeStamp("token must have exactly one signer")
        certificates = [
            choice.chosen
            for choice in signed_data["certificates"] or ()
            if choice.name == "certificate"
        ]
        for certificate in certificates:
            # Rust's DER parser rejects a malformed certificate now, not later,
            # at a fraction of the cost of asn1crypto's full decoding.
            x509.load_der_x509_certificate(certificate.dump())
        return _Parsed(signer_infos[0], tst_bytes, tst_info, certificates)
    except _ASN1_ERRORS as exc:
        raise BadTimeStamp("token is not a DER CMS time-stamp token") from exc


def _accuracy(accuracy: tsp.Accuracy) -> dt.timedelta | None:
    if isinstance(accuracy, core.Void) or accuracy.native is None:
        return None
    value = accuracy.native
    return dt.timedelta(
        seconds=value.get("seconds") or 0,
        milliseconds=value.get("millis") or 0,
        microseconds=value.get("micros") or 0,
    )


def _check_imprint(info: tsp.TSTInfo, digest: bytes) -> None:
    imprint = info["message_imprint"]
    algorithm = imprint["hash_algorithm"]
    if algorithm["algorithm"].native != "sha256" or algorithm["parameters"].native:
        raise BadTimeStamp("imprint is not SHA-256")
    if imprint["hashed_message"].native != digest:
        raise BadTimeStamp("imprint mismatch")


def _check_tsa_name(info: tsp.TSTInfo, signer: asn1_x509.Certificate) -> None:
    # RFC 3161 §2.4.2: when present, the tsa field names the signer.
    name = info["tsa"]
    if isinstance(name, core.Void) or name.native is None:
        return
    if name.name == "directory_name" and not same_name(name.chosen, signer.subject):
        raise BadTimeStamp("TSTInfo names another TSA than its signer")
