"""``pli.v1.AuditService`` over a real loopback socket: read-only, checkable answers.

Every proof the service hands out is checked with the RFC 9162 verifiers,
every stored state against the event store, and a proof document sent to
``VerifyProofDocument`` is the one the server sealed (or a damaged copy).
"""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from pli.infrastructure.merkle import verify_consistency, verify_inclusion
from pli.infrastructure.transparency import event_leaf
from pli.services.audit_api import checkpoint_from_message
from pli.services.proofs import ProofWriter, facts_from_evidence
from pli.v1 import audit_pb2 as apb
from pli.v1 import audit_pb2_grpc
from pli.v1 import letters_pb2 as pb

from conftest import Pli
from frontend import Frontend
from test_audit_tampering import accepted_letter, delete_event
from test_transparency_log import detached_evidence


@pytest.fixture
def audit(pli: Pli) -> audit_pb2_grpc.AuditServiceStub:
    return audit_pb2_grpc.AuditServiceStub(pli.channel)


@pytest.fixture
def logged(pli: Pli) -> tuple[str, str]:
    front = Frontend(pli)
    letters = accepted_letter(front), accepted_letter(front)
    pli.runtime.checkpointer.checkpoint_now()
    return letters


def error_of(call, request) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as raised:
        call(request)
    return raised.value


