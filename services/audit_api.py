"""``pli.v1.AuditService``: the transparency log for auditors, read-only.

Auditors stream the sealed events the log holds (in pages from the
database, resumable from a position), fetch checkpoints, inclusion and
consistency proofs, and have proof documents checked. Nothing here writes:
a proof for a tree size that has no checkpoint is computed from the stored
subtrees, never sealed. Bad input answers INVALID_ARGUMENT with one field
violation per faulty field; a size beyond the log answers OUT_OF_RANGE with
the same details, since it may become valid as the log grows.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import grpc
from cryptography import x509
from eventsourcing.persistence import OperationalError
from google.protobuf import json_format, timestamp_pb2
from google.rpc import error_details_pb2

from pli.compliance.proof_documents import check_proof_document
from pli.hsm.provision import ROOT_CERT_FILE
from pli.hsm.seal import SealVerifier
from pli.infrastructure.checkpoints import Checkpoint, MalformedCheckpoint
from pli.infrastructure.letters import LetterApplication
from pli.infrastructure.merkle import TreeRangeError
from pli.infrastructure.transparency import LogEntry, LogStore
from pli.services.wire import abort, abort_invalid, error_info
from pli.v1 import audit_pb2 as pb

__all__ = [
    "AuditServicer",
    "checkpoint_from_message",
    "checkpoint_message",
    "read_checkpoint",
]

logger = logging.getLogger(__name__)

_PAGE = 200


def checkpoint_message(checkpoint: Checkpoint) -> pb.Checkpoint:
    """A checkpoint as a ``pli.v1.Checkpoint`` message."""
    time = timestamp_pb2.Timestamp()
    time.FromDatetime(checkpoint.time)
    return pb.Checkpoint(
        tree_size=checkpoint.size,
        root_hash=checkpoint.root,
        time=time,
        key_id=checkpoint.key_id,
        seal=checkpoint.seal,
        stamp=checkpoint.stamp or b"",
        message=checkpoint.message,
    )


def checkpoint_from_message(message: pb.Checkpoint) -> Checkpoint:
    """A ``pli.v1.Checkpoint`` message as a checkpoint (raises ValueError)."""
    if len(message.root_hash) != 32 or message.tree_size < 0:
        raise ValueError("not a checkpoint: bad root hash or tree size")
    return Checkpoint(
        size=message.tree_size,
        root=message.root_hash,
        time=message.time.ToDatetime(tzinfo=dt.UTC),
        key_id=message.key_id,
        seal=message.seal,
        stamp=message.stamp or None,
    )


def read_checkpoint(text: str) -> Checkpoint:
    """A checkpoint from JSON: pli's form, or GetCheckpoint's answer as JSON.

    Accepts what ``pli log checkpoint --out`` writes, and the protobuf JSON of
    a ``GetCheckpointResponse`` or a ``Checkpoint`` (as ``grpcurl`` prints
    it). Raises MalformedCheckpoint.
    """
    try:
        document = json.loads(text)
        if isinstance(document, dict) and "format" in document:
            return Checkpoint.from_json(document)
        if isinstance(document, dict) and "checkpoint" in document:
            document = document["checkpoint"]
        message = json_format.ParseDict(document, pb.Checkpoint())
        return checkpoint_from_message(message)
    except (ValueError, TypeError, json_format.ParseError) as exc:
        raise MalformedCheckpoint(f"not a checkpoint: {exc}") from exc


def _out_of_range(context: grpc.ServicerContext, field: str, size: int) -> NoReturn:
    violation = error_details_pb2.BadRequest.FieldViolation(
        field=field, description=f"exceeds the log's size ({size} leaves)"
    )
    abort(
        context,
        grpc.StatusCode.OUT_OF_RANGE,
        f"{field}: exceeds the log's size ({size} leaves)",
        [error_details_pb2.BadRequest(field_violations=[violation])],
    )


def _not_found(context: grpc.ServicerContext, name: str, description: str) -> NoReturn:
    resource = error_details_pb2.ResourceInfo(
        resource_type="pli.v1.Checkpoint", resource_name=name, description=description
    )
    abort(context, grpc.StatusCode.NOT_FOUND, description, [resource])


@contextmanager
def _reading(context: grpc.ServicerContext) -> Iterator[None]:
    """Map the store's failures: unreachable, or a log that lacks subtrees."""
    try:
        yield
    except OperationalError:
        logger.error("audit service: event store unavailable")
        abort(
            context,
            grpc.StatusCode.UNAVAILABLE,
            "the event store is unavailable",
            [error_info("STORE_UNAVAILABLE")],
        )
    except TreeRangeError as exc:
        logger.error("audit service: stored log incomplete error=%s", exc)
        abort(
            context,
            grpc.StatusCode.DATA_LOSS,
            "the stored log lacks the subtrees this answer needs",
            [error_info("LOG_INCOMPLETE")],
        )


