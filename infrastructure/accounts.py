"""Sender accounts and consumer consents on the sealed event store.

Both live in the letters' event store, so an account's ``SecondFactorUsed``
and the letter whose deposit it authenticated are saved in one atomic batch
and share one commit order with every letter event. Commands follow the
letters' pattern: load, let the domain decide, save through the token, and
on a concurrent writer's conflict start again on the fresh history.

The TOTP secret (RFC 6238: HMAC-SHA-1, six digits, 30-second steps) is made
here and sealed at once by the token's secrets key (``pli.hsm.secrets``),
bound to the account id; only the sealed blob reaches the event store. A
code is checked against the previous, current and next time step, so clocks
a step apart still agree, and the account decides whether the matching step
may authenticate the deposit.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import re
import secrets
from typing import TypeVar
from uuid import UUID

from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor import InvalidToken
from cryptography.hazmat.primitives.twofactor.totp import TOTP
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError

from pli.domain.clock import Clock
from pli.domain.consent import (
    Consent,
    consent_id,
    grant_problems,
    require_live_consent,
)
from pli.domain.errors import FieldProblem, InvalidInput, RuleViolation
from pli.domain.sender_account import SenderAccount, VerificationMethod
from pli.domain.values import Assurance
from pli.hsm.secrets import SecretBox
from pli.infrastructure.event_store import (
    ConcurrentChange,
    SealedApplication,
    pause_before_retry,
)

__all__ = [
    "TOTP_ALGORITHM",
    "ConsentNotFound",
    "Consents",
    "SenderAccountConflict",
    "SenderAccountNotFound",
    "SenderAccounts",
]

logger = logging.getLogger(__name__)

A = TypeVar("A", bound=Aggregate)

TOTP_ALGORITHM = "totp-sha1-6-30"
_DIGITS = 6
_STEP_SECONDS = 30
_SECRET_BYTES = 20  # RFC 4226 §4 R6: a 160-bit shared secret for HMAC-SHA-1
_CODE = re.compile(r"[0-9]{6}")
_SECRET_CONTEXT = b"pli/totp-secret/v1\n"
_RETRIES = 12


class SenderAccountNotFound(Exception):
    """No sender account has this id."""


class ConsentNotFound(Exception):
    """No consent was ever granted for this sender account and address."""


class SenderAccountConflict(Exception):
    """The account id is taken, by another registration or another record."""


def _load(app: SealedApplication, aggregate_id: UUID, kind: type[A]) -> A | None:
    try:
        aggregate = app.repository.get(aggregate_id)
    except AggregateNotFoundError:
        return None
    return aggregate if isinstance(aggregate, kind) else None


def _totp(secret: bytes) -> TOTP:
    return TOTP(secret, _DIGITS, SHA1(), _STEP_SECONDS)


def _secret_binding(account_id: UUID) -> bytes:
    # The sealed secret opens only for the account it was enrolled for.
    return _SECRET_CONTEXT + str(account_id).encode()


class SenderAccounts:
    """Register senders, enrol their TOTP second factor and check their codes."""

    def __init__(
        self,
        app: SealedApplication,
        box: SecretBox,
        clock: Clock,
        *,
        issuer: str = "pli",
    ) -> None:
        self.app = app
        self.box = box
        self.clock = clock
        self.issuer = issuer

    def get(self, account_id: UUID) -> SenderAccount:
        """The account as its events make it; raises SenderAccountNotFound."""
        account = _load(self.app, account_id, SenderAccount)
        if account is None:
            raise SenderAccountNotFound(str(account_id))
        return account

    def register(
        self,
        account_id: UUID,
        *,
        name: str,
        email: str,
        assurance: Assurance,
        method: VerificationMethod | str,
        verifier_reference: str,
    ) -> SenderAccount:
        """Record a verified sender; the same registration again is a no-op."""
        account = SenderAccount.register(
            account_id=account_id,
            name=name,
            email=email,
            assurance=assurance,
            method=method,
            verifier_reference=verifier_reference,
            at=self.clock.now(),
        )
        existing = self._taken(account_id)
        if existing is None:
            try:
                self.app.save(account)
            except IntegrityError:
                # A concurrent registration of the same id won the race.
                existing = self._taken(account_id)
                if existing is None:
                    raise
            else:
                logger.info("sender registered account=%s event=Registered", account_id)
                return account
        return self._same_registration(existing, account)

    def enroll_totp(self, account_id: UUID) -> str:
        """Enrol a new TOTP secret; return its ``otpauth://`` URI, shown once."""
        secret = secrets.token_bytes(_SECRET_BYTES)
        sealed = self.box.seal(secret, _secret_binding(account_id))

        def enroll() -> SenderAccount:
            account = self.get(account_id)
            account.enroll_second_factor(
                algorithm=TOTP_ALGORITHM,
                key_label=self.box.key_label,
                sealed_secret=base64.b64encode(sealed).decode("ascii"),
                at=self.clock.now(),
            )
            return account

        account = self.app.save_deciding(account_id, enroll)
        logger.info(
            "second factor enrolled account=%s event=SecondFactorEnrolled", account_id
        )
        return _totp(secret).get_provisioning_uri(account.email, self.issuer)

    def check_totp(self, account_id: UUID, code: str, letter_id: UUID) -> SenderAccount:
        """Check a code for a deposit; return the account with it unsaved.

        The returned account holds a pending ``SecondFactorUsed`` that the
        caller saves in the same batch as the letter, so the code is spent if
        and only if the letter is deposited. A refused code is saved here as
        ``SecondFactorRejected`` and raised as a RuleViolation.
        """
        if not _CODE.fullmatch(code):
            raise InvalidInput([FieldProblem("second_factor_code", "must be 6 digits")])
        for attempt in range(_RETRIES):
            account = self.get(account_id)
            at = self.clock.now()
            step = self._matching_step(account, code, int(at.timestamp()))
            try:
                account.use_second_factor(step=step, letter_id=letter_id, at=at)
            except RuleViolation as refusal:
                if self._saved(account, attempt):
                    logger.info(
                        "second factor refused account=%s rule=%s",
                        account_id,
                        refusal.rule,
                    )
                    raise
                continue
            return account
        raise ConcurrentChange(str(account_id))

    def close(self, account_id: UUID) -> SenderAccount:
        """Close the account; it authenticates no further deposit."""

        def close() -> SenderAccount:
            account = self.get(account_id)
            account.close(self.clock.now())
            return account

        account = self.app.save_deciding(account_id, close)
        logger.info("sender account closed account=%s event=Closed", account_id)
        return account

    def _taken(self, account_id: UUID) -> SenderAccount | None:
        try:
            aggregate = self.app.repository.get(account_id)
        except AggregateNotFoundError:
            return None
        if not isinstance(aggregate, SenderAccount):
            raise SenderAccountConflict(str(account_id))
        return aggregate

    @staticmethod
    def _same_registration(
        existing: SenderAccount, requested: SenderAccount
    ) -> SenderAccount:
        if existing.registration() != requested.registration():
            raise SenderAccountConflict(str(existing.id))
        return existing

    def _matching_step(self, account: SenderAccount, code: str, now: int) -> int | None:
        """The latest of the previous, current and next steps the code matches."""
        factor = account.second_factor
        if factor is None or account.is_closed or account.is_locked:
            return None
        box = SecretBox(self.box.token, key_label=factor.key_label)
        secret = box.open(
            base64.b64decode(factor.sealed_secret), _secret_binding(account.id)
        )
        totp = _totp(secret)
        current = now // _STEP_SECONDS
        matching = [
            step
            for step in (current - 1, current, current + 1)
            if _code_matches(totp, code, step)
        ]
        return max(matching, default=None)

    def _saved(self, account: SenderAccount, attempt: int) -> bool:
        """Save a refusal's evidence; False when a concurrent write came first."""
        if not account.pending_events:
            return True
        try:
            self.app.save(account)
        except IntegrityError:
            pause_before_retry(attempt)
            return False
        return True


