"""The time a proof or an evidence document states: the event's RFC 3161 stamp.

Legally timed events carry a time-stamp token in their envelope
(``pli.infrastructure.stamping``). What pli states as the time of such an
event is the token's time, once the token has been checked against the
trusted TSA roots; other events state the time pli's clock recorded, which
is never qualified.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from eventsourcing.persistence import StoredEvent

from pli.hsm.timestamp import BadTimeStamp, StampInfo
from pli.infrastructure.envelope import Envelope, seal_message
from pli.infrastructure.event_store import BrokenHistory
from pli.infrastructure.letters import LetterApplication
from pli.infrastructure.stamping import EventStampChecker
from pli.services.etsi_evidence import EvidenceTime, recorded_time

__all__ = ["StampedTimes", "stamp_source"]

logger = logging.getLogger(__name__)


def stamp_source(info: StampInfo) -> str:
    """How a proof names the source of a stamped time."""
    label = "qualified" if info.qualified else "non-qualified"
    return f"RFC 3161 time stamp by {info.tsa} ({label})"


class StampedTimes:
    """Reads and checks the stamps of stored events."""

    def __init__(
        self,
        letters: LetterApplication,
        trust_roots: Sequence[x509.Certificate],
        qualified_roots: Sequence[x509.Certificate] = (),
    ) -> None:
        self.letters = letters
        self.checker = EventStampChecker(
            trust_roots=trust_roots, qualified_roots=qualified_roots
        )

    def of_event(self, event: Any) -> EvidenceTime:
        """The stated time of a domain event (it knows its letter and version)."""
        rows = list(
            self.letters.recorder.select_events(
                originator_id=event.originator_id,
                gt=event.originator_version - 1,
                lte=event.originator_version,
            )
        )
        if not rows:
            raise BrokenHistory(
                str(event.originator_id), event.originator_version, "event missing"
            )
        info = self.stamp_of(rows[0])
        if info is None:
            return recorded_time(event)
        return EvidenceTime(info.time, stamp_source(info), info.qualified)

    def stamp_of(self, stored: StoredEvent) -> StampInfo | None:
        """The checked stamp of a stored event, or None if it carries none."""
        envelope = Envelope.from_bytes(stored.state)
        if envelope.stamp is None:
            return None
        message = seal_message(
            str(stored.originator_id),
            stored.originator_version,
            stored.topic,
            envelope.payload,
            envelope.previous,
        )
        try:
            return self.checker.check(envelope, message)
        except BadTimeStamp as bad:
            # A stored stamp that does not check is a broken history.
            raise BrokenHistory(
                str(stored.originator_id),
                stored.originator_version,
                f"time stamp does not verify: {bad.reason}",
            ) from bad
