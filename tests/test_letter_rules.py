"""The letter's lifecycle rules (DESIGN §1-2), on the aggregate alone."""

import datetime as dt
import uuid

import pytest

from pli.domain.errors import InvalidInput, RuleViolation
from pli.domain.letter import MAX_IDENTIFICATION_ATTEMPTS, Letter, LetterState
from pli.domain.values import (
    Assurance,
    AttachmentRef,
    LetterKind,
    Party,
    Recipient,
    RecipientType,
)

T0 = dt.datetime(2026, 5, 4, 8, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
NONCE = "1" * 64
ISSUER = "https://idp.example.fr"


def camille(**overrides: object) -> Recipient:
    fields: dict[str, object] = {
        "email": "camille.martin@example.org",
        "type": RecipientType.PROFESSIONAL,
        "given_names": "Camille",
        "family_name": "Martin",
    }
    fields.update(overrides)
    return Recipient(**fields)  # type: ignore[arg-type]


def pdf(name: str = "notice.pdf") -> AttachmentRef:
    return AttachmentRef(name, "application/pdf", 10, "a" * 64)


def deposit(kind: LetterKind = LetterKind.LRE, **overrides: object) -> Letter:
    fields: dict[str, object] = {
        "letter_id": uuid.uuid4(),
        "kind": kind,
        "sender_account_id": uuid.uuid4(),
        "sender": Party("SCI Exemple", "gestion@sci-exemple.fr"),
        "recipient": camille(),
        "subject": "Loyers impayés",
        "attachments": [pdf()],
        "request_digest": "0" * 64,
        "at": T0,
    }
    fields.update(overrides)
    return Letter.deposit(**fields)  # type: ignore[arg-type]


def notified(kind: LetterKind = LetterKind.LRE, **overrides: object) -> Letter:
    letter = deposit(kind, **overrides)
    letter.notify(T0 + HOUR)
    return letter


def begin(letter: Letter, nonce: str = NONCE, at: dt.datetime | None = None) -> None:
    letter.begin_identification(
        attempt=uuid.uuid4().hex, nonce_digest=nonce, at=at or T0 + 2 * HOUR
    )


def identify(
    letter: Letter,
    nonce: str = NONCE,
    level: Assurance = Assurance.SUBSTANTIAL,
    at: dt.datetime | None = None,
    **overrides: object,
) -> None:
    fields: dict[str, object] = {
        "nonce_digest": nonce,
        "method": "openid-connect",
        "level": level,
        "issuer": ISSUER,
        "subject_digest": "b" * 64,
        "qualified": False,
        "at": at or T0 + 2 * HOUR,
    }
    fields.update(overrides)
    letter.identify(**fields)  # type: ignore[arg-type]


def identified(kind: LetterKind = LetterKind.LRE, **overrides: object) -> Letter:
    letter = notified(kind, **overrides)
    begin(letter)
    identify(letter)
    return letter


def accepted(**overrides: object) -> Letter:
    letter = identified(**overrides)
    letter.accept(T0 + 3 * HOUR)
    return letter


def rule_of(action) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(RuleViolation) as caught:
        action()
    return caught.value.rule


def event_names(letter: Letter) -> list[str]:
    return [type(e).__name__ for e in letter.collect_events()]


# The path to a decision.


def test_full_acceptance_path_records_each_event_in_order() -> None:
    letter = accepted()
    assert event_names(letter) == [
        "Deposited",
        "Notified",
        "IdentificationStarted",
        "IdentityVerified",
        "Accepted",
    ]
    assert letter.state is LetterState.ACCEPTED
    assert letter.identification_level is Assurance.SUBSTANTIAL


def test_deposit_keeps_the_account_the_recipient_and_the_subject() -> None:
    account = uuid.uuid4()
    letter = deposit(sender_account_id=account)
    assert letter.sender_account_id == account
    assert letter.recipient == camille()
    assert letter.recipient.name == "Camille Martin"
    assert letter.subject == "Loyers impayés"


def test_a_company_recipient_is_named_by_the_company() -> None:
    company = camille(company_name="ACME SAS", company_id="123456789")
    letter = deposit(recipient=company)
    assert letter.recipient.is_company
    assert letter.recipient.name == "ACME SAS"


def test_accept_before_identification_is_refused() -> None:
    assert (
        rule_of(lambda: notified().accept(T0 + 2 * HOUR)) == "identification-required"
    )


def test_refuse_before_identification_is_refused_too() -> None:
    assert (
        rule_of(lambda: notified().refuse(T0 + 2 * HOUR)) == "identification-required"
    )


def test_a_started_identification_does_not_allow_a_decision() -> None:
    letter = notified()
    begin(letter)
    assert rule_of(lambda: letter.accept(T0 + 3 * HOUR)) == "identification-required"


# Identification: begin, then identify or fail.


def test_identification_before_notification_is_refused() -> None:
    letter = deposit()
    assert rule_of(lambda: begin(letter, at=T0)) == "not-notified"


def test_identify_without_a_started_attempt_is_refused() -> None:
    letter = notified()
    assert rule_of(lambda: identify(letter)) == "identification-not-started"
    assert letter.state is LetterState.NOTIFIED


def test_identify_with_another_nonce_is_refused() -> None:
    letter = notified()
    begin(letter, nonce="1" * 64)
    assert rule_of(lambda: identify(letter, nonce="2" * 64)) == (
        "identification-not-started"
    )


def test_failing_without_a_started_attempt_is_refused() -> None:
    letter = notified()
    assert (
        rule_of(
            lambda: letter.fail_identification(
                nonce_digest=NONCE, reason="bad token", at=T0 + 2 * HOUR
            )
        )
        == "identification-not-started"
    )


def test_a_failed_attempt_is_recorded_and_the_letter_stays_notified() -> None:
    letter = notified()
    begin(letter)
    letter.fail_identification(
        nonce_digest=NONCE, reason="the family name differs", at=T0 + 2 * HOUR
    )
    events = letter.collect_events()
    assert type(events[-1]).__name__ == "IdentificationFailed"
    assert events[-1].reason == "the family name differs"  # type: ignore[attr-defined]
    assert letter.state is LetterState.NOTIFIED
    assert letter.open_attempts == {}


def test_a_failed_attempt_is_closed_for_good() -> None:
    letter = notified()
    begin(letter)
    letter.fail_identification(nonce_digest=NONCE, reason="r", at=T0 + 2 * HOUR)
    assert rule_of(lambda: identify(letter)) == "identification-not-started"
    assert (
        rule_of(
            lambda: letter.fail_identification(
                nonce_digest=NONCE, reason="r", at=T0 + 2 * HOUR
            )
        )
        == "identification-not-started"
    )


def test_a_successful_attempt_is_closed_too() -> None:
    letter = notified()
    begin(letter)
    identify(letter)
    assert letter.open_attempts == {}
    assert rule_of(lambda: identify(letter)) == "identification-not-started"


def test_a_new_attempt_may_follow_a_failed_one() -> None:
    letter = notified()
    begin(letter, nonce="1" * 64)
    letter.fail_identification(nonce_digest="1" * 64, reason="r", at=T0 + 2 * HOUR)
    begin(letter, nonce="2" * 64)
    identify(letter, nonce="2" * 64)
    assert letter.state is LetterState.IDENTIFIED


def test_only_the_attempt_used_is_closed() -> None:
    letter = notified()
    begin(letter, nonce="1" * 64)
    begin(letter, nonce="2" * 64)
    letter.fail_identification(nonce_digest="1" * 64, reason="r", at=T0 + 2 * HOUR)
    assert list(letter.open_attempts) == ["2" * 64]


def test_beginning_once_identified_is_refused() -> None:
    assert rule_of(lambda: begin(identified(), nonce="2" * 64)) == "already-identified"


def test_attempts_are_bounded_even_when_they_failed() -> None:
    letter = notified()
    for number in range(MAX_IDENTIFICATION_ATTEMPTS):
        nonce = f"{number:064x}"
        begin(letter, nonce=nonce)
        letter.fail_identification(nonce_digest=nonce, reason="r", at=T0 + 2 * HOUR)
    assert (
        rule_of(lambda: begin(letter, nonce="f" * 64))
        == "identification-attempts-exhausted"
    )


def test_lre_needs_substantial_identification_but_ere_accepts_low() -> None:
    lre = notified(LetterKind.LRE)
    begin(lre)
    assert rule_of(lambda: identify(lre, level=Assurance.LOW)) == "assurance-too-low"
    assert lre.state is LetterState.NOTIFIED
    ere = notified(LetterKind.ERE)
    begin(ere)
    identify(ere, level=Assurance.LOW)
    assert ere.state is LetterState.IDENTIFIED
    assert ere.identification_level is Assurance.LOW


def test_a_check_may_complete_after_it_started_while_the_window_is_open() -> None:
    letter = notified()
    begin(letter)
    identify(letter, at=T0 + 8 * HOUR)
    assert letter.identified_at == T0 + 8 * HOUR


def test_identification_after_the_window_closed_is_refused() -> None:
    letter = notified()
    closes = letter.window_closes_at
    assert closes is not None
    assert rule_of(lambda: begin(letter, at=closes)) == "window-closed"
    begin(letter)
    assert rule_of(lambda: identify(letter, at=closes)) == "window-closed"
    assert (
        rule_of(
            lambda: letter.fail_identification(
                nonce_digest=NONCE, reason="r", at=closes
            )
        )
        == "window-closed"
    )
    assert letter.state is LetterState.NOTIFIED


def test_identification_of_a_decided_letter_is_refused() -> None:
    letter = accepted()
    assert rule_of(lambda: begin(letter, nonce="2" * 64)) == "decision-final"


def test_control_characters_in_identification_method_and_issuer_are_refused() -> None:
    letter = notified()
    begin(letter)
    with pytest.raises(InvalidInput) as caught:
        identify(letter, method="video\ncheck", issuer="https://idp\x01")
    assert {p.field for p in caught.value.problems} == {"method", "issuer"}
    assert letter.state is LetterState.NOTIFIED
    assert NONCE in letter.open_attempts


# Decisions.


def test_second_decision_is_refused() -> None:
    letter = accepted()
    assert rule_of(lambda: letter.refuse(T0 + 4 * HOUR)) == "decision-final"
    letter = identified()
    letter.refuse(T0 + 3 * HOUR)
    assert rule_of(lambda: letter.accept(T0 + 4 * HOUR)) == "decision-final"


def test_accepting_again_changes_nothing() -> None:
    letter = accepted()
    letter.collect_events()
    letter.accept(T0 + 4 * HOUR)
    assert letter.collect_events() == []
    assert letter.decided_at == T0 + 3 * HOUR


def test_refusing_again_changes_nothing() -> None:
    letter = identified()
    letter.refuse(T0 + 3 * HOUR)
    letter.collect_events()
    letter.refuse(T0 + 4 * HOUR)
    assert letter.collect_events() == []
    assert letter.state is LetterState.REFUSED


def test_nothing_happens_after_expiry() -> None:
    letter = identified()
    late = letter.window_closes_at
    assert late is not None
    letter.expire(late)
    assert rule_of(lambda: letter.refuse(late + HOUR)) == "decision-final"
    assert rule_of(lambda: letter.accept(late + HOUR)) == "decision-final"
    assert rule_of(lambda: letter.expire(late + HOUR)) == "decision-final"


def test_decision_after_window_closed_is_refused() -> None:
    letter = identified()
    assert letter.window_closes_at is not None
    assert rule_of(lambda: letter.accept(letter.window_closes_at)) == "window-closed"


def test_expiry_before_window_closes_is_refused() -> None:
    letter = notified()
    assert letter.window_closes_at is not None
    before = letter.window_closes_at - dt.timedelta(seconds=1)
    assert rule_of(lambda: letter.expire(before)) == "window-open"


def test_expiry_of_a_letter_never_notified_is_refused() -> None:
    assert (
        rule_of(lambda: deposit().expire(T0 + dt.timedelta(days=30))) == "not-notified"
    )


def test_notifying_twice_is_refused() -> None:
    assert rule_of(lambda: notified().notify(T0 + 2 * HOUR)) == "already-notified"


# Content: handed over after acceptance, purged once final.


def test_content_is_handed_over_only_after_acceptance() -> None:
    letter = identified()
    assert rule_of(lambda: letter.deliver_content(0, T0)) == "not-accepted"
    letter.accept(T0 + 3 * HOUR)
    letter.deliver_content(0, T0 + 4 * HOUR)
    assert letter.delivered == {0}


def test_an_attachment_that_does_not_exist_is_not_handed_over() -> None:
    letter = accepted()
    with pytest.raises(InvalidInput) as caught:
        letter.deliver_content(1, T0 + 4 * HOUR)
    assert [p.field for p in caught.value.problems] == ["attachment_index"]


def test_each_attachment_is_recorded_as_delivered_once() -> None:
    letter = accepted(attachments=[pdf("a.pdf"), pdf("b.pdf")])
    letter.collect_events()
    letter.deliver_content(0, T0 + 4 * HOUR)
    letter.deliver_content(0, T0 + 5 * HOUR)
    letter.deliver_content(1, T0 + 5 * HOUR)
    letter.deliver_content(1, T0 + 6 * HOUR)
    assert event_names(letter) == ["ContentDelivered", "ContentDelivered"]
    assert letter.delivered == {0, 1}


def test_a_second_download_keeps_the_delivered_set() -> None:
    letter = accepted(attachments=[pdf("a.pdf"), pdf("b.pdf")])
    letter.deliver_content(1, T0 + 4 * HOUR)
    letter.deliver_content(1, T0 + 5 * HOUR)
    assert letter.delivered == {1}


@pytest.mark.parametrize("make", [deposit, notified, identified])
def test_content_is_purged_only_once_the_letter_is_final(make) -> None:  # type: ignore[no-untyped-def]
    letter = make()
    assert (
        rule_of(lambda: letter.purge_content(policy="30-days", at=T0 + 5 * HOUR))
        == "letter-not-final"
    )
    assert letter.content_purged_at is None


def test_content_of_an_accepted_letter_is_purged_once_and_not_handed_over() -> None:
    letter = accepted()
    letter.purge_content(policy="30-days", at=T0 + 5 * HOUR)
    assert letter.content_purged_at == T0 + 5 * HOUR
    assert event_names(letter)[-1] == "ContentPurged"
    assert (
        rule_of(lambda: letter.purge_content(policy="30-days", at=T0 + 6 * HOUR))
        == "content-purged"
    )
    assert rule_of(lambda: letter.deliver_content(0, T0 + 6 * HOUR)) == (
        "content-purged"
    )
    assert letter.state is LetterState.ACCEPTED


def test_content_of_a_refused_or_expired_letter_may_be_purged() -> None:
    refused = identified()
    refused.refuse(T0 + 3 * HOUR)
    refused.purge_content(policy="30-days", at=T0 + 4 * HOUR)
    expired = notified()
    closes = expired.window_closes_at
    assert closes is not None
    expired.expire(closes)
    expired.purge_content(policy="30-days", at=closes + HOUR)
    assert refused.content_purged_at and expired.content_purged_at


# Deposit input.


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"sender": Party("", "a@b.fr")}, "sender.name"),
        ({"sender": Party("A", "not-an-address")}, "sender.email"),
        ({"recipient": camille(email="b@localhost")}, "recipient.email"),
        ({"recipient": camille(email="")}, "recipient.email"),
        ({"recipient": camille(given_names="")}, "recipient.given_names"),
        ({"recipient": camille(family_name="x" * 201)}, "recipient.family_name"),
        ({"recipient": camille(family_name="Bad\x00name")}, "recipient.family_name"),
        ({"recipient": camille(birthdate="1980-02-30")}, "recipient.birthdate"),
        ({"recipient": camille(birthdate="31/05/1980")}, "recipient.birthdate"),
        ({"recipient": camille(company_name="ACME")}, "recipient.company_id"),
        ({"recipient": camille(company_id="123456789")}, "recipient.company_id"),
        (
            {"recipient": camille(company_name="ACME", company_id="12345")},
            "recipient.company_id",
        ),
        (
            {"recipient": camille(company_name="\x07", company_id="123456789")},
            "recipient.company_name",
        ),
        ({"subject": "x" * 201}, "subject"),
        ({"subject": "line\nbreak"}, "subject"),
        ({"subject": "not in XML \uffff"}, "subject"),
        ({"sender": Party("SCI \ufdd0", "a@b.fr")}, "sender.name"),
        ({"attachments": [pdf("lettre\ufffe.pdf")]}, "attachments[0].filename"),
        ({"attachments": []}, "attachments"),
        ({"attachments": [pdf()] * 65}, "attachments"),
        ({"attachments": [pdf("../etc/passwd")]}, "attachments[0].filename"),
        (
            {"attachments": [AttachmentRef("a.pdf", "pdf", 1, "a" * 64)]},
            "attachments[0].media_type",
        ),
        (
            {"attachments": [AttachmentRef("a.pdf", "application/pdf", 0, "a" * 64)]},
            "attachments[0].content",
        ),
        (
            {"attachments": [AttachmentRef("a.pdf", "application/pdf", 1, "xyz")]},
            "attachments[0].sha256",
        ),
    ],
)
def test_bad_deposit_names_each_faulty_field(
    overrides: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        deposit(**overrides)
    assert field in [p.field for p in caught.value.problems]


def test_every_faulty_field_of_a_deposit_is_named_at_once() -> None:
    with pytest.raises(InvalidInput) as caught:
        deposit(
            sender=Party("", "nope"),
            recipient=camille(email="", given_names="", family_name=""),
            subject="\x00",
            attachments=[],
        )
    assert {p.field for p in caught.value.problems} == {
        "sender.name",
        "sender.email",
        "recipient.email",
        "recipient.given_names",
        "recipient.family_name",
        "subject",
        "attachments",
    }


def test_events_carry_the_times_given_not_the_wall_clock() -> None:
    letter = identified()
    assert letter.deposited_at == T0
    assert letter.notified_at == T0 + HOUR
    assert letter.identified_at == T0 + 2 * HOUR
