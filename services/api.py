"""The ``pli.v1`` gRPC services: senders' letters and the recipient desk.

Servicers translate between protobuf and the letters application, and map
each failure to exactly one status code: bad input to INVALID_ARGUMENT with
field violations, a broken rule to FAILED_PRECONDITION naming it, an
unknown letter to NOT_FOUND, a reused idempotency key to ALREADY_EXISTS, an
unreachable token or database to UNAVAILABLE, a history whose seals fail to
DATA_LOSS.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import grpc
from eventsourcing.persistence import OperationalError
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2

from pli.domain.errors import FieldProblem, InvalidInput, RuleViolation
from pli.domain.letter import Letter, LetterState
from pli.domain.proofs import ProofKind, proofs_warranted
from pli.domain.values import Assurance, LetterKind, Party
from pli.hsm.token import TokenUnavailable
from pli.infrastructure.content import ContentMissing
from pli.infrastructure.event_store import BrokenHistory
from pli.infrastructure.letters import (
    ConcurrentChange,
    IdempotencyConflict,
    LetterApplication,
    LetterNotFound,
    NewAttachment,
    check_deposit,
)
from pli.services.proof_page import unprintable
from pli.services.wire import abort, abort_invalid, error_info, precondition
from pli.v1 import letters_pb2 as pb

__all__ = ["LetterServicer", "MAX_INLINE_CONTENT", "RecipientDeskServicer"]

logger = logging.getLogger(__name__)

MAX_INLINE_CONTENT = 4 * 1024 * 1024
T = TypeVar("T")

_KINDS = {pb.LETTER_KIND_LRE: LetterKind.LRE, pb.LETTER_KIND_ERE: LetterKind.ERE}
_KIND_TO_PB = {v: k for k, v in _KINDS.items()}
_STATE_TO_PB = {
    LetterState.DEPOSITED: pb.LETTER_STATE_DEPOSITED,
    LetterState.NOTIFIED: pb.LETTER_STATE_NOTIFIED,
    LetterState.IDENTIFIED: pb.LETTER_STATE_IDENTIFIED,
    LetterState.ACCEPTED: pb.LETTER_STATE_ACCEPTED,
    LetterState.REFUSED: pb.LETTER_STATE_REFUSED,
    LetterState.EXPIRED: pb.LETTER_STATE_EXPIRED,
}
_LEVELS = {
    pb.ASSURANCE_LEVEL_LOW: Assurance.LOW,
    pb.ASSURANCE_LEVEL_SUBSTANTIAL: Assurance.SUBSTANTIAL,
    pb.ASSURANCE_LEVEL_HIGH: Assurance.HIGH,
}
_PROOF_KINDS = {
    pb.PROOF_KIND_DEPOSIT: ProofKind.DEPOSIT,
    pb.PROOF_KIND_RECEIPT: ProofKind.RECEIPT,
    pb.PROOF_KIND_REFUSAL: ProofKind.REFUSAL,
    pb.PROOF_KIND_NON_CLAIM: ProofKind.NON_CLAIM,
}
_PROOF_TO_PB = {v: k for k, v in _PROOF_KINDS.items()}


def _timestamp(moment: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if moment is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment.astimezone(dt.UTC))
    return stamp


def _is_uuid(value: str) -> bool:
    try:
        UUID(value)
    except ValueError:
        return False
    return True


def _letter_id(value: str, context: grpc.ServicerContext) -> UUID:
    if not _is_uuid(value):
        abort_invalid(context, [("letter_id", "must be a letter id (a UUID)")])
    return UUID(value)


def _fail(context: grpc.ServicerContext, exc: Exception) -> None:
    """Map a pli exception to its status; re-raise anything unexpected."""
    if isinstance(exc, InvalidInput):
        abort_invalid(context, [(p.field, p.description) for p in exc.problems])
    if isinstance(exc, RuleViolation):
        abort(
            context,
            grpc.StatusCode.FAILED_PRECONDITION,
            exc.description,
            [precondition(exc.rule, "letter", exc.description)],
        )
    if isinstance(exc, LetterNotFound):
        resource = error_details_pb2.ResourceInfo(
            resource_type="pli.v1.Letter",
            resource_name=str(exc),
            description="no letter has this id",
        )
        abort(context, grpc.StatusCode.NOT_FOUND, "no letter has this id", [resource])
    if isinstance(exc, ConcurrentChange):
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromTimedelta(dt.timedelta(milliseconds=100))
        abort(
            context,
            grpc.StatusCode.ABORTED,
            "the letter was changed concurrently; retry the call",
            [retry],
        )
    if isinstance(exc, IdempotencyConflict):
        abort(
            context,
            grpc.StatusCode.ALREADY_EXISTS,
            "this idempotency key was already used for a different deposit",
            [error_info("IDEMPOTENCY_KEY_REUSED", letter_id=str(exc))],
        )
    if isinstance(exc, TokenUnavailable | OperationalError):
        logger.error("dependency unavailable error=%s", type(exc).__name__)
        abort(
            context,
            grpc.StatusCode.UNAVAILABLE,
            "the sealing token or the event store is unavailable; nothing was stored",
            [error_info("SEALING_UNAVAILABLE")],
        )
    if isinstance(exc, BrokenHistory | ContentMissing):
        logger.error("stored history fails verification error=%s", exc)
        abort(
            context,
            grpc.StatusCode.DATA_LOSS,
            "the letter's stored history or content fails verification",
            [error_info("HISTORY_BROKEN")],
        )
    raise exc


_MAPPED_ERRORS = (
    InvalidInput,
    RuleViolation,
    LetterNotFound,
    IdempotencyConflict,
    ConcurrentChange,
    TokenUnavailable,
    OperationalError,
    BrokenHistory,
    ContentMissing,
)


def _mapped(method: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(method)
    def call(self: Any, request: Any, context: grpc.ServicerContext) -> T:
        try:
            return method(self, request, context)
        except _MAPPED_ERRORS as exc:
            _fail(context, exc)
            raise

    return call


class _LetterMessages:
    """Turns letters into ``pli.v1.Letter`` messages."""

    def __init__(self, proofs_dir: Path) -> None:
        self.proofs_dir = proofs_dir

    def proof_path(self, letter_id: UUID, kind: ProofKind) -> Path:
        """Where the proof builder writes this proof."""
        return self.proofs_dir / str(letter_id) / f"{kind.value}.pdf"

    def message(self, letter: Letter) -> pb.Letter:
        """The sender's view of ``letter``."""
        available = [
            _PROOF_TO_PB[kind]
            for kind in proofs_warranted(letter.state)
            if self.proof_path(letter.id, kind).exists()
        ]
        return pb.Letter(
            letter_id=str(letter.id),
            kind=_KIND_TO_PB[letter.kind],
            state=_STATE_TO_PB[letter.state],
            sender=pb.Party(name=letter.sender.name, email=letter.sender.email),
            recipient=pb.Party(
                name=letter.recipient.name, email=letter.recipient.email
            ),
            attachments=[
                pb.AttachmentInfo(
                    filename=a.filename,
                    media_type=a.media_type,
                    size=a.size,
                    sha256=a.sha256,
                )
                for a in letter.attachments
            ],
            deposited_at=_timestamp(letter.deposited_at),
            notified_at=_timestamp(letter.notified_at),
            window_closes_at=_timestamp(letter.window_closes_at),
            identified_at=_timestamp(letter.identified_at),
            decided_at=_timestamp(letter.decided_at),
            version=letter.version,
            proofs=available,
        )


