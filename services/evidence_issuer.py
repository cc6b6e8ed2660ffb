"""Issuing ETSI REM evidence: the qualification claim, then the seal.

:mod:`pli.services.etsi_evidence` says what a document states; this module
decides which policy it may claim and has the token seal it
(:mod:`pli.hsm.xml_seal`). The development chain can never claim the
qualified policy: a caller that asks for it is refused, whatever else holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives import serialization

from pli.domain.values import LetterKind
from pli.hsm.xml_seal import XmlSealer
from pli.services.etsi_evidence import (
    TimeOf,
    build_evidence,
    identification_of,
    letter_of,
    recorded_time,
)

__all__ = ["EvidenceIssuer", "QualifiedClaimRefused"]


class QualifiedClaimRefused(ValueError):
    """A qualified claim was asked of a seal that chains to the development root."""


class EvidenceIssuer:
    """Builds and seals the REM evidence of letter events for one provider."""

    def __init__(
        self,
        provider_name: str,
        sealer: XmlSealer,
        time_of: TimeOf = recorded_time,
    ) -> None:
        self.provider_name = provider_name
        self.sealer = sealer
        self.time_of = time_of

    def qualifies(self, history: Sequence[Any]) -> bool:
        """Whether the evidence of ``history[-1]`` may claim the qualified policy.

        Only an LRE (eIDAS art. 44) may, and only when every time it states
        is qualified, the recipient's identification (if any) is qualified,
        and the seal does not chain to the development root.
        """
        letter = letter_of(history)
        if letter.kind is not LetterKind.LRE:
            return False
        if self.sealer.chains_to_development_root:
            return False
        times = [self.time_of(history[0]), self.time_of(history[-1])]
        identification = identification_of(history)
        if identification is not None:
            if not identification.qualified:
                return False
            times.append(self.time_of(identification))
        return all(time.qualified for time in times)

    def issue(
        self, history: Sequence[Any], *, sealed_digest: str, qualified: bool
    ) -> bytes:
        """The sealed evidence document of ``history[-1]``, as XML bytes."""
        if qualified and self.sealer.chains_to_development_root:
            raise QualifiedClaimRefused(
                "the seal certificate chains to the development root, which "
                "can never claim the qualified policy"
            )
        certificate = self.sealer.certificate.public_bytes(serialization.Encoding.DER)
        document = build_evidence(
            history,
            provider_name=self.provider_name,
            seal_certificate=certificate,
            sealed_digest=sealed_digest,
            time_of=self.time_of,
            qualified=qualified,
        )
        return self.sealer.seal(document)