def _text(document: dict[str, Any], *keys: str) -> str:
    """A string the evidence states at ``keys``, or empty."""
    value: Any = document
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, str) else ""


def _stated_checkpoint(evidence: dict[str, Any]) -> Checkpoint | None:
    """The checkpoint a proof's evidence is anchored in, if it is readable."""
    section = evidence.get("log")
    if not isinstance(section, dict):
        return None
    try:
        return Checkpoint.from_json(section.get("checkpoint"))
    except MalformedCheckpoint:
        return None


class AuditServicer:
    """``pli.v1.AuditService`` over the log store and the event store."""

    def __init__(
        self,
        letters: LetterApplication,
        log: LogStore,
        verifier: SealVerifier,
        certs_dir: Path,
    ) -> None:
        self.letters = letters
        self.log = log
        self.verifier = verifier
        self.certs_dir = certs_dir

    def StreamEvents(  # noqa: N802 (gRPC method name)
        self, request: pb.StreamEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StreamEventsResponse]:
        """The logged events from a position, a page at a time as the client reads."""
        if request.start_position < 0:
            abort_invalid(context, [("start_position", "must not be negative")])
        position = request.start_position
        with _reading(context):
            while context.is_active():
                entries = self.log.entries(position, _PAGE)
                if not entries:
                    return
                yield from self._page(entries, context)
                position = entries[-1].position + 1

    def _page(
        self, entries: list[LogEntry], context: grpc.ServicerContext
    ) -> Iterator[pb.StreamEventsResponse]:
        first, last = entries[0].notification_id, entries[-1].notification_id
        stored = {
            n.id: n
            for n in self.letters.recorder.select_notifications(
                start=first, stop=last, limit=last - first + 1
            )
        }
        for entry in entries:
            event = stored.get(entry.notification_id)
            if event is None or (
                str(event.originator_id),
                event.originator_version,
            ) != (entry.aggregate_id, entry.version):
                abort(
                    context,
                    grpc.StatusCode.DATA_LOSS,
                    f"log position {entry.position}: the event store no longer "
                    "holds the event the log names",
                    [error_info("LOG_EVENT_MISSING", position=str(entry.position))],
                )
            yield pb.StreamEventsResponse(
                position=entry.position,
                aggregate_id=entry.aggregate_id,
                version=entry.version,
                topic=event.topic,
                state=bytes(event.state),
                leaf_hash=entry.leaf_hash,
            )

    def GetCheckpoint(  # noqa: N802
        self, request: pb.GetCheckpointRequest, context: grpc.ServicerContext
    ) -> pb.GetCheckpointResponse:
        """The checkpoint of a size, or the latest."""
        if request.tree_size < 0:
            abort_invalid(context, [("tree_size", "must not be negative")])
        with _reading(context):
            checkpoint = self._checkpoint(request.tree_size, context)
        return pb.GetCheckpointResponse(checkpoint=checkpoint_message(checkpoint))

    def _checkpoint(self, size: int, context: grpc.ServicerContext) -> Checkpoint:
        if size == 0:
            checkpoint = self.log.latest_checkpoint()
            if checkpoint is None:
                _not_found(context, "latest", "no checkpoint was sealed yet")
            return checkpoint
        checkpoint = self.log.checkpoint(size)
        if checkpoint is None:
            held = self.log.size()
            if size > held:
                _out_of_range(context, "tree_size", held)
            _not_found(context, str(size), "no checkpoint has this tree size")
        return checkpoint

    def GetInclusionProof(  # noqa: N802
        self, request: pb.GetInclusionProofRequest, context: grpc.ServicerContext
    ) -> pb.GetInclusionProofResponse:
        """The inclusion path of one leaf in the tree of a size."""
        problems = []
        if request.position < 0:
            problems.append(("position", "must not be negative"))
        if request.tree_size < 0:
            problems.append(("tree_size", "must not be negative"))
        if problems:
            abort_invalid(context, problems)
        with _reading(context):
            size = self._size(request.tree_size, "tree_size", context)
            if request.position >= size:
                abort_invalid(
                    context, [("position", f"must be below the tree size {size}")]
                )
            (entry,) = self.log.entries(request.position, 1)
            path = self.log.inclusion_proof(entry.position, size)
            root = self.log.root(size)
            checkpoint = self.log.checkpoint(size)
        return pb.GetInclusionProofResponse(
            position=entry.position,
            tree_size=size,
            aggregate_id=entry.aggregate_id,
            version=entry.version,
            leaf_hash=entry.leaf_hash,
            inclusion_path=path,
            root_hash=root,
            checkpoint=checkpoint_message(checkpoint) if checkpoint else None,
        )

    def GetConsistencyProof(  # noqa: N802
        self, request: pb.GetConsistencyProofRequest, context: grpc.ServicerContext
    ) -> pb.GetConsistencyProofResponse:
        """The proof that one tree extends another."""
        problems = []
        if request.first_size < 0:
            problems.append(("first_size", "must not be negative"))
        if request.second_size < 0:
            problems.append(("second_size", "must not be negative"))
        if problems:
            abort_invalid(context, problems)
        with _reading(context):
            second = self._size(request.second_size, "second_size", context)
            first = request.first_size
            if first > second:
                abort_invalid(
                    context,
                    [("first_size", f"must not exceed the second size {second}")],
                )
            proof = self.log.consistency_proof(first, second)
            roots = self.log.root(first), self.log.root(second)
        return pb.GetConsistencyProofResponse(
            first_size=first,
            second_size=second,
            proof=proof,
            first_root_hash=roots[0],
            second_root_hash=roots[1],
        )

    def _size(self, size: int, field: str, context: grpc.ServicerContext) -> int:
        """A requested tree size: 0 is the latest checkpoint's; checked."""
        if size == 0:
            return self._checkpoint(0, context).size
        held = self.log.size()
        if size > held:
            _out_of_range(context, field, held)
        return size

    def VerifyProofDocument(  # noqa: N802
        self, request: pb.VerifyProofDocumentRequest, context: grpc.ServicerContext
    ) -> pb.VerifyProofDocumentResponse:
        """Validate a proof's PAdES seal and its anchor in the log, offline."""
        if not request.pdf.startswith(b"%PDF-"):
            abort_invalid(context, [("pdf", "must be a PDF document")])
        check = check_proof_document(
            request.pdf,
            [self._root(context)],
            list(self.verifier.certificates.values()),
        )
        evidence = check.evidence or {}
        response = pb.VerifyProofDocumentResponse(
            valid=check.valid,
            seal_valid=check.seal_valid,
            seal_problems=check.seal_problems,
            anchor_problems=check.anchor_problems,
            letter_id=_text(evidence, "letter", "id"),
            proof=_text(evidence, "proof"),
        )
        stated = _stated_checkpoint(evidence)
        if stated is not None:
            response.checkpoint.CopyFrom(checkpoint_message(stated))
        return response

    def _root(self, context: grpc.ServicerContext) -> x509.Certificate:
        path = self.certs_dir / ROOT_CERT_FILE
        try:
            return x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError):
            logger.error("audit service: provider root certificate unreadable")
            abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                "the provider's root certificate is unavailable",
                [error_info("ROOT_CERTIFICATE_UNAVAILABLE")],
            )