def _deposit_problems(request: pb.DepositLetterRequest) -> list[FieldProblem]:
    """What the service layer checks: the kind, the size, printability."""
    problems = []
    if request.kind not in _KINDS:
        problems.append(
            FieldProblem("kind", "must be LETTER_KIND_LRE or LETTER_KIND_ERE")
        )
    if sum(len(a.content) for a in request.attachments) > MAX_INLINE_CONTENT:
        problems.append(
            FieldProblem("attachments", "inline content must total at most 4 MiB")
        )
    # CPCE R.53-2: the proofs must show the parties' names, so a name the
    # proof page cannot print is refused at deposit rather than left blank.
    printed = [
        ("sender.name", request.sender.name),
        ("recipient.name", request.recipient.name),
    ] + [
        (f"attachments[{i}].filename", a.filename)
        for i, a in enumerate(request.attachments)
    ]
    for field, text in printed:
        missing = unprintable(text)
        if missing:
            problems.append(
                FieldProblem(field, f"has characters proofs cannot print: {missing}")
            )
    return problems


class LetterServicer(_LetterMessages):
    """``pli.v1.LetterService``: what a sender frontend may do."""

    def __init__(self, letters: LetterApplication, proofs_dir: Path) -> None:
        super().__init__(proofs_dir)
        self.letters = letters

    @_mapped
    def DepositLetter(  # noqa: N802 (gRPC method name)
        self, request: pb.DepositLetterRequest, context: grpc.ServicerContext
    ) -> pb.DepositLetterResponse:
        """Deposit a letter, idempotently."""
        sender = Party(request.sender.name, request.sender.email)
        recipient = Party(request.recipient.name, request.recipient.email)
        attachments = [
            NewAttachment(a.filename, a.media_type, a.content)
            for a in request.attachments
        ]
        problems = [(p.field, p.description) for p in _deposit_problems(request)]
        problems += [
            (p.field, p.description)
            for p in check_deposit(
                request.idempotency_key, sender, recipient, attachments
            )
        ]
        if problems:
            abort_invalid(context, problems)
        letter, created = self.letters.deposit(
            idempotency_key=request.idempotency_key,
            kind=_KINDS[request.kind],
            sender=sender,
            recipient=recipient,
            attachments=attachments,
        )
        if not created:
            logger.info("deposit replayed letter=%s", letter.id)
        return pb.DepositLetterResponse(letter=self.message(letter))

    @_mapped
    def GetLetter(  # noqa: N802
        self, request: pb.GetLetterRequest, context: grpc.ServicerContext
    ) -> pb.GetLetterResponse:
        """Read a letter."""
        letter = self.letters.get(_letter_id(request.letter_id, context))
        return pb.GetLetterResponse(letter=self.message(letter))

    @_mapped
    def GetProof(  # noqa: N802
        self, request: pb.GetProofRequest, context: grpc.ServicerContext
    ) -> pb.GetProofResponse:
        """Fetch a proof PDF the letter's state warrants."""
        problems = []
        if not _is_uuid(request.letter_id):
            problems.append(("letter_id", "must be a letter id (a UUID)"))
        if request.kind not in _PROOF_KINDS:
            problems.append(("kind", "must name a proof kind"))
        if problems:
            abort_invalid(context, problems)
        letter_id = UUID(request.letter_id)
        kind = _PROOF_KINDS[request.kind]
        letter = self.letters.get(letter_id)
        if kind not in proofs_warranted(letter.state):
            raise RuleViolation(
                "proof-not-issued",
                f"no {kind.value} proof: the letter is {letter.state.value}",
            )
        path = self.proof_path(letter_id, kind)
        if not path.exists():
            retry = error_details_pb2.RetryInfo()
            retry.retry_delay.FromTimedelta(dt.timedelta(seconds=1))
            abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                "the proof is being prepared; retry shortly",
                [retry],
            )
        return pb.GetProofResponse(kind=request.kind, pdf=path.read_bytes())


