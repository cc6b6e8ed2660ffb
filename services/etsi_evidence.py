"""ETSI REM evidence: each legally relevant letter event as sealed XML.

Registered-delivery gateways exchange evidence in the XML format of ETSI
TS 102 640-2 V2.1.1 (namespace ``http://uri.etsi.org/02640/v2#``), whose
semantics ETSI EN 319 522 keeps. pli issues one such document for each
event below, sealed with an enveloped XML signature by the token
(:mod:`pli.hsm.xml_seal`):

================== ================================ ====================
pli event          REM evidence element             event code, reason
================== ================================ ====================
Deposited          SubmissionAcceptanceRejection    Acceptance
Notified           DeliveryNonDeliveryToRecipient   Delivery
NotificationFailed DeliveryNonDeliveryToRecipient   NonDelivery, reason
IdentityVerified   RetrievalNonRetrievalByRecipient Retrieval
Accepted           AcceptanceRejectionByRecipient   Acceptance
Refused            AcceptanceRejectionByRecipient   Rejection,
                                                    RecipientRejection
Expired            RetrievalNonRetrievalByRecipient RetrievalExpiration,
                                                    RetentionPeriodExpired
ContentDelivered   DownloadNonDownloadByRecipient   pli ``Download``
================== ================================ ====================

Event codes are those of TS 102 640-2 V2.1.1 clause B.1.1 and reasons those
of its Annex D, written as the standard writes them, without ``//`` after
``http:`` (``http:uri.etsi.org/02640/Event#Acceptance``). The ETSI text was
not at hand: the codes were taken from two implementations that cite those
clauses, vefa-peppol (``EventCode``, ``EventReason``) and the e-CODEX /
SPOCS gateway (``SpocsConstants.Evidences``, which adds ``NonDelivery``,
``Retrieval`` and ``RetrievalExpiration``). No source defines a download
code, so ``ContentDelivered`` uses the pli URI ``urn:pli:rem:event:Download``.

Notified is the delivery of the notification (CPCE R.53-3 I), not of the
content; identification is the recipient's retrieval of the letter's
notice, so its evidence carries ``RecipientAuthenticationDetails`` (the
eIDAS level-of-assurance URI of the identification). Non-claim is a
retrieval that never came: the 15-day window closed. Every document states
the parties (names and e-mail addresses), the letter id as the message
identifier, the sender's subject, the event and submission times, the
provider and its seal certificate, and, in a pli extension, the letter's
kind, the attachments' SHA-256 digests and the digest of the sealed event
it attests, which ties it to the event log.

Times come from a ``time_of(event)`` hook: for a legally timed event, the
time of its checked RFC 3161 stamp (``pli.services.stamped_times``); for
others, the time pli's clock recorded, which is never qualified.
The policy is ``urn:pli:rem:policy:qualified`` only for an LRE whose times
are qualified, whose recipient identification is qualified, and whose seal
certificate does not chain to the development root; a qualified claim with
the development chain is refused outright (:mod:`pli.services.evidence_issuer`).
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import NAMESPACE_URL, uuid5

from eventsourcing.utils import get_topic
from lxml import etree

from pli.domain.letter import Letter
from pli.domain.values import Assurance, LetterKind, Party
from pli.services.notification_delivery import EXHAUSTED, PERMANENT

__all__ = [
    "EVIDENCE_FOR",
    "EVIDENCE_TOPICS",
    "PLI_NS",
    "POLICY_NON_QUALIFIED",
    "POLICY_QUALIFIED",
    "REM_NS",
    "EvidenceKind",
    "EvidenceTime",
    "TimeOf",
    "build_evidence",
    "identification_of",
    "letter_of",
    "recorded_time",
]

REM_NS = "http://uri.etsi.org/02640/v2#"
PLI_NS = "urn:pli:rem:v1"
REM_VERSION = "2.1.1"
POLICY_QUALIFIED = "urn:pli:rem:policy:qualified"
POLICY_NON_QUALIFIED = "urn:pli:rem:policy:non-qualified"

_EVENT = "http:uri.etsi.org/02640/Event#"
_REASON = "http:uri.etsi.org/REM/EventReason#"
_PLI_DOWNLOAD = "urn:pli:rem:event:Download"
# eIDAS SAML attribute profile: the level-of-assurance URIs.
_LEVEL_OF_ASSURANCE = {
    Assurance.LOW: "http://eidas.europa.eu/LoA/low",
    Assurance.SUBSTANTIAL: "http://eidas.europa.eu/LoA/substantial",
    Assurance.HIGH: "http://eidas.europa.eu/LoA/high",
}
# CPCE R.53-1: each LRE deposit is authenticated by the sender account and
# a one-time code (RFC 6238).
_SENDER_TOTP = "urn:pli:rem:authentication:sender-account-totp"
_EVIDENCE_IDS = uuid5(NAMESPACE_URL, "urn:pli:rem:evidence-identifier")


@dataclass(frozen=True)
class EvidenceKind:
    """The REM evidence element an event yields, and its event code."""

    element: str
    code: str


EVIDENCE_FOR: dict[str, EvidenceKind] = {
    get_topic(Letter.Deposited): EvidenceKind(
        "SubmissionAcceptanceRejection", _EVENT + "Acceptance"
    ),
    get_topic(Letter.Notified): EvidenceKind(
        "DeliveryNonDeliveryToRecipient", _EVENT + "Delivery"
    ),
    get_topic(Letter.NotificationFailed): EvidenceKind(
        "DeliveryNonDeliveryToRecipient", _EVENT + "NonDelivery"
    ),
    get_topic(Letter.IdentityVerified): EvidenceKind(
        "RetrievalNonRetrievalByRecipient", _EVENT + "Retrieval"
    ),
    get_topic(Letter.Accepted): EvidenceKind(
        "AcceptanceRejectionByRecipient", _EVENT + "Acceptance"
    ),
    get_topic(Letter.Refused): EvidenceKind(
        "AcceptanceRejectionByRecipient", _EVENT + "Rejection"
    ),
    get_topic(Letter.Expired): EvidenceKind(
        "RetrievalNonRetrievalByRecipient", _EVENT + "RetrievalExpiration"
    ),
    get_topic(Letter.ContentDelivered): EvidenceKind(
        "DownloadNonDownloadByRecipient", _PLI_DOWNLOAD
    ),
}
EVIDENCE_TOPICS = tuple(EVIDENCE_FOR)


@dataclass(frozen=True)
class EvidenceTime:
    """When an event happened, by which source, and whether it is qualified."""

    moment: dt.datetime
    source: str
    qualified: bool = False


TimeOf = Callable[[Any], EvidenceTime]


def recorded_time(event: Any) -> EvidenceTime:
    """The time the event records: the server clock, never qualified."""
    return EvidenceTime(event.timestamp, "pli server clock (non-qualified)")


def _q(name: str) -> str:
    return f"{{{REM_NS}}}{name}"


def _p(name: str) -> str:
    return f"{{{PLI_NS}}}{name}"


def _add(parent: etree._Element, name: str, text: str | None = None) -> Any:
    element = etree.SubElement(parent, _q(name))
    if text is not None:
        element.text = text
    return element


def _xs_datetime(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _reasons(event: Any) -> list[tuple[str, str]]:
    """The Annex D reasons of a negative event, with pli's own words."""
    if isinstance(event, Letter.Refused):
        return [(_REASON + "RecipientRejection", "the recipient refused the letter")]
    if isinstance(event, Letter.Expired):
        # CPCE R.53-3 III: non-claim ("non-réclamation").
        details = "the 15-day window closed without a decision (CPCE R.53-3 I)"
        return [(_REASON + "RetentionPeriodExpired", details)]
    if isinstance(event, Letter.NotificationFailed):
        # The notification goes to the recipient's ordinary mailbox.
        if event.reason.startswith(PERMANENT):
            return [(_REASON + "RegularEmailRejection", event.reason)]
        if event.reason == EXHAUSTED:
            return [(_REASON + "RegularEmailUnreachable", event.reason)]
        return [(_REASON + "Other", event.reason)]
    return []


