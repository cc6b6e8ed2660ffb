"""The key ceremony log: which key seals what, since when, on whose word.

DESIGN §3: key generation, certification, activation and retirement are
themselves recorded events, sealed like every other event, so an auditor
learns from the log alone which key was in force for each role at each
moment and which operator decided it. One aggregate, the provider's
:class:`KeyRegistry`, holds every key, so the rule that a role has at most
one active key is checked in one place and a rotation (the old key retired,
the new one activated) is one atomic batch.

Keys are named by their key id, the SHA-256 of their SubjectPublicKeyInfo,
as seals name them (``pli.hsm.seal``); the token label is recorded too, for
the operator. The domain only records what the ceremony checked: reading the
token and verifying certificate chains happen in ``pli.hsm``.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

from pli.domain.errors import FieldProblem, InvalidInput, RuleViolation
from pli.domain.values import check_name

__all__ = [
    "KEY_REGISTRY_ID",
    "InstalledCertificate",
    "KeyRecord",
    "KeyRegistry",
    "KeyRole",
    "KeyStatus",
    "operator_problems",
]

KEY_REGISTRY_ID = uuid5(NAMESPACE_URL, "urn:pli:key-registry")
_KEY_ID = re.compile(r"[0-9a-f]{64}")
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class KeyRole(StrEnum):
    """What a key of the token is for."""

    SEAL = "seal"  # the provider's advanced seal: events and proofs
    TSA = "tsa"  # the built-in time-stamping authority (RFC 3161)


class KeyStatus(StrEnum):
    """Where a key is in its life."""

    PENDING = "pending"  # generated, waiting for its certificate
    ACTIVE = "active"  # the one key of its role that signs
    RETIRED = "retired"  # signs no more; its certificate still verifies


@dataclass(frozen=True)
class InstalledCertificate:
    """A certificate chain installed for a key, as the ceremony checked it."""

    fingerprints: tuple[str, ...]  # SHA-256 of each certificate, leaf first
    chain_pem: str
    issuer: str
    qualified: bool
    installed_at: dt.datetime
    operator: str


@dataclass
class KeyRecord:
    """One key of the token as the ceremony log knows it."""

    role: KeyRole
    label: str
    key_id: str
    algorithm: str
    generated_at: dt.datetime
    generated_by: str
    status: KeyStatus = KeyStatus.PENDING
    certificates: list[InstalledCertificate] = field(default_factory=list)
    activated_at: dt.datetime | None = None
    retired_at: dt.datetime | None = None

    @property
    def certificate(self) -> InstalledCertificate | None:
        """The certificate installed last, if any."""
        return self.certificates[-1] if self.certificates else None

    @property
    def qualified(self) -> bool:
        """Whether the key's current certificate chain ends at a qualified root."""
        return self.certificate is not None and self.certificate.qualified


def _role(value: str) -> KeyRole:
    try:
        return KeyRole(value)
    except ValueError:
        roles = ", ".join(r.value for r in KeyRole)
        raise InvalidInput(
            [FieldProblem("role", f"must be one of {roles}, not {value!r}")]
        ) from None


def operator_problems(operator: str) -> list[FieldProblem]:
    """What is wrong with the name of the operator who conducts a ceremony."""
    return check_name(operator, "operator")


