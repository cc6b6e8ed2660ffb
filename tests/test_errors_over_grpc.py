"""Bad input gets a precise status with details, and changes nothing."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from pli.services.server import start_server
from pli.v1 import letters_pb2 as pb

from conftest import Pli, connect
from test_lifecycle_over_grpc import deposit_and_notify, deposit_request, identify


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


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"recipient": pb.Party(name="Camille", email="camille@")}, "recipient.email"),
        ({"sender": pb.Party(name="", email="a@b.fr")}, "sender.name"),
        ({"recipient": pb.Party(name="x" * 500, email="a@b.fr")}, "recipient.name"),
        ({"kind": pb.LETTER_KIND_UNSPECIFIED}, "kind"),
        ({"attachments": []}, "attachments"),
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"idempotency_key": "k" * 200}, "idempotency_key"),
        (
            {"attachments": [pb.Attachment(filename="", content=b"x")]},
            "attachments[0].filename",
        ),
    ],
)
def test_bad_deposit_is_invalid_argument_naming_the_field_and_stores_nothing(
    pli: Pli, overrides: dict[str, object], field: str
) -> None:
    error = call_error(pli.letters.DepositLetter, deposit_request(**overrides))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(error)
    assert pli.event_count() == 0


def test_name_that_is_not_utf8_is_invalid_argument_naming_the_field(pli: Pli) -> None:
    good = deposit_request(recipient=pb.Party(name="NAMEX", email="a@b.fr"))
    raw = good.SerializeToString().replace(b"NAMEX", b"NA\xff\xfeX")
    call = pli.channel.unary_unary(
        "/pli.v1.LetterService/DepositLetter",
        request_serializer=lambda data: data,
        response_deserializer=pb.DepositLetterResponse.FromString,
    )

    error = call_error(call, raw)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == ["recipient.name"]
    assert pli.event_count() == 0


def test_inline_content_over_4_mib_is_refused(pli: Pli) -> None:
    big = pb.Attachment(filename="big.bin", content=b"\0" * (4 * 1024 * 1024 + 1))
    error = call_error(pli.letters.DepositLetter, deposit_request(attachments=[big]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert pli.event_count() == 0


def test_unknown_letter_is_not_found(pli: Pli) -> None:
    error = call_error(
        pli.letters.GetLetter, pb.GetLetterRequest(letter_id=str(uuid.uuid4()))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_malformed_letter_id_is_invalid_argument(pli: Pli) -> None:
    error = call_error(pli.desk.AcceptLetter, pb.AcceptLetterRequest(letter_id="42"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == ["letter_id"]


def test_accept_before_identification_fails_precondition_naming_the_rule(
    pli: Pli,
) -> None:
    letter = deposit_and_notify(pli)
    before = pli.event_count()

    error = call_error(
        pli.desk.AcceptLetter, pb.AcceptLetterRequest(letter_id=letter.letter_id)
    )

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert broken_rule(error) == "identification-required"
    assert pli.event_count() == before


def test_second_decision_fails_precondition(pli: Pli) -> None:
    letter = deposit_and_notify(pli)
    identify(pli, letter.letter_id)
    pli.desk.AcceptLetter(pb.AcceptLetterRequest(letter_id=letter.letter_id))

    error = call_error(
        pli.desk.RefuseLetter, pb.RefuseLetterRequest(letter_id=letter.letter_id)
    )

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert broken_rule(error) == "decision-final"


def test_lre_identification_below_substantial_fails_precondition(pli: Pli) -> None:
    letter = deposit_and_notify(pli)
    error = call_error(
        pli.desk.IdentifyRecipient,
        pb.IdentifyRecipientRequest(
            letter_id=letter.letter_id, method="email-otp", level=pb.ASSURANCE_LEVEL_LOW
        ),
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert broken_rule(error) == "assurance-too-low"


def test_content_before_acceptance_fails_precondition(pli: Pli) -> None:
    letter = deposit_and_notify(pli)
    error = call_error(
        pli.desk.DownloadContent,
        pb.DownloadContentRequest(letter_id=letter.letter_id),
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert broken_rule(error) == "not-accepted"


def test_proof_not_yet_warranted_fails_precondition(pli: Pli) -> None:
    letter = deposit_and_notify(pli)
    error = call_error(
        pli.letters.GetProof,
        pb.GetProofRequest(letter_id=letter.letter_id, kind=pb.PROOF_KIND_RECEIPT),
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert broken_rule(error) == "proof-not-issued"


def test_retried_deposit_returns_the_first_letter(pli: Pli) -> None:
    request = deposit_request(key="retry-me")
    first = pli.letters.DepositLetter(request).letter
    events = pli.event_count()

    second = pli.letters.DepositLetter(request).letter

    assert second.letter_id == first.letter_id
    assert pli.event_count() == events


def test_idempotency_key_reused_for_another_request_already_exists(pli: Pli) -> None:
    pli.letters.DepositLetter(deposit_request(key="used-once"))
    events = pli.event_count()

    other = deposit_request(
        key="used-once", recipient=pb.Party(name="Someone Else", email="else@b.fr")
    )
    error = call_error(pli.letters.DepositLetter, other)

    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert pli.event_count() == events


def test_with_a_wrong_pin_every_command_is_unavailable_and_nothing_is_stored(
    settings_with_wrong_pin,
    clock,  # type: ignore[no-untyped-def]
) -> None:
    running = start_server(settings_with_wrong_pin, clock, processes=False)
    client = connect(running, clock)
    try:
        error = call_error(client.letters.DepositLetter, deposit_request())
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert client.event_count() == 0
    finally:
        client.channel.close()
        running.stop(grace=0)


def test_with_the_token_missing_every_command_is_unavailable(
    settings,
    clock,  # type: ignore[no-untyped-def]
) -> None:
    from dataclasses import replace

    missing = replace(settings, token=replace(settings.token, token_label="absent"))
    running = start_server(missing, clock, processes=False)
    client = connect(running, clock)
    try:
        error = call_error(client.letters.DepositLetter, deposit_request())
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert client.event_count() == 0
    finally:
        client.channel.close()
        running.stop(grace=0)


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
    assert {"pli.v1.LetterService", "pli.v1.RecipientDeskService"} <= names


def test_every_faulty_field_of_a_deposit_is_named_at_once(pli: Pli) -> None:
    error = call_error(pli.letters.DepositLetter, pb.DepositLetterRequest())

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {
        "kind",
        "idempotency_key",
        "sender.name",
        "sender.email",
        "recipient.name",
        "recipient.email",
        "attachments",
    } <= set(field_violations(error))


def test_every_string_field_that_is_not_utf8_is_named(pli: Pli) -> None:
    good = deposit_request(
        sender=pb.Party(name="SENDX", email="a@b.fr"),
        recipient=pb.Party(name="RECPX", email="c@d.fr"),
    )
    raw = good.SerializeToString()
    raw = raw.replace(b"SENDX", b"SE\xffDX").replace(b"RECPX", b"RE\xfePX")
    call = pli.channel.unary_unary(
        "/pli.v1.LetterService/DepositLetter",
        request_serializer=lambda data: data,
        response_deserializer=pb.DepositLetterResponse.FromString,
    )

    error = call_error(call, raw)

    assert field_violations(error) == ["sender.name", "recipient.name"]


def test_a_name_the_proofs_cannot_print_is_refused_at_deposit(pli: Pli) -> None:
    error = call_error(
        pli.letters.DepositLetter,
        deposit_request(recipient=pb.Party(name="山田太郎", email="t@example.jp")),
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == ["recipient.name"]
    assert pli.event_count() == 0


def test_names_in_latin_greek_and_cyrillic_scripts_are_accepted(pli: Pli) -> None:
    letter = pli.letters.DepositLetter(
        deposit_request(
            sender=pb.Party(name="Łukasz Żółć", email="l@example.pl"),
            recipient=pb.Party(name="Ελένη Иванова", email="e@example.gr"),
        )
    ).letter
    assert letter.state == pb.LETTER_STATE_DEPOSITED


def test_control_characters_in_identification_method_are_refused(pli: Pli) -> None:
    letter = deposit_and_notify(pli)
    before = pli.event_count()

    error = call_error(
        pli.desk.IdentifyRecipient,
        pb.IdentifyRecipientRequest(
            letter_id=letter.letter_id,
            method="video\ncheck",
            level=pb.ASSURANCE_LEVEL_HIGH,
            verifier_reference="ref\x01",
        ),
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {"method", "verifier_reference"}
    assert pli.event_count() == before


def test_empty_attachment_and_odd_media_type_are_refused(pli: Pli) -> None:
    attachment = pb.Attachment(filename="a.pdf", media_type="pdf", content=b"")
    error = call_error(
        pli.letters.DepositLetter, deposit_request(attachments=[attachment])
    )
    assert set(field_violations(error)) == {
        "attachments[0].media_type",
        "attachments[0].content",
    }