def violations(error: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(error)
    assert status is not None
    fields = []
    for detail in status.details:
        request = error_details_pb2.BadRequest()
        if detail.Unpack(request):
            fields += [v.field for v in request.field_violations]
    return fields


def test_stream_events_yields_every_logged_event_as_stored(
    pli: Pli, logged: tuple[str, str], audit: audit_pb2_grpc.AuditServiceStub
) -> None:
    stored = pli.runtime.letters.recorder.select_notifications(start=1, limit=10_000)

    events = list(audit.StreamEvents(apb.StreamEventsRequest()))

    assert [e.position for e in events] == list(range(len(stored)))
    for event, row in zip(events, stored, strict=True):
        assert (event.aggregate_id, event.version) == (
            str(row.originator_id),
            row.originator_version,
        )
        assert (event.topic, event.state) == (row.topic, row.state)
        assert event.leaf_hash == event_leaf(row)


def test_stream_events_resumes_from_a_position(
    pli: Pli, logged: tuple[str, str], audit: audit_pb2_grpc.AuditServiceStub
) -> None:
    stream = audit.StreamEvents(apb.StreamEventsRequest())
    first = [next(stream) for _ in range(4)]
    stream.cancel()

    rest = list(audit.StreamEvents(apb.StreamEventsRequest(start_position=4)))
    everything = list(audit.StreamEvents(apb.StreamEventsRequest()))

    assert first + rest == everything
    past_the_end = apb.StreamEventsRequest(start_position=len(everything))
    assert list(audit.StreamEvents(past_the_end)) == []


def test_a_logged_event_gone_from_the_store_ends_the_stream_with_data_loss(
    pli: Pli, logged: tuple[str, str], audit: audit_pb2_grpc.AuditServiceStub
) -> None:
    victim, _ = logged
    (removed,) = [e for e in pli.runtime.log.entries_of(victim) if e.version == 3]
    delete_event(pli, victim, 3)
    received = []

    with pytest.raises(grpc.RpcError) as raised:
        for event in audit.StreamEvents(apb.StreamEventsRequest()):
            received.append(event.position)

    assert raised.value.code() == grpc.StatusCode.DATA_LOSS
    assert f"log position {removed.position}" in (raised.value.details() or "")
    assert received == list(range(removed.position))


def test_a_negative_start_position_is_invalid(
    pli: Pli, audit: audit_pb2_grpc.AuditServiceStub
) -> None:
    error = error_of(
        lambda r: list(audit.StreamEvents(r)),
        apb.StreamEventsRequest(start_position=-1),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == ["start_position"]


def test_get_checkpoint_by_size_or_latest(
    pli: Pli, logged: tuple[str, str], audit: audit_pb2_grpc.AuditServiceStub
) -> None:
    stored = pli.runtime.log.checkpoints(0, 100)

    latest = audit.GetCheckpoint(apb.GetCheckpointRequest()).checkpoint
    first = audit.GetCheckpoint(
        apb.GetCheckpointRequest(tree_size=stored[0].size)
    ).checkpoint

    assert checkpoint_from_message(latest) == stored[-1]
    assert checkpoint_from_message(first) == stored[0]
    assert latest.message == stored[-1].message
    assert latest.message.startswith(b"pli/log-checkpoint/v1\n")


def test_get_checkpoint_of_an_unknown_size_is_not_found(
    pli: Pli, audit: audit_pb2_grpc.AuditServiceStub
) -> None:
    none_yet = error_of(audit.GetCheckpoint, apb.GetCheckpointRequest())
    Frontend(pli).deposit_and_notify()
    size = pli.runtime.log.latest_checkpoint().size  # type: ignore[union-attr]
    unknown = error_of(
        audit.GetCheckpoint, apb.GetCheckpointRequest(tree_size=size + 1)
    )
    negative = error_of(audit.GetCheckpoint, apb.GetCheckpointRequest(tree_size=-3))
    beyond = error_of(audit.GetCheckpoint, apb.GetCheckpointRequest(tree_size=10**12))

    assert none_yet.code() == grpc.StatusCode.NOT_FOUND
    assert unknown.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OUT_OF_RANGE)
    assert beyond.code() == grpc.StatusCode.OUT_OF_RANGE
    assert violations(beyond) == ["tree_size"]
    assert negative.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(negative) == ["tree_size"]


def test_every_inclusion_proof_verifies_against_the_latest_checkpoint(
    pli: Pli, logged: tuple[str, str], audit: audit_pb2_grpc.AuditServiceStub
) -> None:
    checkpoint = audit.GetCheckpoint(apb.GetCheckpointRequest()).checkpoint

    for position in range(checkpoint.tree_size):
        proof = audit.GetInclusionProof(apb.GetInclusionProofRequest(position=position))
        assert proof.tree_size == checkpoint.tree_size
        assert proof.checkpoint == checkpoint
        assert verify_inclusion(
            proof.leaf_hash,
            position,
            proof.tree_size,
            list(proof.inclusion_path),
            checkpoint.root_hash,
        )


def test_an_inclusion_proof_at_a_size_without_checkpoint_seals_nothing(
    pli: Pli, logged: tuple[str, str], audit: audit_pb2_grpc.AuditServiceStub
) -> None:
    checkpoints = pli.runtime.log.checkpoints(0, 100)
    sealed = {c.size for c in checkpoints}
    size = next(s for s in range(3, pli.runtime.log.size()) if s not in sealed)
    proof = audit.GetInclusionProof(
        apb.GetInclusionProofRequest(position=2, tree_size=size)
    )

    assert not proof.HasField("checkpoint")
    assert proof.root_hash == pli.runtime.log.root(size)
    assert verify_inclusion(
        proof.leaf_hash, 2, size, list(proof.inclusion_path), proof.root_hash
    )
    assert pli.runtime.log.checkpoints(0, 100) == checkpoints


def test_inclusion_proof_requests_outside_the_log_are_refused(
    pli: Pli, logged: tuple[str, str], audit: audit_pb2_grpc.AuditServiceStub
) -> None:
    size = pli.runtime.log.size()
    both = error_of(
        audit.GetInclusionProof,
        apb.GetInclusionProofRequest(position=-1, tree_size=-1),
    )
    beyond = error_of(
        audit.GetInclusionProof,
        apb.GetInclusionProofRequest(position=0, tree_size=size + 1),
    )
    past = error_of(
        audit.GetInclusionProof,
        apb.GetInclusionProofRequest(position=4, tree_size=4),
    )

    assert both.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(both) == ["position", "tree_size"]
    assert beyond.code() == grpc.StatusCode.OUT_OF_RANGE
    assert violations(beyond) == ["tree_size"]
    assert past.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(past) == ["position"]


def test_consistency_proofs_verify_between_checkpoints(
    pli: Pli, logged: tuple[str, str], audit: audit_pb2_grpc.AuditServiceStub
) -> None:
    sizes = [c.size for c in pli.runtime.log.checkpoints(0, 100)]
    latest = audit.GetCheckpoint(apb.GetCheckpointRequest()).checkpoint
    assert len(sizes) > 1

    for first in [0, *sizes]:
        answer = audit.GetConsistencyProof(
            apb.GetConsistencyProofRequest(first_size=first)
        )
        assert answer.second_size == latest.tree_size
        assert answer.second_root_hash == latest.root_hash
        assert verify_consistency(
            first,
            answer.second_size,
            answer.first_root_hash,
            latest.root_hash,
            list(answer.proof),
        )


def test_consistency_proof_requests_out_of_order_or_range_are_refused(
    pli: Pli, logged: tuple[str, str], audit: audit_pb2_grpc.AuditServiceStub
) -> None:
    size = pli.runtime.log.size()
    backwards = error_of(
        audit.GetConsistencyProof,
        apb.GetConsistencyProofRequest(first_size=5, second_size=3),
    )
    beyond = error_of(
        audit.GetConsistencyProof,
        apb.GetConsistencyProofRequest(first_size=1, second_size=size + 7),
    )
    negative = error_of(
        audit.GetConsistencyProof,
        apb.GetConsistencyProofRequest(first_size=-1, second_size=-2),
    )

    assert backwards.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(backwards) == ["first_size"]
    assert beyond.code() == grpc.StatusCode.OUT_OF_RANGE
    assert violations(beyond) == ["second_size"]
    assert violations(negative) == ["first_size", "second_size"]


def test_a_sealed_proof_document_verifies_seal_and_anchor(
    pli: Pli, logged: tuple[str, str], audit: audit_pb2_grpc.AuditServiceStub
) -> None:
    victim, _ = logged
    pdf = pli.letters.GetProof(
        pb.GetProofRequest(letter_id=victim, kind=pb.PROOF_KIND_RECEIPT)
    ).pdf

    answer = audit.VerifyProofDocument(apb.VerifyProofDocumentRequest(pdf=pdf))

    assert answer.valid and answer.seal_valid
    assert list(answer.seal_problems) == list(answer.anchor_problems) == []
    assert (answer.letter_id, answer.proof) == (victim, "receipt")
    stored = pli.runtime.log.checkpoint(answer.checkpoint.tree_size)
    assert checkpoint_from_message(answer.checkpoint) == stored


def test_a_changed_proof_document_fails_its_seal(
    pli: Pli, logged: tuple[str, str], audit: audit_pb2_grpc.AuditServiceStub
) -> None:
    victim, _ = logged
    pdf = bytearray(
        pli.letters.GetProof(
            pb.GetProofRequest(letter_id=victim, kind=pb.PROOF_KIND_DEPOSIT)
        ).pdf
    )
    at = pdf.index(b"/Contents", len(pdf) // 3)
    pdf[at - 40] ^= 0x01

    answer = audit.VerifyProofDocument(apb.VerifyProofDocumentRequest(pdf=bytes(pdf)))

    assert not answer.valid and not answer.seal_valid
    assert answer.seal_problems


def test_a_sealed_proof_with_a_false_anchor_fails_the_anchor_check(
    pli: Pli, logged: tuple[str, str], audit: audit_pb2_grpc.AuditServiceStub, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    victim, _ = logged
    genuine = pli.letters.GetProof(
        pb.GetProofRequest(letter_id=victim, kind=pb.PROOF_KIND_RECEIPT)
    ).pdf
    evidence = detached_evidence(genuine, tmp_path / "genuine")
    facts = facts_from_evidence(evidence)
    assert facts.log is not None
    facts.log["entries"][0]["position"] += 1
    # Sealed by the provider's own key: only the anchor is false.
    writer = ProofWriter(pli.runtime.pdf_sealer, tmp_path / "proofs")
    forged = writer.write("receipt", facts).read_bytes()

    answer = audit.VerifyProofDocument(apb.VerifyProofDocumentRequest(pdf=forged))

    assert answer.seal_valid and not answer.valid
    assert any("version 1 at log position" in p for p in answer.anchor_problems)


def test_something_that_is_not_a_pdf_is_invalid(
    pli: Pli, audit: audit_pb2_grpc.AuditServiceStub
) -> None:
    error = error_of(
        audit.VerifyProofDocument, apb.VerifyProofDocumentRequest(pdf=b"hello")
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == ["pdf"]


def test_the_audit_service_changes_nothing(
    pli: Pli, logged: tuple[str, str], audit: audit_pb2_grpc.AuditServiceStub
) -> None:
    log = pli.runtime.log
    before = (pli.event_count(), log.size(), log.checkpoints(0, 1000), log.tracked())
    list(audit.StreamEvents(apb.StreamEventsRequest()))
    audit.GetCheckpoint(apb.GetCheckpointRequest())
    audit.GetInclusionProof(apb.GetInclusionProofRequest(position=1, tree_size=3))
    audit.GetConsistencyProof(apb.GetConsistencyProofRequest(first_size=2))

    after = (pli.event_count(), log.size(), log.checkpoints(0, 1000), log.tracked())
    assert after == before


def test_the_audit_service_answers_health_checks_and_reflection(pli: Pli) -> None:
    health = health_pb2_grpc.HealthStub(pli.channel).Check(
        health_pb2.HealthCheckRequest(service="pli.v1.AuditService")
    )
    stub = reflection_pb2_grpc.ServerReflectionStub(pli.channel)
    answers = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for a in answers for s in a.list_services_response.service}

    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert "pli.v1.AuditService" in names
