"""The letters application: pli's commands on sealed, stored letters.

It is an ``eventsourcing`` application, so it lives with the rest of the
persistence machinery; the gRPC services, the processes and the audit all
drive letters through it.

Each command loads the letter from the sealed event store, asks the domain
to decide, and saves the resulting events through the token. A concurrent
writer makes the save fail on the letter's version; the command is then
retried on the fresh history, so the domain rules (one decision, exactly one
expiry) settle every race.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError
from eventsourcing.utils import get_topic

from pli.domain.clock import Clock
from pli.domain.errors import FieldProblem, InvalidInput
from pli.domain.letter import Letter, deposit_problems
from pli.domain.values import Assurance, AttachmentRef, LetterKind, Party, Recipient
from pli.hsm.seal import EventSealer, SealVerifier
from pli.infrastructure.content import ContentStore
from pli.infrastructure.event_store import (
    ConcurrentChange,
    EventStamper,
    SealedApplication,
)

__all__ = [
    "Authorisation",
    "ConcurrentChange",
    "DepositRequest",
    "IdempotencyConflict",
    "LEGALLY_TIMED_EVENTS",
    "LetterApplication",
    "LetterNotFound",
    "NewAttachment",
    "check_deposit",
    "idempotency_key_problems",
    "iso",
    "letter_view",
]

logger = logging.getLogger(__name__)

_IDEMPOTENCY_NAMESPACE = uuid5(NAMESPACE_URL, "urn:pli:deposit-idempotency-key")
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,128}")


class LetterNotFound(Exception):
    """No letter has this id."""


class IdempotencyConflict(Exception):
    """An idempotency key was reused with a different deposit request."""


@dataclass(frozen=True)
class NewAttachment:
    """An attachment as the sender hands it over at deposit."""

    filename: str
    media_type: str
    content: bytes

    @cached_property
    def sha256(self) -> str:
        """The content's SHA-256 (hex), computed once however often checked."""
        return hashlib.sha256(self.content).hexdigest()


@dataclass(frozen=True)
class DepositRequest:
    """What a sender asks to deposit; the sender's identity is its account's."""

    kind: LetterKind
    sender_account_id: UUID
    recipient: Recipient
    subject: str
    attachments: list[NewAttachment]


@dataclass(frozen=True)
class Authorisation:
    """The sender a deposit was authorised for, and what to save with it.

    ``also_save`` holds aggregates with pending events (the sender account's
    use of a one-time code) that must be stored atomically with the letter.
    """

    sender: Party
    also_save: tuple[Any, ...] = ()


def iso(moment: dt.datetime | None) -> str | None:
    """A fixed-width UTC ISO 8601 form that sorts as text."""
    if moment is None:
        return None
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")


def letter_view(letter: Letter) -> dict[str, Any]:
    """The read-model row of a letter (``pli.infrastructure.views``)."""
    return {
        "letter_id": str(letter.id),
        "sender_account_id": str(letter.sender_account_id),
        "kind": letter.kind.value,
        "state": letter.state.value,
        "version": letter.version,
        "deposited_at": iso(letter.deposited_at),
        "notified_at": iso(letter.notified_at),
        "window_closes_at": iso(letter.window_closes_at),
        "decided_at": iso(letter.decided_at),
        "content_purged_at": iso(letter.content_purged_at),
    }


