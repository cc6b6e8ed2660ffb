"""Sender accounts: a verified identity and a TOTP second factor (CPCE R.53-1).

Every test runs on the session's SoftHSM token and on both event stores; the
secret is sealed by the token's AES key and the codes are computed here from
the ``otpauth://`` URI the sender's authenticator app would scan.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator
from dataclasses import replace
from urllib.parse import parse_qs, urlsplit
from uuid import UUID, uuid4

import pkcs11
import pytest
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP
from pkcs11 import Attribute, ObjectClass

from pli.domain.clock import FixedClock
from pli.domain.errors import InvalidInput, RuleViolation
from pli.domain.sender_account import MAX_CONSECUTIVE_REJECTIONS, SenderAccount
from pli.domain.values import Assurance
from pli.hsm.secrets import SECRETS_KEY_LABEL, SecretBox, SecretUnreadable
from pli.hsm.token import Token, TokenConfig, TokenUnavailable
from pli.infrastructure.accounts import SenderAccountConflict, SenderAccounts
from pli.infrastructure.settings import Settings
from pli.services.runtime import Runtime

LETTER = UUID("5b1f0d3e-3c2a-4f0e-9a55-1f6f0e9c7a21")
STEP = dt.timedelta(seconds=30)


@pytest.fixture
def runtime(settings: Settings, clock: FixedClock) -> Iterator[Runtime]:
    """The letters application on this test's event store and the shared token."""
    runtime = Runtime.open(settings, clock)
    yield runtime
    runtime.close()


@pytest.fixture
def accounts(runtime: Runtime) -> SenderAccounts:
    """Sender accounts in the letters' event store."""
    return SenderAccounts(
        runtime.letters, SecretBox(runtime.token), runtime.clock, issuer="pli test"
    )


def register(accounts: SenderAccounts, account_id: UUID | None = None) -> UUID:
    account_id = account_id or uuid4()
    accounts.register(
        account_id,
        name="SCI Les Tilleuls",
        email="gestion@tilleuls.example",
        assurance=Assurance.SUBSTANTIAL,
        method="notified-eid",
        verifier_reference="FranceConnect+ assertion 7f3a",
    )
    return account_id


def secret_of(uri: str) -> bytes:
    encoded = parse_qs(urlsplit(uri).query)["secret"][0]
    return base64.b32decode(encoded + "=" * (-len(encoded) % 8))


def code_at(uri: str, at: dt.datetime) -> str:
    totp = TOTP(secret_of(uri), 6, SHA1(), 30)
    return totp.generate(int(at.timestamp())).decode()


def stored_bytes(runtime: Runtime) -> bytes:
    """Every stored event's row, as one blob to search."""
    last = runtime.letters.recorder.max_notification_id() or 0
    rows = runtime.letters.recorder.select_notifications(start=1, limit=last + 1)
    return b"\n".join(row.topic.encode() + bytes(row.state) for row in rows)


def events_of(runtime: Runtime, account_id: UUID) -> list[object]:
    return list(runtime.letters.events.get(account_id))


def refusal(accounts: SenderAccounts, account_id: UUID, code: str) -> RuleViolation:
    with pytest.raises(RuleViolation) as refused:
        accounts.check_totp(account_id, code, LETTER)
    return refused.value


def test_a_code_authenticates_one_deposit_only(
    runtime: Runtime, accounts: SenderAccounts, clock: FixedClock
) -> None:
    account_id = register(accounts)
    code = code_at(accounts.enroll_totp(account_id), clock.now())

    runtime.letters.save(accounts.check_totp(account_id, code, LETTER))

    assert refusal(accounts, account_id, code).rule == "second-factor-reused"
    last = events_of(runtime, account_id)[-1]
    assert isinstance(last, SenderAccount.SecondFactorRejected)
    assert last.reason == "code-reused"


def test_a_checked_code_is_spent_only_when_the_account_is_saved(
    runtime: Runtime, accounts: SenderAccounts, clock: FixedClock
) -> None:
    account_id = register(accounts)
    code = code_at(accounts.enroll_totp(account_id), clock.now())

    unsaved = accounts.check_totp(account_id, code, LETTER)

    assert [type(e).__name__ for e in unsaved.pending_events] == ["SecondFactorUsed"]
    runtime.letters.save(accounts.check_totp(account_id, code, LETTER))
    used = events_of(runtime, account_id)[-1]
    assert isinstance(used, SenderAccount.SecondFactorUsed)
    assert used.letter_id == str(LETTER)


