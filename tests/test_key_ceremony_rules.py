"""The key ceremony log's rules, on the domain aggregate alone."""

from __future__ import annotations

import datetime as dt

import pytest

from pli.domain.errors import InvalidInput, RuleViolation
from pli.domain.key_ceremony import KeyRegistry, KeyRole, KeyStatus

T0 = dt.datetime(2026, 3, 20, 9, 30, tzinfo=dt.UTC)
OLD = "a" * 64
NEW = "b" * 64
FINGERPRINT = "c" * 64


def certify(registry: KeyRegistry, key_id: str, *, qualified: bool = False) -> None:
    registry.install_certificate(
        key_id=key_id,
        fingerprints=[FINGERPRINT],
        chain_pem="-----BEGIN CERTIFICATE-----\n...",
        issuer="CN=Example CA",
        qualified=qualified,
        operator="Alice Martin",
        at=T0,
    )


def registry_with_active_seal_key() -> KeyRegistry:
    registry = KeyRegistry.open(T0)
    registry.generate(
        role="seal",
        label="pli-seal",
        key_id=OLD,
        algorithm="EC P-256",
        operator="Alice Martin",
        at=T0,
    )
    certify(registry, OLD)
    registry.activate(key_id=OLD, operator="Alice Martin", at=T0)
    return registry


def generate_new(registry: KeyRegistry, **overrides: object) -> None:
    fields: dict[str, object] = {
        "role": "seal",
        "label": "pli-seal.2",
        "key_id": NEW,
        "algorithm": "EC P-256",
        "operator": "Bob Durand",
        "at": T0 + dt.timedelta(days=1),
    }
    fields.update(overrides)
    registry.generate(**fields)  # type: ignore[arg-type]


def test_a_generated_key_waits_for_its_certificate() -> None:
    registry = registry_with_active_seal_key()
    generate_new(registry)

    assert registry.pending(KeyRole.SEAL).key_id == NEW  # type: ignore[union-attr]
    assert registry.active(KeyRole.SEAL).key_id == OLD  # type: ignore[union-attr]


def test_activating_a_key_retires_the_roles_previous_key_in_the_same_batch() -> None:
    registry = registry_with_active_seal_key()
    generate_new(registry)
    certify(registry, NEW, qualified=True)

    registry.activate(key_id=NEW, operator="Bob Durand", at=T0)
    events = registry.collect_events()

    assert [type(e).__name__ for e in events[-2:]] == ["KeyRetired", "KeyActivated"]
    assert registry.keys[OLD].status is KeyStatus.RETIRED
    assert registry.active("seal").qualified  # type: ignore[union-attr]


def test_a_key_without_certificate_cannot_be_activated() -> None:
    registry = registry_with_active_seal_key()
    generate_new(registry)

    with pytest.raises(RuleViolation) as refused:
        registry.activate(key_id=NEW, operator="Bob Durand", at=T0)
    assert refused.value.rule == "certificate-required"


def test_a_retired_key_takes_no_certificate_and_is_not_activated_again() -> None:
    registry = registry_with_active_seal_key()
    registry.retire(key_id=OLD, operator="Alice Martin", at=T0)

    with pytest.raises(RuleViolation) as refused:
        certify(registry, OLD)
    assert refused.value.rule == "key-retired"
    assert registry.active("seal") is None


def test_each_ceremony_names_its_operator_and_time() -> None:
    registry = registry_with_active_seal_key()
    events = registry.collect_events()

    assert all(e.operator == "Alice Martin" for e in events[1:])
    assert all(e.timestamp == T0 for e in events)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"role": "signing"}, "role"),
        ({"operator": ""}, "operator"),
        ({"operator": "Eve\x00"}, "operator"),
        ({"key_id": "not-hex"}, "key_id"),
        ({"label": "../seal"}, "label"),
    ],
)
def test_bad_ceremony_input_is_refused_field_by_field(
    overrides: dict[str, object], field: str
) -> None:
    registry = registry_with_active_seal_key()
    version = registry.version

    with pytest.raises(InvalidInput) as refused:
        generate_new(registry, **overrides)
    assert field in [p.field for p in refused.value.problems]
    assert registry.version == version


def test_a_key_or_label_is_recorded_once() -> None:
    registry = registry_with_active_seal_key()

    with pytest.raises(RuleViolation) as same_key:
        generate_new(registry, key_id=OLD)
    with pytest.raises(RuleViolation) as same_label:
        generate_new(registry, label="pli-seal")
    assert same_key.value.rule == "key-already-recorded"
    assert same_label.value.rule == "label-already-used"


def test_an_unknown_key_has_no_ceremony() -> None:
    registry = registry_with_active_seal_key()

    with pytest.raises(RuleViolation) as refused:
        registry.retire(key_id=NEW, operator="Alice Martin", at=T0)
    assert refused.value.rule == "unknown-key"


def test_roles_keep_their_keys_apart() -> None:
    registry = registry_with_active_seal_key()
    generate_new(registry, role="tsa", label="pli-tsa")
    certify(registry, NEW)
    registry.activate(key_id=NEW, operator="Bob Durand", at=T0)

    assert registry.active("seal").key_id == OLD  # type: ignore[union-attr]
    assert registry.active("tsa").key_id == NEW  # type: ignore[union-attr]
