"""The registered letter: an event-sourced aggregate and its lifecycle rules.

A letter is deposited, notified, has its recipient identified, and ends
accepted, refused or expired (non-claim, "non-réclamation"). Each command
checks the rule the law sets for it (DESIGN §1) and raises a
:class:`~pli.domain.errors.RuleViolation` naming that rule; each event keeps
exactly the facts the proofs need. Times come from the caller's clock.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate

from pli.domain.errors import FieldProblem, InvalidInput, RuleViolation
from pli.domain.values import (
    Assurance,
    AttachmentRef,
    LetterKind,
    Party,
    Recipient,
    check_text,
)
from pli.domain.window import window_closes_at

__all__ = [
    "Letter",
    "LetterState",
    "MAX_ATTACHMENTS",
    "MAX_CONTENT_BYTES",
    "deposit_problems",
]

MAX_ATTACHMENTS = 64
MAX_CONTENT_BYTES = 256 * 1024 * 1024  # DESIGN §5
MAX_SUBJECT_LENGTH = 200
# Bounds the events one letter can accumulate from the desk.
MAX_IDENTIFICATION_ATTEMPTS = 50


def deposit_problems(
    sender: Party,
    recipient: Recipient,
    attachments: list[AttachmentRef],
    subject: str = "",
) -> list[FieldProblem]:
    """Everything wrong with a deposit's parties, subject and attachments."""
    problems = sender.problems("sender") + recipient.problems("recipient")
    problems += check_text(subject, "subject", maximum=MAX_SUBJECT_LENGTH)
    if not attachments:
        problems.append(FieldProblem("attachments", "at least one is required"))
    if len(attachments) > MAX_ATTACHMENTS:
        problems.append(
            FieldProblem("attachments", f"at most {MAX_ATTACHMENTS} are allowed")
        )
    for index, attachment in enumerate(attachments):
        problems += attachment.problems(f"attachments[{index}]")
    if sum(a.size for a in attachments) > MAX_CONTENT_BYTES:
        problems.append(
            FieldProblem("attachments", "content must total at most 256 MiB")
        )
    return problems


class LetterState(StrEnum):
    """Where a letter stands; the last three are terminal."""

    DEPOSITED = "deposited"
    NOTIFIED = "notified"
    IDENTIFIED = "identified"
    ACCEPTED = "accepted"
    REFUSED = "refused"
    EXPIRED = "expired"

    @property
    def is_terminal(self) -> bool:
        """Whether no command may change the letter any more."""
        return self in TERMINAL


TERMINAL = frozenset({LetterState.ACCEPTED, LetterState.REFUSED, LetterState.EXPIRED})

# eIDAS art. 44(1)(c) and CPCE R.53-1: an LRE recipient's identification
# reaches at least "substantial"; an ERE sets no minimum.
MINIMUM_ASSURANCE = {
    LetterKind.LRE: Assurance.SUBSTANTIAL,
    LetterKind.ERE: Assurance.LOW,
}


