"""The processes that follow the event log: log, views, notifier, proofs, expirer.

Each follower keeps its position in ``pli_positions`` and resumes there
after a restart; the transparency log's appender keeps its own in the
library's tracking table, in the transaction that appends. Acting twice on
one event is prevented where it matters: the notifier only queues a
notification, once per letter, in the durable mail queue
(:mod:`pli.services.notification_delivery` sends it at most once), the
proof builder rewrites the same file, the letter views carry
their version, and the expirer relies on the letter's own rule (one expiry,
after the window) and on optimistic concurrency between servers.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError, Notification
from eventsourcing.utils import get_topic

from pli.domain.clock import Clock
from pli.domain.errors import RuleViolation
from pli.domain.letter import Letter, LetterState
from pli.infrastructure.event_store import BrokenHistory
from pli.infrastructure.lease import ProcessLease
from pli.infrastructure.letters import LetterApplication, iso, letter_view
from pli.infrastructure.transparency import LogStore
from pli.infrastructure.views import LetterViewStore
from pli.services.notification_delivery import NotificationDelivery

__all__ = [
    "LETTER_TOPICS",
    "Expirer",
    "Follower",
    "LogAppender",
    "Notifier",
    "ProcessRunner",
    "Projector",
    "Purger",
]

logger = logging.getLogger(__name__)


def topic(event_class: type) -> str:
    """The topic under which ``eventsourcing`` stores an event class."""
    return get_topic(event_class)


# Every event a letter can have; the log also holds accounts and consents.
LETTER_TOPICS = tuple(
    topic(member)
    for member in vars(Letter).values()
    if isinstance(member, type) and issubclass(member, Letter.Event)
)


class Follower:
    """Reads the event log from its stored position and hands on each event."""

    name = "follower"
    topics: tuple[str, ...] = ()
    batch_size = 100

    def __init__(self, letters: LetterApplication, views: LetterViewStore) -> None:
        self.letters = letters
        self.views = views

    def handle(self, notification: Notification) -> list[dict[str, Any]]:
        """Act on one event; return view rows to store with the position."""
        raise NotImplementedError

    def horizon(self) -> int | None:
        """The last notification id this follower may reach now (None: any)."""
        return None

    def run_once(self) -> int:
        """Process the next batch; return how many events it held."""
        start = self.views.position(self.name) + 1
        stop = self.horizon()
        if stop is not None and stop < start:
            return 0
        notifications = self.letters.recorder.select_notifications(
            start=start, limit=self.batch_size, stop=stop, topics=self.topics
        )
        if not notifications:
            return 0
        rows: list[dict[str, Any]] = []
        for notification in notifications:
            try:
                rows += self.handle(notification)
            except BrokenHistory as broken:
                # One letter whose seals fail must not stop every other
                # letter's notification or proof; the audit reports it too.
                logger.error(
                    "event skipped: history fails verification follower=%s "
                    "letter=%s version=%d reason=%s",
                    self.name,
                    broken.originator_id,
                    broken.version,
                    broken.reason,
                )
        self.views.advance(self.name, notifications[-1].id, rows)
        return len(notifications)

    def run_until_idle(self) -> int:
        """Process batches until the log holds nothing new for this follower."""
        total = 0
        while count := self.run_once():
            total += count
        return total


class LogAppender:
    """Appends every stored event, of every aggregate, to the transparency log.

    It follows the whole event log (letters, sender accounts, consents) from
    the log's own tracking record, and appends each batch exactly once
    (:meth:`pli.infrastructure.transparency.LogStore.append`). A stored
    event it cannot read stops it there, with an error the runner logs and
    retries: the log never skips an event.
    """

    name = "transparency-log"
    batch_size = 500

    def __init__(self, letters: LetterApplication, log: LogStore) -> None:
        self.letters = letters
        self.log = log

    def run_once(self) -> int:
        """Append the next batch of stored events; return how many."""
        start = self.log.tracked() + 1
        notifications = self.letters.recorder.select_notifications(
            start=start, limit=self.batch_size
        )
        if not notifications:
            return 0
        try:
            return self.log.append(notifications)
        except IntegrityError:
            # Another server appended these first; the next batch starts after.
            logger.info("log batch appended elsewhere from=%d", start)
            return 0

    def run_until_idle(self) -> int:
        """Append until the log holds every stored event."""
        total = 0
        while count := self.run_once():
            total += count
        return total


class Projector(Follower):
    """Keeps the letter views (``pli_letter_views``) in step with the log."""

    name = "letter-views"
    topics = LETTER_TOPICS

    def handle(self, notification: Notification) -> list[dict[str, Any]]:
        """The letter's view as of this event."""
        letter = self.letters.repository.get(
            notification.originator_id, version=notification.originator_version
        )
        return [letter_view(letter)]


