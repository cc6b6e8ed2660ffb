"""The facts a proof states, and the machine-readable evidence that carries them.

A proof's ``evidence.json`` names the ETSI EN 319 522-2 evidence event the
proof attests and repeats every fact on the page, so an auditor's tool reads
them without parsing the page, and :func:`facts_from_evidence` reads them back.
Its ``log`` section anchors the events in the transparency log
(:mod:`pli.infrastructure.anchors`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pli.domain.proofs import ProofKind
from pli.domain.values import LetterKind

__all__ = [
    "EVIDENCE_FILE",
    "EVIDENCE_FORMAT",
    "TIME_FIELDS",
    "ProofFacts",
    "evidence_document",
    "facts_from_evidence",
]

EVIDENCE_FILE = "evidence.json"
EVIDENCE_FORMAT = "pli-proof-evidence/1"
_SAFE_LETTER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
TIME_FIELDS = (
    "deposited_at",
    "notified_at",
    "window_closes_at",
    "decided_at",
    "expired_at",
)

# The ETSI EN 319 522-2 evidence each proof corresponds to. CPCE R.53-3 I
# issues the proof of deposit when the notification leaves, so it attests the
# accepted submission; non-claim is a hand-over that failed for want of a
# decision within the window.
_ETSI_EVENTS = {
    ProofKind.DEPOSIT: "SubmissionAcceptance",
    ProofKind.RECEIPT: "AcceptanceByRecipient",
    ProofKind.REFUSAL: "RejectionByRecipient",
    ProofKind.NON_CLAIM: "ContentHandoverFailure",
}


@dataclass(frozen=True)
class ProofFacts:
    """What a proof states about one letter: parties, times, content, events."""

    letter_id: str
    kind: str
    sender_name: str
    sender_email: str
    recipient_name: str
    recipient_email: str
    attachments: list[tuple[str, int, str]]
    deposited_at: datetime
    notified_at: datetime | None
    window_closes_at: datetime | None
    decided_at: datetime | None
    expired_at: datetime | None
    events: list[tuple[int, str, str]]
    time_source: str
    # Whether the seal and the time are both qualified (pli.hsm.qualification).
    qualified: bool = False
    log: dict[str, Any] | None = None
    # Per event version: its RFC 3161 stamp (token, tree path, time, TSA).
    time_stamps: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not _SAFE_LETTER_ID.fullmatch(self.letter_id) or ".." in self.letter_id:
            raise ValueError("letter_id must be a plain identifier")
        LetterKind(self.kind)
        for name, value in self.times():
            if value is not None and value.utcoffset() is None:
                raise ValueError(f"{name} must be timezone-aware")

    def times(self) -> Iterator[tuple[str, datetime | None]]:
        """Each time field by name, in the order of the letter's life."""
        for name in TIME_FIELDS:
            yield name, getattr(self, name)


def evidence_document(proof_kind: ProofKind | str, facts: ProofFacts) -> dict[str, Any]:
    """The machine-readable evidence a proof embeds, ready for ``json.dumps``."""
    kind = ProofKind(proof_kind)
    return {
        "format": EVIDENCE_FORMAT,
        "proof": kind.value,
        "etsi_en_319_522_event": _ETSI_EVENTS[kind],
        "letter": {"id": facts.letter_id, "kind": facts.kind},
        "sender": {"name": facts.sender_name, "email": facts.sender_email},
        "recipient": {"name": facts.recipient_name, "email": facts.recipient_email},
        "attachments": [
            {"filename": name, "size": size, "sha256": digest}
            for name, size, digest in facts.attachments
        ],
        "times": {name: _iso(value) for name, value in facts.times()},
        "time_source": facts.time_source,
        "qualified": facts.qualified,
        "events": [
            {"version": version, "event": event, "sealed_digest": digest}
            for version, event, digest in facts.events
        ],
        **({"log": facts.log} if facts.log is not None else {}),
        **({"time_stamps": facts.time_stamps} if facts.time_stamps else {}),
    }


def facts_from_evidence(document: dict[str, Any]) -> ProofFacts:
    """Read back the facts an embedded evidence document states."""
    if document.get("format") != EVIDENCE_FORMAT:
        raise ValueError(f"not a {EVIDENCE_FORMAT} document")
    times = {name: _from_iso(document["times"][name]) for name in TIME_FIELDS}
    return ProofFacts(
        letter_id=document["letter"]["id"],
        kind=document["letter"]["kind"],
        sender_name=document["sender"]["name"],
        sender_email=document["sender"]["email"],
        recipient_name=document["recipient"]["name"],
        recipient_email=document["recipient"]["email"],
        attachments=[
            (a["filename"], a["size"], a["sha256"]) for a in document["attachments"]
        ],
        events=[
            (e["version"], e["event"], e["sealed_digest"]) for e in document["events"]
        ],
        time_source=document["time_source"],
        qualified=document["qualified"] is True,
        log=document.get("log"),
        time_stamps=document.get("time_stamps"),
        **times,
    )


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _from_iso(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)
