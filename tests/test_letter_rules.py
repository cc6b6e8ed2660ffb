"""The letter's lifecycle rules (DESIGN §1-2), on the aggregate alone."""

import datetime as dt
import uuid

import pytest

from pli.domain.errors import InvalidInput, RuleViolation
from pli.domain.letter import Letter, LetterState
from pli.domain.values import Assurance, AttachmentRef, LetterKind, Party

T0 = dt.datetime(2026, 5, 4, 8, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


def deposit(kind: LetterKind = LetterKind.LRE, **overrides: object) -> Letter:
    fields: dict[str, object] = {
        "letter_id": uuid.uuid4(),
        "kind": kind,
        "sender": Party("SCI Exemple", "gestion@sci-exemple.fr"),
        "recipient": Party("Camille Martin", "camille.martin@example.org"),
        "attachments": [AttachmentRef("notice.pdf", "application/pdf", 10, "a" * 64)],
        "request_digest": "0" * 64,
        "at": T0,
    }
    fields.update(overrides)
    return Letter.deposit(**fields)  # type: ignore[arg-type]


def notified(kind: LetterKind = LetterKind.LRE) -> Letter:
    letter = deposit(kind)
    letter.notify(T0 + HOUR)
    return letter


def identified(kind: LetterKind = LetterKind.LRE) -> Letter:
    letter = notified(kind)
    letter.identify(
        method="id-document+video",
        level=Assurance.SUBSTANTIAL,
        verifier_reference="chk-1",
        at=T0 + 2 * HOUR,
    )
    return letter


def rule_of(action) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(RuleViolation) as caught:
        action()
    return caught.value.rule


def test_full_acceptance_path_records_each_event_in_order() -> None:
    letter = identified()
    letter.accept(T0 + 3 * HOUR)
    names = [type(e).__name__ for e in letter.collect_events()]
    assert names == ["Deposited", "Notified", "IdentityVerified", "Accepted"]
    assert letter.state is LetterState.ACCEPTED


def test_accept_before_identification_is_refused() -> None:
    assert (
        rule_of(lambda: notified().accept(T0 + 2 * HOUR)) == "identification-required"
    )


def test_refuse_before_identification_is_refused_too() -> None:
    assert (
        rule_of(lambda: notified().refuse(T0 + 2 * HOUR)) == "identification-required"
    )


def test_identification_before_notification_is_refused() -> None:
    letter = deposit()
    assert (
        rule_of(
            lambda: letter.identify(
                method="m", level=Assurance.HIGH, verifier_reference="", at=T0
            )
        )
        == "not-notified"
    )


def test_second_decision_is_refused() -> None:
    letter = identified()
    letter.accept(T0 + 3 * HOUR)
    assert rule_of(lambda: letter.refuse(T0 + 4 * HOUR)) == "decision-final"
    assert rule_of(lambda: letter.accept(T0 + 4 * HOUR)) == "decision-final"


def test_nothing_happens_after_expiry() -> None:
    letter = identified()
    late = letter.window_closes_at
    assert late is not None
    letter.expire(late)
    assert rule_of(lambda: letter.refuse(late + HOUR)) == "decision-final"
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


def test_lre_needs_substantial_identification_but_ere_accepts_low() -> None:
    lre = notified(LetterKind.LRE)
    assert (
        rule_of(
            lambda: lre.identify(
                method="email-otp", level=Assurance.LOW, verifier_reference="", at=T0
            )
        )
        == "assurance-too-low"
    )
    ere = notified(LetterKind.ERE)
    ere.identify(method="email-otp", level=Assurance.LOW, verifier_reference="", at=T0)
    assert ere.state is LetterState.IDENTIFIED


def test_content_is_handed_over_only_after_acceptance() -> None:
    letter = identified()
    assert rule_of(lambda: letter.deliver_content(0, T0)) == "not-accepted"
    letter.accept(T0 + 3 * HOUR)
    letter.deliver_content(0, T0 + 4 * HOUR)
    assert letter.deliveries == 1


def test_notifying_twice_is_refused() -> None:
    assert rule_of(lambda: notified().notify(T0 + 2 * HOUR)) == "already-notified"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"sender": Party("", "a@b.fr")}, "sender.name"),
        ({"sender": Party("A", "not-an-address")}, "sender.email"),
        ({"recipient": Party("B", "b@localhost")}, "recipient.email"),
        ({"recipient": Party("x" * 201, "b@c.fr")}, "recipient.name"),
        ({"recipient": Party("Bad\x00name", "b@c.fr")}, "recipient.name"),
        ({"attachments": []}, "attachments"),
        (
            {
                "attachments": [
                    AttachmentRef("../etc/passwd", "text/plain", 1, "a" * 64)
                ]
            },
            "attachments[0].filename",
        ),
    ],
)
def test_bad_deposit_names_each_faulty_field(
    overrides: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        deposit(**overrides)
    assert field in [p.field for p in caught.value.problems]


def test_events_carry_the_times_given_not_the_wall_clock() -> None:
    letter = deposit()
    assert letter.deposited_at == T0
