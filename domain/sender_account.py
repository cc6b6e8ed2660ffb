"""The sender account: a sender's verified identity and second factor.

CPCE R.53-1 has the provider verify an LRE sender's identity once, by one of
the methods of eIDAS art. 24(1), and then authenticate each deposit with two
factors of different kinds, one of them dynamic. The account records the
first verification (who, at which level of assurance, how, checked by whom;
never a document number) and the dynamic factor: a TOTP secret (RFC 6238)
that the provider's token keeps encrypted, and each code it accepted or
refused.

Checking a code needs the clear secret, which only the token can give, so
the infrastructure computes which time step a code matches and the account
decides whether that step may authenticate a deposit: a step is accepted
once (RFC 6238 §5.2), and after too many refusals in a row the factor is
locked until it is enrolled again (RFC 4226 §7.3, throttling).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate

from pli.domain.errors import FieldProblem, InvalidInput, RuleViolation
from pli.domain.values import Assurance, check_email, check_name, check_text

__all__ = [
    "MAX_CONSECUTIVE_REJECTIONS",
    "SecondFactor",
    "SecondFactorRejection",
    "SenderAccount",
    "VerificationMethod",
    "registration_problems",
]

MAX_CONSECUTIVE_REJECTIONS = 10
MAX_REFERENCE_LENGTH = 200
_KEY_LABEL = re.compile(r"[A-Za-z0-9._-]{1,64}")
_ALGORITHM = re.compile(r"[A-Za-z0-9._-]{1,64}")


class VerificationMethod(StrEnum):
    """How the sender's identity was first verified (eIDAS art. 24(1))."""

    IN_PERSON = "in-person"  # art. 24(1)(a)
    NOTIFIED_EID = "notified-eid"  # art. 24(1)(b)
    QUALIFIED_CERTIFICATE = "qualified-certificate"  # art. 24(1)(c)
    OTHER_RECOGNISED = "other-recognised"  # art. 24(1)(d)


class SecondFactorRejection(StrEnum):
    """Why a one-time code did not authenticate a deposit."""

    CODE_INVALID = "code-invalid"
    CODE_REUSED = "code-reused"
    NO_SECOND_FACTOR = "no-second-factor"

    @property
    def rule(self) -> str:
        """The name of the rule the refused code broke."""
        return _REJECTION_RULES[self][0]

    @property
    def description(self) -> str:
        """What the sender is told about the refusal."""
        return _REJECTION_RULES[self][1]


_REJECTION_RULES = {
    SecondFactorRejection.CODE_INVALID: (
        "second-factor-invalid",
        "the one-time code does not match the sender's enrolled second factor",
    ),
    SecondFactorRejection.CODE_REUSED: (
        "second-factor-reused",
        "this one-time code was already used; wait for the next code (RFC 6238 §5.2)",
    ),
    SecondFactorRejection.NO_SECOND_FACTOR: (
        "second-factor-required",
        "the sender has no second factor enrolled; an LRE deposit is "
        "authenticated with two factors (CPCE R.53-1)",
    ),
}


def registration_problems(
    *,
    name: str,
    email: str,
    assurance: int,
    method: str,
    verifier_reference: str,
) -> list[FieldProblem]:
    """Everything wrong with a registration's fields."""
    problems = check_name(name, "name") + check_email(email, "email")
    if assurance not in {level.value for level in Assurance}:
        problems.append(FieldProblem("assurance", "must be 1, 2 or 3 (eIDAS art. 8)"))
    if method not in {m.value for m in VerificationMethod}:
        allowed = ", ".join(m.value for m in VerificationMethod)
        problems.append(FieldProblem("method", f"must be one of {allowed}"))
    if not verifier_reference.strip():
        problems.append(FieldProblem("verifier_reference", "must not be empty"))
    problems += check_text(
        verifier_reference, "verifier_reference", maximum=MAX_REFERENCE_LENGTH
    )
    return problems


@dataclass(frozen=True)
class SecondFactor:
    """The enrolled TOTP secret as the account keeps it: sealed by the token."""

    algorithm: str
    key_label: str
    sealed_secret: str
    enrolled_at: dt.datetime


