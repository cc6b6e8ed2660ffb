"""``pli audit verify``: replay the whole event log and report every fault.

The audit reads the stored events in commit order, checks each seal with
the seal certificates alone (no token, no PIN), checks each chain link and
version sequence per aggregate (letters, sender accounts, consents, the
key ceremony log), checks every time stamp against the trust anchors
(:mod:`pli.compliance.stamp_replay`), follows the key ceremony log to check
that each event was sealed, and each stamp signed, by a key in force at its
log position (:mod:`pli.compliance.ceremony_replay`), rebuilds every letter
view from the events and compares it with the stored view, checks that
every attachment's stored bytes still match the digest the deposit bound,
and rebuilds the transparency log from the events to compare it with the
stored log and checkpoints (:mod:`pli.compliance.log_replay`).

Each fault names the letter (aggregate), the version and the log position;
so does each note, a finding that is no fault (something the audit could
not check on an older store, say). Views are compared as of the projector's
recorded position, so a server that is still running does not produce false
alarms.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from eventsourcing.persistence import Notification, StoredEvent

from pli.compliance.ceremony_replay import CeremonyReplay
from pli.compliance.findings import Fault, Finding, Note, Report
from pli.compliance.log_replay import LogReplay
from pli.compliance.stamp_replay import StampReplay, StampTrust
from pli.domain.letter import Letter
from pli.infrastructure.checkpoints import Checkpoint
from pli.infrastructure.content import ContentMissing
from pli.infrastructure.envelope import (
    GENESIS,
    Envelope,
    MalformedEnvelope,
    event_digest,
)
from pli.infrastructure.event_store import BrokenHistory
from pli.infrastructure.letters import LetterApplication, letter_view
from pli.infrastructure.transparency import LogStore
from pli.infrastructure.views import LetterViewStore

__all__ = ["AuditReport", "Fault", "Finding", "Note", "StampTrust", "audit"]

logger = logging.getLogger(__name__)

_PAGE = 500
_PROJECTOR = "letter-views"


F = TypeVar("F", bound=Finding)


@dataclass
class AuditReport:
    """What the audit checked and what it found."""

    events: int = 0
    aggregates: int = 0
    letters: int = 0
    views_compared: int = 0
    log_leaves: int = 0
    checkpoints: int = 0
    checkpoint_stamps: int = 0
    stamps: int = 0
    ceremonies: int = 0
    seal_keys: int = 0
    tsa_keys: int = 0
    faults: list[Fault] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """Whether nothing was found wrong."""
        return not self.faults


@dataclass
class _Chain:
    version: int = 0
    digest: str = GENESIS
    broken: bool = False
    aggregate: Any = None
    projected_version: int = 0


def _notifications(
    letters: LetterApplication, report: AuditReport
) -> Iterator[Notification]:
    start = 1
    last = letters.recorder.max_notification_id() or 0
    while start <= last:
        try:
            page = letters.recorder.select_notifications(start=start, limit=_PAGE)
        except (ValueError, TypeError):
            page = list(_one_by_one(letters, start, start + _PAGE - 1, report))
            start += _PAGE
            yield from page
            continue
        if not page:
            return
        yield from page
        start = page[-1].id + 1


def _one_by_one(
    letters: LetterApplication, first: int, last: int, report: AuditReport
) -> Iterator[Notification]:
    """Read a stretch of the log row by row, past rows that cannot be decoded."""
    position = first
    reported = False
    while position <= last:
        try:
            rows = letters.recorder.select_notifications(
                start=position, limit=1, stop=last
            )
        except (ValueError, TypeError):
            if not reported:
                report.faults.append(
                    Fault("?", 0, f"unreadable stored event at notification {position}")
                )
                reported = True
            position += 1
            continue
        if not rows:
            return
        reported = False
        yield rows[0]
        position = rows[0].id + 1


def audit(
    letters: LetterApplication,
    views: LetterViewStore,
    log: LogStore | None = None,
    *,
    stamps: StampTrust,
    against: Checkpoint | None = None,
    progress: Callable[[AuditReport], None] | None = None,
    progress_every: int = 10_000,
    projections: bool = True,
) -> AuditReport:
    """Check every event, stamp, key, view, content file and the log.

    ``stamps`` holds the trust anchors of time stamps; ``against`` is an
    auditor's earlier checkpoint the log must extend; ``progress`` is called
    with the report so far every ``progress_every`` events. Without
    ``projections`` only the stored events are checked (seals, chain links,
    stamps, keys): no aggregate, view, content file or log is rebuilt.
    """
    run = _Audit(letters, views, log if projections else None, stamps, against)
    run.projections = projections
    for notification in _notifications(letters, run.report):
        run.event(notification)
        if progress is not None and run.report.events % progress_every == 0:
            progress(run.counted())
    return run.finish()


class _Audit:
    """One run of the audit: the replays, the chains, and the report."""

    def __init__(
        self,
        letters: LetterApplication,
        views: LetterViewStore,
        log: LogStore | None,
        stamps: StampTrust,
        against: Checkpoint | None,
    ) -> None:
        self.letters = letters
        self.views = views
        self.store = letters.sealed_events
        self.report = AuditReport()
        self.chains: dict[str, _Chain] = {}
        self.projected_to = views.position(_PROJECTOR)
        fault = _reporter(self.report.faults, Fault)
        note = _reporter(self.report.notes, Note)
        self.log: LogReplay | None = None
        if log is not None:
            self.log = LogReplay(
                log, self.store.verifier, fault, against=against, stamps=stamps
            )
        self.stamps = StampReplay(stamps, letters.stamped_topics, fault, note)
        self.ceremonies = CeremonyReplay(fault, note, outside_tsa=stamps.outside_tsa)
        self.projections = True

    def event(self, notification: Notification) -> None:
        """Check one stored event, in commit order."""
        self.report.events += 1
        position = None if self.log is None else self.log.feed(notification)
        letter_id = str(notification.originator_id)
        version = notification.originator_version
        chain = self.chains.setdefault(letter_id, _Chain())
        envelope = _envelope(notification)
        fault = _check_event(self.store, chain, notification, envelope)
        if fault:
            self.report.faults.append(Fault(letter_id, version, fault, position))
            chain.broken = True
        # Follow the chain as stored, so each later fault is reported on its own.
        chain.version = version
        if isinstance(notification.state, bytes):
            chain.digest = event_digest(
                letter_id, version, notification.topic, notification.state
            )
        # Only an event whose own seal and link verify is read: its payload is
        # what was sealed.
        event = None if fault else self.letters.mapper.to_domain_event(notification)
        if envelope is not None:
            self._check_keys_and_stamp(notification, position, envelope, event)
        if chain.broken or event is None or not self.projections:
            return
        chain.aggregate = event.mutate(chain.aggregate)
        if notification.id <= self.projected_to:
            chain.projected_version = version

    def _check_keys_and_stamp(
        self,
        notification: Notification,
        position: int | None,
        envelope: Envelope,
        event: Any,
    ) -> None:
        letter_id = str(notification.originator_id)
        version = notification.originator_version
        recorded = None if event is None else event.timestamp
        stamp = self.stamps.feed(
            letter_id, version, position, notification.topic, envelope, recorded
        )
        if stamp is not None:
            self.ceremonies.check_tsa(
                letter_id, version, position, stamp.tsa_certificate
            )
        self.ceremonies.feed(
            letter_id, version, position, notification.topic, envelope.key_id, event
        )

    def counted(self) -> AuditReport:
        """The report, with the replays' counts brought up to date."""
        report = self.report
        report.stamps = self.stamps.checked
        report.ceremonies = self.ceremonies.ceremonies
        report.seal_keys = self.ceremonies.seal_keys_checked
        report.tsa_keys = self.ceremonies.tsa_keys_checked
        if self.log is not None:
            report.log_leaves = self.log.from_leaves.size
            report.checkpoints = self.log.checkpoints_checked
            report.checkpoint_stamps = self.log.stamped_checkpoints
        return report

    def finish(self) -> AuditReport:
        """Check what needs every event seen: the log, views, content."""
        if self.log is not None:
            self.log.finish()
        self.ceremonies.finish()
        report = self.counted()
        report.aggregates = len(self.chains)
        report.letters = sum(
            isinstance(c.aggregate, Letter) for c in self.chains.values()
        )
        if self.projections:
            _compare_views(self.chains, self.views, report)
            _check_content(self.letters, self.chains, report)
        return report


