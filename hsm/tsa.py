"""pli's built-in time-stamping authority (RFC 3161), signing in the token.

The embedded default and the tests need time stamps without an operator's
qualified TSA, so pli answers RFC 3161 requests itself: the ``TSTInfo`` is
built with ``asn1crypto`` and signed as CMS SignedData by the ``pli-tsa``
key in the token (:mod:`pli.hsm.cms`). Everything it signs is
non-qualified: its certificate says so in its common name, and every stamp
carries pli's non-qualified policy
(:data:`pli.hsm.timestamp.NON_QUALIFIED_POLICY`).

``genTime`` comes from the injected clock, truncated to the second, with an
accuracy of one second stated. A bad request never raises: it gets a
``rejection`` status with the RFC 3161 §2.4.2 failure reason, and a token
that cannot sign gets ``systemFailure``.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from asn1crypto import cms, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pli.domain.clock import Clock
from pli.domain.key_ceremony import KeyRole
from pli.hsm.cms import sign_content
from pli.hsm.keys import ActiveKeyWatcher, installed_chain
from pli.hsm.timestamp import NON_QUALIFIED_POLICY, TimeStampResponse
from pli.hsm.token import TSA_KEY_LABEL, Token, TokenUnavailable

__all__ = ["TimeStampAuthority"]

logger = logging.getLogger(__name__)

_DIGEST_SIZES = {"sha256": 32, "sha384": 48, "sha512": 64}
_ACCURACY = {"seconds": 1}
_ASN1_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError)


class _Rejected(Exception):
    """A request the TSA turns down, with the RFC 3161 failure reason."""

    def __init__(self, fail_info: str, text: str) -> None:
        super().__init__(text)
        self.fail_info = fail_info
        self.text = text


@dataclass(frozen=True)
class _SigningKey:
    """The token key a stamp is signed with, and its certificates."""

    label: str
    certificate: x509.Certificate
    chain: list[x509.Certificate]
    subject: asn1_x509.Name

    @classmethod
    def of(
        cls,
        label: str,
        certificate: x509.Certificate,
        chain: Sequence[x509.Certificate],
    ) -> _SigningKey:
        der = certificate.public_bytes(serialization.Encoding.DER)
        subject = asn1_x509.Certificate.load(der).subject
        return cls(label, certificate, list(chain), subject)


class TimeStampAuthority:
    """Answers DER ``TimeStampReq`` with ``TimeStampResp``, signed by the token."""

    def __init__(
        self,
        token: Token,
        *,
        certificate: x509.Certificate,
        chain: Sequence[x509.Certificate],
        policy: str,
        clock: Clock,
        key_label: str = TSA_KEY_LABEL,
        keys: ActiveKeyWatcher | None = None,
    ) -> None:
        self.token = token
        self.policy = policy
        self.clock = clock
        self._keys = keys
        self._key = _SigningKey.of(key_label, certificate, chain)

    @property
    def certificate(self) -> x509.Certificate:
        """The certificate of the key that signs now."""
        return self._signing_key().certificate

    @property
    def chain(self) -> list[x509.Certificate]:
        """The certificates above it, up to the root."""
        return self._signing_key().chain

    def _signing_key(self) -> _SigningKey:
        """The fixed key, or the TSA role's active key after a rotation."""
        if self._keys is None:
            return self._key
        active = self._keys.current()
        if active.label != self._key.label:
            chain = installed_chain(self._keys.certs_dir, active.label)
            self._key = _SigningKey.of(active.label, chain[0], chain[1:])
        return self._key

    @classmethod
    def from_token(
        cls, token: Token, clock: Clock, *, policy: str = NON_QUALIFIED_POLICY
    ) -> TimeStampAuthority:
        """The authority of the token's active TSA key, following rotations."""
        keys = ActiveKeyWatcher(token.config.certs_dir, KeyRole.TSA)
        active = keys.current()
        chain = installed_chain(token.config.certs_dir, active.label)
        return cls(
            token,
            certificate=chain[0],
            chain=chain[1:],
            policy=policy,
            clock=clock,
            key_label=active.label,
            keys=keys,
        )

    def respond(self, request: bytes) -> bytes:
        """The DER ``TimeStampResp`` to a DER ``TimeStampReq``; never raises."""
        try:
            parsed = self._accept(request)
            gen_time = self._gen_time()
            token = self._sign(parsed, gen_time)
        except _Rejected as rejected:
            logger.warning("time stamp rejected fail_info=%s", rejected.fail_info)
            return _rejection(rejected.fail_info, rejected.text)
        return TimeStampResponse(
            {"status": {"status": "granted"}, "time_stamp_token": token}
        ).dump()

    def _accept(self, request: bytes) -> tsp.TimeStampReq:
        try:
            parsed = tsp.TimeStampReq.load(request, strict=True)
            parsed.native  # noqa: B018 - parses every field now, not later
            version = parsed["version"].native
            imprint = parsed["message_imprint"]
            algorithm = imprint["hash_algorithm"]["algorithm"].native
            parameters = imprint["hash_algorithm"]["parameters"].native
            digest = imprint["hashed_message"].native
            requested_policy = parsed["req_policy"].native
        except _ASN1_ERRORS as exc:
            raise _Rejected("bad_data_format", "not a DER TimeStampReq") from exc

        if version != "v1":
            raise _Rejected("bad_data_format", "only version 1 requests")
        if algorithm not in _DIGEST_SIZES or parameters is not None:
            raise _Rejected("bad_alg", "hash algorithm not accepted")
        if len(digest) != _DIGEST_SIZES[algorithm]:
            raise _Rejected("bad_data_format", "imprint length does not fit")
        if requested_policy is not None and parsed["req_policy"].dotted != self.policy:
            raise _Rejected("unaccepted_policy", f"this TSA stamps under {self.policy}")
        if parsed["extensions"].native:
            raise _Rejected("unaccepted_extensions", "no extension is supported")
        return parsed

    def _gen_time(self) -> dt.datetime:
        now = self.clock.now()
        if now.tzinfo is None:
            raise _Rejected("system_failure", "clock gives no time zone")
        gen_time = now.astimezone(dt.UTC).replace(microsecond=0)
        certificate = self._signing_key().certificate
        if (
            not certificate.not_valid_before_utc
            <= gen_time
            <= (certificate.not_valid_after_utc)
        ):
            logger.error("TSA certificate not valid at the clock's time")
            raise _Rejected("system_failure", "TSA certificate not valid now")
        return gen_time

    def _sign(
        self, request: tsp.TimeStampReq, gen_time: dt.datetime
    ) -> cms.ContentInfo:
        key = self._signing_key()
        serial = secrets.randbelow(2**128 - 1) + 1
        info = {
            "version": "v1",
            "policy": self.policy,
            "message_imprint": request["message_imprint"],
            "serial_number": serial,
            "gen_time": gen_time,
            "accuracy": _ACCURACY,
            "tsa": asn1_x509.GeneralName(name="directory_name", value=key.subject),
        }
        if request["nonce"].native is not None:
            info["nonce"] = request["nonce"].native
        certificates = (
            [key.certificate, *key.chain] if request["cert_req"].native else []
        )
        try:
            token = sign_content(
                self.token,
                key.label,
                content_type="tst_info",
                content=tsp.TSTInfo(info).dump(),
                certificate=key.certificate,
                certificates=certificates,
            )
        except TokenUnavailable as exc:
            logger.error("time stamp not signed key=%s error=%s", key.label, exc)
            raise _Rejected("system_failure", "signing key unavailable") from exc
        logger.info("time stamp issued serial=%x policy=%s", serial, self.policy)
        return cms.ContentInfo.load(token)


def _rejection(fail_info: str, text: str) -> bytes:
    return TimeStampResponse(
        {
            "status": {
                "status": "rejection",
                "status_string": [text],
                "fail_info": {fail_info},
            }
        }
    ).dump()