class SenderAccount(Aggregate):
    """A sender whose identity the provider verified, and their second factor."""

    class Registered(Aggregate.Created):
        """The sender's identity was verified (CPCE R.53-1, eIDAS art. 24(1))."""

        name: str
        email: str
        assurance: int
        method: str
        verifier_reference: str

    class SecondFactorEnrolled(Aggregate.Event):
        """A TOTP secret was enrolled, replacing any earlier one; stored sealed."""

        algorithm: str
        key_label: str
        sealed_secret: str

        def apply(self, aggregate: SenderAccount) -> None:
            """The new secret is the one codes are checked against."""
            aggregate.second_factor = SecondFactor(
                algorithm=self.algorithm,
                key_label=self.key_label,
                sealed_secret=self.sealed_secret,
                enrolled_at=self.timestamp,
            )
            aggregate.consecutive_rejections = 0

    class SecondFactorUsed(Aggregate.Event):
        """A one-time code authenticated the deposit of a letter."""

        step: int
        letter_id: str

        def apply(self, aggregate: SenderAccount) -> None:
            """The step is spent."""
            aggregate.last_used_step = self.step
            aggregate.consecutive_rejections = 0

    class SecondFactorRejected(Aggregate.Event):
        """A one-time code was refused; the code itself is not kept."""

        reason: str

        def apply(self, aggregate: SenderAccount) -> None:
            """Count the refusal towards the lock."""
            aggregate.consecutive_rejections += 1

    class Closed(Aggregate.Event):
        """The account was closed; it authenticates no further deposit."""

        def apply(self, aggregate: SenderAccount) -> None:
            """Final: closed."""
            aggregate.closed_at = self.timestamp

    @classmethod
    def register(
        cls,
        *,
        account_id: UUID,
        name: str,
        email: str,
        assurance: Assurance,
        method: VerificationMethod | str,
        verifier_reference: str,
        at: dt.datetime,
    ) -> SenderAccount:
        """Open an account for a verified sender; raise InvalidInput if malformed."""
        problems = registration_problems(
            name=name,
            email=email,
            assurance=int(assurance),
            method=str(method),
            verifier_reference=verifier_reference,
        )
        if problems:
            raise InvalidInput(problems)
        # eIDAS art. 24(1): each admissible method gives at least the assurance
        # of physical presence, which eIDAS art. 8 calls "substantial".
        if assurance < Assurance.SUBSTANTIAL:
            raise RuleViolation(
                "sender-assurance-too-low",
                "a sender is verified at level substantial or high "
                "(eIDAS art. 24(1), CPCE R.53-1)",
            )
        return cls._create(
            cls.Registered,
            id=account_id,
            timestamp=at,
            name=name,
            email=email,
            assurance=int(assurance),
            method=str(method),
            verifier_reference=verifier_reference,
        )

    @staticmethod
    def create_id(*_: Any, **kwargs: Any) -> UUID:
        """Accounts take the id chosen by the caller."""
        account_id: UUID = kwargs["id"]
        return account_id

    def __init__(
        self,
        name: str,
        email: str,
        assurance: int,
        method: str,
        verifier_reference: str,
    ) -> None:
        self.name = name
        self.email = email
        self.assurance = Assurance(assurance)
        self.method = VerificationMethod(method)
        self.verifier_reference = verifier_reference
        self.registered_at: dt.datetime = self.created_on
        self.second_factor: SecondFactor | None = None
        self.last_used_step: int | None = None
        self.consecutive_rejections = 0
        self.closed_at: dt.datetime | None = None

    @property
    def is_closed(self) -> bool:
        """Whether the account was closed."""
        return self.closed_at is not None

    @property
    def is_locked(self) -> bool:
        """Whether too many refused codes in a row locked the second factor."""
        return self.consecutive_rejections >= MAX_CONSECUTIVE_REJECTIONS

    def registration(self) -> dict[str, Any]:
        """The registered facts, to compare a repeated registration with."""
        return {
            "name": self.name,
            "email": self.email,
            "assurance": int(self.assurance),
            "method": self.method.value,
            "verifier_reference": self.verifier_reference,
        }

    # Commands.

    def enroll_second_factor(
        self, *, algorithm: str, key_label: str, sealed_secret: str, at: dt.datetime
    ) -> None:
        """Record a new TOTP secret, sealed by the token; replaces any earlier one."""
        self.require_open()
        problems: list[FieldProblem] = []
        if not _ALGORITHM.fullmatch(algorithm):
            problems.append(FieldProblem("algorithm", "must be a short identifier"))
        if not _KEY_LABEL.fullmatch(key_label):
            problems.append(FieldProblem("key_label", "must be a token key label"))
        if not sealed_secret:
            problems.append(FieldProblem("sealed_secret", "must not be empty"))
        if problems:
            raise InvalidInput(problems)
        self.trigger_event(
            self.SecondFactorEnrolled,
            timestamp=at,
            algorithm=algorithm,
            key_label=key_label,
            sealed_secret=sealed_secret,
        )

    def use_second_factor(
        self, *, step: int | None, letter_id: UUID, at: dt.datetime
    ) -> None:
        """Authenticate a deposit with the code that matched ``step``.

        ``step`` is the RFC 6238 time step the code matched, or None when it
        matched none. A refused code is recorded as ``SecondFactorRejected``
        before the :class:`RuleViolation` is raised, so the caller saves the
        account either way: every refusal is evidence.
        """
        self.require_open()
        self._require_unlocked()
        rejection = self._rejection(step)
        if rejection is not None:
            self.trigger_event(
                self.SecondFactorRejected, timestamp=at, reason=rejection.value
            )
            raise RuleViolation(rejection.rule, rejection.description)
        self.trigger_event(
            self.SecondFactorUsed, timestamp=at, step=step, letter_id=str(letter_id)
        )

    def close(self, at: dt.datetime) -> None:
        """Close the account."""
        self.require_open()
        self.trigger_event(self.Closed, timestamp=at)

    # Rules shared by commands.

    def _rejection(self, step: int | None) -> SecondFactorRejection | None:
        if self.second_factor is None:
            return SecondFactorRejection.NO_SECOND_FACTOR
        if step is None:
            return SecondFactorRejection.CODE_INVALID
        # RFC 6238 §5.2: a code is accepted once; later steps only, so an
        # earlier code still inside the validity window is refused as well.
        if self.last_used_step is not None and step <= self.last_used_step:
            return SecondFactorRejection.CODE_REUSED
        return None

    def require_open(self) -> None:
        """Raise RuleViolation ``account-closed`` if the account was closed."""
        if self.is_closed:
            raise RuleViolation("account-closed", "the sender account is closed")

    def _require_unlocked(self) -> None:
        if self.is_locked:
            raise RuleViolation(
                "second-factor-locked",
                f"{MAX_CONSECUTIVE_REJECTIONS} one-time codes in a row were refused; "
                "the second factor must be enrolled again",
            )