def _reporter(findings: list[F], kind: type[F]) -> Report:
    def add(letter_id: str, version: int, position: int | None, reason: str) -> None:
        findings.append(kind(letter_id, version, reason, position))

    return add


def _envelope(notification: Notification) -> Envelope | None:
    try:
        return Envelope.from_bytes(notification.state)
    except MalformedEnvelope:
        return None


def _check_event(
    store: Any, chain: _Chain, notification: Notification, envelope: Envelope | None
) -> str:
    version = notification.originator_version
    if version != chain.version + 1:
        expected = chain.version + 1
        return f"version out of sequence (expected {expected}): an event is missing"
    if envelope is None:
        return "stored state is not a sealed envelope"
    if envelope.previous != chain.digest:
        return "chain link broken: previous-event digest does not match"
    stored = StoredEvent(
        originator_id=notification.originator_id,
        originator_version=version,
        topic=notification.topic,
        state=notification.state,
    )
    try:
        store.check([stored], from_genesis=False)
    except BrokenHistory as broken:
        return broken.reason
    return ""


def _check_content(
    letters: LetterApplication, chains: dict[str, _Chain], report: AuditReport
) -> None:
    for letter_id, chain in chains.items():
        letter = chain.aggregate
        if chain.broken or not isinstance(letter, Letter):
            continue
        if letter.content_purged_at is not None:
            continue
        for index, attachment in enumerate(letter.attachments):
            try:
                letters.content.check(letter.id, attachment.sha256)
            except ContentMissing:
                report.faults.append(
                    Fault(
                        letter_id,
                        0,
                        f"content of attachment {index} is missing or changed",
                    )
                )