def _request_digest(request: DepositRequest, refs: list[AttachmentRef]) -> str:
    canonical = {
        "kind": request.kind.value,
        "sender_account_id": str(request.sender_account_id),
        "recipient": request.recipient.as_dict(),
        "subject": request.subject,
        "attachments": [r.as_dict() for r in refs],
    }
    encoded = json.dumps(canonical, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(encoded).hexdigest()


def _refs(attachments: list[NewAttachment]) -> list[AttachmentRef]:
    return [
        AttachmentRef(
            filename=a.filename,
            media_type=a.media_type or "application/octet-stream",
            size=len(a.content),
            sha256=a.sha256,
        )
        for a in attachments
    ]


def idempotency_key_problems(idempotency_key: str) -> list[FieldProblem]:
    """What is wrong with an idempotency key, if anything."""
    if _IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        return []
    return [
        FieldProblem("idempotency_key", "must be 1 to 128 printable ASCII characters")
    ]


# Stands in for the account's verified sender while a request is checked.
_ANY_SENDER = Party(name="sender", email="sender@example.fr")


def check_deposit(idempotency_key: str, request: DepositRequest) -> list[FieldProblem]:
    """Everything wrong with a deposit request, without storing anything."""
    return idempotency_key_problems(idempotency_key) + deposit_problems(
        _ANY_SENDER, request.recipient, _refs(request.attachments), request.subject
    )


#: The events whose time the law relies on (CPCE R.53-1 to R.53-3): each is
#: time-stamped by the TSA as it is sealed.
LEGALLY_TIMED_EVENTS = (
    Letter.Deposited,
    Letter.Notified,
    Letter.IdentityVerified,
    Letter.Accepted,
    Letter.Refused,
    Letter.Expired,
)


class LetterApplication(SealedApplication):
    """Deposit, notify, identify, accept, refuse, expire and hand over letters."""

    name = "Letters"
    stamped_topics = frozenset(get_topic(event) for event in LEGALLY_TIMED_EVENTS)

    def __init__(
        self,
        env: dict[str, str],
        sealer: EventSealer,
        verifier: SealVerifier,
        clock: Clock,
        content: ContentStore,
        stamper: EventStamper | None = None,
    ) -> None:
        super().__init__(env, sealer, verifier, stamper)
        self.clock = clock
        self.content = content

    def deposit(
        self,
        idempotency_key: str,
        request: DepositRequest,
        authorise: Callable[[UUID], Authorisation],
    ) -> tuple[Letter, bool]:
        """Deposit a letter; return it and whether this call created it.

        A retry of a stored request returns the stored letter before
        ``authorise`` runs, so it spends no second one-time code. For a new
        letter, ``authorise(letter_id)`` checks the sender (account, consent,
        second factor) and raises if the deposit may not go ahead.
        """
        problems = check_deposit(idempotency_key, request)
        if problems:
            raise InvalidInput(problems)
        refs = _refs(request.attachments)
        letter_id = uuid5(_IDEMPOTENCY_NAMESPACE, idempotency_key)
        digest = _request_digest(request, refs)
        existing = self._existing(letter_id)
        if existing is not None:
            return self._replayed(existing, digest), False
        authorisation = authorise(letter_id)
        letter = Letter.deposit(
            letter_id=letter_id,
            kind=request.kind,
            sender_account_id=request.sender_account_id,
            sender=authorisation.sender,
            recipient=request.recipient,
            subject=request.subject,
            attachments=refs,
            request_digest=digest,
            at=self.clock.now(),
        )
        for attachment in request.attachments:
            self.content.put(letter_id, attachment.content)
        try:
            self.save(letter, *authorisation.also_save)
        except IntegrityError:
            # A concurrent retry with the same key won the race.
            # Or the sender account changed under a concurrent deposit.
            existing = self._existing(letter_id)
            if existing is None:
                raise ConcurrentChange(str(letter_id)) from None
            return self._replayed(existing, digest), False
        logger.info("letter deposited letter=%s event=Deposited", letter_id)
        return letter, True

    def _existing(self, letter_id: UUID) -> Letter | None:
        try:
            return self.get(letter_id)
        except LetterNotFound:
            return None

    @staticmethod
    def _replayed(existing: Letter, digest: str) -> Letter:
        if existing.request_digest != digest:
            raise IdempotencyConflict(str(existing.id))
        return existing

    def get(self, letter_id: UUID) -> Letter:
        """The letter as its events make it; raises LetterNotFound."""
        try:
            letter = self.repository.get(letter_id)
        except AggregateNotFoundError as exc:
            raise LetterNotFound(str(letter_id)) from exc
        if not isinstance(letter, Letter):
            raise LetterNotFound(str(letter_id))
        return letter

    def _command(self, letter_id: UUID, act: Callable[[Letter], None]) -> Letter:
        def decide() -> Letter:
            letter = self.get(letter_id)
            act(letter)
            return letter

        return self.save_deciding(letter_id, decide)

    def record_notified(self, letter_id: UUID, at: dt.datetime) -> Letter:
        """Record that the notification left at ``at``."""
        letter = self._command(letter_id, lambda letter: letter.notify(at))
        logger.info("letter notified letter=%s event=Notified", letter_id)
        return letter

    def begin_identification(self, letter_id: UUID, nonce_digest: str) -> Letter:
        """Open an identification attempt bound to a nonce's digest."""
        attempt = uuid4().hex
        letter = self._command(
            letter_id,
            lambda letter: letter.begin_identification(
                attempt=attempt, nonce_digest=nonce_digest, at=self.clock.now()
            ),
        )
        logger.info(
            "identification started letter=%s event=IdentificationStarted", letter_id
        )
        return letter

    def fail_identification(
        self, letter_id: UUID, nonce_digest: str, reason: str
    ) -> Letter:
        """Record a failed identification attempt and its reason."""
        letter = self._command(
            letter_id,
            lambda letter: letter.fail_identification(
                nonce_digest=nonce_digest, reason=reason, at=self.clock.now()
            ),
        )
        logger.info(
            "identification failed letter=%s event=IdentificationFailed", letter_id
        )
        return letter

    def record_notification_failed(
        self, letter_id: UUID, reason: str, at: dt.datetime
    ) -> Letter:
        """Record that the notification could not be delivered, and why."""
        letter = self._command(
            letter_id, lambda letter: letter.fail_notification(reason, at)
        )
        logger.info(
            "notification failed letter=%s event=NotificationFailed reason=%s",
            letter_id,
            reason,
        )
        return letter

    def identify(
        self,
        letter_id: UUID,
        *,
        nonce_digest: str,
        level: Assurance,
        issuer: str,
        subject_digest: str,
        qualified: bool,
    ) -> Letter:
        """Record the recipient's identification by an ID token."""
        letter = self._command(
            letter_id,
            lambda letter: letter.identify(
                nonce_digest=nonce_digest,
                method="openid-connect",
                level=level,
                issuer=issuer,
                subject_digest=subject_digest,
                qualified=qualified,
                at=self.clock.now(),
            ),
        )
        logger.info("recipient identified letter=%s event=IdentityVerified", letter_id)
        return letter

    def purge_content(self, letter_id: UUID, policy: str) -> Letter:
        """Record that the letter's content was purged under ``policy``."""
        letter = self._command(
            letter_id,
            lambda letter: letter.purge_content(policy=policy, at=self.clock.now()),
        )
        self.content.purge(letter_id)
        logger.info("content purged letter=%s event=ContentPurged", letter_id)
        return letter

    def accept(self, letter_id: UUID) -> Letter:
        """Record the recipient's acceptance."""
        letter = self._command(
            letter_id, lambda letter: letter.accept(self.clock.now())
        )
        logger.info("letter accepted letter=%s event=Accepted", letter_id)
        return letter

    def refuse(self, letter_id: UUID) -> Letter:
        """Record the recipient's refusal."""
        letter = self._command(
            letter_id, lambda letter: letter.refuse(self.clock.now())
        )
        logger.info("letter refused letter=%s event=Refused", letter_id)
        return letter

    def expire(self, letter_id: UUID, at: dt.datetime | None = None) -> Letter:
        """Record non-claim once the window has closed."""
        moment = at or self.clock.now()
        letter = self._command(letter_id, lambda letter: letter.expire(moment))
        logger.info("letter expired letter=%s event=Expired", letter_id)
        return letter

    def deliver_content(self, letter_id: UUID, attachment_index: int) -> Letter:
        """Record that an attachment is being handed over, once its bytes check."""
        letter = self.get(letter_id)
        purged = letter.content_purged_at is not None
        if not purged and 0 <= attachment_index < len(letter.attachments):
            self.content.check(letter_id, letter.attachments[attachment_index].sha256)
        return self._command(
            letter_id,
            lambda letter: letter.deliver_content(attachment_index, self.clock.now()),
        )
