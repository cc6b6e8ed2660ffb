"""A consumer's consent to receive a sender's LREs electronically.

CPCE L.100: a recipient who is not a professional must have agreed
beforehand to receive registered letters electronically, and that consent
is itself evidence: who agreed, for which address, when, how, and to which
wording. A consent is kept per sender account and recipient address; it is
granted, may be revoked, and may be granted again, each step an event.

Addresses are compared after :func:`normalise_address`: the domain is
case-insensitive (RFC 5321 §2.4), so it is lowercased; the local part may be
case-sensitive on the receiving server, so it is kept exactly as given. A
consent given for ``Jean@example.fr`` therefore never covers
``jean@example.fr``: the provider does not extend a consent to a mailbox the
consumer did not name.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

from pli.domain.errors import FieldProblem, InvalidInput, RuleViolation
from pli.domain.values import check_email, check_text

__all__ = [
    "Consent",
    "ConsentStep",
    "consent_id",
    "grant_problems",
    "normalise_address",
    "require_live_consent",
]

_NAMESPACE = uuid5(NAMESPACE_URL, "urn:pli:consumer-consent")
# Methods are short machine-readable words: "signed-form", "online-checkbox",
# "email-confirmation", "recipient-request", ...
_METHOD = re.compile(r"[a-z][a-z0-9-]{0,63}")
MAX_TEXT_VERSION_LENGTH = 100
MAX_REFERENCE_LENGTH = 200


def normalise_address(address: str) -> str:
    """The address as consents are keyed: domain lowercased, local part kept."""
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}"


def consent_id(sender_account_id: UUID, address: str) -> UUID:
    """The id of the consent for this sender account and recipient address."""
    return uuid5(_NAMESPACE, f"{sender_account_id}\n{normalise_address(address)}")


def require_live_consent(consent: Consent | None) -> None:
    """Raise unless a consumer's consent is live (CPCE L.100)."""
    if consent is None or not consent.is_live:
        raise RuleViolation(
            "consumer-consent-required",
            "the recipient is a consumer who has not consented to receive this "
            "sender's registered letters electronically, or has revoked that "
            "consent (CPCE L.100); send it as an ERE or on paper",
        )


def _method_problems(method: str) -> list[FieldProblem]:
    if _METHOD.fullmatch(method):
        return []
    return [
        FieldProblem(
            "method",
            "must be a lowercase word such as signed-form, online-checkbox or "
            "email-confirmation",
        )
    ]


def _required_text(value: str, field: str, maximum: int) -> list[FieldProblem]:
    if not value.strip():
        return [FieldProblem(field, "must not be empty")]
    return check_text(value, field, maximum=maximum)


def grant_problems(
    *,
    recipient_address: str,
    method: str,
    text_version: str,
    evidence_reference: str,
) -> list[FieldProblem]:
    """Everything wrong with a grant's fields, the address included."""
    return check_email(recipient_address, "recipient_address") + _grant_problems(
        method, text_version, evidence_reference
    )


def _grant_problems(
    method: str, text_version: str, evidence_reference: str
) -> list[FieldProblem]:
    return (
        _method_problems(method)
        + _required_text(text_version, "text_version", MAX_TEXT_VERSION_LENGTH)
        + _required_text(evidence_reference, "evidence_reference", MAX_REFERENCE_LENGTH)
    )


@dataclass(frozen=True)
class ConsentStep:
    """One grant or revocation, as a proof of consent lists it."""

    version: int
    action: str
    at: dt.datetime
    method: str
    text_version: str
    evidence_reference: str


class Consent(Aggregate):
    """A consumer's consent to one sender account's LREs at one address."""

    class Opened(Aggregate.Created):
        """The consent record for this sender account and address was opened."""

        sender_account_id: UUID
        recipient_address: str

    class Granted(Aggregate.Event):
        """The consumer agreed to receive LREs electronically (CPCE L.100)."""

        method: str
        text_version: str
        evidence_reference: str

        def apply(self, aggregate: Consent) -> None:
            """The consent is live."""
            aggregate.is_live = True
            aggregate.history.append(
                ConsentStep(
                    version=self.originator_version,
                    action="granted",
                    at=self.timestamp,
                    method=self.method,
                    text_version=self.text_version,
                    evidence_reference=self.evidence_reference,
                )
            )

    class Revoked(Aggregate.Event):
        """The consumer withdrew the consent."""

        method: str
        evidence_reference: str

        def apply(self, aggregate: Consent) -> None:
            """The consent is no longer live."""
            aggregate.is_live = False
            aggregate.history.append(
                ConsentStep(
                    version=self.originator_version,
                    action="revoked",
                    at=self.timestamp,
                    method=self.method,
                    text_version="",
                    evidence_reference=self.evidence_reference,
                )
            )

    @classmethod
    def open(
        cls, *, sender_account_id: UUID, recipient_address: str, at: dt.datetime
    ) -> Consent:
        """Open the (not yet granted) consent for an account and an address."""
        problems = check_email(recipient_address, "recipient_address")
        if problems:
            raise InvalidInput(problems)
        address = normalise_address(recipient_address)
        return cls._create(
            cls.Opened,
            id=consent_id(sender_account_id, address),
            timestamp=at,
            sender_account_id=sender_account_id,
            recipient_address=address,
        )

    @staticmethod
    def create_id(*_: Any, **kwargs: Any) -> UUID:
        """Consents take the id derived from account and address."""
        derived: UUID = kwargs["id"]
        return derived

    def __init__(self, sender_account_id: UUID, recipient_address: str) -> None:
        self.sender_account_id = sender_account_id
        self.recipient_address = recipient_address
        self.is_live = False
        self.history: list[ConsentStep] = []

    @property
    def granted(self) -> ConsentStep | None:
        """The latest grant, if any."""
        grants = [step for step in self.history if step.action == "granted"]
        return grants[-1] if grants else None

    @property
    def revoked(self) -> ConsentStep | None:
        """The revocation that ended the latest grant, if it was revoked."""
        if self.is_live or not self.history:
            return None
        return self.history[-1]

    # Commands.

    def grant(
        self,
        *,
        method: str,
        text_version: str,
        evidence_reference: str,
        at: dt.datetime,
    ) -> None:
        """Record the consumer's consent; a revoked consent may be granted again."""
        problems = _grant_problems(method, text_version, evidence_reference)
        if problems:
            raise InvalidInput(problems)
        if self.is_live:
            raise RuleViolation(
                "consent-already-live",
                "the recipient's consent is already live; revoke it first to "
                "record a new one",
            )
        self.trigger_event(
            self.Granted,
            timestamp=at,
            method=method,
            text_version=text_version,
            evidence_reference=evidence_reference,
        )

    def revoke(self, *, method: str, evidence_reference: str, at: dt.datetime) -> None:
        """Record that the consumer withdrew the consent."""
        problems = _method_problems(method) + check_text(
            evidence_reference, "evidence_reference", maximum=MAX_REFERENCE_LENGTH
        )
        if problems:
            raise InvalidInput(problems)
        if not self.is_live:
            raise RuleViolation(
                "consent-not-live", "the recipient's consent is not live"
            )
        self.trigger_event(
            self.Revoked,
            timestamp=at,
            method=method,
            evidence_reference=evidence_reference,
        )