class KeyRegistry(Aggregate):
    """Every key of the provider's token, with its ceremonies."""

    class Opened(Aggregate.Created):
        """The ceremony log was opened."""

    class KeyGenerated(Aggregate.Event):
        """A key was generated in the token (or first entered the log)."""

        role: str
        label: str
        key_id: str
        algorithm: str
        operator: str

        def apply(self, aggregate: KeyRegistry) -> None:
            """The key is known, pending its certificate."""
            aggregate.keys[self.key_id] = KeyRecord(
                role=KeyRole(self.role),
                label=self.label,
                key_id=self.key_id,
                algorithm=self.algorithm,
                generated_at=self.timestamp,
                generated_by=self.operator,
            )

    class CertificateInstalled(Aggregate.Event):
        """A checked certificate chain was installed for a key."""

        role: str
        key_id: str
        fingerprints: list[str]
        chain_pem: str
        issuer: str
        qualified: bool
        operator: str

        def apply(self, aggregate: KeyRegistry) -> None:
            """The key has this certificate from now on."""
            aggregate.keys[self.key_id].certificates.append(
                InstalledCertificate(
                    fingerprints=tuple(self.fingerprints),
                    chain_pem=self.chain_pem,
                    issuer=self.issuer,
                    qualified=self.qualified,
                    installed_at=self.timestamp,
                    operator=self.operator,
                )
            )

    class KeyActivated(Aggregate.Event):
        """A key became the one that signs for its role."""

        role: str
        key_id: str
        operator: str

        def apply(self, aggregate: KeyRegistry) -> None:
            """The key signs from now on."""
            record = aggregate.keys[self.key_id]
            record.status = KeyStatus.ACTIVE
            record.activated_at = self.timestamp

    class KeyRetired(Aggregate.Event):
        """A key stopped signing; it stays for verifying what it signed."""

        role: str
        key_id: str
        reason: str
        operator: str

        def apply(self, aggregate: KeyRegistry) -> None:
            """The key signs no more."""
            record = aggregate.keys[self.key_id]
            record.status = KeyStatus.RETIRED
            record.retired_at = self.timestamp

    @classmethod
    def open(cls, at: dt.datetime) -> KeyRegistry:
        """Open the provider's (empty) ceremony log."""
        return cls._create(cls.Opened, id=KEY_REGISTRY_ID, timestamp=at)

    @staticmethod
    def create_id(*_: Any, **kwargs: Any) -> UUID:
        """The registry has one fixed id per event store."""
        fixed: UUID = kwargs["id"]
        return fixed

    def __init__(self) -> None:
        self.keys: dict[str, KeyRecord] = {}

    # Queries.

    def of_role(self, role: KeyRole | str) -> list[KeyRecord]:
        """The role's keys, oldest first."""
        wanted = _role(str(role))
        return [k for k in self.keys.values() if k.role is wanted]

    def active(self, role: KeyRole | str) -> KeyRecord | None:
        """The role's active key, if it has one."""
        found = [k for k in self.of_role(role) if k.status is KeyStatus.ACTIVE]
        return found[0] if found else None

    def pending(self, role: KeyRole | str) -> KeyRecord | None:
        """The role's newest key still waiting for its certificate, if any."""
        found = [k for k in self.of_role(role) if k.status is KeyStatus.PENDING]
        return found[-1] if found else None

    def by_label(self, label: str) -> KeyRecord | None:
        """The key with this token label, if the log knows it."""
        found = [k for k in self.keys.values() if k.label == label]
        return found[0] if found else None

    # Commands.

    def generate(
        self,
        *,
        role: KeyRole | str,
        label: str,
        key_id: str,
        algorithm: str,
        operator: str,
        at: dt.datetime,
    ) -> None:
        """Record a key generated in the token; it waits for a certificate."""
        problems = operator_problems(operator)
        if not _KEY_ID.fullmatch(key_id):
            problems.append(FieldProblem("key_id", "must be 64 lowercase hex digits"))
        if not _LABEL.fullmatch(label):
            problems.append(
                FieldProblem("label", "must be 1 to 64 letters, digits, . _ or -")
            )
        if problems:
            raise InvalidInput(problems)
        checked = _role(str(role))
        if key_id in self.keys:
            raise RuleViolation("key-already-recorded", f"key {key_id} is recorded")
        if self.by_label(label) is not None:
            raise RuleViolation(
                "label-already-used", f"another key is labelled {label!r}"
            )
        self.trigger_event(
            self.KeyGenerated,
            timestamp=at,
            role=checked.value,
            label=label,
            key_id=key_id,
            algorithm=algorithm,
            operator=operator,
        )

    def install_certificate(
        self,
        *,
        key_id: str,
        fingerprints: list[str],
        chain_pem: str,
        issuer: str,
        qualified: bool,
        operator: str,
        at: dt.datetime,
    ) -> None:
        """Record a checked chain for a pending or active key."""
        record = self._signing_candidate(key_id)
        problems = operator_problems(operator)
        if not fingerprints or not all(_KEY_ID.fullmatch(f) for f in fingerprints):
            problems.append(
                FieldProblem("fingerprints", "must be SHA-256 fingerprints in hex")
            )
        if problems:
            raise InvalidInput(problems)
        self.trigger_event(
            self.CertificateInstalled,
            timestamp=at,
            role=record.role.value,
            key_id=key_id,
            fingerprints=list(fingerprints),
            chain_pem=chain_pem,
            issuer=issuer,
            qualified=qualified,
            operator=operator,
        )

    def activate(self, *, key_id: str, operator: str, at: dt.datetime) -> None:
        """Make a certified pending key the role's signer; retire the one before."""
        record = self._signing_candidate(key_id)
        problems = operator_problems(operator)
        if problems:
            raise InvalidInput(problems)
        if record.status is KeyStatus.ACTIVE:
            raise RuleViolation("key-already-active", f"key {key_id} is active")
        if record.certificate is None:
            raise RuleViolation(
                "certificate-required",
                f"key {record.label} has no certificate; import one first",
            )
        previous = self.active(record.role)
        if previous is not None:
            self._retire(previous, reason="rotated", operator=operator, at=at)
        self.trigger_event(
            self.KeyActivated,
            timestamp=at,
            role=record.role.value,
            key_id=key_id,
            operator=operator,
        )

    def retire(
        self, *, key_id: str, operator: str, at: dt.datetime, reason: str = "retired"
    ) -> None:
        """Stop a pending or active key from signing; its certificate stays."""
        record = self._signing_candidate(key_id)
        problems = operator_problems(operator)
        if problems:
            raise InvalidInput(problems)
        self._retire(record, reason=reason, operator=operator, at=at)

    def _retire(
        self, record: KeyRecord, *, reason: str, operator: str, at: dt.datetime
    ) -> None:
        self.trigger_event(
            self.KeyRetired,
            timestamp=at,
            role=record.role.value,
            key_id=record.key_id,
            reason=reason,
            operator=operator,
        )

    def _signing_candidate(self, key_id: str) -> KeyRecord:
        record = self.keys.get(key_id)
        if record is None:
            raise RuleViolation("unknown-key", f"no key {key_id} in the ceremony log")
        if record.status is KeyStatus.RETIRED:
            raise RuleViolation(
                "key-retired", f"key {record.label} is retired and signs no more"
            )
        return record
