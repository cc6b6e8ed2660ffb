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


def deposit_problems(
    sender: Party, recipient: Party, attachments: list[AttachmentRef]
) -> list[FieldProblem]:
    """Everything wrong with a deposit's parties and attachments."""
    problems = sender.problems("sender") + recipient.problems("recipient")
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
        sender: dict[str, str]
        recipient: dict[str, str]
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

    class IdentityVerified(Aggregate.Event):
        """The recipient was identified (eIDAS art. 44(1)(c))."""

        method: str
        level: int
        verifier_reference: str

        def apply(self, aggregate: Letter) -> None:
            """The recipient may now decide."""
            aggregate.state = LetterState.IDENTIFIED
            aggregate.identified_at = self.timestamp
            aggregate.identification_level = Assurance(self.level)

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
            """Count the hand-over."""
            aggregate.deliveries += 1

    @classmethod
    def deposit(
        cls,
        *,
        letter_id: UUID,
        kind: LetterKind,
        sender: Party,
        recipient: Party,
        attachments: list[AttachmentRef],
        request_digest: str,
        at: dt.datetime,
    ) -> Letter:
        """Deposit a new letter; raise InvalidInput listing every bad field."""
        problems = deposit_problems(sender, recipient, attachments)
        if problems:
            raise InvalidInput(problems)
        return cls._create(
            cls.Deposited,
            id=letter_id,
            timestamp=at,
            kind=kind.value,
            sender=sender.as_dict(),
            recipient=recipient.as_dict(),
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
        sender: dict[str, str],
        recipient: dict[str, str],
        attachments: list[dict[str, Any]],
        request_digest: str,
    ) -> None:
        self.request_digest = request_digest
        self.kind = LetterKind(kind)
        self.sender = Party(**sender)
        self.recipient = Party(**recipient)
        self.attachments = [AttachmentRef(**a) for a in attachments]
        self.state = LetterState.DEPOSITED
        self.deposited_at: dt.datetime = self.created_on
        self.notified_at: dt.datetime | None = None
        self.window_closes_at: dt.datetime | None = None
        self.identified_at: dt.datetime | None = None
        self.identification_level: Assurance | None = None
        self.decided_at: dt.datetime | None = None
        self.notification_failures = 0
        self.deliveries = 0

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

    def identify(
        self, *, method: str, level: Assurance, verifier_reference: str, at: dt.datetime
    ) -> None:
        """Record the recipient's identification, at the level the kind needs."""
        self._require_open_window("identify", at)
        problems = check_text(method, "method", maximum=100)
        if not method.strip():
            problems.append(FieldProblem("method", "must not be empty"))
        problems += check_text(verifier_reference, "verifier_reference", maximum=200)
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
            method=method,
            level=int(level),
            verifier_reference=verifier_reference,
        )

    def accept(self, at: dt.datetime) -> None:
        """Record the identified recipient's acceptance."""
        self._require_decision_allowed("accept", at)
        self.trigger_event(self.Accepted, timestamp=at)

    def refuse(self, at: dt.datetime) -> None:
        """Record the identified recipient's refusal."""
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
        if not 0 <= attachment_index < len(self.attachments):
            raise InvalidInput(
                [FieldProblem("attachment_index", "no attachment at this position")]
            )
        self.trigger_event(
            self.ContentDelivered, timestamp=at, attachment_index=attachment_index
        )

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
