"""The key ceremony log in the event store, and the signers' pointer to it.

:class:`CeremonyLog` loads and saves the provider's ``KeyRegistry``
(``pli.domain.key_ceremony``) through the letters' sealed event store, and
rewrites ``active.json`` (``pli.hsm.keys``) from it after every save, so the
file the signers follow is a projection of the log. The ceremonies
themselves are in ``pli.infrastructure.key_ceremonies``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from eventsourcing.application import AggregateNotFoundError

from pli.domain.clock import Clock
from pli.domain.errors import InvalidInput, RuleViolation
from pli.domain.key_ceremony import (
    KEY_REGISTRY_ID,
    KeyRecord,
    KeyRegistry,
    KeyRole,
    operator_problems,
)
from pli.hsm.chains import fingerprint
from pli.hsm.keys import certificate_file, chain_file, write_active_keys
from pli.hsm.qualification import is_qualified
from pli.hsm.token import Token
from pli.infrastructure.event_store import SealedApplication

__all__ = ["CeremonyLog", "check_operator"]

logger = logging.getLogger(__name__)


def pem_chain(chain: list[x509.Certificate]) -> str:
    """The chain as one PEM text, in its order."""
    return "".join(c.public_bytes(Encoding.PEM).decode() for c in chain)


class CeremonyLog:
    """The ceremony log of one event store and token."""

    def __init__(
        self,
        app: SealedApplication,
        token: Token,
        clock: Clock,
        qualified_roots: list[x509.Certificate],
        tsa_trust_roots: list[x509.Certificate] | None = None,
    ) -> None:
        self.app = app
        self.token = token
        self.clock = clock
        self.qualified_roots = qualified_roots
        self.tsa_trust_roots = tsa_trust_roots or []

    @property
    def certs_dir(self) -> Path:
        """Where the certificates and ``active.json`` live."""
        return self.token.config.certs_dir

    def registry(self) -> KeyRegistry | None:
        """The ceremony log as its events make it, if it was ever opened."""
        try:
            registry = self.app.repository.get(KEY_REGISTRY_ID)
        except AggregateNotFoundError:
            return None
        return registry if isinstance(registry, KeyRegistry) else None

    def keys(self) -> list[KeyRecord]:
        """Every key the log knows, oldest first."""
        registry = self.registry()
        return [] if registry is None else list(registry.keys.values())

    def _record_certificate(
        self,
        registry: KeyRegistry,
        key_id: str,
        chain: list[x509.Certificate],
        operator: str,
    ) -> None:
        registry.install_certificate(
            key_id=key_id,
            fingerprints=[fingerprint(c) for c in chain],
            chain_pem=pem_chain(chain),
            issuer=chain[0].issuer.rfc4514_string(),
            qualified=is_qualified(chain, self.qualified_roots),
            operator=operator,
            at=self.clock.now(),
        )

    def _required_registry(self) -> KeyRegistry:
        registry = self.registry()
        if registry is None:
            raise RuleViolation(
                "no-ceremony-log", "no key ceremony is recorded yet; run pli hsm init"
            )
        return registry

    @staticmethod
    def _key_of_role(registry: KeyRegistry, role: KeyRole, label: str) -> KeyRecord:
        key = registry.by_label(label)
        if key is None or key.role is not role:
            raise RuleViolation("unknown-key", f"no {role} key labelled {label!r}")
        return key

    def _seals_itself(self, role: KeyRole, *, can_certify: bool) -> bool:
        """Whether the ceremony's own key must seal it, for want of a seal key.

        Raises when there is no seal key and the ceremony's key cannot
        stand in: it is no seal key, or it gets no certificate now.
        """
        registry = self._required_registry()
        if registry.active(KeyRole.SEAL) is not None:
            return False
        if role is KeyRole.SEAL and can_certify:
            return True
        raise RuleViolation(
            "no-seal-key",
            "no active seal key can seal this ceremony; first rotate the seal key "
            "(development chain) or import the chain of a pending seal key",
        )

    def _save(
        self,
        decide: Callable[[], KeyRegistry],
        own_key: tuple[KeyRole, str, str] | None = None,
    ) -> KeyRegistry:
        """Save the ceremony, sealed by the active seal key or by ``own_key``."""
        before = None
        if own_key is not None:
            # Like the very first ceremony, the new seal key seals its own record.
            role, label, key_id = own_key
            before = self._active_entries(self._required_registry())
            write_active_keys(self.certs_dir, {**before, role: (label, key_id)})
        try:
            registry = self.app.save_deciding(KEY_REGISTRY_ID, decide)
        except BaseException:
            if before is not None:
                write_active_keys(self.certs_dir, before)
            raise
        self._project(registry)
        return registry

    @staticmethod
    def _active_entries(
        registry: KeyRegistry,
    ) -> dict[KeyRole, tuple[str, str] | None]:
        entries: dict[KeyRole, tuple[str, str] | None] = {}
        for role in KeyRole:
            if not registry.of_role(role):
                continue  # never recorded: the role keeps its default key
            active = registry.active(role)
            entries[role] = None if active is None else (active.label, active.key_id)
        return entries

    def _project(self, registry: KeyRegistry) -> None:
        write_active_keys(self.certs_dir, self._active_entries(registry))

    def _restore_files(self, registry: KeyRegistry) -> None:
        """Write back the certificate files of recorded keys that went missing."""
        for key in registry.keys.values():
            installed = key.certificate
            leaf_path = certificate_file(self.certs_dir, key.label)
            if installed is None or leaf_path.exists():
                continue
            chain = x509.load_pem_x509_certificates(installed.chain_pem.encode())
            path = chain_file(self.certs_dir, key.label)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(installed.chain_pem)
            leaf_path.write_text(pem_chain(chain[:1]))
            logger.warning("certificate restored from the log label=%s", key.label)


def check_operator(operator: str) -> None:
    """Refuse a ceremony whose operator is not named properly."""
    problems = operator_problems(operator)
    if problems:
        raise InvalidInput(problems)
