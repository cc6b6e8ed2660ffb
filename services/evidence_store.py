"""Sealed REM evidence files: issued once per event, read by the services.

The evidence of a letter event (:mod:`pli.services.etsi_evidence`) is a
projection of the event log like the proofs: the evidence follower writes
``<proofs dir>/<letter id>/evidence/<version>-<ElementName>.xml`` for each
event that warrants one, and the proof builder embeds the same file in the
proof that attests the event. A file, once written (atomically), is never
written again: a signature is randomised, so rewriting would change bytes a
sender may already hold. Resuming after a crash therefore finds the file
and moves on, and each event gets exactly one evidence document.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Notification
from eventsourcing.utils import get_topic

from pli.domain.letter import Letter
from pli.infrastructure.envelope import event_digest
from pli.infrastructure.files import write_atomically
from pli.infrastructure.letters import LetterApplication, LetterNotFound
from pli.infrastructure.views import LetterViewStore
from pli.services.etsi_evidence import EVIDENCE_FOR, EVIDENCE_TOPICS
from pli.services.evidence_issuer import EvidenceIssuer
from pli.services.processes import Follower

__all__ = [
    "EvidenceEntry",
    "EvidenceFollower",
    "EvidenceNotBuilt",
    "EvidenceNotFound",
    "EvidenceStore",
]

logger = logging.getLogger(__name__)


class EvidenceNotFound(Exception):
    """The letter has no event at this version that warrants evidence."""


class EvidenceNotBuilt(Exception):
    """The event warrants evidence, but the follower has not issued it yet."""


@dataclass(frozen=True)
class EvidenceEntry:
    """One letter event that warrants evidence, and where its file is."""

    letter_id: UUID
    version: int
    event: str
    element: str
    path: Path

    @property
    def built(self) -> bool:
        """Whether the sealed evidence file exists."""
        return self.path.exists()

    @property
    def file_name(self) -> str:
        """The file's name: ``<version>-<ElementName>.xml``."""
        return self.path.name


class EvidenceStore:
    """Issues, stores and finds the sealed evidence of letters' events."""

    def __init__(
        self, letters: LetterApplication, issuer: EvidenceIssuer, proofs_dir: Path
    ) -> None:
        self.letters = letters
        self.issuer = issuer
        self.proofs_dir = proofs_dir

    def entries(self, letter_id: UUID) -> list[EvidenceEntry]:
        """Every event of the letter that warrants evidence, oldest first.

        The history's seals are checked first; raises LetterNotFound.
        """
        history = list(self.letters.events.get(letter_id))
        if not history or not isinstance(history[0], Letter.Deposited):
            raise LetterNotFound(str(letter_id))
        return [
            self._entry(letter_id, event.originator_version, event)
            for event in history
            if get_topic(type(event)) in EVIDENCE_FOR
        ]

    def entry(self, letter_id: UUID, version: int) -> EvidenceEntry:
        """The evidence of one event; raises LetterNotFound or EvidenceNotFound."""
        for entry in self.entries(letter_id):
            if entry.version == version:
                return entry
        raise EvidenceNotFound(f"{letter_id}/{version}")

    def read(self, letter_id: UUID, version: int) -> tuple[EvidenceEntry, bytes]:
        """The sealed evidence of one event; raises EvidenceNotBuilt until issued."""
        entry = self.entry(letter_id, version)
        try:
            return entry, entry.path.read_bytes()
        except FileNotFoundError:
            raise EvidenceNotBuilt(f"{letter_id}/{version}") from None

    def ensure(self, letter_id: UUID, version: int) -> tuple[EvidenceEntry, bytes]:
        """The sealed evidence of one event, issued and stored if it was not."""
        history = list(self.letters.events.get(letter_id, lte=version))
        if (
            version < 1
            or len(history) != version
            or get_topic(type(history[-1])) not in EVIDENCE_FOR
        ):
            raise EvidenceNotFound(f"{letter_id}/{version}")
        entry = self._entry(letter_id, version, history[-1])
        if entry.built:
            return entry, entry.path.read_bytes()

        (last,) = self.letters.recorder.select_events(
            originator_id=letter_id, gt=version - 1, lte=version
        )
        digest = event_digest(str(letter_id), version, last.topic, last.state)
        document = self.issuer.issue(
            history, sealed_digest=digest, qualified=self.issuer.qualifies(history)
        )
        write_atomically(entry.path, document)
        logger.info(
            "evidence issued letter=%s version=%d event=%s evidence=%s",
            letter_id,
            version,
            entry.event,
            entry.element,
        )
        return entry, document

    def _entry(self, letter_id: UUID, version: int, event: Any) -> EvidenceEntry:
        element = EVIDENCE_FOR[get_topic(type(event))].element
        path = (
            self.proofs_dir / str(letter_id) / "evidence" / f"{version}-{element}.xml"
        )
        return EvidenceEntry(letter_id, version, type(event).__name__, element, path)


class EvidenceFollower(Follower):
    """Issues the REM evidence of each relevant letter event as it is recorded."""

    name = "etsi-evidence"
    topics = EVIDENCE_TOPICS

    def __init__(
        self, letters: LetterApplication, views: LetterViewStore, store: EvidenceStore
    ) -> None:
        super().__init__(letters, views)
        self.store = store

    def handle(self, notification: Notification) -> list[dict[str, Any]]:
        """Issue this event's evidence unless it already exists."""
        self.store.ensure(notification.originator_id, notification.originator_version)
        return []
