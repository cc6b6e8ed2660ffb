"""Key ceremonies: act on the token, then record the act in the sealed log.

The ceremony log (``pli.domain.key_ceremony.KeyRegistry``) lives in the
letters' event store, so its events are sealed and chained like every other
and ``pli audit verify`` checks them. Each ceremony follows the same order:

1. everything is checked first (the domain's rules on a trial copy of the
   registry, the operator's chain against the token key), so bad input
   changes nothing;
2. the token and the certificates folder are changed; these steps can be
   repeated, so a ceremony that fails at step 3 is simply run again;
3. the events are saved, sealed by the active seal key: a rotation's
   retirement of the old key is the old key's last seal;
4. ``active.json`` (``pli.hsm.keys``) is rewritten from the registry, and the
   signers follow it.

The very first ceremony, recorded by ``pli hsm init``, is sealed by the seal
key it records. After the seal role's keys were all retired, a rotation that
can certify its new key at once (a development chain) seals its own ceremony
with the new key in the same way; any other ceremony needs an active seal key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from pli.domain.errors import RuleViolation
from pli.domain.key_ceremony import (
    KEY_REGISTRY_ID,
    KeyRecord,
    KeyRegistry,
    KeyRole,
    KeyStatus,
)
from pli.hsm.ceremony import (
    ALGORITHM,
    certification_request,
    development_root,
    generate_key,
    install_chain,
    issue_development_certificate,
    next_label,
    token_public_key,
)
from pli.hsm.chains import (
    NotTheTokenKey,
    UntrustedChain,
    check_chain,
    fingerprint,
    is_development_chain,
    links_up_to,
    read_chain,
    spki_key_id,
)
from pli.hsm.keys import (
    certificate_file,
    installed_chain,
    read_active_keys,
)
from pli.hsm.token import TokenUnavailable
from pli.infrastructure.ceremony_log import CeremonyLog, check_operator

__all__ = ["KeyCeremonies", "Rotation"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rotation:
    """What a rotation did: the new key, and the key it replaced if active."""

    key: KeyRecord
    retired: KeyRecord | None


class KeyCeremonies(CeremonyLog):
    """Generate, certify, activate and retire the token's keys, on the record."""

    # pli hsm init

    def record_initialised_keys(self, operator: str) -> list[KeyRecord]:
        """Record each role's key in the token that the log does not know yet.

        On a fresh token these are the keys ``pli hsm init`` just generated;
        on a token that held them before the log did (an event store set up
        later, or an earlier init whose recording failed), the ceremony's
        time is when the key entered the log, not when it was generated.
        """
        check_operator(operator)
        found = self._unrecorded_keys()
        recorded: list[KeyRecord] = []
        if found:

            def decide() -> KeyRegistry:
                registry = self.registry() or KeyRegistry.open(self.clock.now())
                for role, label, public_key in found:
                    self._record_existing(registry, role, label, public_key, operator)
                return registry

            registry = self.app.save_deciding(KEY_REGISTRY_ID, decide)
            recorded = [registry.keys[spki_key_id(key)] for _, _, key in found]
            for key in recorded:
                logger.info(
                    "key ceremony recorded event=KeyGenerated role=%s label=%s "
                    "key_id=%s",
                    key.role,
                    key.label,
                    key.key_id,
                )
        registry = self.registry()
        if registry is not None:
            self._restore_files(registry)
            self._project(registry)
        return recorded

    def _unrecorded_keys(self) -> list[tuple[KeyRole, str, ec.EllipticCurvePublicKey]]:
        registry = self.registry()
        active = read_active_keys(self.certs_dir)
        found = []
        for role in KeyRole:
            current = active[role]
            if current is None:
                continue
            label = current.label
            public_key = token_public_key(self.token, label)
            if public_key is None:
                continue  # this role's key was never provisioned
            key_id = spki_key_id(public_key)
            if registry is None or key_id not in registry.keys:
                found.append((role, label, public_key))
        return found

    def _record_existing(
        self,
        registry: KeyRegistry,
        role: KeyRole,
        label: str,
        public_key: ec.EllipticCurvePublicKey,
        operator: str,
    ) -> None:
        key_id = spki_key_id(public_key)
        at = self.clock.now()
        registry.generate(
            role=role,
            label=label,
            key_id=key_id,
            algorithm=ALGORITHM,
            operator=operator,
            at=at,
        )
        try:
            chain = installed_chain(self.certs_dir, label)
        except TokenUnavailable:
            return  # no certificate yet: the key waits for import-cert
        if spki_key_id(chain[0].public_key()) != key_id:
            raise TokenUnavailable(
                f"{certificate_file(self.certs_dir, label)} "
                f"does not certify the token key {label}"
            )
        self._record_certificate(registry, key_id, chain, operator)
        registry.activate(key_id=key_id, operator=operator, at=at)

    # pli hsm csr

    def certification_request(
        self, role: KeyRole, subject: str, label: str | None = None
    ) -> tuple[KeyRecord, bytes]:
        """A PKCS#10 request for the role's pending key, else its active key."""
        registry = self._required_registry()
        if label is not None:
            key = self._key_of_role(registry, role, label)
        else:
            key = registry.pending(role) or registry.active(role)
        if key is None or key.status is KeyStatus.RETIRED:
            raise RuleViolation(
                "no-signing-key", f"no pending or active {role} key; rotate first"
            )
        return key, certification_request(self.token, role, key.label, subject)

    # pli hsm import-cert

    def import_chain(self, role: KeyRole, pem: bytes, operator: str) -> KeyRecord:
        """Install a checked chain for the role's active or pending key.

        A chain for a pending key also activates it, retiring the key before.
        """
        check_operator(operator)
        chain = read_chain(pem)
        key = self._key_certified_by(role, chain[0])
        public_key = token_public_key(self.token, key.label)
        if public_key is None:
            raise TokenUnavailable(f"the token holds no key {key.label}")
        check_chain(chain, public_key, role, key.label, self.clock.now())
        trusted = self.tsa_trust_roots + self.qualified_roots
        if role is KeyRole.TSA and not links_up_to(chain, trusted):
            # The stamps of a key whose chain no trust anchor reaches would all
            # be refused, and every stamped command would fail.
            raise UntrustedChain(
                "the chain does not lead to a root in PLI_TSA_TRUST or "
                "PLI_QUALIFIED_ROOTS, so its time stamps would be refused; "
                "add its root to PLI_TSA_TRUST first"
            )
        activating = key.status is KeyStatus.PENDING
        seals_itself = self._seals_itself(role, can_certify=activating)

        def decide() -> KeyRegistry:
            registry = self._required_registry()
            current = registry.keys[key.key_id].certificate
            if current is None or current.fingerprints[0] != fingerprint(chain[0]):
                self._record_certificate(registry, key.key_id, chain, operator)
            if registry.keys[key.key_id].status is KeyStatus.PENDING:
                registry.activate(
                    key_id=key.key_id, operator=operator, at=self.clock.now()
                )
            return registry

        decide()  # the domain's rules, before anything changes
        install_chain(self.token, key.label, chain)
        registry = self._save(
            decide, (role, key.label, key.key_id) if seals_itself else None
        )
        logger.info(
            "key ceremony recorded event=CertificateInstalled role=%s label=%s",
            role,
            key.label,
        )
        return registry.keys[key.key_id]

    def _key_certified_by(self, role: KeyRole, leaf: x509.Certificate) -> KeyRecord:
        registry = self._required_registry()
        key_id = spki_key_id(leaf.public_key())
        for key in registry.of_role(role):
            if key.key_id == key_id and key.status is not KeyStatus.RETIRED:
                return key
        waiting = [
            k.label for k in registry.of_role(role) if k.status is not KeyStatus.RETIRED
        ]
        raise NotTheTokenKey(
            f"the first certificate ({leaf.subject.rfc4514_string()}) certifies "
            f"none of the {role} keys that may take a certificate "
            f"({', '.join(waiting) or 'none'}); the leaf must come first"
        )

    # pli hsm rotate

    def rotate(self, role: KeyRole, operator: str) -> Rotation:
        """Generate the role's next key; activate it now if it can be certified.

        The new key gets a development certificate when the role's chain is a
        development chain; otherwise it stays pending until ``import-cert``.
        """
        check_operator(operator)
        registry = self._required_registry()
        pending = registry.pending(role)
        if pending is not None:
            raise RuleViolation(
                "key-pending",
                f"key {pending.label} still waits for its certificate: import it "
                "with pli hsm import-cert, or retire it, before rotating again",
            )
        development = self._is_development(registry, role)
        seals_itself = self._seals_itself(role, can_certify=development)
        retired = registry.active(role)

        label = next_label(self.token, role)
        public_key = generate_key(self.token, label)
        key_id = spki_key_id(public_key)
        chain: list[x509.Certificate] = []
        if development:
            chain = self._development_chain(role, label, public_key)
            install_chain(self.token, label, chain)

        def decide() -> KeyRegistry:
            registry = self._required_registry()
            at = self.clock.now()
            registry.generate(
                role=role,
                label=label,
                key_id=key_id,
                algorithm=ALGORITHM,
                operator=operator,
                at=at,
            )
            if chain:
                self._record_certificate(registry, key_id, chain, operator)
                registry.activate(key_id=key_id, operator=operator, at=at)
            return registry

        registry = self._save(decide, (role, label, key_id) if seals_itself else None)
        logger.info(
            "key ceremony recorded event=KeyGenerated role=%s label=%s key_id=%s "
            "activated=%s",
            role,
            label,
            key_id,
            bool(chain),
        )
        return Rotation(registry.keys[key_id], retired if chain else None)

    def _is_development(self, registry: KeyRegistry, role: KeyRole) -> bool:
        keys = [k for k in registry.of_role(role) if k.certificate is not None]
        if not keys:
            return True
        latest = keys[-1].certificate
        assert latest is not None
        chain = x509.load_pem_x509_certificates(latest.chain_pem.encode())
        return is_development_chain(chain, development_root(self.certs_dir))

    def _development_chain(
        self, role: KeyRole, label: str, public_key: ec.EllipticCurvePublicKey
    ) -> list[x509.Certificate]:
        root = development_root(self.certs_dir)
        if root is None:
            raise TokenUnavailable("no development root; run pli hsm init")
        leaf = issue_development_certificate(self.token, role, label, public_key)
        return [leaf, root]

    # pli hsm retire

    def retire(
        self, role: KeyRole, operator: str, label: str | None = None
    ) -> KeyRecord:
        """Retire the role's active key (or the labelled one): it signs no more."""
        check_operator(operator)
        registry = self._required_registry()
        key = (
            self._key_of_role(registry, role, label)
            if label is not None
            else registry.active(role)
        )
        if key is None:
            raise RuleViolation("no-signing-key", f"no active {role} key to retire")
        self._seals_itself(role, can_certify=False)

        def decide() -> KeyRegistry:
            registry = self._required_registry()
            registry.retire(key_id=key.key_id, operator=operator, at=self.clock.now())
            return registry

        decide()
        registry = self._save(decide)
        logger.info(
            "key ceremony recorded event=KeyRetired role=%s label=%s", role, key.label
        )
        return registry.keys[key.key_id]