def _entity(parent: etree._Element, name: str, party: Party) -> None:
    entity = _add(parent, name)
    _names(entity, party.name)
    address = _add(entity, "AttributedElectronicAddress", f"mailto:{party.email}")
    address.set("scheme", "mailto")


def _names(entity: etree._Element, name: str) -> None:
    names = _add(_add(entity, "NamesPostalAddresses"), "NamePostalAddress")
    _add(_add(names, "EntityName"), "Name", name)


def build_evidence(
    history: Sequence[Any],
    *,
    provider_name: str,
    seal_certificate: bytes,
    sealed_digest: str,
    time_of: TimeOf = recorded_time,
    qualified: bool,
) -> etree._Element:
    """The unsealed evidence of ``history[-1]``; ``history`` starts at deposit.

    ``seal_certificate`` is the DER seal certificate named as the issuer's;
    ``sealed_digest`` is the event log's digest of the attested event.
    """
    event = history[-1]
    kind = EVIDENCE_FOR[get_topic(type(event))]
    letter: Letter = letter_of(history)
    deposited = time_of(history[0])
    happened = time_of(event)

    root = etree.Element(_q(kind.element), nsmap={None: REM_NS, "pli": PLI_NS})
    root.set("version", REM_VERSION)
    _event(root, kind, event)
    identifier = uuid5(_EVIDENCE_IDS, f"{letter.id}/{letter.version}")
    _add(root, "EvidenceIdentifier", f"urn:uuid:{identifier}")
    policy = POLICY_QUALIFIED if qualified else POLICY_NON_QUALIFIED
    _add(_add(root, "EvidenceIssuerPolicyID"), "PolicyID", policy)
    _issuer(root, provider_name, seal_certificate)
    _authentications(root, letter, history, time_of)

    _add(root, "EventTime", _xs_datetime(happened.moment))
    _add(root, "SubmissionTime", _xs_datetime(deposited.moment))
    _parties_and_message(root, letter)

    extension = _add(_add(root, "Extensions"), "Extension")
    extension.set("isCritical", "false")
    _pli_facts(extension, letter, event, sealed_digest, happened)
    etree.indent(root)
    return root


