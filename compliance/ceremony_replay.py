"""Replaying key ceremonies: was each event sealed and stamped by a key in force?

The key ceremony log (:class:`pli.domain.key_ceremony.KeyRegistry`) is in the
event store itself, so the audit follows its events in commit order, beside
every other event, and knows at each log position which key each role had
active. A :class:`CeremonyReplay` checks, at each event's position:

- that the event is sealed by the seal key active there. A rotation is one
  atomic batch sealed by the old key: the old key's retirement is its last
  seal but one, and the new key's activation, next in the batch, its last.
  While no seal key is active (before the first ceremony, or after every
  seal key was retired), a ceremony is sealed by the seal key it activates:
  ceremony events sealed by a key not yet active are accepted once the
  seal key's activation, sealed by that same key, follows them, with no
  other event in between; that is the only exception.
- that a stamp's TSA certificate is one the log installed for the TSA key
  active there. An event store whose log records no TSA key (an older
  store), or a stamp from the operator's own TSA (``PLI_TSA_URL``), whose
  keys pli's ceremonies do not record, is noted, not faulted.

Only ceremony events whose own seal and chain link verify are followed: a
forged ceremony grants no key anything. Events recorded before the log was
opened (a store older than it) are noted and not checked against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from eventsourcing.utils import get_topic

from pli.compliance.findings import NO_LETTER, Report
from pli.domain.key_ceremony import KeyRegistry, KeyRole, KeyStatus
from pli.hsm.chains import fingerprint
from pli.hsm.seal import key_id_of

__all__ = ["CeremonyReplay"]


_CEREMONY_TOPICS = frozenset(
    get_topic(cls)
    for cls in (
        KeyRegistry.Opened,
        KeyRegistry.KeyGenerated,
        KeyRegistry.CertificateInstalled,
        KeyRegistry.KeyActivated,
        KeyRegistry.KeyRetired,
    )
)


@dataclass
class _Key:
    role: str
    status: KeyStatus = KeyStatus.PENDING
    certificates: set[str] = field(default_factory=set)  # leaf fingerprints


@dataclass(frozen=True)
class _Sealed:
    """A ceremony event sealed by a key that no ceremony had activated yet."""

    letter_id: str
    version: int
    position: int | None
    key_id: str


class CeremonyReplay:
    """Follows the ceremony log and checks keys; see the module docstring."""

    def __init__(self, fault: Report, note: Report, *, outside_tsa: bool) -> None:
        self.fault = fault
        self.note = note
        self.outside_tsa = outside_tsa
        self.ceremonies = 0
        self.seal_keys_checked = 0
        self.tsa_keys_checked = 0
        self._opened = False
        self._keys: dict[str, _Key] = {}
        self._active: dict[str, str] = {}  # role -> key id
        self._handover: str | None = None  # the seal key a rotation just retired
        self._self_sealed: list[_Sealed] = []
        self._before_log = 0
        self._without_tsa_ceremony = 0
        self._outside = 0

    @staticmethod
    def is_ceremony(topic: str) -> bool:
        """Whether an event of this topic belongs to the key ceremony log."""
        return topic in _CEREMONY_TOPICS

    # Seal keys.

    def feed(
        self,
        letter_id: str,
        version: int,
        position: int | None,
        topic: str,
        key_id: str,
        event: Any,
    ) -> None:
        """Check the key that sealed one event, then follow it if a ceremony.

        ``key_id`` names the seal key in the event's envelope; ``event`` is the
        decoded event when its seal and chain link verify, else None.
        """
        ceremony = self.is_ceremony(topic)
        if ceremony:
            self._opened = True
        elif not self._opened:
            self._before_log += 1
            return
        if not ceremony:
            self._end_self_sealed()
        self._check_seal_key(letter_id, version, position, key_id, ceremony, event)
        # A handover lasts for the one event after the retirement.
        self._handover = None
        if ceremony and event is not None:
            self.ceremonies += 1
            self._follow(event)

    def _check_seal_key(
        self,
        letter_id: str,
        version: int,
        position: int | None,
        key_id: str,
        ceremony: bool,
        event: Any,
    ) -> None:
        self.seal_keys_checked += 1
        active = self._active.get(KeyRole.SEAL)
        if key_id == active:
            return
        if self._handover == key_id and _activates(event, KeyRole.SEAL):
            return
        if active is None and ceremony:
            self._self_sealed.append(_Sealed(letter_id, version, position, key_id))
            return
        self.fault(
            letter_id,
            version,
            position,
            f"sealed by key {key_id}, {self._state(key_id, KeyRole.SEAL)}; "
            f"the active seal key was {active or 'none'}",
        )

    def _follow(self, event: Any) -> None:
        if isinstance(event, KeyRegistry.KeyGenerated):
            self._keys[event.key_id] = _Key(event.role)
        elif isinstance(event, KeyRegistry.CertificateInstalled):
            key = self._keys.get(event.key_id)
            if key is not None and event.fingerprints:
                key.certificates.add(event.fingerprints[0])
        elif isinstance(event, KeyRegistry.KeyActivated):
            self._activate(event.role, event.key_id)
        elif isinstance(event, KeyRegistry.KeyRetired):
            self._retire(event.role, event.key_id)

    def _activate(self, role: str, key_id: str) -> None:
        if role == KeyRole.SEAL and self._active.get(role) is None:
            self._settle_self_sealed(key_id)
        previous = self._active.get(role)
        if previous is not None and previous in self._keys:
            self._keys[previous].status = KeyStatus.RETIRED
        self._active[role] = key_id
        if key_id in self._keys:
            self._keys[key_id].status = KeyStatus.ACTIVE

    def _retire(self, role: str, key_id: str) -> None:
        if key_id in self._keys:
            self._keys[key_id].status = KeyStatus.RETIRED
        if self._active.get(role) == key_id:
            del self._active[role]
            if role == KeyRole.SEAL:
                self._handover = key_id

    def _settle_self_sealed(self, activated: str) -> None:
        """The seal key's activation ends a self-sealed ceremony: judge it."""
        for sealed in self._self_sealed:
            if sealed.key_id != activated:
                self._self_sealed_fault(sealed)
        self._self_sealed.clear()

    def _end_self_sealed(self) -> None:
        """Another event came: a self-sealed ceremony left unactivated fails."""
        for sealed in self._self_sealed:
            self._self_sealed_fault(sealed)
        self._self_sealed.clear()

    def _self_sealed_fault(self, sealed: _Sealed) -> None:
        self.fault(
            sealed.letter_id,
            sealed.version,
            sealed.position,
            f"sealed by key {sealed.key_id} while no seal key was active, and the "
            "ceremony does not activate that key",
        )

    def _state(self, key_id: str, role: KeyRole) -> str:
        key = self._keys.get(key_id)
        if key is None:
            return "which the key ceremony log had not recorded at this position"
        if key.role != role:
            return f"a {key.role} key, not a {role} key"
        if key.status is KeyStatus.RETIRED:
            return "which the key ceremony log had retired at this position"
        return "which the key ceremony log had not activated at this position"

    # TSA keys.

    def check_tsa(
        self,
        letter_id: str,
        version: int,
        position: int | None,
        certificate: x509.Certificate,
    ) -> None:
        """Check that a stamp's TSA certificate was in force at this position."""
        if not any(k.role == KeyRole.TSA for k in self._keys.values()):
            self._without_tsa_ceremony += 1
            return
        key_id = key_id_of(certificate)
        if key_id not in self._keys and self.outside_tsa:
            self._outside += 1
            return
        self.tsa_keys_checked += 1
        active = self._active.get(KeyRole.TSA)
        if key_id != active:
            self.fault(
                letter_id,
                version,
                position,
                f"time stamp by TSA key {key_id}, {self._state(key_id, KeyRole.TSA)}; "
                f"the active TSA key was {active or 'none'}",
            )
        elif fingerprint(certificate) not in self._keys[key_id].certificates:
            self.fault(
                letter_id,
                version,
                position,
                f"time stamp by a TSA certificate (SHA-256 {fingerprint(certificate)}) "
                f"the key ceremony log never installed for key {key_id}",
            )

    # The end.

    def finish(self) -> None:
        """Report self-sealed ceremonies left open, and note what went unchecked."""
        self._end_self_sealed()
        if not self._opened:
            self.note(
                NO_LETTER,
                0,
                None,
                "the event store holds no key ceremony log (an older store): "
                "seal and TSA keys were not checked against key ceremonies",
            )
            return
        if self._before_log:
            self.note(
                NO_LETTER,
                0,
                None,
                f"{self._before_log} event(s) precede the key ceremony log: their "
                "seal keys were not checked against it",
            )
        if self._without_tsa_ceremony:
            self.note(
                NO_LETTER,
                0,
                None,
                f"{self._without_tsa_ceremony} time stamp(s) precede any TSA key "
                "ceremony: their TSA keys were not checked against the log",
            )
        if self._outside:
            self.note(
                NO_LETTER,
                0,
                None,
                f"{self._outside} time stamp(s) come from a TSA outside the key "
                "ceremony log (PLI_TSA_URL): checked against the trust anchors only",
            )


def _activates(event: Any, role: KeyRole) -> bool:
    return isinstance(event, KeyRegistry.KeyActivated) and event.role == role