class Letter(Aggregate):
    """A registered letter, from deposit to its final state."""

    class Deposited(Aggregate.Created):
        """The sender deposited the letter (CPCE R.53-2)."""

        kind: str
        sender_account_id: str
        sender: dict[str, str]
        recipient: dict[str, str]
        subject: str
        attachments: list[dict[str, Any]]
        request_digest: str

    class Notified(Aggregate.Event):
        """The notification left for the recipient (CPCE R.53-3 I)."""

        window_closes_at: dt.datetime

        def apply(self, aggregate: Letter) -> None:
            """Open the window."""
            aggregate.state = LetterState.NOTIFIED
            aggregate.notified_at = self.timestamp
            aggregate.window_closes_at = self.window_closes_at

    class NotificationFailed(Aggregate.Event):
        """The notification could not be delivered; the reason is generic."""

        reason: str

        def apply(self, aggregate: Letter) -> None:
            """Count the failure; the letter stays deposited."""
            aggregate.notification_failures += 1
            aggregate.notification_failure_reason = self.reason

    class IdentificationStarted(Aggregate.Event):
        """The desk started identifying the recipient; only the nonce's digest."""

        attempt: str
        nonce_digest: str

        def apply(self, aggregate: Letter) -> None:
            """Open the attempt."""
            aggregate.open_attempts[self.nonce_digest] = self.attempt
            aggregate.attempts_started += 1

    class IdentificationFailed(Aggregate.Event):
        """An identification attempt failed; the reason, never the token."""

        attempt: str
        reason: str

        def apply(self, aggregate: Letter) -> None:
            """Close the attempt."""
            aggregate.close_attempt(self.attempt)

    class IdentityVerified(Aggregate.Event):
        """The recipient was identified (eIDAS art. 44(1)(c))."""

        attempt: str
        method: str
        level: int
        issuer: str
        subject_digest: str
        qualified: bool

        def apply(self, aggregate: Letter) -> None:
            """The recipient may now decide."""
            aggregate.close_attempt(self.attempt)
            aggregate.state = LetterState.IDENTIFIED
            aggregate.identified_at = self.timestamp
            aggregate.identification_level = Assurance(self.level)
            aggregate.identification_qualified = self.qualified

    class Accepted(Aggregate.Event):
        """The identified recipient accepted the letter (CPCE R.53-3 II)."""

        def apply(self, aggregate: Letter) -> None:
            """Final: accepted."""
            aggregate.state = LetterState.ACCEPTED
            aggregate.decided_at = self.timestamp

    class Refused(Aggregate.Event):
        """The identified recipient refused the letter (CPCE R.53-3 III)."""

        def apply(self, aggregate: Letter) -> None:
            """Final: refused."""
            aggregate.state = LetterState.REFUSED
            aggregate.decided_at = self.timestamp

    class Expired(Aggregate.Event):
        """The window closed without a decision: non-claim (CPCE R.53-3 III)."""

        def apply(self, aggregate: Letter) -> None:
            """Final: expired."""
            aggregate.state = LetterState.EXPIRED
            aggregate.decided_at = self.timestamp

    class ContentDelivered(Aggregate.Event):
        """One attachment of the accepted letter was handed over."""

        attachment_index: int

        def apply(self, aggregate: Letter) -> None:
            """Remember the hand-over."""
            aggregate.delivered.add(self.attachment_index)

    class ContentPurged(Aggregate.Event):
        """The content was deleted under the retention policy; proofs stay."""

        policy: str

        def apply(self, aggregate: Letter) -> None:
            """The content is gone."""
            aggregate.content_purged_at = self.timestamp

    @classmethod
    def deposit(
        cls,
        *,
        letter_id: UUID,
        kind: LetterKind,
        sender_account_id: UUID,
        sender: Party,
        recipient: Recipient,
        subject: str,
        attachments: list[AttachmentRef],
        request_digest: str,
        at: dt.datetime,
    ) -> Letter:
        """Deposit a new letter; raise InvalidInput listing every bad field."""
        problems = deposit_problems(sender, recipient, attachments, subject)
        if problems:
            raise InvalidInput(problems)
        return cls._create(
            cls.Deposited,
            id=letter_id,
            timestamp=at,
            kind=kind.value,
            sender_account_id=str(sender_account_id),
            sender=sender.as_dict(),
            recipient=recipient.as_dict(),
            subject=subject,
            attachments=[a.as_dict() for a in attachments],
            request_digest=request_digest,
        )

    @staticmethod
    def create_id(*_: Any, **kwargs: Any) -> UUID:
        """Letters take the id chosen at deposit."""
        letter_id: UUID = kwargs["id"]
        return letter_id

    def __init__(
        self,
        kind: str,
        sender_account_id: str,
        sender: dict[str, str],
        recipient: dict[str, str],
        subject: str,
        attachments: list[dict[str, Any]],
        request_digest: str,
    ) -> None:
        self.request_digest = request_digest
        self.kind = LetterKind(kind)
        self.sender_account_id = UUID(sender_account_id)
        self.sender = Party(**sender)
        self.recipient = Recipient.from_dict(recipient)
        self.subject = subject
        self.attachments = [AttachmentRef(**a) for a in attachments]
        self.state = LetterState.DEPOSITED
        self.deposited_at: dt.datetime = self.created_on
        self.notified_at: dt.datetime | None = None
        self.window_closes_at: dt.datetime | None = None
        self.identified_at: dt.datetime | None = None
        self.identification_level: Assurance | None = None
        self.identification_qualified = False
        self.decided_at: dt.datetime | None = None
        self.notification_failures = 0
        self.notification_failure_reason = ""
        self.open_attempts: dict[str, str] = {}
        self.attempts_started = 0
        self.delivered: set[int] = set()
        self.content_purged_at: dt.datetime | None = None

    def close_attempt(self, attempt: str) -> None:
        """Forget an attempt once it succeeded or failed."""
        self.open_attempts = {
            digest: open_attempt
            for digest, open_attempt in self.open_attempts.items()
            if open_attempt != attempt
        }

    # Commands.

    def notify(self, at: dt.datetime) -> None:
        """Record that the notification left; opens the decision window."""
        self._require_not_terminal("notify")
        if self.state is not LetterState.DEPOSITED:
            raise RuleViolation("already-notified", "the letter was already notified")
        self.trigger_event(
            self.Notified, timestamp=at, window_closes_at=window_closes_at(at)
        )

    def fail_notification(self, reason: str, at: dt.datetime) -> None:
        """Record that the notification could not be sent."""
        if self.state is not LetterState.DEPOSITED:
            raise RuleViolation("already-notified", "the letter was already notified")
        self.trigger_event(self.NotificationFailed, timestamp=at, reason=reason)

    def begin_identification(
        self, *, attempt: str, nonce_digest: str, at: dt.datetime
    ) -> None:
        """Open an identification attempt bound to a nonce pli handed out."""
        self._require_open_window("identify", at)
        if self.state is LetterState.IDENTIFIED:
            raise RuleViolation(
                "already-identified", "the recipient is already identified"
            )
        if self.attempts_started >= MAX_IDENTIFICATION_ATTEMPTS:
            raise RuleViolation(
                "identification-attempts-exhausted",
                f"at most {MAX_IDENTIFICATION_ATTEMPTS} identifications may be "
                "started for one letter",
            )
        self.trigger_event(
            self.IdentificationStarted,
            timestamp=at,
            attempt=attempt,
            nonce_digest=nonce_digest,
        )

    def attempt_for(self, nonce_digest: str) -> str:
        """The open attempt a nonce belongs to; raises if there is none."""
        attempt = self.open_attempts.get(nonce_digest)
        if attempt is None:
            raise RuleViolation(
                "identification-not-started",
                "this nonce opens no identification of this letter: call "
                "BeginIdentification first and use the nonce it returns once",
            )
        return attempt

    def fail_identification(
        self, *, nonce_digest: str, reason: str, at: dt.datetime
    ) -> None:
        """Record a failed attempt with its reason (never the token)."""
        self._require_open_window("identify", at)
        attempt = self.attempt_for(nonce_digest)
        self.trigger_event(
            self.IdentificationFailed, timestamp=at, attempt=attempt, reason=reason
        )

    def identify(
        self,
        *,
        nonce_digest: str,
        method: str,
        level: Assurance,
        issuer: str,
        subject_digest: str,
        qualified: bool,
        at: dt.datetime,
    ) -> None:
        """Complete an attempt: the recipient is identified at ``level``.

        A check that completes after the window closed changes nothing.
        """
        self._require_open_window("identify", at)
        attempt = self.attempt_for(nonce_digest)
        problems = check_text(method, "method", maximum=100)
        problems += check_text(issuer, "issuer", maximum=300)
        if problems:
            raise InvalidInput(problems)
        minimum = MINIMUM_ASSURANCE[self.kind]
        if level < minimum:
            raise RuleViolation(
                "assurance-too-low",
                f"an {self.kind.value} recipient must be identified at level "
                f"{minimum.name.lower()} or higher (eIDAS art. 44, CPCE R.53-1)",
            )
        self.trigger_event(
            self.IdentityVerified,
            timestamp=at,
            attempt=attempt,
            method=method,
            level=int(level),
            issuer=issuer,
            subject_digest=subject_digest,
            qualified=qualified,
        )

    def accept(self, at: dt.datetime) -> None:
        """Record the identified recipient's acceptance.

        Accepting an accepted letter again changes nothing, so a frontend
        may retry a call whose answer it lost.
        """
        if self.state is LetterState.ACCEPTED:
            return
        self._require_decision_allowed("accept", at)
        self.trigger_event(self.Accepted, timestamp=at)

    def refuse(self, at: dt.datetime) -> None:
        """Record the identified recipient's refusal; again, it changes nothing."""
        if self.state is LetterState.REFUSED:
            return
        self._require_decision_allowed("refuse", at)
        self.trigger_event(self.Refused, timestamp=at)

    def expire(self, at: dt.datetime) -> None:
        """Record non-claim once the window has closed."""
        self._require_not_terminal("expire")
        if self.window_closes_at is None:
            raise RuleViolation("not-notified", "the letter was never notified")
        if at < self.window_closes_at:
            raise RuleViolation(
                "window-open", "the 15-day window has not closed yet (CPCE R.53-3 I)"
            )
        self.trigger_event(self.Expired, timestamp=at)

    def deliver_content(self, attachment_index: int, at: dt.datetime) -> None:
        """Record that an attachment was handed over to the recipient."""
        if self.state is not LetterState.ACCEPTED:
            raise RuleViolation(
                "not-accepted",
                "content is handed over only after acceptance (CPCE R.53-3 II)",
            )
        self._require_content("hand over the content")
        if not 0 <= attachment_index < len(self.attachments):
            raise InvalidInput(
                [FieldProblem("attachment_index", "no attachment at this position")]
            )
        if attachment_index in self.delivered:
            return  # the first hand-over is the evidence; downloads may repeat
        self.trigger_event(
            self.ContentDelivered, timestamp=at, attachment_index=attachment_index
        )

    def purge_content(self, *, policy: str, at: dt.datetime) -> None:
        """Record that the content was deleted; only once the letter is final."""
        if not self.state.is_terminal:
            raise RuleViolation(
                "letter-not-final",
                "content is kept until the letter is accepted, refused or expired",
            )
        self._require_content("purge the content")
        self.trigger_event(self.ContentPurged, timestamp=at, policy=policy)

    @property
    def last_event_at(self) -> dt.datetime:
        """When the letter last changed."""
        return self.modified_on

    def is_overdue(self, at: dt.datetime) -> bool:
        """Whether the window has closed at ``at`` with no decision recorded."""
        return (
            not self.state.is_terminal
            and self.window_closes_at is not None
            and at >= self.window_closes_at
        )

    # Rules shared by commands.

    def _require_not_terminal(self, command: str) -> None:
        if self.state.is_terminal:
            raise RuleViolation(
                "decision-final",
                f"cannot {command}: the letter is already {self.state.value}",
            )

    def _require_content(self, command: str) -> None:
        if self.content_purged_at is not None:
            raise RuleViolation(
                "content-purged",
                f"cannot {command}: the content was purged under the retention policy",
            )

    def _require_open_window(self, command: str, at: dt.datetime) -> None:
        self._require_not_terminal(command)
        if self.window_closes_at is None:
            raise RuleViolation(
                "not-notified",
                f"cannot {command}: the recipient has not been notified yet",
            )
        if at >= self.window_closes_at:
            raise RuleViolation(
                "window-closed",
                f"cannot {command}: the 15-day window has closed (CPCE R.53-3 I)",
            )

    def _require_decision_allowed(self, command: str, at: dt.datetime) -> None:
        self._require_open_window(command, at)
        if self.state is not LetterState.IDENTIFIED:
            raise RuleViolation(
                "identification-required",
                f"cannot {command}: the recipient must be identified first "
                "(eIDAS art. 44(1)(c))",
            )