def test_a_code_earlier_than_the_last_used_one_is_refused_as_reused(
    runtime: Runtime, accounts: SenderAccounts, clock: FixedClock
) -> None:
    account_id = register(accounts)
    uri = accounts.enroll_totp(account_id)
    runtime.letters.save(
        accounts.check_totp(account_id, code_at(uri, clock.now() + STEP), LETTER)
    )

    earlier = code_at(uri, clock.now())

    assert refusal(accounts, account_id, earlier).rule == "second-factor-reused"


def test_codes_of_the_neighbouring_steps_are_accepted_and_older_ones_are_not(
    runtime: Runtime, accounts: SenderAccounts, clock: FixedClock
) -> None:
    account_id = register(accounts)
    uri = accounts.enroll_totp(account_id)

    runtime.letters.save(
        accounts.check_totp(account_id, code_at(uri, clock.now() - STEP), LETTER)
    )
    runtime.letters.save(
        accounts.check_totp(account_id, code_at(uri, clock.now() + STEP), LETTER)
    )

    clock.advance(10 * STEP)
    stale = code_at(uri, clock.now() - 2 * STEP)
    assert refusal(accounts, account_id, stale).rule == "second-factor-invalid"


def test_a_wrong_code_is_refused_and_evidenced_without_the_code(
    runtime: Runtime, accounts: SenderAccounts, clock: FixedClock
) -> None:
    account_id = register(accounts)
    right = code_at(accounts.enroll_totp(account_id), clock.now())
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"

    assert refusal(accounts, account_id, wrong).rule == "second-factor-invalid"

    rejected = events_of(runtime, account_id)[-1]
    assert isinstance(rejected, SenderAccount.SecondFactorRejected)
    assert rejected.reason == "code-invalid"
    assert wrong.encode() not in stored_bytes(runtime)


def test_a_deposit_needs_an_enrolled_second_factor(
    runtime: Runtime, accounts: SenderAccounts
) -> None:
    account_id = register(accounts)

    assert refusal(accounts, account_id, "123456").rule == "second-factor-required"
    rejected = events_of(runtime, account_id)[-1]
    assert isinstance(rejected, SenderAccount.SecondFactorRejected)
    assert rejected.reason == "no-second-factor"


def test_a_code_that_is_not_six_digits_is_invalid_input_and_stores_nothing(
    runtime: Runtime, accounts: SenderAccounts
) -> None:
    account_id = register(accounts)
    accounts.enroll_totp(account_id)
    before = runtime.letters.recorder.max_notification_id()

    with pytest.raises(InvalidInput) as invalid:
        accounts.check_totp(account_id, "12a456", LETTER)

    assert invalid.value.problems[0].field == "second_factor_code"
    assert runtime.letters.recorder.max_notification_id() == before


def test_too_many_refused_codes_lock_the_second_factor_until_enrolled_again(
    runtime: Runtime, accounts: SenderAccounts, clock: FixedClock
) -> None:
    account_id = register(accounts)
    right = code_at(accounts.enroll_totp(account_id), clock.now())
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    for _ in range(MAX_CONSECUTIVE_REJECTIONS):
        refusal(accounts, account_id, wrong)

    assert refusal(accounts, account_id, right).rule == "second-factor-locked"

    uri = accounts.enroll_totp(account_id)
    runtime.letters.save(
        accounts.check_totp(account_id, code_at(uri, clock.now()), LETTER)
    )


def test_enrolling_again_replaces_the_secret(
    runtime: Runtime, accounts: SenderAccounts, clock: FixedClock
) -> None:
    account_id = register(accounts)
    first = accounts.enroll_totp(account_id)
    second = accounts.enroll_totp(account_id)
    old_code, new_code = code_at(first, clock.now()), code_at(second, clock.now())
    if old_code == new_code:
        pytest.skip("the two secrets give the same code at this instant")

    assert refusal(accounts, account_id, old_code).rule == "second-factor-invalid"
    runtime.letters.save(accounts.check_totp(account_id, new_code, LETTER))
    enrolments = [
        e
        for e in events_of(runtime, account_id)
        if isinstance(e, SenderAccount.SecondFactorEnrolled)
    ]
    assert len(enrolments) == 2


