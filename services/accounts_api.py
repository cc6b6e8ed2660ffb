"""The ``pli.v1`` services for sender accounts and consumers' consents.

The operator's back office registers senders whose identity it verified and
enrols their second factor; a sender frontend records consumers' consents
and fetches the sealed proof of one. Errors map as in ``pli.services.api``.
"""

from __future__ import annotations

import logging
from uuid import NAMESPACE_URL, UUID, uuid5

import grpc

from pli.domain.consent import Consent
from pli.domain.errors import FieldProblem, InvalidInput
from pli.domain.sender_account import SenderAccount, VerificationMethod
from pli.domain.values import Assurance, check_email
from pli.hsm.pades import PdfSealer
from pli.infrastructure.accounts import ConsentNotFound, Consents, SenderAccounts
from pli.infrastructure.event_store import SealedApplication
from pli.infrastructure.letters import idempotency_key_problems
from pli.services.api import LEVEL_TO_PB, LEVELS, mapped, timestamp
from pli.services.consent_proof import consent_facts, seal_consent_proof
from pli.services.wire import abort_invalid
from pli.v1 import accounts_pb2 as apb
from pli.v1 import consents_pb2 as cpb
from pli.v1 import letters_pb2 as pb

__all__ = ["ConsentServicer", "SenderAccountServicer"]

logger = logging.getLogger(__name__)

_ACCOUNT_NAMESPACE = uuid5(NAMESPACE_URL, "urn:pli:sender-account-idempotency-key")
_METHODS = {
    apb.VERIFICATION_METHOD_IN_PERSON: VerificationMethod.IN_PERSON,
    apb.VERIFICATION_METHOD_NOTIFIED_EID: VerificationMethod.NOTIFIED_EID,
    apb.VERIFICATION_METHOD_QUALIFIED_CERTIFICATE: (
        VerificationMethod.QUALIFIED_CERTIFICATE
    ),
    apb.VERIFICATION_METHOD_OTHER_RECOGNISED: VerificationMethod.OTHER_RECOGNISED,
}
_METHOD_TO_PB = {v: k for k, v in _METHODS.items()}
# The domain's field names, as the request spells them.
_REGISTRATION_FIELDS = {"name": "identity.name", "email": "identity.email"}
_CONSENT_FIELDS = {"recipient_address": "recipient_email"}


def _uuid(value: str, field: str, problems: list[tuple[str, str]]) -> UUID | None:
    try:
        return UUID(value)
    except ValueError:
        problems.append((field, "must be an account id (a UUID)"))
        return None


def _renamed(error: InvalidInput, names: dict[str, str]) -> InvalidInput:
    return InvalidInput(
        [
            FieldProblem(names.get(p.field, p.field), p.description)
            for p in error.problems
        ]
    )


def account_message(account: SenderAccount) -> apb.SenderAccount:
    """The ``pli.v1.SenderAccount`` form of an account."""
    return apb.SenderAccount(
        account_id=str(account.id),
        identity=pb.Party(name=account.name, email=account.email),
        level=LEVEL_TO_PB[Assurance(account.assurance)],
        method=_METHOD_TO_PB[VerificationMethod(account.method)],
        verifier_reference=account.verifier_reference,
        second_factor_enrolled=account.second_factor is not None,
        registered_at=timestamp(account.created_on),
    )


class SenderAccountServicer:
    """``pli.v1.SenderAccountService``: the operator's back office."""

    def __init__(self, accounts: SenderAccounts) -> None:
        self.accounts = accounts

    @mapped
    def RegisterSenderAccount(  # noqa: N802 (gRPC method name)
        self,
        request: apb.RegisterSenderAccountRequest,
        context: grpc.ServicerContext,
    ) -> apb.RegisterSenderAccountResponse:
        """Register a verified sender, idempotently."""
        key = request.idempotency_key
        problems = [(p.field, p.description) for p in idempotency_key_problems(key)]
        if request.level not in LEVELS:
            problems.append(("level", "must name an assurance level"))
        if request.method not in _METHODS:
            problems.append(("method", "must name an eIDAS art. 24(1) method"))
        if problems:
            abort_invalid(context, problems)
        try:
            account = self.accounts.register(
                uuid5(_ACCOUNT_NAMESPACE, key),
                name=request.identity.name,
                email=request.identity.email,
                assurance=LEVELS[request.level],
                method=_METHODS[request.method],
                verifier_reference=request.verifier_reference,
            )
        except InvalidInput as error:
            raise _renamed(error, _REGISTRATION_FIELDS) from None
        return apb.RegisterSenderAccountResponse(account=account_message(account))

    @mapped
    def EnrollSecondFactor(  # noqa: N802
        self, request: apb.EnrollSecondFactorRequest, context: grpc.ServicerContext
    ) -> apb.EnrollSecondFactorResponse:
        """Enrol a new TOTP secret and hand it over once."""
        problems: list[tuple[str, str]] = []
        account_id = _uuid(request.account_id, "account_id", problems)
        if problems or account_id is None:
            abort_invalid(context, problems)
        uri = self.accounts.enroll_totp(account_id)
        return apb.EnrollSecondFactorResponse(otpauth_uri=uri)

    @mapped
    def GetSenderAccount(  # noqa: N802
        self, request: apb.GetSenderAccountRequest, context: grpc.ServicerContext
    ) -> apb.GetSenderAccountResponse:
        """Read an account."""
        problems: list[tuple[str, str]] = []
        account_id = _uuid(request.account_id, "account_id", problems)
        if problems or account_id is None:
            abort_invalid(context, problems)
        account = self.accounts.get(account_id)
        return apb.GetSenderAccountResponse(account=account_message(account))


