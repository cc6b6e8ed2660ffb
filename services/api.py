"""The ``pli.v1`` gRPC services: senders' letters and the recipient desk.

Servicers translate between protobuf and the letters application, and map
each failure to exactly one status code: bad input to INVALID_ARGUMENT with
field violations, a broken rule to FAILED_PRECONDITION naming it, an
unknown letter (or an event with no evidence) to NOT_FOUND, a reused
idempotency key to ALREADY_EXISTS, an unreachable token or database to
UNAVAILABLE (and evidence still being issued to UNAVAILABLE with RetryInfo),
a history whose seals fail to DATA_LOSS.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import json
import logging
import time
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
from pli.domain.values import Assurance, LetterKind, Recipient, RecipientType
from pli.domain.window import last_day_to_decide
from pli.hsm.secrets import SecretUnreadable
from pli.hsm.token import TokenUnavailable
from pli.infrastructure.accounts import (
    ConsentNotFound,
    SenderAccountConflict,
    SenderAccountNotFound,
)
from pli.infrastructure.content import ContentMissing
from pli.infrastructure.event_store import BrokenHistory, StampingUnavailable
from pli.infrastructure.letters import (
    Authorisation,
    ConcurrentChange,
    DepositRequest,
    IdempotencyConflict,
    LetterApplication,
    LetterNotFound,
    NewAttachment,
    check_deposit,
    iso,
)
from pli.infrastructure.timestamps import TimeStampUnavailable
from pli.infrastructure.views import LetterViewStore
from pli.services.evidence_store import (
    EvidenceEntry,
    EvidenceNotBuilt,
    EvidenceNotFound,
    EvidenceStore,
)
from pli.services.identification import (
    MAX_ID_TOKEN,
    NONCE,
    IdentityChecker,
    NoIdentityProvider,
    new_nonce,
    nonce_digest,
)
from pli.services.processes import LETTER_TOPICS
from pli.services.proof_page import unprintable
from pli.services.wire import abort, abort_invalid, error_info, precondition
from pli.v1 import letters_pb2 as pb

__all__ = [
    "LEVELS",
    "LEVEL_TO_PB",
    "LetterServicer",
    "MAX_INLINE_CONTENT",
    "RecipientDeskServicer",
    "mapped",
    "timestamp",
]

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
_STATES = {v: k for k, v in _STATE_TO_PB.items()}
LEVELS = {
    pb.ASSURANCE_LEVEL_LOW: Assurance.LOW,
    pb.ASSURANCE_LEVEL_SUBSTANTIAL: Assurance.SUBSTANTIAL,
    pb.ASSURANCE_LEVEL_HIGH: Assurance.HIGH,
}
LEVEL_TO_PB = {v: k for k, v in LEVELS.items()}
_RECIPIENT_TYPES = {
    pb.RECIPIENT_TYPE_CONSUMER: RecipientType.CONSUMER,
    pb.RECIPIENT_TYPE_PROFESSIONAL: RecipientType.PROFESSIONAL,
}
_RECIPIENT_TYPE_TO_PB = {v: k for k, v in _RECIPIENT_TYPES.items()}
_PROOF_KINDS = {
    pb.PROOF_KIND_DEPOSIT: ProofKind.DEPOSIT,
    pb.PROOF_KIND_RECEIPT: ProofKind.RECEIPT,
    pb.PROOF_KIND_REFUSAL: ProofKind.REFUSAL,
    pb.PROOF_KIND_NON_CLAIM: ProofKind.NON_CLAIM,
}
_PROOF_TO_PB = {v: k for k, v in _PROOF_KINDS.items()}
_EVIDENCE_TYPE_TO_PB = {
    "SubmissionAcceptanceRejection": pb.EVIDENCE_TYPE_SUBMISSION_ACCEPTANCE_REJECTION,
    "DeliveryNonDeliveryToRecipient": (
        pb.EVIDENCE_TYPE_DELIVERY_NON_DELIVERY_TO_RECIPIENT
    ),
    "RetrievalNonRetrievalByRecipient": (
        pb.EVIDENCE_TYPE_RETRIEVAL_NON_RETRIEVAL_BY_RECIPIENT
    ),
    "AcceptanceRejectionByRecipient": (
        pb.EVIDENCE_TYPE_ACCEPTANCE_REJECTION_BY_RECIPIENT
    ),
    "DownloadNonDownloadByRecipient": (
        pb.EVIDENCE_TYPE_DOWNLOAD_NON_DOWNLOAD_BY_RECIPIENT
    ),
}


def timestamp(moment: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    """A protobuf timestamp, or None for a moment that has not come."""
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
    if isinstance(exc, NoIdentityProvider):
        description = "no trusted identity provider is configured (PLI_OIDC_ISSUERS)"
        abort(
            context,
            grpc.StatusCode.FAILED_PRECONDITION,
            description,
            [precondition("identity-provider-missing", "identification", description)],
        )
    not_found = _NOT_FOUND.get(type(exc))
    if not_found is not None:
        resource_type, description = not_found
        resource = error_details_pb2.ResourceInfo(
            resource_type=resource_type,
            resource_name=str(exc),
            description=description,
        )
        abort(context, grpc.StatusCode.NOT_FOUND, description, [resource])
    if isinstance(exc, SenderAccountConflict):
        abort(
            context,
            grpc.StatusCode.ALREADY_EXISTS,
            "this idempotency key was already used to register another sender",
            [error_info("IDEMPOTENCY_KEY_REUSED", account_id=str(exc))],
        )
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
    if isinstance(exc, EvidenceNotBuilt):
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromTimedelta(dt.timedelta(seconds=1))
        abort(
            context,
            grpc.StatusCode.UNAVAILABLE,
            "the evidence is being issued; retry shortly",
            [retry],
        )
    if isinstance(exc, TokenUnavailable | OperationalError):
        logger.error("dependency unavailable error=%s", type(exc).__name__)
        abort(
            context,
            grpc.StatusCode.UNAVAILABLE,
            "the sealing token or the event store is unavailable; nothing was stored",
            [error_info("SEALING_UNAVAILABLE")],
        )
    if isinstance(exc, StampingUnavailable | TimeStampUnavailable):
        logger.error("time-stamp authority unavailable")
        abort(
            context,
            grpc.StatusCode.UNAVAILABLE,
            "the time-stamp authority is unavailable; nothing was stored",
            [error_info("TIME_STAMP_UNAVAILABLE")],
        )
    if isinstance(exc, BrokenHistory | ContentMissing | SecretUnreadable):
        logger.error("stored history fails verification error=%s", exc)
        abort(
            context,
            grpc.StatusCode.DATA_LOSS,
            "the letter's stored history or content fails verification",
            [error_info("HISTORY_BROKEN")],
        )
    raise exc


_NOT_FOUND = {
    LetterNotFound: ("pli.v1.Letter", "no letter has this id"),
    EvidenceNotFound: (
        "pli.v1.Evidence",
        "the letter has no event at this version that warrants evidence",
    ),
    SenderAccountNotFound: ("pli.v1.SenderAccount", "no sender account has this id"),
    ConsentNotFound: (
        "pli.v1.Consent",
        "no consent was recorded for this sender account and address",
    ),
}

_MAPPED_ERRORS = (
    NoIdentityProvider,
    SenderAccountNotFound,
    SenderAccountConflict,
    ConsentNotFound,
    SecretUnreadable,
    InvalidInput,
    RuleViolation,
    LetterNotFound,
    EvidenceNotFound,
    EvidenceNotBuilt,
    IdempotencyConflict,
    ConcurrentChange,
    TokenUnavailable,
    OperationalError,
    StampingUnavailable,
    TimeStampUnavailable,
    BrokenHistory,
    ContentMissing,
)


def mapped(method: Callable[..., T]) -> Callable[..., T]:
    """Map the pli exceptions a servicer method raises to gRPC statuses."""

    @functools.wraps(method)
    def call(self: Any, request: Any, context: grpc.ServicerContext) -> T:
        try:
            return method(self, request, context)
        except _MAPPED_ERRORS as exc:
            _fail(context, exc)
            raise

    return call


def _recipient_message(recipient: Recipient) -> pb.Recipient:
    return pb.Recipient(
        email=recipient.email,
        type=_RECIPIENT_TYPE_TO_PB[recipient.type],
        given_names=recipient.given_names,
        family_name=recipient.family_name,
        birthdate=recipient.birthdate,
        company_name=recipient.company_name,
        company_id=recipient.company_id,
    )


def _attachment_infos(letter: Letter) -> list[pb.AttachmentInfo]:
    return [
        pb.AttachmentInfo(
            filename=a.filename, media_type=a.media_type, size=a.size, sha256=a.sha256
        )
        for a in letter.attachments
    ]


class _LetterMessages:
    """Turns letters into ``pli.v1.Letter`` and ``pli.v1.Notice`` messages."""

    def __init__(self, proofs_dir: Path, provider_name: str = "") -> None:
        self.proofs_dir = proofs_dir
        self.provider_name = provider_name

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
        level = letter.identification_level
        return pb.Letter(
            letter_id=str(letter.id),
            kind=_KIND_TO_PB[letter.kind],
            state=_STATE_TO_PB[letter.state],
            sender=pb.Party(name=letter.sender.name, email=letter.sender.email),
            recipient=_recipient_message(letter.recipient),
            attachments=_attachment_infos(letter),
            deposited_at=timestamp(letter.deposited_at),
            notified_at=timestamp(letter.notified_at),
            window_closes_at=timestamp(letter.window_closes_at),
            identified_at=timestamp(letter.identified_at),
            decided_at=timestamp(letter.decided_at),
            version=letter.version,
            proofs=available,
            sender_account_id=str(letter.sender_account_id),
            subject=letter.subject,
            notification_failures=letter.notification_failures,
            notification_failure_reason=letter.notification_failure_reason,
            content_purged_at=timestamp(letter.content_purged_at),
            identification_level=LEVEL_TO_PB.get(level, 0) if level else 0,
        )

    def notice(self, letter: Letter) -> pb.Notice:
        """The recipient's view: the sender's side only once accepted."""
        notice = pb.Notice(
            letter_id=str(letter.id),
            kind=_KIND_TO_PB[letter.kind],
            state=_STATE_TO_PB[letter.state],
            provider_name=self.provider_name,
            notified_at=timestamp(letter.notified_at),
            window_closes_at=timestamp(letter.window_closes_at),
            identified_at=timestamp(letter.identified_at),
            decided_at=timestamp(letter.decided_at),
        )
        if letter.notified_at is not None:
            notice.last_day_to_decide = last_day_to_decide(
                letter.notified_at
            ).isoformat()
        # CPCE R.53-3: the sender stays unknown to the recipient until the
        # letter is accepted, and after a refusal or expiry as well.
        if letter.state is LetterState.ACCEPTED:
            notice.sender.CopyFrom(
                pb.Party(name=letter.sender.name, email=letter.sender.email)
            )
            notice.subject = letter.subject
            notice.attachments.extend(_attachment_infos(letter))
        return notice


def _recipient(request: pb.Recipient) -> Recipient:
    return Recipient(
        email=request.email,
        type=_RECIPIENT_TYPES.get(request.type, RecipientType.CONSUMER),
        given_names=request.given_names,
        family_name=request.family_name,
        birthdate=request.birthdate,
        company_name=request.company_name,
        company_id=request.company_id,
    )


def _uuid_or_nil(value: str) -> UUID:
    return UUID(value) if _is_uuid(value) else UUID(int=0)


def _deposit_problems(request: pb.DepositLetterRequest) -> list[FieldProblem]:
    """What the service layer checks: enums, size, ids, printability."""
    problems = []
    if request.kind not in _KINDS:
        problems.append(
            FieldProblem("kind", "must be LETTER_KIND_LRE or LETTER_KIND_ERE")
        )
    if not _is_uuid(request.sender_account_id):
        problems.append(
            FieldProblem("sender_account_id", "must be a sender account id (a UUID)")
        )
    if request.recipient.type not in _RECIPIENT_TYPES:
        problems.append(
            FieldProblem(
                "recipient.type",
                "must be RECIPIENT_TYPE_CONSUMER or RECIPIENT_TYPE_PROFESSIONAL",
            )
        )
    if sum(len(a.content) for a in request.attachments) > MAX_INLINE_CONTENT:
        problems.append(
            FieldProblem("attachments", "inline content must total at most 4 MiB")
        )
    # CPCE R.53-2: the proofs must show the parties' names, so a name the
    # proof page cannot print is refused at deposit rather than left blank.
    recipient = request.recipient
    printed = [
        ("recipient.given_names", recipient.given_names),
        ("recipient.family_name", recipient.family_name),
        ("recipient.company_name", recipient.company_name),
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


# Authorises a new deposit: checks the sender account, the consumer's consent
# and the second factor for ``(request, second factor code)``, then returns a
# callable the letters application calls with the new letter's id.
Authoriser = Callable[[DepositRequest, str], Callable[[UUID], Authorisation]]

_DEFAULT_PAGE = 20
_MAX_PAGE = 100


class LetterServicer(_LetterMessages):
    """``pli.v1.LetterService``: what a sender frontend may do."""

    def __init__(
        self,
        letters: LetterApplication,
        views: LetterViewStore,
        proofs_dir: Path,
        authoriser: Authoriser,
        evidence: EvidenceStore,
        poll_interval: float = 0.2,
    ) -> None:
        super().__init__(proofs_dir)
        self.letters = letters
        self.views = views
        self.authoriser = authoriser
        self.evidence = evidence
        self.poll_interval = poll_interval
        self._owners: dict[UUID, UUID] = {}

    @mapped
    def DepositLetter(  # noqa: N802 (gRPC method name)
        self, request: pb.DepositLetterRequest, context: grpc.ServicerContext
    ) -> pb.DepositLetterResponse:
        """Deposit a letter, idempotently."""
        problems = _deposit_problems(request)
        # The domain checks every other field, with stand-ins for the fields
        # the service layer already found wrong, so all are named at once.
        deposit = DepositRequest(
            kind=_KINDS.get(request.kind, LetterKind.LRE),
            sender_account_id=_uuid_or_nil(request.sender_account_id),
            recipient=_recipient(request.recipient),
            subject=request.subject,
            attachments=[
                NewAttachment(a.filename, a.media_type, a.content)
                for a in request.attachments
            ],
        )
        named = {p.field for p in problems}
        problems += [
            p
            for p in check_deposit(request.idempotency_key, deposit)
            if p.field not in named
        ]
        if problems:
            abort_invalid(context, [(p.field, p.description) for p in problems])
        letter, created = self.letters.deposit(
            request.idempotency_key,
            deposit,
            self.authoriser(deposit, request.second_factor_code),
        )
        if not created:
            logger.info("deposit replayed letter=%s", letter.id)
        return pb.DepositLetterResponse(letter=self.message(letter))

    @mapped
    def GetLetter(  # noqa: N802
        self, request: pb.GetLetterRequest, context: grpc.ServicerContext
    ) -> pb.GetLetterResponse:
        """Read a letter."""
        letter = self.letters.get(_letter_id(request.letter_id, context))
        return pb.GetLetterResponse(letter=self.message(letter))

    @mapped
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

    @mapped
    def ListLetters(  # noqa: N802
        self, request: pb.ListLettersRequest, context: grpc.ServicerContext
    ) -> pb.ListLettersResponse:
        """One page of the sender account's letters, newest first."""
        problems = []
        if not _is_uuid(request.sender_account_id):
            problems.append(("sender_account_id", "must be an account id (a UUID)"))
        if any(state not in _STATES for state in request.states):
            problems.append(("states", "must name letter states"))
        if not 0 <= request.page_size <= _MAX_PAGE:
            problems.append(("page_size", f"must be between 0 and {_MAX_PAGE}"))
        after = _page_key(request.page_token, _query_digest(request))
        if request.page_token and after is None:
            problems.append(("page_token", "is not a token this service issued"))
        bounds = {}
        for name in ("deposited_from", "deposited_before"):
            try:
                bounds[name] = _iso_or_none(request, name)
            except (ValueError, OverflowError):
                problems.append((name, "is not a valid timestamp"))
        start, end = bounds.get("deposited_from"), bounds.get("deposited_before")
        if start is not None and end is not None and end <= start:
            problems.append(("deposited_before", "must be after deposited_from"))
        if problems:
            abort_invalid(context, problems)
        limit = request.page_size or _DEFAULT_PAGE
        ids = self.views.sender_page(
            str(UUID(request.sender_account_id)),
            states=[_STATES[s].value for s in request.states],
            deposited_from=start,
            deposited_before=end,
            after=after,
            limit=limit + 1,
        )
        letters = [self.letters.get(UUID(i)) for i in ids[:limit]]
        token = ""
        if len(ids) > limit:
            last = letters[-1]
            token = _page_token(
                iso(last.deposited_at) or "", str(last.id), _query_digest(request)
            )
        return pb.ListLettersResponse(
            letters=[self.message(letter) for letter in letters],
            next_page_token=token,
        )

    @mapped
    def ListEvidence(  # noqa: N802
        self, request: pb.ListEvidenceRequest, context: grpc.ServicerContext
    ) -> pb.ListEvidenceResponse:
        """The letter's events that warrant REM evidence, and which are issued."""
        entries = self.evidence.entries(_letter_id(request.letter_id, context))
        return pb.ListEvidenceResponse(evidence=[_evidence(e) for e in entries])

    @mapped
    def GetEvidence(  # noqa: N802
        self, request: pb.GetEvidenceRequest, context: grpc.ServicerContext
    ) -> pb.GetEvidenceResponse:
        """The sealed XML evidence of one event of the letter."""
        problems = []
        if not _is_uuid(request.letter_id):
            problems.append(("letter_id", "must be a letter id (a UUID)"))
        if request.version < 1:
            problems.append(("version", "must be an event version, from 1"))
        if problems:
            abort_invalid(context, problems)
        entry, document = self.evidence.read(UUID(request.letter_id), request.version)
        return pb.GetEvidenceResponse(evidence=_evidence(entry), xml=document)

    def WatchLetters(  # noqa: N802
        self, request: pb.WatchLettersRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.WatchLettersResponse]:
        """Every change to the account's letters after a position, then live."""
        problems = []
        if not _is_uuid(request.sender_account_id):
            problems.append(("sender_account_id", "must be an account id (a UUID)"))
        if request.after_position < 0:
            problems.append(("after_position", "must not be negative"))
        if problems:
            abort_invalid(context, problems)
        account = UUID(request.sender_account_id)
        position = request.after_position
        try:
            while context.is_active():
                changes = self.letters.recorder.select_notifications(
                    start=position + 1, limit=100, topics=LETTER_TOPICS
                )
                for change in changes:
                    position = change.id
                    if self._owner(change.originator_id) != account:
                        continue
                    letter = self.letters.repository.get(
                        change.originator_id, version=change.originator_version
                    )
                    yield pb.WatchLettersResponse(
                        position=change.id,
                        letter_id=str(change.originator_id),
                        event=change.topic.rpartition(".")[2],
                        letter=self.message(letter),
                    )
                if not changes:
                    time.sleep(self.poll_interval)
        except _MAPPED_ERRORS as exc:
            _fail(context, exc)

    def _owner(self, letter_id: UUID) -> UUID:
        owner = self._owners.get(letter_id)
        if owner is None:
            first = self.letters.repository.get(letter_id, version=1)
            owner = first.sender_account_id
            if len(self._owners) > 100_000:
                self._owners.clear()
            self._owners[letter_id] = owner
        return owner


