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
import hashlib
from collections import OrderedDict
from collections.abc import Sequence

from cryptography import x509
from eventsourcing.utils import get_topic

from pli.compliance.bundle_format import EVENTS, EventRecord, iso_utc
from pli.compliance.bundle_io import BundleWriter, ScannedEvent
from pli.compliance.bundle_sources import CheckSource, ExportSource
from pli.hsm.timestamp import BadTimeStamp, StampInfo, check_token
from pli.infrastructure.envelope import MalformedEnvelope
from pli.infrastructure.letters import LEGALLY_TIMED_EVENTS
from pli.infrastructure.stamping import stamped_root

__all__ = ["LEGALLY_TIMED_TOPICS", "TimeStampsChecker", "TimeStampsExporter"]

PART = "time stamps"

LEGALLY_TIMED_TOPICS = frozenset(get_topic(event) for event in LEGALLY_TIMED_EVENTS)
# Events stamped together are close in the log: a few hundred tokens suffice.
_REMEMBERED = 256


class _TokenChecks:
    """``check_token`` once per distinct token, the last few outcomes kept."""

    def __init__(self, anchors: Sequence[x509.Certificate]) -> None:
        self.anchors = list(anchors)
        self._outcomes: OrderedDict[bytes, StampInfo | str] = OrderedDict()

    def check(self, token: bytes, root: bytes) -> StampInfo:
        """The checked stamp; raises BadTimeStamp as ``check_token`` does.

        ``root`` is what the token itself claims to stamp, so the outcome
        depends on the token alone.
        """
        key = hashlib.sha256(token).digest()
        outcome = self._outcomes.get(key)
        if outcome is None:
            try:
                outcome = check_token(token, digest=root, trust_roots=self.anchors)
            except BadTimeStamp as exc:
                outcome = exc.reason
            self._outcomes[key] = outcome
            if len(self._outcomes) > _REMEMBERED:
                self._outcomes.popitem(last=False)
        else:
            self._outcomes.move_to_end(key)
        if isinstance(outcome, str):
            raise BadTimeStamp(outcome)
        return outcome


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
        self.tokens = _TokenChecks(source.trust.anchors)
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
            root = stamped_root(envelope, message)
            stamp = self.tokens.check(envelope.stamp.token, root)
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
