"""Checking a proof document offline: its PAdES seal and its anchor in the log.

A proof is a PDF sealed as PAdES by the provider (``pli.hsm.pades``) with
its machine-readable evidence attached as ``evidence.json``. This module
validates the seal with pyHanko against the trust anchors it is given (the
provider's root), requires that the seal covers the whole file (so the
evidence read from it is the sealed evidence), reads the evidence, and
checks its ``log`` section (:func:`pli.infrastructure.anchors.verify_anchor`).
No database and no token are needed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from pyhanko.pdf_utils.misc import PdfError
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.validation import validate_pdf_signature
from pyhanko_certvalidator import ValidationContext

from pli.infrastructure.anchors import verify_anchor

__all__ = ["EVIDENCE_FILE", "ProofCheck", "check_proof_document"]

EVIDENCE_FILE = "evidence.json"

# What pyHanko and the JSON decoder raise on a damaged or hostile document.
_UNREADABLE = (
    PdfError,
    ValueError,
    KeyError,
    TypeError,
    IndexError,
    AttributeError,
)


@dataclass
class ProofCheck:
    """What checking one proof document found."""

    seal_problems: list[str] = field(default_factory=list)
    anchor_problems: list[str] = field(default_factory=list)
    evidence: dict[str, Any] | None = None

    @property
    def seal_valid(self) -> bool:
        """Whether the PAdES seal holds."""
        return not self.seal_problems

    @property
    def valid(self) -> bool:
        """Whether the seal and the anchor both hold."""
        return not self.seal_problems and not self.anchor_problems


def check_proof_document(
    pdf: bytes,
    trust_roots: list[x509.Certificate],
    seal_certificates: list[x509.Certificate],
) -> ProofCheck:
    """Validate a proof's seal and its anchor in the log."""
    check = ProofCheck()
    try:
        reader = PdfFileReader(BytesIO(pdf), strict=False)
        signatures = reader.embedded_signatures
    except _UNREADABLE as exc:
        check.seal_problems.append(f"not a readable PDF ({type(exc).__name__})")
        check.anchor_problems.append("no evidence could be read")
        return check
    check.seal_problems += _seal_problems(signatures, trust_roots)
    check.evidence = _evidence(reader)
    if check.evidence is None:
        check.anchor_problems.append(f"the document carries no {EVIDENCE_FILE}")
    else:
        check.anchor_problems += verify_anchor(check.evidence, seal_certificates)
    return check


def _seal_problems(signatures: Any, trust_roots: list[x509.Certificate]) -> list[str]:
    if len(signatures) != 1:
        return [f"the document has {len(signatures)} signatures, not one seal"]
    roots = [
        asn1_x509.Certificate.load(root.public_bytes(Encoding.DER))
        for root in trust_roots
    ]
    context = ValidationContext(trust_roots=roots, allow_fetching=False)
    try:
        status = validate_pdf_signature(signatures[0], context)
    except _UNREADABLE as exc:
        return [f"the seal cannot be validated ({type(exc).__name__})"]
    problems = []
    if not status.intact:
        problems.append("the sealed bytes were changed")
    if not status.valid:
        problems.append("the seal's signature does not verify")
    if not status.trusted:
        problems.append("the seal certificate does not chain to the provider's root")
    if status.coverage is None or status.coverage.name != "ENTIRE_FILE":
        problems.append("the seal does not cover the whole document")
    return problems


def _evidence(reader: PdfFileReader) -> dict[str, Any] | None:
    try:
        names = reader.root["/Names"]["/EmbeddedFiles"]["/Names"]
        for index in range(0, len(names) - 1, 2):
            if str(names[index]) == EVIDENCE_FILE:
                data = names[index + 1]["/EF"]["/F"].get_object().data
                document = json.loads(data)
                return document if isinstance(document, dict) else None
    except _UNREADABLE:
        return None
    return None
