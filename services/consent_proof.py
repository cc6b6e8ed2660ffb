"""The proof of consent: a consumer's consent history as a sealed PDF.

CPCE L.100 lets a provider send an LRE to a consumer only with the
consumer's prior consent, which the sender must be able to prove. This
document states, in French then English, who consented (the recipient
address), to which sender account, when (UTC and Paris time), how, to which
version of the consent text, with which evidence reference, and any
revocation; it lists the digests of the consent's sealed events, so an
auditor ties the page to the event log. It is composed with the same
building blocks as the letter proofs (``pli.services.proof_page``) and
sealed like them, as PAdES baseline B-LT with the provider's seal key in the
token.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from typing import Any
from xml.sax.saxutils import escape

from reportlab.lib.units import mm
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table

from pli.domain.consent import Consent, ConsentStep
from pli.domain.sender_account import SenderAccount
from pli.hsm.pades import PdfSealer
from pli.infrastructure.envelope import event_digest
from pli.infrastructure.event_store import SealedApplication
from pli.services.proof_builder import NON_QUALIFIED_TIME
from pli.services.proof_page import (
    PAGE_MARGIN,
    PAGE_WIDTH,
    a4_document,
    grid,
    page_styles,
    paris_text,
    utc_text,
    warning_box,
)

__all__ = [
    "TITLE",
    "ConsentFacts",
    "consent_facts",
    "render_consent_proof",
    "seal_consent_proof",
]

TITLE = ("Preuve de consentement", "Proof of consent")

_SCOPE = (
    "Consentement préalable d'un destinataire non professionnel à recevoir des "
    "lettres recommandées électroniques (CPCE L.100) / A consumer recipient's "
    "prior consent to receive electronic registered letters"
)
_ACTIONS = {
    "granted": "Consentement / Grant",
    "revoked": "Révocation / Revocation",
}


@dataclass(frozen=True)
class ConsentFacts:
    """What a proof of consent states: parties, history and sealed events."""

    provider_name: str
    consent_id: str
    sender_account_id: str
    sender_name: str
    recipient_address: str
    is_live: bool
    history: list[ConsentStep]
    events: list[tuple[int, str, str]]
    time_source: str
    # Whether the seal and the time are both qualified (pli.hsm.qualification).
    qualified: bool = False


def consent_facts(
    app: SealedApplication,
    consent: Consent,
    account: SenderAccount,
    *,
    provider_name: str,
    time_source: str = NON_QUALIFIED_TIME,
) -> ConsentFacts:
    """The facts of ``consent`` as of its version, with its sealed events' digests."""
    if consent.sender_account_id != account.id:
        raise ValueError("the consent belongs to another sender account")
    stored = app.recorder.select_events(originator_id=consent.id, lte=consent.version)
    events = [
        (
            s.originator_version,
            s.topic.rpartition(".")[2],
            event_digest(str(consent.id), s.originator_version, s.topic, s.state),
        )
        for s in stored
    ]
    return ConsentFacts(
        provider_name=provider_name,
        consent_id=str(consent.id),
        sender_account_id=str(account.id),
        sender_name=account.name,
        recipient_address=consent.recipient_address,
        is_live=consent.is_live,
        history=list(consent.history),
        events=events,
        time_source=time_source,
    )


def seal_consent_proof(sealer: PdfSealer, facts: ConsentFacts) -> bytes:
    """Render the proof of consent and seal it as PAdES in the token."""
    french, english = TITLE
    return sealer.seal(render_consent_proof(facts), reason=f"{french} / {english}")


def render_consent_proof(facts: ConsentFacts) -> bytes:
    """The unsealed proof of consent as a one-page A4 PDF."""
    styles = page_styles()
    french, english = TITLE
    out = BytesIO()
    document = a4_document(out, french, english, f"consent {facts.consent_id}")

    story: list[Any] = [
        Paragraph(escape(french), styles["title"]),
        Paragraph(escape(english), styles["subtitle"]),
        Paragraph(escape(_SCOPE), styles["small"]),
        Spacer(1, 4 * mm),
    ]
    if not facts.qualified:
        story += [warning_box(), Spacer(1, 3 * mm)]
    story += [
        Paragraph(_statement(facts), styles["base"]),
        Paragraph("Parties et consentement / Parties and consent", styles["heading"]),
        _parties_table(facts),
        Paragraph("Historique / History", styles["heading"]),
        _history_table(facts.history),
        Paragraph("Événements scellés / Sealed events", styles["heading"]),
        grid(
            [("Version", "Événement / Event", "Empreinte / Digest (SHA-256)")]
            + [(str(version), name, digest) for version, name, digest in facts.events],
            [16 * mm, 40 * mm, PAGE_WIDTH - 56 * mm],
            digests=True,
        ),
        Spacer(1, 4 * mm),
        Paragraph(_closing(facts), styles["small"]),
    ]

    def footer(canvas: Canvas, doc: SimpleDocTemplate) -> None:
        canvas.saveState()
        canvas.setFont("Sans", 7)
        line = f"pli - {english} - {facts.consent_id} - page {doc.page}"
        canvas.drawString(PAGE_MARGIN, 10 * mm, line)
        canvas.restoreState()

    document.build(story, onFirstPage=footer, onLaterPages=footer)
    return out.getvalue()


def _statement(facts: ConsentFacts) -> str:
    last = facts.history[-1] if facts.history else None
    if last is None:
        french = "Aucun consentement n'a été enregistré."
        english = "No consent was recorded."
    elif facts.is_live:
        when = paris_text(last.at)
        french = (
            f"Le destinataire a consenti le {when} ; ce consentement est en vigueur."
        )
        english = f"The recipient consented on {when}; the consent is live."
    else:
        when = paris_text(last.at)
        french = f"Le destinataire a révoqué son consentement le {when}."
        english = f"The recipient revoked the consent on {when}."
    return f"{escape(french)}<br/><i>{escape(english)}</i>"


def _parties_table(facts: ConsentFacts) -> Table:
    status = "en vigueur / live" if facts.is_live else "non en vigueur / not live"
    rows = [
        ("Prestataire / Provider", facts.provider_name),
        (
            "Compte expéditeur / Sender account",
            f"{facts.sender_name}\n{facts.sender_account_id}",
        ),
        ("Adresse du destinataire / Recipient address", facts.recipient_address),
        ("Consentement / Consent", facts.consent_id),
        ("État / Status", status),
    ]
    return grid(rows, [62 * mm, PAGE_WIDTH - 62 * mm], header=False, style="base")


def _history_table(history: list[ConsentStep]) -> Table:
    rows = [("Version", "Action", "UTC / Europe/Paris", "Modalités / Details")]
    for step in history:
        details = [f"Méthode / Method: {step.method}"]
        if step.text_version:
            details.append(f"Version du texte / Text version: {step.text_version}")
        if step.evidence_reference:
            details.append(f"Référence / Evidence: {step.evidence_reference}")
        rows.append(
            (
                str(step.version),
                _ACTIONS[step.action],
                f"{utc_text(step.at)}\n{paris_text(step.at)}",
                "\n".join(details),
            )
        )
    return grid(rows, [16 * mm, 40 * mm, 56 * mm, PAGE_WIDTH - 112 * mm])


def _closing(facts: ConsentFacts) -> str:
    french = (
        f"Source de l'heure : {facts.time_source}. Ce document est scellé par le "
        "cachet électronique avancé du prestataire (PAdES)."
    )
    english = (
        f"Time source: {facts.time_source}. This document is sealed with the "
        "provider's advanced electronic seal (PAdES)."
    )
    return f"{escape(french)}<br/><i>{escape(english)}</i>"
