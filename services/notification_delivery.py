"""Delivering notifications: the mail queue, the transport and the letter in step.

The rules it keeps:

- CPCE R.53-3 I: ``Notified``, and with it the proof of deposit and sending,
  is recorded only once the transport has taken the message, at the moment
  the message was handed over (the moment its last day to decide counts
  from).
- A registered-mail provider must never notify twice. A message is marked
  ``sending`` right before its bytes leave; one still ``sending`` after
  :data:`IN_DOUBT_AFTER` (far beyond any SMTP exchange) means the process
  died mid-transfer, and so does a connection lost during DATA. Such a
  message may or may not have arrived: it is not sent again, the letter
  records ``NotificationFailed`` ``delivery-unconfirmed``, and the sender is
  told and may deposit again.
- A temporary failure (4xx, no connection) is tried again after 1, 2, 4 …
  minutes, at most an hour apart; a failure 24 hours after queueing gives
  up with ``temporary-failure-exhausted``.
- A permanent refusal (5xx to MAIL, RCPT or DATA) records
  ``permanent-smtp-failure:<code>``; the reason never holds an address.
- Every ``NotificationFailed`` is followed by a notice to the sender, sent
  through the same queue with the same rules (but no letter event).

Every decision reads the injected clock, never the wall clock.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from email.message import EmailMessage

from pli.domain.clock import Clock
from pli.domain.letter import Letter, LetterState
from pli.infrastructure.event_store import BrokenHistory
from pli.infrastructure.letters import LetterApplication
from pli.infrastructure.mail_queue import MailQueue, MailState, Purpose, QueuedMail
from pli.infrastructure.smtp import (
    DeliveryInDoubt,
    MailTransport,
    PermanentMailFailure,
    TemporaryMailFailure,
)
from pli.services.notification_mail import MailComposer

__all__ = [
    "GIVE_UP_AFTER",
    "IN_DOUBT_AFTER",
    "NotificationDelivery",
    "retry_delay",
]

logger = logging.getLogger(__name__)

FIRST_RETRY = dt.timedelta(minutes=1)
LONGEST_RETRY = dt.timedelta(hours=1)
GIVE_UP_AFTER = dt.timedelta(hours=24)
IN_DOUBT_AFTER = dt.timedelta(minutes=10)

PERMANENT = "permanent-smtp-failure"
EXHAUSTED = "temporary-failure-exhausted"
UNCONFIRMED = "delivery-unconfirmed"
BROKEN = "history-fails-verification"


def retry_delay(attempts: int) -> dt.timedelta:
    """The pause after ``attempts`` failed attempts: 1, 2, 4 … minutes, ≤ 1 h."""
    return min(FIRST_RETRY * 2 ** min(attempts - 1, 10), LONGEST_RETRY)


class _Taken(Exception):
    """Another deliverer marked the message ``sending`` first."""


class NotificationDelivery:
    """Sends due messages and records in each letter what became of them."""

    batch_size = 20

    def __init__(
        self,
        letters: LetterApplication,
        queue: MailQueue,
        transport: MailTransport,
        composer: MailComposer,
        clock: Clock,
    ) -> None:
        self.letters = letters
        self.queue = queue
        self.transport = transport
        self.composer = composer
        self.clock = clock

    def enqueue_notification(self, letter: Letter) -> None:
        """Queue the recipient's notification of ``letter`` (once per letter)."""
        self._enqueue(letter, Purpose.NOTIFICATION)

    def run_once(self) -> int:
        """Expose messages in doubt, send the due ones, settle the finished ones.

        Returns how many messages it acted on; a message waiting for its next
        attempt is no work until that moment comes.
        """
        exposed = self._expose_in_doubt()
        due = self.queue.due(self.clock.now(), self.batch_size)
        attempted = self._each(due, self._attempt)
        settled = self._each(self.queue.unsettled(self.batch_size), self._settle)
        return exposed + attempted + settled

    def _enqueue(self, letter: Letter, purpose: Purpose) -> None:
        message_id = self.composer.message_id(letter.id, purpose)
        if self.queue.enqueue(letter.id, purpose, message_id, self.clock.now()):
            logger.info("mail queued letter=%s purpose=%s", letter.id, purpose)

    def _expose_in_doubt(self) -> int:
        exposed = self.queue.expose_in_doubt(
            self.clock.now() - IN_DOUBT_AFTER, UNCONFIRMED
        )
        if exposed:
            logger.error(
                "mail delivery unconfirmed, not sending again messages=%d", exposed
            )
        return exposed

    def _each(self, mails: list[QueuedMail], act: Callable[[QueuedMail], None]) -> int:
        for mail in mails:
            try:
                act(mail)
            except BrokenHistory as broken:
                self._set_aside(mail, broken)
        return len(mails)

    def _set_aside(self, mail: QueuedMail, broken: BrokenHistory) -> None:
        # One letter whose seals fail must not hold up every other message;
        # the audit reports the letter too.
        logger.error(
            "mail set aside: history fails verification letter=%s purpose=%s "
            "version=%d reason=%s",
            mail.letter_id,
            mail.purpose,
            broken.version,
            broken.reason,
        )
        self.queue.finish(mail, MailState.FAILED, BROKEN, mail.attempts, None)
        self.queue.mark_settled(mail)

    def _attempt(self, mail: QueuedMail) -> None:
        """Try to hand one due message over, then act on the outcome."""
        letter = self.letters.get(mail.letter_id)
        at = self.clock.now()
        attempt = mail.attempts + 1
        try:
            self.transport.send(
                self._compose(mail, letter, at),
                before_data=lambda: self._claim(mail, at),
            )
        except _Taken:
            return
        except PermanentMailFailure as refused:
            self._give_up(mail, attempt, refused.code, f"{PERMANENT}:{refused.code}")
        except DeliveryInDoubt:
            logger.error(
                "mail delivery unconfirmed, not sending again letter=%s purpose=%s",
                mail.letter_id,
                mail.purpose,
            )
            self.queue.finish(mail, MailState.IN_DOUBT, UNCONFIRMED, attempt, None)
        except TemporaryMailFailure as failure:
            self._retry_later(mail, attempt, failure.code, at)
        else:
            self._sent(mail, attempt)
        finished = self.queue.get(mail.letter_id, mail.purpose)
        if finished is not None and finished.state is not MailState.QUEUED:
            self._settle(finished)

    def _compose(
        self, mail: QueuedMail, letter: Letter, at: dt.datetime
    ) -> EmailMessage:
        if mail.purpose is Purpose.NOTIFICATION:
            return self.composer.notification(letter, at, mail.message_id)
        notification = self.queue.get(letter.id, Purpose.NOTIFICATION)
        reason = notification.outcome if notification else None
        return self.composer.sender_notice(
            letter, at, mail.message_id, reason or UNCONFIRMED
        )

    def _claim(self, mail: QueuedMail, at: dt.datetime) -> None:
        if not self.queue.mark_sending(mail, at):
            raise _Taken(str(mail.letter_id))

    def _sent(self, mail: QueuedMail, attempt: int) -> None:
        self.queue.mark_sent(mail, attempt)
        logger.info(
            "mail sent letter=%s purpose=%s attempt=%d",
            mail.letter_id,
            mail.purpose,
            attempt,
        )

    def _retry_later(
        self, mail: QueuedMail, attempt: int, code: int, at: dt.datetime
    ) -> None:
        if at - mail.queued_at >= GIVE_UP_AFTER:
            self._give_up(mail, attempt, code, EXHAUSTED)
            return
        until = at + retry_delay(attempt)
        self.queue.defer(mail, attempt, until, code)
        logger.warning(
            "mail deferred letter=%s purpose=%s attempt=%d code=%d next=%s",
            mail.letter_id,
            mail.purpose,
            attempt,
            code,
            until.isoformat(),
        )

    def _give_up(self, mail: QueuedMail, attempt: int, code: int, reason: str) -> None:
        self.queue.finish(mail, MailState.FAILED, reason, attempt, code)
        logger.warning(
            "mail failed letter=%s purpose=%s attempt=%d reason=%s",
            mail.letter_id,
            mail.purpose,
            attempt,
            reason,
        )

    def _settle(self, mail: QueuedMail) -> None:
        """Record in the letter what became of a finished message."""
        if mail.purpose is Purpose.NOTIFICATION:
            letter = self.letters.get(mail.letter_id)
            if mail.state is MailState.SENT:
                self._record_notified(letter, mail)
            else:
                self._record_failure(letter, mail)
        elif mail.state is not MailState.SENT:
            logger.error(
                "sender notice not delivered letter=%s reason=%s",
                mail.letter_id,
                mail.outcome,
            )
        self.queue.mark_settled(mail)

    def _record_notified(self, letter: Letter, mail: QueuedMail) -> None:
        # A crash after the server took the message but before Notified was
        # recorded lands here on restart: record it, send nothing.
        if letter.state is LetterState.DEPOSITED and mail.attempted_at is not None:
            self.letters.record_notified(letter.id, mail.attempted_at)

    def _record_failure(self, letter: Letter, mail: QueuedMail) -> None:
        # One notification per letter, so at most one failure to record; the
        # count on the letter makes a replay after a crash harmless.
        if letter.state is LetterState.DEPOSITED and not letter.notification_failures:
            self.letters.record_notification_failed(
                letter.id, mail.outcome or UNCONFIRMED, self.clock.now()
            )
        self._enqueue(letter, Purpose.SENDER_NOTICE)