def _event(root: etree._Element, kind: EvidenceKind, event: Any) -> None:
    _add(root, "EventCode", kind.code)
    reasons = _reasons(event)
    if not reasons:
        return
    holder = _add(root, "EventReasons")
    for code, details in reasons:
        reason = _add(holder, "EventReason")
        _add(reason, "Code", code)
        _add(reason, "Details", details)


def _authentications(
    root: etree._Element, letter: Letter, history: Sequence[Any], time_of: TimeOf
) -> None:
    if letter.kind is LetterKind.LRE:
        sender = _add(root, "SenderAuthenticationDetails")
        deposited = time_of(history[0]).moment
        _add(sender, "AuthenticationTime", _xs_datetime(deposited))
        _add(sender, "AuthenticationMethod", _SENDER_TOTP)
    identification = identification_of(history)
    if identification is not None:
        _recipient_authentication(root, identification, time_of)


def _parties_and_message(root: etree._Element, letter: Letter) -> None:
    _entity(root, "SenderDetails", letter.sender)
    recipient = Party(letter.recipient.name, letter.recipient.email)
    _entity(_add(root, "RecipientsDetails"), "EntityDetails", recipient)
    message = _add(root, "SenderMessageDetails")
    message.set("isNotification", "false")
    _add(message, "MessageSubject", letter.subject)
    _add(message, "MessageIdentifierByREMMD", str(letter.id))


def letter_of(history: Sequence[Any]) -> Letter:
    """The letter as the events of ``history`` leave it."""
    letter = None
    for event in history:
        letter = event.mutate(letter)
    if not isinstance(letter, Letter):
        raise ValueError("a letter's history starts with its deposit")
    return letter


def _issuer(root: etree._Element, provider_name: str, certificate: bytes) -> None:
    issuer = _add(root, "EvidenceIssuerDetails")
    _names(issuer, provider_name)
    details = _add(issuer, "CertificateDetails")
    _add(details, "X509Certificate", base64.b64encode(certificate).decode("ascii"))


def identification_of(history: Sequence[Any]) -> Any:
    """The last ``IdentityVerified`` event of ``history``, if any."""
    found = [e for e in history if isinstance(e, Letter.IdentityVerified)]
    return found[-1] if found else None


def _recipient_authentication(
    root: etree._Element, identified: Any, time_of: TimeOf
) -> None:
    details = _add(root, "RecipientAuthenticationDetails")
    _add(details, "AuthenticationTime", _xs_datetime(time_of(identified).moment))
    level = Assurance(identified.level)
    _add(details, "AuthenticationMethod", _LEVEL_OF_ASSURANCE[level])
    additional = _add(details, "AdditionalDetails")
    etree.SubElement(
        additional,
        _p("Identification"),
        method=identified.method,
        issuer=identified.issuer,
        level=level.name.lower(),
        qualified=_xs_boolean(identified.qualified),
    )


def _xs_boolean(value: bool) -> str:
    return "true" if value else "false"


def _pli_facts(
    extension: etree._Element,
    letter: Letter,
    event: Any,
    sealed_digest: str,
    happened: EvidenceTime,
) -> None:
    facts = etree.SubElement(extension, _p("Letter"), kind=letter.kind.value)
    etree.SubElement(
        facts,
        _p("Event"),
        name=type(event).__name__,
        version=str(letter.version),
        sealedDigest=sealed_digest,
    )
    etree.SubElement(facts, _p("TimeSource")).text = happened.source
    if letter.window_closes_at is not None:
        closes = _xs_datetime(letter.window_closes_at)
        etree.SubElement(facts, _p("WindowClosesAt")).text = closes
    for index, attachment in enumerate(letter.attachments):
        etree.SubElement(
            facts,
            _p("Attachment"),
            index=str(index),
            filename=attachment.filename,
            mediaType=attachment.media_type,
            size=str(attachment.size),
            sha256=attachment.sha256,
        )
    if isinstance(event, Letter.ContentDelivered):
        etree.SubElement(
            facts, _p("DeliveredAttachment"), index=str(event.attachment_index)
        )