def test_the_totp_secret_is_stored_only_encrypted(
    runtime: Runtime, accounts: SenderAccounts
) -> None:
    account_id = register(accounts)

    secret = secret_of(accounts.enroll_totp(account_id))

    stored = stored_bytes(runtime)
    for form in (
        secret,
        secret.hex().encode(),
        base64.b32encode(secret).rstrip(b"="),
        base64.b64encode(secret).rstrip(b"="),
    ):
        assert form not in stored
    enrolled = events_of(runtime, account_id)[-1]
    assert isinstance(enrolled, SenderAccount.SecondFactorEnrolled)
    assert enrolled.key_label == SECRETS_KEY_LABEL


def test_a_closed_account_authenticates_no_deposit(
    runtime: Runtime, accounts: SenderAccounts, clock: FixedClock
) -> None:
    account_id = register(accounts)
    code = code_at(accounts.enroll_totp(account_id), clock.now())

    accounts.close(account_id)

    assert refusal(accounts, account_id, code).rule == "account-closed"


def test_registering_the_same_sender_again_changes_nothing(
    runtime: Runtime, accounts: SenderAccounts
) -> None:
    account_id = register(accounts)
    before = runtime.letters.recorder.max_notification_id()

    register(accounts, account_id)

    assert runtime.letters.recorder.max_notification_id() == before


def test_registering_other_facts_under_a_taken_id_conflicts(
    accounts: SenderAccounts,
) -> None:
    account_id = register(accounts)

    with pytest.raises(SenderAccountConflict):
        accounts.register(
            account_id,
            name="Someone Else",
            email="other@example.org",
            assurance=Assurance.HIGH,
            method="in-person",
            verifier_reference="desk 4",
        )


def test_a_sender_verified_below_substantial_is_refused(
    accounts: SenderAccounts,
) -> None:
    with pytest.raises(RuleViolation) as refused:
        accounts.register(
            uuid4(),
            name="SCI Les Tilleuls",
            email="gestion@tilleuls.example",
            assurance=Assurance.LOW,
            method="other-recognised",
            verifier_reference="self-declared",
        )

    assert refused.value.rule == "sender-assurance-too-low"


def test_a_registration_reports_every_bad_field(accounts: SenderAccounts) -> None:
    with pytest.raises(InvalidInput) as invalid:
        accounts.register(
            uuid4(),
            name=" ",
            email="not an address",
            assurance=Assurance.HIGH,
            method="passport-scan",
            verifier_reference="",
        )

    fields = {problem.field for problem in invalid.value.problems}
    assert fields == {"name", "email", "method", "verifier_reference"}


# The secrets key itself: no database involved.


def test_a_sealed_secret_does_not_open_for_other_associated_data(
    token_config: TokenConfig,
) -> None:
    token = Token(token_config)
    box = SecretBox(token)
    try:
        blob = box.seal(b"twenty bytes secret!", b"account A")

        assert box.open(blob, b"account A") == b"twenty bytes secret!"
        with pytest.raises(SecretUnreadable):
            box.open(blob, b"account B")
    finally:
        token.close()


def test_the_secrets_key_is_sensitive_and_never_leaves_the_token(
    token_config: TokenConfig,
) -> None:
    token = Token(token_config)
    try:
        with token.session() as session:
            key = session.get_key(
                object_class=ObjectClass.SECRET_KEY, label=SECRETS_KEY_LABEL
            )
            assert key.key_length == 256
            assert key[Attribute.SENSITIVE] and key[Attribute.ALWAYS_SENSITIVE]
            assert not key[Attribute.EXTRACTABLE]
            assert key[Attribute.NEVER_EXTRACTABLE]
            assert key[Attribute.ENCRYPT] and key[Attribute.DECRYPT]
            assert not key[Attribute.WRAP] and not key[Attribute.UNWRAP]
            with pytest.raises(pkcs11.AttributeSensitive):
                key[Attribute.VALUE]
    finally:
        token.close()


@pytest.mark.parametrize("fault", ["wrong PIN", "token missing"])
def test_without_the_token_secrets_are_unavailable_like_seals(
    token_config: TokenConfig, fault: str
) -> None:
    if fault == "wrong PIN":
        config = replace(token_config, pin_from_env="0000")
    else:
        config = replace(token_config, token_label="absent")
    token = Token(config)
    try:
        with pytest.raises(TokenUnavailable):
            SecretBox(token).seal(b"secret", b"account")
    finally:
        token.close()
