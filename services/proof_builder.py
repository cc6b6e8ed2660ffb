"""The proof builder: renders and seals a proof when an event warrants one.

``Notified`` yields the proof of deposit and sending (CPCE R.53-3 I issues it
when the notification leaves); ``Accepted``, ``Refused`` and ``Expired``
yield the proofs of receipt, refusal and non-claim. Each proof embeds the
sealed ETSI REM evidence of the events it attests (the proof of deposit and
sending: ``Deposited`` and ``Notified``), issuing it first if the evidence
follower has not yet. Rendering the same proof twice replaces the file, so
resuming after a crash is harmless.

Every proof is anchored in the transparency log: its evidence carries a
checkpoint covering the letter's events and each event's inclusion path
(:mod:`pli.infrastructure.anchors`). The builder never runs ahead of the log
appender: it only reads events the log already holds, and seals a fresh
checkpoint when none covers them yet.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from eventsourcing.persistence import Notification

from pli.domain.letter import Letter
from pli.domain.proofs import ProofKind
from pli.hsm.timestamp import StampInfo
from pli.infrastructure.anchors import anchor_section
from pli.infrastructure.checkpointer import Checkpointer
from pli.infrastructure.envelope import Envelope, event_digest, seal_message
from pli.infrastructure.event_store import BrokenHistory
from pli.infrastructure.letters import LetterApplication
from pli.infrastructure.merkle import leaf_hash
from pli.infrastructure.transparency import LogStore
from pli.infrastructure.views import LetterViewStore
from pli.services.evidence_store import EvidenceStore
from pli.services.processes import Follower, topic
from pli.services.proofs import AssociatedFile, ProofFacts, ProofWriter
from pli.services.stamped_times import StampedTimes, stamp_source

__all__ = ["ProofBuilder", "log_anchor", "proof_facts"]

logger = logging.getLogger(__name__)

_PROOF_FOR = {
    topic(Letter.Notified): ProofKind.DEPOSIT,
    topic(Letter.Accepted): ProofKind.RECEIPT,
    topic(Letter.Refused): ProofKind.REFUSAL,
    topic(Letter.Expired): ProofKind.NON_CLAIM,
}

NON_QUALIFIED_TIME = "pli server clock (non-qualified)"

# Which stamped event gives each time a proof states.
_STAMPED_TIME_OF = {
    "Deposited": "deposited_at",
    "Notified": "notified_at",
    "Accepted": "decided_at",
    "Refused": "decided_at",
    "Expired": "expired_at",
}


def proof_facts(
    letters: LetterApplication,
    letter: Letter,
    *,
    seal_qualified: bool = False,
    times: StampedTimes | None = None,
) -> ProofFacts:
    """The facts a proof of ``letter`` states, with its sealed events' digests.

    The times stated are those of the events' RFC 3161 stamps (checked by
    ``times``); each stamp travels with the evidence so that it can be checked
    alone. eIDAS art. 44(1)(d) and (f): the proof is qualified only when its
    seal and all its stamps are; the server clock is never qualified time.
    """
    stored = [
        s
        for s in letters.recorder.select_events(originator_id=letter.id)
        if s.originator_version <= letter.version
    ]
    events = [
        (
            s.originator_version,
            s.topic.rpartition(".")[2],
            event_digest(str(letter.id), s.originator_version, s.topic, s.state),
        )
        for s in stored
    ]
    expired = letter.decided_at if letter.state.value == "expired" else None
    stated = {
        "deposited_at": letter.deposited_at,
        "notified_at": letter.notified_at,
        "decided_at": letter.decided_at if expired is None else None,
        "expired_at": expired,
    }
    stamps: dict[str, dict[str, Any]] = {}
    infos = []
    for s, (version, name, _) in zip(stored, events, strict=True):
        info = None if times is None else times.stamp_of(s)
        if info is None:
            continue
        infos.append(info)
        envelope = Envelope.from_bytes(s.state)
        message = seal_message(
            str(letter.id), version, s.topic, envelope.payload, envelope.previous
        )
        stamps[str(version)] = stamp_evidence(info, envelope, message)
        if name in _STAMPED_TIME_OF:
            stated[_STAMPED_TIME_OF[name]] = info.time
    time_source = stamp_source(infos[-1]) if infos else NON_QUALIFIED_TIME
    time_qualified = bool(infos) and all(info.qualified for info in infos)
    return ProofFacts(
        letter_id=str(letter.id),
        kind=letter.kind.value,
        sender_name=letter.sender.name,
        sender_email=letter.sender.email,
        recipient_name=letter.recipient.name,
        recipient_email=letter.recipient.email,
        attachments=[(a.filename, a.size, a.sha256) for a in letter.attachments],
        window_closes_at=letter.window_closes_at,
        events=events,
        time_source=time_source,
        qualified=seal_qualified and time_qualified,
        time_stamps=stamps or None,
        **stated,
    )


def stamp_evidence(
    info: StampInfo, envelope: Envelope, message: bytes
) -> dict[str, Any]:
    """One event's stamp as a proof's evidence carries it, checkable alone.

    The token stamps the root of a hash tree whose leaf ``leaf_index`` is the
    event's seal: the SHA-256 of its seal message followed by the seal
    (``pli.infrastructure.envelope.stamp_leaf_input``), both given here, so
    anyone recomputes the leaf, walks the path to the token's imprint, checks
    the token, and checks the seal over that message digest.
    """
    assert envelope.stamp is not None
    return {
        "seal_message_sha256": hashlib.sha256(message).hexdigest(),
        "seal": base64.b64encode(envelope.signature).decode(),
        "seal_key_id": envelope.key_id,
        "time": info.time.isoformat().replace("+00:00", "Z"),
        "tsa": info.tsa,
        "qualified": info.qualified,
        "token": base64.b64encode(envelope.stamp.token).decode(),
        "leaf_index": envelope.stamp.index,
        "tree_size": envelope.stamp.size,
        "path": [node.hex() for node in envelope.stamp.path],
    }


def log_anchor(
    log: LogStore, checkpointer: Checkpointer, facts: ProofFacts
) -> dict[str, Any]:
    """The ``log`` section anchoring the events ``facts`` states.

    Raises BrokenHistory when the log does not hold those events as stored.
    """
    stated = {version: digest for version, _, digest in facts.events}
    entries = [e for e in log.entries_of(facts.letter_id) if e.version in stated]
    for entry in entries:
        if entry.leaf_hash != leaf_hash(bytes.fromhex(stated[entry.version])):
            raise BrokenHistory(
                facts.letter_id, entry.version, "the log's leaf disagrees with it"
            )
    missing = sorted(set(stated) - {e.version for e in entries})
    if missing:
        raise BrokenHistory(facts.letter_id, missing[0], "the log does not hold it")
    checkpoint = checkpointer.covering(max(e.position for e in entries) + 1)
    paths = [log.inclusion_proof(e.position, checkpoint.size) for e in entries]
    return anchor_section(checkpoint, list(zip(entries, paths, strict=True)))


class ProofBuilder(Follower):
    """Writes each warranted proof under ``proofs/<letter id>/``."""

    name = "proof-builder"
    topics = tuple(_PROOF_FOR)

    def __init__(
        self,
        letters: LetterApplication,
        views: LetterViewStore,
        writer: ProofWriter,
        evidence: EvidenceStore,
        log: LogStore,
        checkpointer: Checkpointer,
        seal_qualified: Callable[[], bool] = lambda: False,
        times: StampedTimes | None = None,
    ) -> None:
        super().__init__(letters, views)
        self.times = times
        self.writer = writer
        self.evidence = evidence
        self.log = log
        self.checkpointer = checkpointer
        self.seal_qualified = seal_qualified

    def horizon(self) -> int:
        """Only events the transparency log already holds."""
        return self.log.tracked()

    def handle(self, notification: Notification) -> list[dict[str, Any]]:
        """Render and seal the proof this event warrants, anchored in the log."""
        kind = _PROOF_FOR[notification.topic]
        letter = self.letters.repository.get(
            notification.originator_id, version=notification.originator_version
        )
        facts = proof_facts(
            self.letters,
            letter,
            seal_qualified=self.seal_qualified(),
            times=self.times,
        )
        facts = replace(facts, log=log_anchor(self.log, self.checkpointer, facts))
        self.writer.write(kind, facts, self._evidence_of(kind, letter))
        logger.info("proof sealed letter=%s proof=%s", letter.id, kind.value)
        return []

    def _evidence_of(self, kind: ProofKind, letter: Letter) -> list[AssociatedFile]:
        # CPCE R.53-3 I: the proof of deposit and sending attests both.
        versions = [letter.version]
        if kind is ProofKind.DEPOSIT:
            versions.insert(0, 1)
        files = []
        for version in versions:
            entry, document = self.evidence.ensure(letter.id, version)
            files.append(
                AssociatedFile(
                    f"etsi-rem-{entry.file_name}",
                    document,
                    "application/xml",
                    f"Sealed ETSI TS 102 640-2 evidence of {entry.event}",
                )
            )
        return files
