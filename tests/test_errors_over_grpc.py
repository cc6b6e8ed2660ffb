"""Bad input gets a precise status with details, and changes nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from pli.infrastructure.settings import Settings
from pli.services.server import start_server
from pli.v1 import accounts_pb2 as apb
from pli.v1 import letters_pb2 as pb

from conftest import Pli, connect
from frontend import Frontend, attachment, recipient


@pytest.fixture
def front(pli: Pli) -> Frontend:
    return Frontend(pli)


def call_error(call, request) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        result = call(request)
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            list(result)
    return caught.value


def field_violations(error: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    fields = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            request = error_details_pb2.BadRequest()
            detail.Unpack(request)
            fields += [v.field for v in request.field_violations]
    return fields


def broken_rule(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            return failure.violations[0].type
    return ""


def raw_deposit(pli: Pli):  # type: ignore[no-untyped-def]
    """DepositLetter taking already serialised bytes, so they may be broken."""
    return pli.channel.unary_unary(
        "/pli.v1.LetterService/DepositLetter",
        request_serializer=lambda data: data,
        response_deserializer=pb.DepositLetterResponse.FromString,
    )


# Bad deposits.


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"recipient": recipient(email="camille@")}, "recipient.email"),
        ({"recipient": recipient(email="")}, "recipient.email"),
        ({"recipient": recipient(given_names="")}, "recipient.given_names"),
        ({"recipient": recipient(family_name="x" * 500)}, "recipient.family_name"),
        ({"recipient": recipient(birthdate="1980-13-01")}, "recipient.birthdate"),
        ({"recipient": recipient(company_name="ACME")}, "recipient.company_id"),
        (
            {"recipient": recipient(company_name="ACME", company_id="123")},
            "recipient.company_id",
        ),
        (
            {"recipient": recipient(type=pb.RECIPIENT_TYPE_UNSPECIFIED)},
            "recipient.type",
        ),
        ({"kind": pb.LETTER_KIND_UNSPECIFIED}, "kind"),
        ({"sender_account_id": ""}, "sender_account_id"),
        ({"sender_account_id": "account-42"}, "sender_account_id"),
        ({"attachments": []}, "attachments"),
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"idempotency_key": "k" * 200}, "idempotency_key"),
        ({"subject": "x" * 201}, "subject"),
        ({"second_factor_code": ""}, "second_factor_code"),
        ({"second_factor_code": "12ab56"}, "second_factor_code"),
        (
            {"attachments": [pb.Attachment(filename="", content=b"x")]},
            "attachments[0].filename",
        ),
    ],
)
def test_bad_deposit_is_invalid_argument_naming_the_field_and_stores_nothing(
    front: Frontend, overrides: dict[str, object], field: str
) -> None:
    request = front.deposit_request(**overrides)
    before = front.pli.event_count()

    error = call_error(front.pli.letters.DepositLetter, request)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(error)
    assert front.pli.event_count() == before


def test_every_faulty_field_of_a_deposit_is_named_at_once(front: Frontend) -> None:
    request = front.deposit_request(
        idempotency_key="",
        recipient=recipient(
            email="camille@",
            given_names="",
            family_name="",
            birthdate="31/05/1980",
            company_name="ACME",
        ),
        subject="a\x07bell",
        attachments=[pb.Attachment(filename="", media_type="pdf", content=b"")],
    )
    before = front.pli.event_count()

    error = call_error(front.pli.letters.DepositLetter, request)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {
        "idempotency_key",
        "recipient.email",
        "recipient.given_names",
        "recipient.family_name",
        "recipient.birthdate",
        "recipient.company_id",
        "subject",
        "attachments[0].filename",
        "attachments[0].media_type",
        "attachments[0].content",
    } <= set(field_violations(error))
    assert front.pli.event_count() == before


def test_an_empty_deposit_names_every_missing_field_at_once(pli: Pli) -> None:
    error = call_error(pli.letters.DepositLetter, pb.DepositLetterRequest())

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {
        "kind",
        "sender_account_id",
        "recipient.type",
        "idempotency_key",
        "recipient.email",
        "recipient.given_names",
        "recipient.family_name",
        "attachments",
    } <= set(field_violations(error))
    assert pli.event_count() == 0


def test_an_unprintable_name_does_not_hide_a_bad_subject(front: Frontend) -> None:
    request = front.deposit_request(
        recipient=recipient(given_names="Cam\x00ille"), subject="Loyers\nimpayés"
    )

    error = call_error(front.pli.letters.DepositLetter, request)

    assert set(field_violations(error)) == {"recipient.given_names", "subject"}


def test_a_name_that_is_not_utf8_is_invalid_argument_naming_the_field(
    front: Frontend,
) -> None:
    good = front.deposit_request(recipient=recipient(family_name="NAMEX"))
    raw = good.SerializeToString().replace(b"NAMEX", b"NA\xff\xfeX")
    before = front.pli.event_count()

    error = call_error(raw_deposit(front.pli), raw)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == ["recipient.family_name"]
    assert front.pli.event_count() == before


def test_every_string_field_that_is_not_utf8_is_named(front: Frontend) -> None:
    good = front.deposit_request(
        idempotency_key="KEYXX",
        recipient=recipient(
            email="EMLXX@example.org",
            given_names="GIVXX",
            family_name="FAMXX",
            birthdate="BIRXX",
            company_name="CNMXX",
            company_id="CIDXX",
        ),
        subject="SUBXX",
        attachments=[
            pb.Attachment(filename="FILXX", media_type="MEDXX", content=b"x"),
        ],
        second_factor_code="TOTXX",
    )
    raw = good.SerializeToString()
    markers = [b"KEY", b"EML", b"GIV", b"FAM", b"BIR", b"CNM", b"CID", b"SUB"]
    for marker in [*markers, b"FIL", b"MED", b"TOT"]:
        raw = raw.replace(marker + b"XX", marker + b"\xff\xfe")
    account = front.sender().account_id.encode()
    raw = raw.replace(account, account[:-2] + b"\xc3\x28")
    before = front.pli.event_count()

    error = call_error(raw_deposit(front.pli), raw)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == [
        "idempotency_key",
        "sender_account_id",
        "recipient.email",
        "recipient.given_names",
        "recipient.family_name",
        "recipient.birthdate",
        "recipient.company_name",
        "recipient.company_id",
        "attachments[0].filename",
        "attachments[0].media_type",
        "second_factor_code",
        "subject",
    ]
    assert front.pli.event_count() == before


def test_inline_content_over_4_mib_is_refused(front: Frontend) -> None:
    big = attachment(content=b"\0" * (4 * 1024 * 1024 + 1), name="big.bin")
    request = front.deposit_request(attachments=[big])
    before = front.pli.event_count()

    error = call_error(front.pli.letters.DepositLetter, request)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "attachments" in field_violations(error)
    assert front.pli.event_count() == before


def test_a_name_the_proofs_cannot_print_is_refused_at_deposit(
    front: Frontend,
) -> None:
    request = front.deposit_request(
        recipient=recipient(given_names="太郎", family_name="山田")
    )
    before = front.pli.event_count()

    error = call_error(front.pli.letters.DepositLetter, request)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == [
        "recipient.given_names",
        "recipient.family_name",
    ]
    assert front.pli.event_count() == before


def test_a_company_name_or_filename_the_proofs_cannot_print_is_refused(
    front: Frontend,
) -> None:
    request = front.deposit_request(
        recipient=recipient(company_name="山田商事", company_id="123456789"),
        attachments=[attachment(name="請求書.pdf")],
    )

    error = call_error(front.pli.letters.DepositLetter, request)

    assert field_violations(error) == [
        "recipient.company_name",
        "attachments[0].filename",
    ]


def test_names_in_latin_greek_and_cyrillic_scripts_are_accepted(
    front: Frontend,
) -> None:
    sender = front.sender("lukasz", "Łukasz Żółć")
    letter = front.deposit(
        sender, recipient=recipient(given_names="Ελένη", family_name="Иванова")
    )
    assert letter.state == pb.LETTER_STATE_DEPOSITED
    assert letter.sender.name == "Łukasz Żółć"
    assert letter.recipient.family_name == "Иванова"


def test_control_characters_in_names_and_subject_are_refused(
    front: Frontend,
) -> None:
    request = front.deposit_request(
        recipient=recipient(given_names="Cam\u200eille", family_name="Mar\u200btin"),
        subject="Loyers\nimpayés",
    )
    before = front.pli.event_count()

    error = call_error(front.pli.letters.DepositLetter, request)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {
        "recipient.given_names",
        "recipient.family_name",
        "subject",
    }
    assert front.pli.event_count() == before


def test_empty_attachment_and_odd_media_type_are_refused(front: Frontend) -> None:
    empty = pb.Attachment(filename="a.pdf", media_type="pdf", content=b"")
    request = front.deposit_request(attachments=[empty])
    before = front.pli.event_count()

    error = call_error(front.pli.letters.DepositLetter, request)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {
        "attachments[0].media_type",
        "attachments[0].content",
    }
    assert front.pli.event_count() == before


# Unknown and malformed ids.


def test_unknown_letter_is_not_found(front: Frontend) -> None:
    unknown = str(uuid.uuid4())
    calls = [
        (front.pli.letters.GetLetter, pb.GetLetterRequest(letter_id=unknown)),
        (front.pli.desk.GetNotice, pb.GetNoticeRequest(letter_id=unknown)),
        (
            front.pli.desk.BeginIdentification,
            pb.BeginIdentificationRequest(letter_id=unknown),
        ),
        (front.pli.desk.AcceptLetter, pb.AcceptLetterRequest(letter_id=unknown)),
        (
            front.pli.desk.DownloadContent,
            pb.DownloadContentRequest(letter_id=unknown),
        ),
    ]
    for call, request in calls:
        assert call_error(call, request).code() == grpc.StatusCode.NOT_FOUND
    assert front.pli.event_count() == 0


def test_deposit_for_an_unknown_sender_account_is_not_found(front: Frontend) -> None:
    request = front.deposit_request(sender_account_id=str(uuid.uuid4()))
    before = front.pli.event_count()

    error = call_error(front.pli.letters.DepositLetter, request)

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert front.pli.event_count() == before


def test_malformed_letter_id_is_invalid_argument(front: Frontend) -> None:
    calls = [
        (front.pli.letters.GetLetter, pb.GetLetterRequest(letter_id="42")),
        (front.pli.desk.AcceptLetter, pb.AcceptLetterRequest(letter_id="42")),
        (front.pli.desk.RefuseLetter, pb.RefuseLetterRequest(letter_id="42")),
        (
            front.pli.desk.BeginIdentification,
            pb.BeginIdentificationRequest(letter_id="42"),
        ),
        (
            front.pli.desk.DownloadContent,
            pb.DownloadContentRequest(letter_id="42"),
        ),
    ]
    for call, request in calls:
        error = call_error(call, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(error) == ["letter_id"]


def test_malformed_identification_names_each_field_and_stores_nothing(
    front: Frontend,
) -> None:
    front.deposit_and_notify()
    before = front.pli.event_count()

    error = call_error(
        front.pli.desk.IdentifyRecipient,
        pb.IdentifyRecipientRequest(letter_id="42", nonce="nonce\n", id_token=""),
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {"letter_id", "nonce", "id_token"}
    assert front.pli.event_count() == before


def test_control_characters_in_the_nonce_are_refused_and_store_nothing(
    front: Frontend,
) -> None:
    letter = front.deposit_and_notify()
    nonce = front.begin(letter.letter_id)
    before = front.pli.event_count()

    error = call_error(
        front.pli.desk.IdentifyRecipient,
        pb.IdentifyRecipientRequest(
            letter_id=letter.letter_id,
            nonce=nonce[:-1] + "\x01",
            id_token=front.id_token(nonce),
        ),
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == ["nonce"]
    assert front.pli.event_count() == before


def test_an_oversized_id_token_is_refused_and_stores_nothing(
    front: Frontend,
) -> None:
    letter = front.deposit_and_notify()
    nonce = front.begin(letter.letter_id)
    before = front.pli.event_count()

    error = call_error(
        front.pli.desk.IdentifyRecipient,
        pb.IdentifyRecipientRequest(
            letter_id=letter.letter_id, nonce=nonce, id_token="x" * (16 * 1024 + 1)
        ),
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == ["id_token"]
    assert front.pli.event_count() == before


# Broken rules.


def test_accept_before_identification_fails_precondition_naming_the_rule(
    front: Frontend,
) -> None:
    letter = front.deposit_and_notify()
    before = front.pli.event_count()

    error = call_error(
        front.pli.desk.AcceptLetter, pb.AcceptLetterRequest(letter_id=letter.letter_id)
    )

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert broken_rule(error) == "identification-required"
    assert front.pli.event_count() == before


def test_second_decision_fails_precondition(front: Frontend) -> None:
    letter = front.deposit_and_notify()
    front.identify(letter.letter_id)
    front.accept(letter.letter_id)
    before = front.pli.event_count()

    error = call_error(
        front.pli.desk.RefuseLetter, pb.RefuseLetterRequest(letter_id=letter.letter_id)
    )

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert broken_rule(error) == "decision-final"
    assert front.pli.event_count() == before


@pytest.mark.parametrize("decision", ["accept", "refuse"])
def test_repeating_a_decision_answers_the_same_notice_and_stores_nothing(
    front: Frontend, decision: str
) -> None:
    letter = front.deposit_and_notify()
    front.identify(letter.letter_id)
    first = getattr(front, decision)(letter.letter_id)
    before = front.pli.event_count()

    again = getattr(front, decision)(letter.letter_id)

    assert again == first
    assert front.pli.event_count() == before


def test_lre_identification_below_substantial_fails_precondition(
    front: Frontend,
) -> None:
    letter = front.deposit_and_notify()

    error = call_error(
        front.pli.desk.IdentifyRecipient,
        front.identify_request(letter.letter_id, acr="eidas1"),
    )

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert broken_rule(error) == "assurance-too-low"
    assert front.get(letter.letter_id).state == pb.LETTER_STATE_NOTIFIED


def test_a_nonce_never_handed_out_fails_precondition_and_stores_nothing(
    front: Frontend,
) -> None:
    letter = front.deposit_and_notify()
    nonce = "A" * 43
    before = front.pli.event_count()

    error = call_error(
        front.pli.desk.IdentifyRecipient,
        pb.IdentifyRecipientRequest(
            letter_id=letter.letter_id, nonce=nonce, id_token=front.id_token(nonce)
        ),
    )

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert broken_rule(error) == "identification-not-started"
    assert front.pli.event_count() == before


def test_a_used_nonce_fails_precondition(front: Frontend) -> None:
    letter = front.deposit_and_notify()
    request = front.identify_request(letter.letter_id)
    front.pli.desk.IdentifyRecipient(request)

    error = call_error(front.pli.desk.IdentifyRecipient, request)

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert broken_rule(error) == "identification-not-started"


def test_beginning_again_once_identified_fails_precondition(
    front: Frontend,
) -> None:
    letter = front.deposit_and_notify()
    front.identify(letter.letter_id)
    before = front.pli.event_count()

    error = call_error(
        front.pli.desk.BeginIdentification,
        pb.BeginIdentificationRequest(letter_id=letter.letter_id),
    )

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert broken_rule(error) == "already-identified"
    assert front.pli.event_count() == before


def test_content_before_acceptance_fails_precondition(front: Frontend) -> None:
    letter = front.deposit_and_notify()
    front.identify(letter.letter_id)
    before = front.pli.event_count()

    error = call_error(
        front.pli.desk.DownloadContent,
        pb.DownloadContentRequest(letter_id=letter.letter_id),
    )

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert broken_rule(error) == "not-accepted"
    assert front.pli.event_count() == before


def test_an_attachment_index_out_of_range_is_invalid_argument(
    front: Frontend,
) -> None:
    letter = front.deposit_and_notify()
    front.identify(letter.letter_id)
    front.accept(letter.letter_id)
    before = front.pli.event_count()

    error = call_error(
        front.pli.desk.DownloadContent,
        pb.DownloadContentRequest(letter_id=letter.letter_id, attachment_index=1),
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == ["attachment_index"]
    assert front.pli.event_count() == before


def test_downloading_again_records_no_second_delivery(front: Frontend) -> None:
    letter = front.deposit_and_notify()
    front.identify(letter.letter_id)
    front.accept(letter.letter_id)
    front.download(letter.letter_id)
    before = front.pli.event_count()

    _, content = front.download(letter.letter_id)

    assert content.startswith(b"%PDF")
    assert front.pli.event_count() == before


def test_proof_not_yet_warranted_fails_precondition(front: Frontend) -> None:
    letter = front.deposit_and_notify()
    error = call_error(
        front.pli.letters.GetProof,
        pb.GetProofRequest(letter_id=letter.letter_id, kind=pb.PROOF_KIND_RECEIPT),
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert broken_rule(error) == "proof-not-issued"


# Idempotency.


def test_retried_deposit_returns_the_first_letter(front: Frontend) -> None:
    request = front.deposit_request(idempotency_key="retry-me")
    first = front.pli.letters.DepositLetter(request).letter
    events = front.pli.event_count()

    second = front.pli.letters.DepositLetter(request).letter

    assert second.letter_id == first.letter_id
    assert front.pli.event_count() == events


def test_idempotency_key_reused_for_another_request_already_exists(
    front: Frontend,
) -> None:
    front.deposit(idempotency_key="used-once")
    events = front.pli.event_count()

    other = front.deposit_request(
        idempotency_key="used-once",
        recipient=recipient(given_names="Someone", family_name="Else"),
    )
    error = call_error(front.pli.letters.DepositLetter, other)

    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert front.pli.event_count() == events


# An unreachable token.


@contextmanager
def started(settings: Settings, clock) -> Iterator[Pli]:  # type: ignore[no-untyped-def]
    running = start_server(settings, clock, processes=False)
    client = connect(running, clock)
    try:
        yield client
    finally:
        client.channel.close()
        running.stop(grace=0)


def health_of(client: Pli, service: str) -> str:
    stub = health_pb2_grpc.HealthStub(client.channel)
    answer = stub.Check(health_pb2.HealthCheckRequest(service=service))
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


def assert_unavailable_and_nothing_stored(
    settings: Settings,
    broken: Settings,
    clock,  # type: ignore[no-untyped-def]
) -> None:
    """Register a sender with the good token, then use the broken one."""
    with started(settings, clock) as good:
        front = Frontend(good)
        sender = front.sender()
        events = good.event_count()
        assert health_of(good, "") == "SERVING"
    with started(broken, clock) as client:
        # Load balancers see it: what seals is NOT_SERVING, the audit serves.
        assert health_of(client, "") == "NOT_SERVING"
        assert health_of(client, "pli.v1.LetterService") == "NOT_SERVING"
        assert health_of(client, "pli.v1.AuditService") == "SERVING"
        front = Frontend(client, senders={"sci-exemple": sender})
        requests = [
            (client.letters.DepositLetter, front.deposit_request()),
            (
                client.letters.DepositLetter,
                front.deposit_request(kind=pb.LETTER_KIND_ERE, second_factor_code=""),
            ),
            (
                client.accounts.RegisterSenderAccount,
                apb.RegisterSenderAccountRequest(
                    idempotency_key="another",
                    identity=pb.Party(name="Cabinet Durand", email="c@durand.fr"),
                    level=pb.ASSURANCE_LEVEL_SUBSTANTIAL,
                    method=apb.VERIFICATION_METHOD_NOTIFIED_EID,
                    verifier_reference="franceconnect-check-2",
                ),
            ),
        ]
        for call, request in requests:
            # Twice: a PIN the token rejected is not offered again, and the
            # answer stays the same.
            for _ in range(2):
                error = call_error(call, request)
                assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert client.event_count() == events


def test_with_a_wrong_pin_every_command_is_unavailable_and_nothing_is_stored(
    settings: Settings,
    settings_with_wrong_pin: Settings,
    clock,  # type: ignore[no-untyped-def]
) -> None:
    assert_unavailable_and_nothing_stored(settings, settings_with_wrong_pin, clock)


def test_with_the_token_missing_every_command_is_unavailable(
    settings: Settings,
    clock,  # type: ignore[no-untyped-def]
) -> None:
    missing = replace(settings, token=replace(settings.token, token_label="absent"))
    assert_unavailable_and_nothing_stored(settings, missing, clock)


# Health and reflection.


def test_health_and_reflection_answer(pli: Pli) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    health = health_pb2_grpc.HealthStub(pli.channel).Check(
        health_pb2.HealthCheckRequest(service="pli.v1.LetterService")
    )
    stub = reflection_pb2_grpc.ServerReflectionStub(pli.channel)
    answers = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for a in answers for s in a.list_services_response.service}

    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert {
        "pli.v1.LetterService",
        "pli.v1.RecipientDeskService",
        "pli.v1.SenderAccountService",
        "pli.v1.ConsentService",
    } <= names