def _compare_views(
    chains: dict[str, _Chain], views: LetterViewStore, report: AuditReport
) -> None:
    stored_views = views.all_views()
    for letter_id, chain in chains.items():
        if chain.broken or chain.projected_version == 0:
            continue
        if not isinstance(chain.aggregate, Letter):
            continue  # sender accounts and consents have no letter view
        stored = stored_views.pop(letter_id, None)
        if stored is None:
            report.faults.append(Fault(letter_id, 0, "no stored letter view"))
            continue
        report.views_compared += 1
        expected = _view_at(chain, stored)
        if expected is None:
            continue
        for column, value in expected.items():
            if str(stored[column]) != str(value):
                report.faults.append(
                    Fault(
                        letter_id,
                        int(stored["version"]),
                        f"stored view has {column}={stored[column]!r}, "
                        f"the events give {value!r}",
                    )
                )
    for letter_id, stored in stored_views.items():
        if letter_id not in chains:
            report.faults.append(
                Fault(
                    letter_id, int(stored["version"]), "view of a letter with no events"
                )
            )


def _view_at(chain: _Chain, stored: dict[str, Any]) -> dict[str, Any] | None:
    letter: Letter = chain.aggregate
    if letter is None:
        return None
    if letter.version == chain.projected_version:
        return letter_view(letter)
    # Events recorded after the projector's position: the view may lag, but
    # it must not claim a version the events do not have.
    if int(stored["version"]) > letter.version:
        return letter_view(letter)
    return None
