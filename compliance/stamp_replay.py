"""Replaying time stamps: every event's RFC 3161 stamp, checked in commit order.

The law dates a deposit, a notification, an identification, an acceptance, a
refusal and an expiry by a qualified time stamp (CPCE R.53-1 to R.53-3;
eIDAS art. 44(1)(f)), so these events (``LEGALLY_TIMED_EVENTS``) carry one
in their envelope (:mod:`pli.infrastructure.stamping`). The audit hands
every stored event to a :class:`StampReplay`, which checks, offline, with
the configured trust anchors and no token:

- that a legally timed event carries a stamp;
- the stamp itself: the event's seal is in the stamped hash tree, the
  authority's signature verifies, its certificate chains to a trust anchor
  (:class:`pli.infrastructure.stamping.EventStampChecker`);
- that a letter's stamps go forward: no stamp is earlier than the stamp of
  an earlier version of the same letter;
- that the stamp's time lies within :data:`STAMP_TOLERANCE` of the time the
  event records: the stamp is asked for while the event is sealed, so a
  wider gap means a server clock that was off, or a stamp taken for
  something else.

A stamp on an event that need not carry one is harmless: it is checked the
same way and noted, not counted as a fault.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509

from pli.compliance.findings import Report
from pli.hsm.timestamp import BadTimeStamp, StampInfo
from pli.infrastructure.envelope import Envelope, seal_message
from pli.infrastructure.settings import Settings
from pli.infrastructure.stamping import EventStampChecker

__all__ = [
    "STAMP_TOLERANCE",
    "StampReplay",
    "StampTrust",
    "duration_text",
    "time_text",
]


#: How far a stamp's time may lie from the time its event records, either way.
STAMP_TOLERANCE = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class StampTrust:
    """What the audit believes about time stamps.

    ``outside_tsa`` says that the operator's stamps come from a TSA of its
    own (``PLI_TSA_URL``), whose keys the key ceremony log does not record.
    """

    trust_roots: tuple[x509.Certificate, ...]
    qualified_roots: tuple[x509.Certificate, ...] = ()
    outside_tsa: bool = False
    tolerance: dt.timedelta = STAMP_TOLERANCE

    @classmethod
    def from_settings(cls, settings: Settings) -> StampTrust:
        """The trust anchors and TSA the settings name (``PLI_TSA_*``)."""
        tsa = settings.tsa
        return cls(
            trust_roots=tuple(tsa.trust_roots(settings.token.certs_dir)),
            qualified_roots=tuple(tsa.qualified_roots()),
            outside_tsa=tsa.url is not None,
        )


@dataclass
class _LastStamp:
    version: int
    time: dt.datetime


class StampReplay:
    """Checks the stamps of the events fed to it; see the module docstring."""

    def __init__(
        self,
        trust: StampTrust,
        timed_topics: frozenset[str],
        fault: Report,
        note: Report,
    ) -> None:
        self.trust = trust
        self.timed_topics = timed_topics
        self.fault = fault
        self.note = note
        self.checker = EventStampChecker(
            trust_roots=trust.trust_roots, qualified_roots=trust.qualified_roots
        )
        self.checked = 0
        self._last: dict[str, _LastStamp] = {}

    def feed(
        self,
        letter_id: str,
        version: int,
        position: int | None,
        topic: str,
        envelope: Envelope,
        recorded: dt.datetime | None,
    ) -> StampInfo | None:
        """Check one event's stamp; return it when it checks.

        ``recorded`` is the time the event records, None when its payload
        could not be read (its seal did not verify).
        """
        timed = topic in self.timed_topics
        if envelope.stamp is None:
            if timed:
                self.fault(
                    letter_id,
                    version,
                    position,
                    "legally timed event carries no time stamp",
                )
            return None
        if not timed:
            self.note(
                letter_id,
                version,
                position,
                "carries a time stamp though it is not a legally timed event",
            )
        message = seal_message(
            letter_id, version, topic, envelope.payload, envelope.previous
        )
        self.checked += 1
        try:
            info = self.checker.check(envelope, message)
        except BadTimeStamp as bad:
            self.fault(
                letter_id,
                version,
                position,
                f"time stamp does not verify: {bad.reason}",
            )
            return None
        self._check_order(letter_id, version, position, info.time)
        if recorded is not None:
            self._check_gap(letter_id, version, position, info.time, recorded)
        return info

    def _check_order(
        self, letter_id: str, version: int, position: int | None, time: dt.datetime
    ) -> None:
        last = self._last.get(letter_id)
        if last is not None and time < last.time:
            self.fault(
                letter_id,
                version,
                position,
                f"time stamp {time_text(time)} precedes the stamp of version "
                f"{last.version} ({time_text(last.time)}): "
                "a letter's stamps go forward",
            )
            return
        self._last[letter_id] = _LastStamp(version, time)

    def _check_gap(
        self,
        letter_id: str,
        version: int,
        position: int | None,
        time: dt.datetime,
        recorded: dt.datetime,
    ) -> None:
        gap = abs(time - recorded)
        if gap > self.trust.tolerance:
            self.fault(
                letter_id,
                version,
                position,
                f"time stamp {time_text(time)} is {duration_text(gap)} from the "
                f"time the event records ({time_text(recorded)}); at most "
                f"{duration_text(self.trust.tolerance)} is allowed",
            )


def time_text(moment: dt.datetime) -> str:
    """A time as findings state it: UTC, to the second."""
    return (
        moment.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


def duration_text(span: dt.timedelta) -> str:
    """A gap between two times, in whole seconds."""
    return f"{int(span.total_seconds())} s"
