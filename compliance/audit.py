"""``pli audit verify``: replay the whole event log and report every fault.

The audit reads the stored events in commit order, checks each seal with
the seal certificates alone (no token, no PIN), checks each chain link and
version sequence per aggregate (letters, sender accounts, consents, the
key ceremony log),
rebuilds every letter view from the events and
compares it with the stored view, checks that every attachment's stored
bytes still match the digest the deposit bound, and rebuilds the
transparency log from the events to compare it with the stored log and
checkpoints (:mod:`pli.compliance.log_replay`). Each fault names the letter
(aggregate), the version and the log position.
Views are compared as of the projector's recorded position, so a server
that is still running does not produce false alarms.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from eventsourcing.persistence import Notification, StoredEvent

from pli.compliance.log_replay import LogReplay
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

__all__ = ["AuditReport", "Fault", "audit"]

logger = logging.getLogger(__name__)

_PAGE = 500
_PROJECTOR = "letter-views"


@dataclass(frozen=True)
class Fault:
    """One thing wrong, by letter, version (0: the whole) and log position.

    ``letter_id`` is ``-`` for the log as a whole (a checkpoint, say) and
    ``?`` for a row that cannot be decoded; ``position`` is the 0-based log
    position, None for what is not in the log (a view, content).
    """

    letter_id: str
    version: int
    reason: str
    position: int | None = None

    def __str__(self) -> str:
        position = "-" if self.position is None else str(self.position)
        return (
            f"FAULT letter={self.letter_id} version={self.version} "
            f"position={position}: {self.reason}"
        )


@dataclass
class AuditReport:
    """What the audit checked and what it found."""

    events: int = 0
    aggregates: int = 0
    letters: int = 0
    views_compared: int = 0
    log_leaves: int = 0
    checkpoints: int = 0
    faults: list[Fault] = field(default_factory=list)

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
    against: Checkpoint | None = None,
    progress: Callable[[int], None] | None = None,
    progress_every: int = 10_000,
) -> AuditReport:
    """Check every event, view, content file and the log; return the report.

    ``against`` is an auditor's earlier checkpoint the log must extend;
    ``progress`` is called with the number of events checked so far, every
    ``progress_every`` events.
    """
    report = AuditReport()
    chains: dict[str, _Chain] = {}
    projected_to = views.position(_PROJECTOR)
    store = letters.sealed_events
    replay = None
    if log is not None:
        replay = LogReplay(log, store.verifier, _reporter(report), against=against)
    for notification in _notifications(letters, report):
        report.events += 1
        position = replay.feed(notification) if replay is not None else None
        _audit_event(
            letters, store, chains, notification, projected_to, report, position
        )
        if progress is not None and report.events % progress_every == 0:
            progress(report.events)
    if replay is not None:
        replay.finish()
        report.log_leaves = replay.from_leaves.size
        report.checkpoints = replay.checkpoints_checked
    report.aggregates = len(chains)
    report.letters = sum(isinstance(c.aggregate, Letter) for c in chains.values())
    _compare_views(chains, views, report)
    _check_content(letters, chains, report)
    return report


def _reporter(report: AuditReport) -> Callable[[str, int, int | None, str], None]:
    def add(letter_id: str, version: int, position: int | None, reason: str) -> None:
        report.faults.append(Fault(letter_id, version, reason, position))

    return add


def _audit_event(
    letters: LetterApplication,
    store: Any,
    chains: dict[str, _Chain],
    notification: Notification,
    projected_to: int,
    report: AuditReport,
    position: int | None,
) -> None:
    letter_id = str(notification.originator_id)
    chain = chains.setdefault(letter_id, _Chain())
    fault = _check_event(store, chain, notification)
    if fault:
        version = notification.originator_version
        report.faults.append(Fault(letter_id, version, fault, position))
        chain.broken = True
    # Follow the chain as stored, so each later fault is reported on its own.
    chain.version = notification.originator_version
    if isinstance(notification.state, bytes):
        chain.digest = event_digest(
            letter_id, chain.version, notification.topic, notification.state
        )
    if chain.broken:
        return
    chain.aggregate = _apply(letters, chain.aggregate, notification)
    if notification.id <= projected_to:
        chain.projected_version = notification.originator_version


def _check_event(store: Any, chain: _Chain, notification: Notification) -> str:
    version = notification.originator_version
    if version != chain.version + 1:
        expected = chain.version + 1
        return f"version out of sequence (expected {expected}): an event is missing"
    try:
        envelope = Envelope.from_bytes(notification.state)
    except MalformedEnvelope:
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


def _apply(
    letters: LetterApplication, aggregate: Any, notification: Notification
) -> Any:
    event = letters.mapper.to_domain_event(notification)
    return event.mutate(aggregate)


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
