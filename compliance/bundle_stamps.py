"""The time stamps part: every legally timed event's RFC 3161 stamp, checked.

The law dates a deposit, a notification, an identification, an acceptance, a
refusal and an expiry by a qualified time stamp (CPCE R.53-1 to R.53-3,
eIDAS art. 44(1)(f)). Each such event carries its stamp in its envelope
header (:class:`pli.infrastructure.envelope.EventStamp`), which
``events.jsonl`` already holds byte for byte, so the part adds no file: the
TSA certificates are in ``certs/`` with the others. The verifier checks each
stamp offline as :func:`pli.infrastructure.stamping.check_event_stamp` does:
that the stamped hash tree holds the event's seal, and the token itself with
the bundle's trust anchor. Events stamped by one request share a token, so
each distinct token is checked once (a check costs milliseconds of ASN.1
parsing). A legally timed event without a stamp is a fault, and so is a stamp
whose TSA certificate the bundle does not hold.
"""

from __future__ import annotations

import datetime as dt

from pli.compliance.bundle_format import EVENTS, EventRecord, iso_utc
from pli.compliance.bundle_io import BundleWriter, ScannedEvent
from pli.compliance.bundle_sources import CheckSource, ExportSource
from pli.hsm.timestamp import BadTimeStamp
from pli.infrastructure.envelope import MalformedEnvelope
from pli.infrastructure.letters import LetterApplication
from pli.infrastructure.stamping import EventStampChecker

__all__ = ["LEGALLY_TIMED_TOPICS", "TimeStampsChecker", "TimeStampsExporter"]

PART = "time stamps"

# The topics the event store stamps as it seals.
LEGALLY_TIMED_TOPICS = LetterApplication.stamped_topics


class TimeStampsExporter:
    """Writes nothing: the stamps travel in the event lines' headers."""

    def __init__(self, source: ExportSource) -> None:
        """The stamps need nothing from the source."""

    def observe(self, event: ScannedEvent) -> None:
        """The stamps are part of the event lines."""

    def write(self, bundle: BundleWriter) -> None:
        """No file of its own."""


class TimeStampsChecker:
    """Checks every stamp an event line carries, and that timed events have one."""

    def __init__(self, source: CheckSource) -> None:
        self.findings = source.findings
        self.stamps = EventStampChecker(trust_roots=source.trust.anchors)
        self.bundled = set(source.trust.certificate_files.values())
        self._timed = 0
        self._valid = 0
        self._first: dt.datetime | None = None
        self._last: dt.datetime | None = None
        self._authorities: set[str] = set()

    def observe(self, record: EventRecord, line: int) -> None:
        """Check one event line's stamp."""
        where = f"{EVENTS} line {line} ({record.where()})"
        timed = record.topic in LEGALLY_TIMED_TOPICS
        self._timed += timed
        try:
            envelope = record.envelope()
        except MalformedEnvelope:
            return  # the events part names it
        if envelope.stamp is None:
            if timed:
                self.findings.fault(
                    PART, where, "a legally timed event carries no time stamp"
                )
            return
        message = record.seal_message(envelope.previous)
        try:
            stamp = self.stamps.check(envelope, message)
        except BadTimeStamp as exc:
            self.findings.fault(PART, where, f"time stamp: {exc.reason}")
            return
        if stamp.tsa_certificate not in self.bundled:
            self.findings.fault(
                PART, where, "the time stamp's TSA certificate is not in certs/"
            )
            return
        self._valid += 1
        self._authorities.add(stamp.tsa)
        self._first = min(self._first or stamp.time, stamp.time)
        self._last = max(self._last or stamp.time, stamp.time)

    def check(self) -> None:
        """Report what was checked."""
        note = self.findings.note
        note(PART, "legally timed events", self._timed)
        note(PART, "stamps valid", self._valid)
        if self._first is not None and self._last is not None:
            note(PART, "stamped from", iso_utc(self._first))
            note(PART, "stamped until", iso_utc(self._last))
        note(PART, "time-stamping authorities", sorted(self._authorities))
