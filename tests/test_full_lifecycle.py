"""The full legal lifecycle over real gRPC: one test per rule of the law."""

from __future__ import annotations

import datetime as dt
import subprocess
import uuid
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from pli.infrastructure.dev_idp import DevIdentityProvider
from pli.services.processes import Purger
from pli.v1 import consents_pb2 as cpb
from pli.v1 import letters_pb2 as pb

from conftest import Pli
from frontend import STEP, Frontend, recipient


@pytest.fixture
def front(pli: Pli) -> Frontend:
    return Frontend(pli)


def rule_of(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        failure = error_details_pb2.PreconditionFailure()
        if detail.Unpack(failure):
            return failure.violations[0].type
    raise AssertionError(f"no precondition failure in {status}")


def test_lre_is_accepted_after_identification_and_the_content_is_handed_over(
    front: Frontend,
) -> None:
    letter = front.deposit_and_notify()
    assert letter.state == pb.LETTER_STATE_NOTIFIED
    notice = front.identify(letter.letter_id)
    assert notice.state == pb.LETTER_STATE_IDENTIFIED
    notice = front.accept(letter.letter_id)
    assert notice.sender.name == "SCI Exemple"
    info, content = front.download(letter.letter_id)
    assert content.startswith(b"%PDF")


def error_of(call, request) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as raised:
        call(request)
    return raised.value


def pdf_text(pdf: bytes) -> str:
    result = subprocess.run(
        ["pdftotext", "-", "-"], input=pdf, capture_output=True, timeout=60
    )
    return " ".join(result.stdout.decode().split())


def stored_bytes(pli: Pli) -> bytes:
    recorder = pli.runtime.letters.recorder
    rows = recorder.select_notifications(start=1, limit=10_000)
    return b"".join(row.topic.encode() + bytes(row.state) for row in rows)


def proof_pdf(pli: Pli, letter_id: str, kind: int) -> bytes:
    return pli.letters.GetProof(pb.GetProofRequest(letter_id=letter_id, kind=kind)).pdf


# 1. Two products.


def test_rule_two_products_the_kind_appears_on_every_proof(front: Frontend) -> None:
    lre = front.deposit_and_notify()
    ere = front.deposit_and_notify(kind=pb.LETTER_KIND_ERE, second_factor_code="")
    front.pli.run_processes()
    assert "LRE" in pdf_text(proof_pdf(front.pli, lre.letter_id, pb.PROOF_KIND_DEPOSIT))
    assert "ERE" in pdf_text(proof_pdf(front.pli, ere.letter_id, pb.PROOF_KIND_DEPOSIT))


# 2. Sender accounts.


def test_rule_lre_deposit_needs_the_senders_second_factor(front: Frontend) -> None:
    front.sender()
    before = front.pli.event_count()
    error = error_of(
        front.pli.letters.DepositLetter, front.deposit_request(second_factor_code="")
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "second_factor_code" in error.details()
    assert front.pli.event_count() == before


def test_rule_a_wrong_code_is_refused_and_evidenced_without_the_code(
    front: Frontend,
) -> None:
    request = front.deposit_request()
    wrong = f"{(int(request.second_factor_code) + 1) % 1_000_000:06d}"
    request.second_factor_code = wrong
    error = error_of(front.pli.letters.DepositLetter, request)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert rule_of(error) == "second-factor-invalid"
    stored = stored_bytes(front.pli)
    assert b"SecondFactorRejected" in stored
    assert wrong.encode() not in stored


def test_rule_each_code_is_accepted_once(front: Frontend) -> None:
    first = front.deposit_request()
    front.pli.letters.DepositLetter(first)
    second = front.deposit_request()
    second.second_factor_code = first.second_factor_code
    front.pli.clock.advance(-STEP)  # the same step as the first deposit
    error = error_of(front.pli.letters.DepositLetter, second)
    assert rule_of(error) in ("second-factor-reused", "second-factor-invalid")


def test_rule_the_sender_is_the_accounts_verified_identity(front: Frontend) -> None:
    sender = front.sender("cabinet-durand", "Cabinet Durand")
    letter = front.deposit(sender)
    assert letter.sender.name == "Cabinet Durand"
    assert letter.sender_account_id == sender.account_id


def test_rule_deposit_for_an_unknown_account_is_not_found(front: Frontend) -> None:
    request = front.deposit_request(sender_account_id=str(uuid.uuid4()))
    error = error_of(front.pli.letters.DepositLetter, request)
    assert error.code() == grpc.StatusCode.NOT_FOUND


# 3. Consumer consent.


def consumer() -> pb.Recipient:
    return recipient(
        type=pb.RECIPIENT_TYPE_CONSUMER,
        email="dominique@example.org",
        given_names="Dominique",
        family_name="Lefèvre",
    )


def test_rule_lre_to_a_consumer_without_consent_is_refused_and_stores_nothing(
    front: Frontend,
) -> None:
    front.sender()
    before = front.pli.event_count()
    error = error_of(
        front.pli.letters.DepositLetter, front.deposit_request(recipient=consumer())
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert rule_of(error) == "consumer-consent-required"
    assert "L.100" in error.details()
    assert front.pli.event_count() == before


def test_rule_lre_to_a_consumer_with_a_live_consent_is_deposited(
    front: Frontend,
) -> None:
    sender = front.sender()
    front.grant_consent(sender, "dominique@example.org")
    letter = front.deposit(sender, recipient=consumer())
    assert letter.state == pb.LETTER_STATE_DEPOSITED


def test_rule_a_revoked_consent_refuses_later_lres(front: Frontend) -> None:
    sender = front.sender()
    front.grant_consent(sender, "dominique@example.org")
    revoked = front.pli.consents.RevokeConsent(
        cpb.RevokeConsentRequest(
            sender_account_id=sender.account_id,
            recipient_email="dominique@example.org",
            method="email-request",
        )
    ).consent
    assert not revoked.live
    error = error_of(
        front.pli.letters.DepositLetter, front.deposit_request(recipient=consumer())
    )
    assert rule_of(error) == "consumer-consent-required"


def test_rule_ere_to_a_consumer_needs_no_consent(front: Frontend) -> None:
    letter = front.deposit(
        kind=pb.LETTER_KIND_ERE, recipient=consumer(), second_factor_code=""
    )
    assert letter.kind == pb.LETTER_KIND_ERE


def test_rule_the_proof_of_consent_is_sealed(front: Frontend, tmp_path: Path) -> None:
    sender = front.sender()
    front.grant_consent(sender, "dominique@example.org")
    pdf = front.pli.consents.GetConsentProof(
        cpb.GetConsentProofRequest(
            sender_account_id=sender.account_id,
            recipient_email="dominique@example.org",
        )
    ).pdf
    path = tmp_path / "consent.pdf"
    path.write_bytes(pdf)
    result = subprocess.run(["pdfsig", str(path)], capture_output=True, text=True)
    assert "Signature is Valid" in result.stdout
    assert "dominique@example.org" in pdf_text(pdf)


# 4. Recipient identification.


def test_rule_a_mismatched_identity_is_recorded_and_refused(front: Frontend) -> None:
    letter = front.deposit_and_notify()
    error = error_of(
        front.pli.desk.IdentifyRecipient,
        identify_request(front, letter.letter_id, family_name="Dupont"),
    )
    assert rule_of(error) == "identity-mismatch"
    assert "family name" in error.details()
    stored = stored_bytes(front.pli)
    assert b"IdentificationFailed" in stored
    assert front.get(letter.letter_id).state == pb.LETTER_STATE_NOTIFIED


def test_rule_names_match_despite_case_accents_and_several_given_names(
    front: Frontend,
) -> None:
    letter = front.deposit_and_notify(
        recipient=recipient(given_names="Zoé", family_name="Le Gall-Hervé")
    )
    notice = front.identify(
        letter.letter_id, given_name="ZOE Marie", family_name="le gall herve"
    )
    assert notice.state == pb.LETTER_STATE_IDENTIFIED


def test_rule_an_lre_needs_substantial_assurance(front: Frontend) -> None:
    letter = front.deposit_and_notify()
    error = error_of(
        front.pli.desk.IdentifyRecipient,
        identify_request(front, letter.letter_id, acr="eidas1"),
    )
    assert rule_of(error) == "assurance-too-low"


def test_rule_an_ere_accepts_low_assurance(front: Frontend) -> None:
    letter = front.deposit_and_notify(kind=pb.LETTER_KIND_ERE, second_factor_code="")
    assert front.identify(letter.letter_id, acr="eidas1").state == (
        pb.LETTER_STATE_IDENTIFIED
    )


def test_rule_a_token_for_another_nonce_is_refused(front: Frontend) -> None:
    letter = front.deposit_and_notify()
    nonce = front.begin(letter.letter_id)
    other = front.begin(letter.letter_id)
    error = error_of(
        front.pli.desk.IdentifyRecipient,
        pb.IdentifyRecipientRequest(
            letter_id=letter.letter_id, nonce=nonce, id_token=front.id_token(other)
        ),
    )
    assert rule_of(error) == "identification-failed"
    assert "nonce" in error.details()


def test_rule_a_token_from_an_untrusted_provider_is_refused(
    front: Frontend, tmp_path: Path
) -> None:
    letter = front.deposit_and_notify()
    nonce = front.begin(letter.letter_id)
    stranger = DevIdentityProvider(tmp_path / "stranger").issue(
        given_name="Camille",
        family_name="Martin",
        nonce=nonce,
        at=front.pli.clock.now(),
    )
    error = error_of(
        front.pli.desk.IdentifyRecipient,
        pb.IdentifyRecipientRequest(
            letter_id=letter.letter_id, nonce=nonce, id_token=stranger
        ),
    )
    assert rule_of(error) == "identification-failed"


def test_rule_a_nonce_is_used_once(front: Frontend) -> None:
    letter = front.deposit_and_notify(kind=pb.LETTER_KIND_ERE, second_factor_code="")
    request = identify_request(front, letter.letter_id, family_name="Dupont")
    error_of(front.pli.desk.IdentifyRecipient, request)
    error = error_of(front.pli.desk.IdentifyRecipient, request)
    assert rule_of(error) == "identification-not-started"


def test_rule_a_check_may_complete_later_than_it_started(front: Frontend) -> None:
    letter = front.deposit_and_notify()
    nonce = front.begin(letter.letter_id)
    front.pli.clock.advance(dt.timedelta(hours=6))  # a document + video check
    notice = front.pli.desk.IdentifyRecipient(
        pb.IdentifyRecipientRequest(
            letter_id=letter.letter_id, nonce=nonce, id_token=front.id_token(nonce)
        )
    ).notice
    assert notice.state == pb.LETTER_STATE_IDENTIFIED


def test_rule_a_check_completing_after_the_window_closed_changes_nothing(
    front: Frontend,
) -> None:
    letter = front.deposit_and_notify()
    nonce = front.begin(letter.letter_id)
    front.pli.clock.at = letter.window_closes_at.ToDatetime(tzinfo=dt.UTC)
    before = front.pli.event_count()
    error = error_of(
        front.pli.desk.IdentifyRecipient,
        pb.IdentifyRecipientRequest(
            letter_id=letter.letter_id, nonce=nonce, id_token=front.id_token(nonce)
        ),
    )
    assert rule_of(error) == "window-closed"
    assert front.pli.event_count() == before


# 5. Identification before either decision.


@pytest.mark.parametrize("decision", ["AcceptLetter", "RefuseLetter"])
def test_rule_both_decisions_need_identification_first(
    front: Frontend, decision: str
) -> None:
    letter = front.deposit_and_notify()
    request_class = getattr(pb, f"{decision}Request")
    error = error_of(
        getattr(front.pli.desk, decision), request_class(letter_id=letter.letter_id)
    )
    assert rule_of(error) == "identification-required"


# 6. Sender secrecy.


def test_rule_nothing_reveals_the_sender_to_the_recipient_before_acceptance(
    front: Frontend,
) -> None:
    letter = front.deposit_and_notify()
    desk = front.pli.desk
    errors = [
        error_of(desk.AcceptLetter, pb.AcceptLetterRequest(letter_id=letter.letter_id)),
        error_of(
            lambda request: list(desk.DownloadContent(request)),
            pb.DownloadContentRequest(letter_id=letter.letter_id),
        ),
        error_of(
            desk.IdentifyRecipient,
            identify_request(front, letter.letter_id, family_name="Dupont"),
        ),
    ]
    notices = [
        desk.GetNotice(pb.GetNoticeRequest(letter_id=letter.letter_id)).notice,
        front.identify(letter.letter_id),
    ]
    seen = " ".join(str(n) for n in notices) + " ".join(e.details() for e in errors)
    for secret in ("SCI Exemple", "sci-exemple", "Loyers", "mise-en-demeure"):
        assert secret not in seen
    assert not notices[-1].HasField("sender")
    assert not notices[-1].attachments
    eml = front.pli.runtime.settings.outbox_dir / f"{letter.letter_id}.eml"
    if eml.exists():
        assert "SCI Exemple" not in eml.read_text(errors="replace")


def test_rule_a_letter_not_yet_notified_does_not_exist_for_the_desk(
    front: Frontend,
) -> None:
    letter = front.deposit()
    error = error_of(
        front.pli.desk.GetNotice, pb.GetNoticeRequest(letter_id=letter.letter_id)
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_rule_after_acceptance_the_recipient_sees_the_sender_and_content(
    front: Frontend,
) -> None:
    letter = front.deposit_and_notify()
    front.identify(letter.letter_id)
    notice = front.accept(letter.letter_id)
    assert notice.sender.name == "SCI Exemple"
    assert notice.subject == "Loyers impayés de janvier"
    assert notice.attachments[0].filename == "mise-en-demeure.pdf"


def test_rule_after_refusal_the_recipient_sees_neither_sender_nor_content(
    front: Frontend,
) -> None:
    letter = front.deposit_and_notify()
    front.identify(letter.letter_id)
    notice = front.refuse(letter.letter_id)
    assert not notice.HasField("sender") and not notice.subject
    error = error_of(
        lambda request: list(front.pli.desk.DownloadContent(request)),
        pb.DownloadContentRequest(letter_id=letter.letter_id),
    )
    assert rule_of(error) == "not-accepted"


# 8. Proof contents.


def test_rule_each_proof_carries_the_items_the_law_asks(front: Frontend) -> None:
    letter = front.deposit_and_notify()
    front.identify(letter.letter_id)
    front.accept(letter.letter_id)
    front.pli.run_processes()
    deposit = pdf_text(proof_pdf(front.pli, letter.letter_id, pb.PROOF_KIND_DEPOSIT))
    receipt = pdf_text(proof_pdf(front.pli, letter.letter_id, pb.PROOF_KIND_RECEIPT))
    for text in (deposit, receipt):
        for item in (
            "SCI Exemple",
            "sci-exemple@example.fr",
            "Camille Martin",
            "camille@example.org",
            letter.letter_id,
        ):
            assert item in text
    assert "Loyers" not in deposit  # the subject is no R.53-2 item


def test_rule_the_non_claim_proof_exists_by_the_day_after_the_window(
    front: Frontend,
) -> None:
    letter = front.deposit_and_notify()
    closes = letter.window_closes_at.ToDatetime(tzinfo=dt.UTC)
    front.pli.clock.at = closes + dt.timedelta(minutes=1)
    front.pli.run_processes()
    front.pli.run_processes()
    expired = front.get(letter.letter_id)
    assert expired.state == pb.LETTER_STATE_EXPIRED
    assert pb.PROOF_KIND_NON_CLAIM in expired.proofs
    text = pdf_text(proof_pdf(front.pli, letter.letter_id, pb.PROOF_KIND_NON_CLAIM))
    assert letter.letter_id in text


# 9. Sender's view.


def test_rule_senders_list_their_letters_by_state_and_date_a_page_at_a_time(
    front: Frontend,
) -> None:
    sender = front.sender()
    ids = [front.deposit(sender).letter_id for _ in range(5)]
    front.deposit(front.sender("other", "Other Sender"))
    front.pli.run_processes()
    seen: list[str] = []
    token = ""
    while True:
        page = front.pli.letters.ListLetters(
            pb.ListLettersRequest(
                sender_account_id=sender.account_id, page_size=2, page_token=token
            )
        )
        seen += [letter.letter_id for letter in page.letters]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(ids))
    notified = front.pli.letters.ListLetters(
        pb.ListLettersRequest(
            sender_account_id=sender.account_id,
            states=[pb.LETTER_STATE_DEPOSITED],
        )
    )
    assert not notified.letters  # all were notified
    error = error_of(
        front.pli.letters.ListLetters,
        pb.ListLettersRequest(sender_account_id=sender.account_id, page_token="junk"),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    first = front.pli.letters.ListLetters(
        pb.ListLettersRequest(sender_account_id=sender.account_id, page_size=1)
    )
    for other_query in (
        pb.ListLettersRequest(sender_account_id=str(uuid.uuid4())),
        pb.ListLettersRequest(
            sender_account_id=sender.account_id, states=[pb.LETTER_STATE_ACCEPTED]
        ),
    ):
        other_query.page_token = first.next_page_token
        error = error_of(front.pli.letters.ListLetters, other_query)
        assert "page_token" in error.details()


def test_a_list_with_an_impossible_or_inverted_date_range_is_refused(
    front: Frontend,
) -> None:
    sender = front.sender()
    far = timestamp_pb2.Timestamp(seconds=2**62)
    now = timestamp_pb2.Timestamp()
    now.FromDatetime(front.pli.clock.now())
    for request, field in (
        (pb.ListLettersRequest(sender_account_id=sender.account_id,
                               deposited_from=far), "deposited_from"),
        (pb.ListLettersRequest(sender_account_id=sender.account_id,
                               deposited_from=now, deposited_before=now),
         "deposited_before"),
    ):  # fmt: skip
        error = error_of(front.pli.letters.ListLetters, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in error.details()


def watch(front: Frontend, account_id: str, after: int, count: int) -> list:  # type: ignore[type-arg]
    stream = front.pli.letters.WatchLetters(
        pb.WatchLettersRequest(sender_account_id=account_id, after_position=after)
    )
    changes = []
    for change in stream:
        changes.append(change)
        if len(changes) == count:
            stream.cancel()
            break
    return changes


def test_rule_the_watch_stream_resumes_missing_nothing_and_repeating_nothing(
    front: Frontend,
) -> None:
    sender = front.sender()
    first = front.deposit(sender)
    front.deposit(front.sender("other", "Other Sender"))
    front.pli.run_processes()
    start = watch(front, sender.account_id, 0, 2)
    assert [c.event for c in start] == ["Deposited", "Notified"]
    second = front.deposit(sender)
    front.pli.run_processes()
    resumed = watch(front, sender.account_id, start[-1].position, 2)
    assert [c.letter_id for c in resumed] == [second.letter_id] * 2
    assert all(c.position > start[-1].position for c in resumed)
    assert first.letter_id not in {c.letter_id for c in resumed}


# 10. Retention.


def test_rule_content_is_purged_by_policy_but_proofs_and_events_are_kept(
    front: Frontend,
) -> None:
    letter = front.deposit_and_notify()
    front.identify(letter.letter_id)
    front.accept(letter.letter_id)
    front.pli.run_processes()
    runtime = front.pli.runtime
    purger = Purger(runtime.letters, runtime.views, front.pli.clock, retention_days=30)
    assert purger.run_once() == 0  # too early
    front.pli.clock.advance(dt.timedelta(days=31))
    assert purger.run_once() == 1
    front.pli.run_processes()
    purged = front.get(letter.letter_id)
    assert purged.HasField("content_purged_at")
    assert proof_pdf(front.pli, letter.letter_id, pb.PROOF_KIND_RECEIPT)
    error = error_of(
        lambda request: list(front.pli.desk.DownloadContent(request)),
        pb.DownloadContentRequest(letter_id=letter.letter_id),
    )
    assert rule_of(error) == "content-purged"
    assert b"ContentPurged" in stored_bytes(front.pli)


def test_rule_nothing_purges_the_content_of_an_undecided_letter(
    front: Frontend,
) -> None:
    front.deposit_and_notify()
    runtime = front.pli.runtime
    purger = Purger(runtime.letters, runtime.views, front.pli.clock, retention_days=0)
    front.pli.clock.advance(dt.timedelta(days=5))
    assert purger.run_once() == 0


def identify_request(
    front: Frontend, letter_id: str, **claims: object
) -> pb.IdentifyRecipientRequest:
    nonce = front.begin(letter_id)
    return pb.IdentifyRecipientRequest(
        letter_id=letter_id, nonce=nonce, id_token=front.id_token(nonce, **claims)
    )
