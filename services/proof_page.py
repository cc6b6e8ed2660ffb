"""The printed page of a proof: a bilingual A4 document composed with reportlab.

French first, then English: the statement of what the proof proves with the
time of that fact, both parties, the letter number, every time in UTC and in
Paris time, the attachments' digests and the sealed events' digests, and a
warning box whenever the time source is not qualified. The building blocks
(styles, tables, the warning box, the time formats) are public, so other
sealed documents, such as the proof of consent, print the same way.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from pli.domain.proofs import ProofKind
from pli.domain.values import LetterKind
from pli.services.proof_facts import EVIDENCE_FILE, ProofFacts

__all__ = [
    "NON_QUALIFIED_LABEL",
    "PAGE_MARGIN",
    "PAGE_WIDTH",
    "TITLES",
    "compose_page",
    "grid",
    "own_time_field",
    "page_styles",
    "paris_text",
    "unprintable",
    "utc_text",
    "warning_box",
]

NON_QUALIFIED_LABEL = "Non-qualified: its seal or its time stamps are not qualified"
_PARIS = ZoneInfo("Europe/Paris")

TITLES = {
    ProofKind.DEPOSIT: ("Preuve de dépôt et d'envoi", "Proof of deposit and sending"),
    ProofKind.RECEIPT: ("Preuve de réception", "Proof of receipt"),
    ProofKind.REFUSAL: ("Preuve de refus", "Proof of refusal"),
    ProofKind.NON_CLAIM: ("Preuve de non-réclamation", "Proof of non-claim"),
}


PAGE_MARGIN = 18 * mm
PAGE_WIDTH = A4[0] - 2 * PAGE_MARGIN

_PRODUCTS = {
    LetterKind.LRE: "Lettre recommandée électronique (LRE) / qualified electronic "
    "registered delivery - eIDAS art. 44, CPCE L.100, R.53-1 to R.53-4",
    LetterKind.ERE: "Envoi recommandé électronique simple (ERE) / electronic "
    "registered delivery - eIDAS art. 43; sans équivalence avec la lettre "
    "recommandée papier / not equivalent to a paper registered letter",
}

# What each proof says it proves, in French then English, and at what time.
_STATEMENTS = {
    ProofKind.DEPOSIT: (
        "deposited_at",
        "L'expéditeur a déposé la lettre le {when} (CPCE R.53-2).",
        "The sender deposited the letter on {when}.",
    ),
    ProofKind.RECEIPT: (
        "decided_at",
        "Le destinataire a accepté la lettre le {when} ; son contenu lui a été "
        "remis (CPCE R.53-3 II).",
        "The recipient accepted the letter on {when}; its content was released "
        "to them.",
    ),
    ProofKind.REFUSAL: (
        "decided_at",
        "Le destinataire a refusé la lettre le {when} (CPCE R.53-3 III).",
        "The recipient refused the letter on {when}.",
    ),
    ProofKind.NON_CLAIM: (
        "window_closes_at",
        "Le destinataire n'a ni accepté ni refusé la lettre dans le délai de "
        "quinze jours, qui a pris fin le {when} (CPCE R.53-3 III).",
        "The recipient neither accepted nor refused the letter within the "
        "fifteen-day window, which ended on {when}.",
    ),
}

_TIME_LABELS = {
    "deposited_at": "Dépôt / Deposit",
    "notified_at": "Envoi de la notification / Notification sent",
    "window_closes_at": "Fin du délai de 15 jours / End of the 15-day window",
    "decided_at": "Décision / Decision",
    "expired_at": "Non-réclamation constatée / Non-claim recorded",
}
_DECISION_LABELS = {
    ProofKind.RECEIPT: "Acceptation / Acceptance",
    ProofKind.REFUSAL: "Refus / Refusal",
}


_FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
_FONTS = {
    "Sans": "DejaVuSans.ttf",
    "Sans-Bold": "DejaVuSans-Bold.ttf",
    "Sans-Oblique": "DejaVuSans-Oblique.ttf",
}


@functools.cache
def _register_fonts() -> frozenset[int]:
    # DejaVu (Debian's fonts-dejavu-core) is embedded in the PDF, so the proof
    # prints the same everywhere; it covers the Latin, Greek and Cyrillic
    # scripts. Returns the code points the regular face can print.
    for name, file in _FONTS.items():
        path = _FONT_DIR / file
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: install fonts-dejavu-core")
        pdfmetrics.registerFont(TTFont(name, str(path)))
    face = pdfmetrics.getFont("Sans").face
    return frozenset(face.charToGlyph)


def unprintable(text: str) -> str:
    """The characters of ``text`` that a proof page cannot print, in order."""
    printable = _register_fonts()
    return "".join(dict.fromkeys(ch for ch in text if ord(ch) not in printable))


@functools.cache
def page_styles() -> dict[str, ParagraphStyle]:
    """The paragraph styles of proof pages, in the embedded DejaVu fonts."""
    _register_fonts()
    base = ParagraphStyle("base", fontName="Sans", fontSize=9, leading=12)
    bold = ParagraphStyle("bold", base, fontName="Sans-Bold")
    return {
        "base": base,
        "small": ParagraphStyle("small", base, fontSize=7.5, leading=10),
        "title": ParagraphStyle("title", bold, fontSize=16, leading=20),
        "subtitle": ParagraphStyle(
            "subtitle", base, fontName="Sans-Oblique", fontSize=12, leading=18
        ),
        "heading": ParagraphStyle("heading", bold, spaceBefore=8, spaceAfter=3),
        "warning": ParagraphStyle("warning", bold, textColor=colors.red),
        "digest": ParagraphStyle("digest", base, fontName="Courier", fontSize=7),
    }


def a4_document(out: BytesIO, french: str, english: str, about: str) -> Any:
    """An A4 page layout for a bilingual proof titled in both languages."""
    return SimpleDocTemplate(
        out,
        pagesize=A4,
        leftMargin=PAGE_MARGIN,
        rightMargin=PAGE_MARGIN,
        topMargin=PAGE_MARGIN,
        bottomMargin=PAGE_MARGIN,
        title=f"{english} - {about}",
        author="pli",
        subject=f"{french} / {english}",
        creator="pli",
    )


def _compose_page(kind: ProofKind, facts: ProofFacts) -> bytes:
    styles = page_styles()
    french, english = TITLES[kind]
    out = BytesIO()
    document = a4_document(out, french, english, f"letter {facts.letter_id}")

    story: list[Any] = [
        Paragraph(escape(french), styles["title"]),
        Paragraph(escape(english), styles["subtitle"]),
        Paragraph(escape(_PRODUCTS[LetterKind(facts.kind)]), styles["small"]),
        Spacer(1, 4 * mm),
    ]
    if not facts.qualified:
        story += [warning_box(), Spacer(1, 3 * mm)]
    story += [
        Paragraph(_statement(kind, facts), styles["base"]),
        Paragraph("Parties et lettre / Parties and letter", styles["heading"]),
        _parties_table(facts),
        Paragraph("Dates et heures / Dates and times", styles["heading"]),
        _times_table(kind, facts),
        Paragraph("Pièces jointes / Attachments", styles["heading"]),
        grid(
            [("Fichier / File", "Octets / Bytes", "SHA-256")]
            + [(name, str(size), digest) for name, size, digest in facts.attachments],
            [56 * mm, 20 * mm, PAGE_WIDTH - 76 * mm],
            digests=True,
        ),
        Paragraph("Événements scellés / Sealed events", styles["heading"]),
        grid(
            [("Version", "Événement / Event", "Empreinte / Digest (SHA-256)")]
            + [
                (str(version), event, digest) for version, event, digest in facts.events
            ],
            [16 * mm, 58 * mm, PAGE_WIDTH - 74 * mm],
            digests=True,
        ),
        Spacer(1, 4 * mm),
        Paragraph(_closing(facts), styles["small"]),
    ]

    def footer(canvas: Canvas, doc: SimpleDocTemplate) -> None:
        canvas.saveState()
        canvas.setFont("Sans", 7)
        line = f"pli - {english} - {facts.letter_id} - page {doc.page}"
        canvas.drawString(PAGE_MARGIN, 10 * mm, line)
        canvas.restoreState()

    document.build(story, onFirstPage=footer, onLaterPages=footer)
    return out.getvalue()


def warning_box() -> Table:
    """The red box that marks a document whose seal or time is not qualified."""
    style = page_styles()["warning"]
    french = "Non qualifié : son cachet ou ses horodatages ne sont pas qualifiés"
    box = Table(
        [[Paragraph(NON_QUALIFIED_LABEL, style)], [Paragraph(french, style)]],
        colWidths=[PAGE_WIDTH],
    )
    box.setStyle(TableStyle([("BOX", (0, 0), (-1, -1), 1.2, colors.red)]))
    return box


def _statement(kind: ProofKind, facts: ProofFacts) -> str:
    field, french, english = _STATEMENTS[kind]
    when = getattr(facts, field)
    french, english = (
        french.format(when=paris_text(when)),
        english.format(when=paris_text(when)),
    )
    # CPCE R.53-3 I: the proof of deposit is issued when the notification
    # leaves, so it also states when that was.
    if kind is ProofKind.DEPOSIT and facts.notified_at is not None:
        notified = paris_text(facts.notified_at)
        french += " Le destinataire en a été avisé par courrier électronique le "
        french += f"{notified} (CPCE R.53-3 I)."
        english += f" The recipient was notified by e-mail on {notified}."
    return f"{escape(french)}<br/><i>{escape(english)}</i>"


def _parties_table(facts: ProofFacts) -> Table:
    rows = [
        ("Numéro de la lettre / Letter number", facts.letter_id),
        ("Expéditeur / Sender", f"{facts.sender_name}\n{facts.sender_email}"),
        (
            "Destinataire / Recipient",
            f"{facts.recipient_name}\n{facts.recipient_email}",
        ),
    ]
    return grid(rows, [62 * mm, PAGE_WIDTH - 62 * mm], header=False, style="base")


def _times_table(kind: ProofKind, facts: ProofFacts) -> Table:
    labels = dict(
        _TIME_LABELS, decided_at=_DECISION_LABELS.get(kind, _TIME_LABELS["decided_at"])
    )
    known = [(name, value) for name, value in facts.times() if value is not None]
    rows = [("", "UTC", "Europe/Paris")] + [
        (labels[name], utc_text(value), paris_text(value))
        for name, value in sorted(known, key=lambda item: item[1])
    ]
    return grid(rows, [70 * mm, 46 * mm, PAGE_WIDTH - 116 * mm])


def _closing(facts: ProofFacts) -> str:
    french = (
        f"Source de l'heure : {facts.time_source}. Ce document est scellé par le "
        "cachet électronique avancé du prestataire (PAdES) ; le fichier joint "
        f"{EVIDENCE_FILE} reprend ces éléments sous une forme lisible par machine."
    )
    english = (
        f"Time source: {facts.time_source}. This document is sealed with the "
        "provider's advanced electronic seal (PAdES); the attached "
        f"{EVIDENCE_FILE} carries the same facts in machine-readable form."
    )
    return f"{escape(french)}<br/><i>{escape(english)}</i>"


def grid(
    rows: list[tuple[str, ...]],
    widths: list[float],
    *,
    header: bool = True,
    digests: bool = False,
    style: str = "small",
) -> Table:
    """A bordered table of text cells; with ``digests``, the last column in mono."""
    styles = page_styles()

    def cell(text: str, row: int, column: int) -> Paragraph:
        mono = digests and column == len(widths) - 1 and row > 0
        lines = "<br/>".join(escape(line) for line in text.split("\n"))
        return Paragraph(lines, styles["digest" if mono else style])

    cells = [[cell(t, r, c) for c, t in enumerate(row)] for r, row in enumerate(rows)]
    table = Table(cells, colWidths=widths, repeatRows=1 if header else 0)
    commands: list[tuple[Any, ...]] = [
        ("GRID", (0, 0), (-1, -1), 0.4, colors.grey),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("LEFTPADDING", (0, 0), (-1, -1), 3),
        ("RIGHTPADDING", (0, 0), (-1, -1), 3),
    ]
    if header:
        commands.append(("BACKGROUND", (0, 0), (-1, 0), colors.whitesmoke))
    table.setStyle(TableStyle(commands))
    return table


def utc_text(value: datetime) -> str:
    """A time as printed on proofs, in UTC."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def paris_text(value: datetime) -> str:
    """A time as printed on proofs, in Paris civil time with its UTC offset."""
    local = value.astimezone(_PARIS)
    offset = local.strftime("%z")
    return local.strftime(f"%Y-%m-%d %H:%M:%S %Z (UTC{offset[:3]}:{offset[3:]})")


def own_time_field(kind: ProofKind) -> str:
    """The facts' field holding the time of the fact this proof proves."""
    return _STATEMENTS[kind][0]


def compose_page(kind: ProofKind, facts: ProofFacts) -> bytes:
    """The proof's page as an unsealed PDF."""
    return _compose_page(kind, facts)