def consent_message(consent: Consent) -> cpb.Consent:
    """The ``pli.v1.Consent`` form of a consent."""
    granted = consent.granted
    revoked = consent.revoked
    return cpb.Consent(
        consent_id=str(consent.id),
        sender_account_id=str(consent.sender_account_id),
        recipient_email=consent.recipient_address,
        live=consent.is_live,
        granted_at=timestamp(granted.at) if granted else None,
        method=granted.method if granted else "",
        text_version=granted.text_version if granted else "",
        evidence_reference=granted.evidence_reference if granted else "",
        revoked_at=timestamp(revoked.at) if revoked else None,
        version=consent.version,
    )


class ConsentServicer:
    """``pli.v1.ConsentService``: consumers' consents and their proofs."""

    def __init__(
        self,
        app: SealedApplication,
        accounts: SenderAccounts,
        consents: Consents,
        sealer: PdfSealer,
        provider_name: str,
    ) -> None:
        self.app = app
        self.accounts = accounts
        self.consents = consents
        self.sealer = sealer
        self.provider_name = provider_name

    def _target(
        self, request: object, context: grpc.ServicerContext
    ) -> tuple[UUID, str]:
        problems: list[tuple[str, str]] = []
        account_id = _uuid(request.sender_account_id, "sender_account_id", problems)
        address = request.recipient_email
        problems += [
            (p.field, p.description) for p in check_email(address, "recipient_email")
        ]
        if problems or account_id is None:
            abort_invalid(context, problems)
        return account_id, address

    def _existing(self, account_id: UUID, address: str) -> Consent:
        self.accounts.get(account_id)
        consent = self.consents.get(account_id, address)
        if consent is None or consent.granted is None:
            raise ConsentNotFound(f"{account_id}/{address}")
        return consent

    @mapped
    def GrantConsent(  # noqa: N802
        self, request: cpb.GrantConsentRequest, context: grpc.ServicerContext
    ) -> cpb.GrantConsentResponse:
        """Record a consent."""
        account_id, address = self._target(request, context)
        try:
            consent = self.consents.grant(
                account_id,
                address,
                method=request.method,
                text_version=request.text_version,
                evidence_reference=request.evidence_reference,
            )
        except InvalidInput as error:
            raise _renamed(error, _CONSENT_FIELDS) from None
        return cpb.GrantConsentResponse(consent=consent_message(consent))

    @mapped
    def RevokeConsent(  # noqa: N802
        self, request: cpb.RevokeConsentRequest, context: grpc.ServicerContext
    ) -> cpb.RevokeConsentResponse:
        """Record a revocation."""
        account_id, address = self._target(request, context)
        self._existing(account_id, address)
        try:
            consent = self.consents.revoke(account_id, address, method=request.method)
        except InvalidInput as error:
            raise _renamed(error, _CONSENT_FIELDS) from None
        return cpb.RevokeConsentResponse(consent=consent_message(consent))

    @mapped
    def GetConsent(  # noqa: N802
        self, request: cpb.GetConsentRequest, context: grpc.ServicerContext
    ) -> cpb.GetConsentResponse:
        """Read a consent."""
        account_id, address = self._target(request, context)
        consent = self._existing(account_id, address)
        return cpb.GetConsentResponse(consent=consent_message(consent))

    @mapped
    def GetConsentProof(  # noqa: N802
        self, request: cpb.GetConsentProofRequest, context: grpc.ServicerContext
    ) -> cpb.GetConsentProofResponse:
        """Render and seal the proof of consent as it stands."""
        account_id, address = self._target(request, context)
        consent = self._existing(account_id, address)
        facts = consent_facts(
            self.app,
            consent,
            self.accounts.get(account_id),
            provider_name=self.provider_name,
        )
        return cpb.GetConsentProofResponse(pdf=seal_consent_proof(self.sealer, facts))