class Notifier(Follower):
    """Queues each deposited letter's notification, then has the queue delivered.

    Following the log only queues, and queueing is idempotent (one row per
    letter), so a crash before the position is saved queues nothing twice.
    The delivery sends what is due and records ``Notified`` once the
    message has been taken; the ``.eml`` outbox or an SMTP relay takes it.
    """

    name = "notifier"
    topics = (topic(Letter.Deposited),)

    def __init__(
        self,
        letters: LetterApplication,
        views: LetterViewStore,
        delivery: NotificationDelivery,
    ) -> None:
        super().__init__(letters, views)
        self.delivery = delivery

    def handle(self, notification: Notification) -> list[dict[str, Any]]:
        """Queue the notification of a letter that still waits for one."""
        letter = self.letters.get(notification.originator_id)
        if letter.state is LetterState.DEPOSITED and not letter.notification_failures:
            self.delivery.enqueue_notification(letter)
        return []

    def run_once(self) -> int:
        """Queue the new deposits' notifications, then deliver what is due."""
        return super().run_once() + self.delivery.run_once()


class Expirer:
    """Records ``Expired`` for every letter whose window has closed."""

    def __init__(
        self, letters: LetterApplication, views: LetterViewStore, clock: Clock
    ) -> None:
        self.letters = letters
        self.views = views
        self.clock = clock
        self._broken: set[str] = set()

    def run_once(self, at: dt.datetime | None = None) -> int:
        """Expire the overdue letters the views know of; return how many."""
        now = at or self.clock.now()
        expired = 0
        for letter_id in self.views.overdue(iso(now) or ""):
            if letter_id in self._broken:
                continue
            try:
                self.letters.expire(UUID(letter_id), at=now)
                expired += 1
            except RuleViolation as violation:
                # Another server expired it, or the recipient decided first.
                logger.info(
                    "expiry skipped letter=%s rule=%s", letter_id, violation.rule
                )
            except BrokenHistory as broken:
                # Reported once; the audit names it, the other letters go on.
                self._broken.add(letter_id)
                logger.error(
                    "expiry skipped: history fails verification letter=%s "
                    "version=%d reason=%s",
                    letter_id,
                    broken.version,
                    broken.reason,
                )
        return expired


class Purger:
    """Purges the content of final letters once the retention period is over.

    Only content goes: events and proofs are never deleted by pli, so the
    proofs the law keeps (CPCE R.53-2, R.53-3: at least one year) and the
    sender's access to them outlive any content policy.
    """

    def __init__(
        self,
        letters: LetterApplication,
        views: LetterViewStore,
        clock: Clock,
        retention_days: int,
    ) -> None:
        self.letters = letters
        self.views = views
        self.clock = clock
        self.retention = dt.timedelta(days=retention_days)
        self.policy = f"content kept {retention_days} days after the final event"
        self._skipped: set[str] = set()

    def run_once(self) -> int:
        """Purge the content of letters decided before the cutoff."""
        cutoff = iso(self.clock.now() - self.retention) or ""
        purged = 0
        for letter_id in self.views.terminal_before(cutoff):
            if letter_id in self._skipped:
                continue
            try:
                self.letters.purge_content(UUID(letter_id), self.policy)
                purged += 1
            except (RuleViolation, BrokenHistory) as reason:
                self._skipped.add(letter_id)
                logger.info(
                    "purge skipped letter=%s reason=%s",
                    letter_id,
                    type(reason).__name__,
                )
        return purged


class ProcessRunner:
    """Runs the followers and the expirer in one background thread."""

    def __init__(
        self,
        steps: list[Callable[[], int]],
        poll_interval: float,
        lease: ProcessLease | None = None,
    ) -> None:
        self.steps = steps
        self.poll_interval = poll_interval
        self.lease = lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pli-processes")

    def start(self) -> None:
        """Start following the log."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current step."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        if self.lease is not None:
            self.lease.release()

    def run_until_idle(self) -> None:
        """Run every step until none finds work (used by tests and one-shots)."""
        while sum(step() for step in self.steps):
            pass

    def _loop(self) -> None:
        backoff = self.poll_interval
        while not self._stop.is_set():
            if self.lease is not None and not self.lease.held():
                self._stop.wait(max(self.poll_interval, 1.0))
                continue
            try:
                worked = sum(step() for step in self.steps)
                backoff = self.poll_interval
            except Exception:
                # A process must outlive an unreachable token or database; the
                # failure is logged with its traceback and retried with backoff.
                logger.exception("process step failed; retrying")
                worked = 0
                backoff = min(backoff * 2, 30.0)
            if not worked:
                self._stop.wait(backoff)