class RecipientDeskServicer(_LetterMessages):
    """``pli.v1.RecipientDeskService``: identification, decision, hand-over."""

    def __init__(self, letters: LetterApplication, proofs_dir: Path) -> None:
        super().__init__(proofs_dir)
        self.letters = letters

    @_mapped
    def IdentifyRecipient(  # noqa: N802
        self, request: pb.IdentifyRecipientRequest, context: grpc.ServicerContext
    ) -> pb.IdentifyRecipientResponse:
        """Record the recipient's identification."""
        problems = []
        if not _is_uuid(request.letter_id):
            problems.append(("letter_id", "must be a letter id (a UUID)"))
        if request.level not in _LEVELS:
            problems.append(("level", "must name an assurance level"))
        if problems:
            abort_invalid(context, problems)
        letter_id = UUID(request.letter_id)
        letter = self.letters.identify(
            letter_id,
            method=request.method,
            level=_LEVELS[request.level],
            verifier_reference=request.verifier_reference,
        )
        return pb.IdentifyRecipientResponse(letter=self.message(letter))

    @_mapped
    def AcceptLetter(  # noqa: N802
        self, request: pb.AcceptLetterRequest, context: grpc.ServicerContext
    ) -> pb.AcceptLetterResponse:
        """Record acceptance."""
        letter = self.letters.accept(_letter_id(request.letter_id, context))
        return pb.AcceptLetterResponse(letter=self.message(letter))

    @_mapped
    def RefuseLetter(  # noqa: N802
        self, request: pb.RefuseLetterRequest, context: grpc.ServicerContext
    ) -> pb.RefuseLetterResponse:
        """Record refusal."""
        letter = self.letters.refuse(_letter_id(request.letter_id, context))
        return pb.RefuseLetterResponse(letter=self.message(letter))

    def DownloadContent(  # noqa: N802
        self, request: pb.DownloadContentRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.DownloadContentResponse]:
        """Record the hand-over, then stream the attachment in chunks."""
        letter_id = _letter_id(request.letter_id, context)
        try:
            letter = self.letters.deliver_content(letter_id, request.attachment_index)
            attachment = letter.attachments[request.attachment_index]
            info = pb.AttachmentInfo(
                filename=attachment.filename,
                media_type=attachment.media_type,
                size=attachment.size,
                sha256=attachment.sha256,
            )
            first = True
            for chunk in self.letters.content.read_chunks(attachment.sha256):
                yield pb.DownloadContentResponse(
                    attachment=info if first else None, chunk=chunk
                )
                first = False
            if first:
                yield pb.DownloadContentResponse(attachment=info)
        except _MAPPED_ERRORS as exc:
            _fail(context, exc)