def _evidence(entry: EvidenceEntry) -> pb.Evidence:
    return pb.Evidence(
        version=entry.version,
        event=entry.event,
        type=_EVIDENCE_TYPE_TO_PB[entry.element],
        built=entry.built,
    )


def _iso_or_none(request: Any, field: str) -> str | None:
    if not request.HasField(field):
        return None
    return iso(getattr(request, field).ToDatetime(tzinfo=dt.UTC))


def _query_digest(request: pb.ListLettersRequest) -> str:
    """What a page token is bound to: the account and the filters."""
    query = pb.ListLettersRequest()
    query.CopyFrom(request)
    query.ClearField("page_token")
    query.ClearField("page_size")
    encoded = query.SerializeToString(deterministic=True)
    return hashlib.sha256(encoded).hexdigest()[:16]


def _page_token(deposited_at: str, letter_id: str, query: str) -> str:
    raw = json.dumps([deposited_at, letter_id, query]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _page_key(token: str, query: str) -> tuple[str, str] | None:
    """The position a token continues from, if it was issued for this query."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        deposited_at, letter_id, issued_for = json.loads(raw)
        dt.datetime.fromisoformat(deposited_at)
        UUID(letter_id)
    except (ValueError, TypeError):
        return None
    if issued_for != query:
        return None
    return str(deposited_at), str(letter_id)


class RecipientDeskServicer(_LetterMessages):
    """``pli.v1.RecipientDeskService``: identification, decision, hand-over.

    A letter not yet notified does not exist for the desk: the recipient
    cannot know of it, so every call answers NOT_FOUND.
    """

    def __init__(
        self,
        letters: LetterApplication,
        proofs_dir: Path,
        provider_name: str,
        identities: IdentityChecker,
    ) -> None:
        super().__init__(proofs_dir, provider_name)
        self.letters = letters
        self.identities = identities

    def _notified(self, letter_id: UUID) -> Letter:
        letter = self.letters.get(letter_id)
        if letter.state is LetterState.DEPOSITED:
            raise LetterNotFound(str(letter_id))
        return letter

    @mapped
    def GetNotice(  # noqa: N802
        self, request: pb.GetNoticeRequest, context: grpc.ServicerContext
    ) -> pb.GetNoticeResponse:
        """The notice the recipient sees."""
        letter = self._notified(_letter_id(request.letter_id, context))
        return pb.GetNoticeResponse(notice=self.notice(letter))

    @mapped
    def BeginIdentification(  # noqa: N802
        self, request: pb.BeginIdentificationRequest, context: grpc.ServicerContext
    ) -> pb.BeginIdentificationResponse:
        """Open an attempt and hand out its nonce."""
        letter_id = _letter_id(request.letter_id, context)
        self._notified(letter_id)
        nonce = new_nonce()
        self.letters.begin_identification(letter_id, nonce_digest(nonce))
        return pb.BeginIdentificationResponse(nonce=nonce)

    @mapped
    def IdentifyRecipient(  # noqa: N802
        self, request: pb.IdentifyRecipientRequest, context: grpc.ServicerContext
    ) -> pb.IdentifyRecipientResponse:
        """Check the ID token, record the outcome, answer with the notice."""
        problems = []
        if not _is_uuid(request.letter_id):
            problems.append(("letter_id", "must be a letter id (a UUID)"))
        if not NONCE.fullmatch(request.nonce):
            problems.append(("nonce", "must be the nonce BeginIdentification gave"))
        if not request.id_token or len(request.id_token) > MAX_ID_TOKEN:
            problems.append(
                ("id_token", f"must be an ID token of at most {MAX_ID_TOKEN} bytes")
            )
        if problems:
            abort_invalid(context, problems)
        letter_id = UUID(request.letter_id)
        self._notified(letter_id)
        letter = self.identities.identify(letter_id, request.nonce, request.id_token)
        return pb.IdentifyRecipientResponse(notice=self.notice(letter))

    @mapped
    def AcceptLetter(  # noqa: N802
        self, request: pb.AcceptLetterRequest, context: grpc.ServicerContext
    ) -> pb.AcceptLetterResponse:
        """Record acceptance."""
        letter_id = _letter_id(request.letter_id, context)
        self._notified(letter_id)
        letter = self.letters.accept(letter_id)
        return pb.AcceptLetterResponse(notice=self.notice(letter))

    @mapped
    def RefuseLetter(  # noqa: N802
        self, request: pb.RefuseLetterRequest, context: grpc.ServicerContext
    ) -> pb.RefuseLetterResponse:
        """Record refusal."""
        letter_id = _letter_id(request.letter_id, context)
        self._notified(letter_id)
        letter = self.letters.refuse(letter_id)
        return pb.RefuseLetterResponse(notice=self.notice(letter))

    def DownloadContent(  # noqa: N802
        self, request: pb.DownloadContentRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.DownloadContentResponse]:
        """Record the hand-over, then stream the attachment in chunks."""
        letter_id = _letter_id(request.letter_id, context)
        try:
            self._notified(letter_id)
            letter = self.letters.deliver_content(letter_id, request.attachment_index)
            attachment = letter.attachments[request.attachment_index]
            info = pb.AttachmentInfo(
                filename=attachment.filename,
                media_type=attachment.media_type,
                size=attachment.size,
                sha256=attachment.sha256,
            )
            first = True
            for chunk in self.letters.content.read_chunks(letter.id, attachment.sha256):
                yield pb.DownloadContentResponse(
                    attachment=info if first else None, chunk=chunk
                )
                first = False
            if first:
                yield pb.DownloadContentResponse(attachment=info)
        except _MAPPED_ERRORS as exc:
            _fail(context, exc)