def _code_matches(totp: TOTP, code: str, step: int) -> bool:
    try:
        totp.verify(code.encode("ascii"), step * _STEP_SECONDS)
    except InvalidToken:
        return False
    return True


class Consents:
    """Grant and revoke consumers' consents, and tell whether one is live."""

    def __init__(self, app: SealedApplication, clock: Clock) -> None:
        self.app = app
        self.clock = clock

    def get(self, account_id: UUID, address: str) -> Consent | None:
        """The consent for this sender account and address, if one was recorded."""
        return _load(self.app, consent_id(account_id, address), Consent)

    def is_live(self, account_id: UUID, address: str) -> bool:
        """Whether the consumer at ``address`` consents to this sender's LREs."""
        consent = self.get(account_id, address)
        return consent is not None and consent.is_live

    def require_live(self, account_id: UUID, address: str) -> Consent:
        """The live consent; raises RuleViolation ``consumer-consent-required``."""
        consent = self.get(account_id, address)
        require_live_consent(consent)
        assert consent is not None
        return consent

    def grant(
        self,
        account_id: UUID,
        address: str,
        *,
        method: str,
        text_version: str,
        evidence_reference: str,
    ) -> Consent:
        """Record the consumer's consent to this sender account's LREs."""
        problems = grant_problems(
            recipient_address=address,
            method=method,
            text_version=text_version,
            evidence_reference=evidence_reference,
        )
        if problems:
            raise InvalidInput(problems)

        def grant() -> Consent:
            account = _load(self.app, account_id, SenderAccount)
            if account is None:
                raise SenderAccountNotFound(str(account_id))
            account.require_open()
            at = self.clock.now()
            consent = self._recorded_or_new(account_id, address, at)
            consent.grant(
                method=method,
                text_version=text_version,
                evidence_reference=evidence_reference,
                at=at,
            )
            return consent

        consent = self.app.save_deciding(consent_id(account_id, address), grant)
        logger.info("consent granted consent=%s event=Granted", consent.id)
        return consent

    def revoke(
        self,
        account_id: UUID,
        address: str,
        *,
        method: str,
        evidence_reference: str = "",
    ) -> Consent:
        """Record that the consumer withdrew the consent."""

        def revoke() -> Consent:
            at = self.clock.now()
            # A consent never recorded is not live: the domain refuses to
            # revoke it, and the unsaved record is dropped.
            consent = self._recorded_or_new(account_id, address, at)
            consent.revoke(method=method, evidence_reference=evidence_reference, at=at)
            return consent

        consent = self.app.save_deciding(consent_id(account_id, address), revoke)
        logger.info("consent revoked consent=%s event=Revoked", consent.id)
        return consent

    def _recorded_or_new(
        self, account_id: UUID, address: str, at: dt.datetime
    ) -> Consent:
        consent = self.get(account_id, address)
        if consent is None:
            consent = Consent.open(
                sender_account_id=account_id, recipient_address=address, at=at
            )
        return consent
