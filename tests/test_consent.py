"""Consumer consent (CPCE L.100): granted, revoked, granted again, proved.

Consents live in the letters' event store, sealed like every event, on both
event stores; the proof of consent is sealed by the session's SoftHSM token
and checked with poppler's ``pdfsig``, which knows nothing of pli.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from pli.domain.clock import FixedClock
from pli.domain.consent import consent_id
from pli.domain.errors import InvalidInput, RuleViolation
from pli.domain.values import Assurance
from pli.hsm.secrets import SecretBox
from pli.infrastructure.accounts import Consents, SenderAccountNotFound, SenderAccounts
from pli.infrastructure.envelope import Envelope
from pli.infrastructure.settings import Settings
from pli.services.consent_proof import consent_facts, seal_consent_proof
from pli.services.proof_page import NON_QUALIFIED_LABEL
from pli.services.runtime import Runtime

ADDRESS = "Helene.Cote@Example.ORG"
GRANT = {
    "method": "signed-form",
    "text_version": "cgu-lre-2026-01",
    "evidence_reference": "scan 2026-03-18 n° 4411",
}


@pytest.fixture
def runtime(settings: Settings, clock: FixedClock) -> Iterator[Runtime]:
    """The letters application on this test's event store and the shared token."""
    runtime = Runtime.open(settings, clock)
    yield runtime
    runtime.close()


@pytest.fixture
def account_id(runtime: Runtime) -> UUID:
    """A registered sender account."""
    accounts = SenderAccounts(runtime.letters, SecretBox(runtime.token), runtime.clock)
    account_id = uuid4()
    accounts.register(
        account_id,
        name="SCI Les Tilleuls & Fils",
        email="gestion@tilleuls.example",
        assurance=Assurance.HIGH,
        method="qualified-certificate",
        verifier_reference="certificate serial 0x4f21",
    )
    return account_id


@pytest.fixture
def consents(runtime: Runtime) -> Consents:
    """Consents in the letters' event store."""
    return Consents(runtime.letters, runtime.clock)


def rule_broken(command: object, *args: object, **kwargs: object) -> str:
    assert callable(command)
    with pytest.raises(RuleViolation) as refused:
        command(*args, **kwargs)
    return refused.value.rule


def test_a_granted_consent_is_live(
    consents: Consents, account_id: UUID, clock: FixedClock
) -> None:
    consent = consents.grant(account_id, ADDRESS, **GRANT)

    assert consents.is_live(account_id, ADDRESS)
    granted = consent.granted
    assert granted is not None
    assert (granted.at, granted.method, granted.text_version) == (
        clock.now(),
        "signed-form",
        "cgu-lre-2026-01",
    )


def test_granting_a_live_consent_again_is_refused(
    consents: Consents, account_id: UUID
) -> None:
    consents.grant(account_id, ADDRESS, **GRANT)

    assert rule_broken(consents.grant, account_id, ADDRESS, **GRANT) == (
        "consent-already-live"
    )


def test_a_revoked_consent_is_not_live_and_may_be_granted_again(
    consents: Consents, account_id: UUID
) -> None:
    consents.grant(account_id, ADDRESS, **GRANT)

    consents.revoke(account_id, ADDRESS, method="recipient-request")
    assert not consents.is_live(account_id, ADDRESS)

    consent = consents.grant(account_id, ADDRESS, **GRANT)
    assert consents.is_live(account_id, ADDRESS)
    assert [step.action for step in consent.history] == [
        "granted",
        "revoked",
        "granted",
    ]


def test_revoking_a_consent_that_is_not_live_is_refused(
    runtime: Runtime, consents: Consents, account_id: UUID
) -> None:
    assert rule_broken(
        consents.revoke, account_id, ADDRESS, method="recipient-request"
    ) == ("consent-not-live")
    assert consents.get(account_id, ADDRESS) is None

    consents.grant(account_id, ADDRESS, **GRANT)
    consents.revoke(account_id, ADDRESS, method="recipient-request")
    assert rule_broken(
        consents.revoke, account_id, ADDRESS, method="recipient-request"
    ) == ("consent-not-live")


def test_a_consent_covers_its_address_with_the_domain_in_any_case_only(
    consents: Consents, account_id: UUID
) -> None:
    consents.grant(account_id, ADDRESS, **GRANT)

    assert consents.is_live(account_id, "Helene.Cote@example.org")
    assert not consents.is_live(account_id, "helene.cote@example.org")
    assert not consents.is_live(uuid4(), ADDRESS)


def test_a_consumer_without_a_live_consent_cannot_receive_an_lre_and_nothing_is_stored(
    runtime: Runtime, consents: Consents, account_id: UUID
) -> None:
    before = runtime.letters.recorder.max_notification_id()

    assert rule_broken(consents.require_live, account_id, ADDRESS) == (
        "consumer-consent-required"
    )
    assert runtime.letters.recorder.max_notification_id() == before


def test_a_consent_needs_a_registered_sender_account(consents: Consents) -> None:
    with pytest.raises(SenderAccountNotFound):
        consents.grant(uuid4(), ADDRESS, **GRANT)


def test_a_grant_reports_every_bad_field(consents: Consents, account_id: UUID) -> None:
    with pytest.raises(InvalidInput) as invalid:
        consents.grant(
            account_id,
            "not an address",
            method="Signed Form",
            text_version="",
            evidence_reference="",
        )

    fields = {problem.field for problem in invalid.value.problems}
    assert fields == {
        "recipient_address",
        "method",
        "text_version",
        "evidence_reference",
    }


def test_every_grant_and_revocation_is_sealed(
    runtime: Runtime, consents: Consents, account_id: UUID
) -> None:
    consents.grant(account_id, ADDRESS, **GRANT)
    consents.revoke(account_id, ADDRESS, method="email-link", evidence_reference="m-1")

    the_id = consent_id(account_id, ADDRESS)
    rows = list(runtime.letters.recorder.select_events(originator_id=the_id))
    runtime.letters.sealed_events.check(rows, from_genesis=True)
    assert [row.topic.rpartition(".")[2] for row in rows] == [
        "Opened",
        "Granted",
        "Revoked",
    ]
    assert all(Envelope.from_bytes(row.state).signature for row in rows)


def test_the_proof_of_consent_is_sealed_and_pdfsig_finds_it_valid(
    runtime: Runtime, consents: Consents, account_id: UUID, tmp_path: Path
) -> None:
    consents.grant(account_id, ADDRESS, **GRANT)
    consent = consents.revoke(account_id, ADDRESS, method="recipient-request")
    accounts = SenderAccounts(runtime.letters, SecretBox(runtime.token), runtime.clock)
    facts = consent_facts(
        runtime.letters,
        consent,
        accounts.get(account_id),
        provider_name=runtime.settings.provider_name,
    )

    path = tmp_path / "consent.pdf"
    path.write_bytes(seal_consent_proof(runtime.pdf_sealer, facts))

    report = subprocess.run(
        ["pdfsig", str(path)], capture_output=True, text=True, timeout=60
    ).stdout
    assert "Signature is Valid" in report
    text = subprocess.run(
        ["pdftotext", "-layout", str(path), "-"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    for expected in (
        "Preuve de consentement",
        "Proof of consent",
        consent.recipient_address,
        "cgu-lre-2026-01",
        "Révocation / Revocation",
        str(consent.id),
        NON_QUALIFIED_LABEL,
    ):
        assert expected in text
