"""Proof documents: the four proofs of CPCE R.53-2 and R.53-3 as sealed PDFs.

Each proof is composed with reportlab as a bilingual (French, then English)
A4 document that states the R.53-2 items: both parties' names and e-mail
addresses, the letter number, the time of deposit in UTC and Paris time, and
the time the proof is about (acceptance, refusal, end of the window). The
same facts travel as a machine-readable ``evidence.json``, embedded with
pyHanko as a PDF 2.0 associated file of the document (relationship ``Data``)
and named after the ETSI EN 319 522-2 evidence event the proof attests, so an
auditor's tool reads the facts without parsing the page.

Sealing comes last (``pli.hsm.pades``), as the final incremental update, so
the seal covers the page and the evidence alike. Proofs are written to
``<proofs dir>/<letter id>/<proof kind>.pdf`` atomically; writing one again
replaces it, which makes re-running the proof builder harmless.
"""

from __future__ import annotations

import functools
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.embed import (
    EmbeddedFileObject,
    EmbeddedFileParams,
    FileSpec,
    embed_file,
)
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.pdf_utils.writer import copy_into_new_writer
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
from pli.hsm.pades import PdfSealer

__all__ = [
    "EVIDENCE_FILE",
    "EVIDENCE_FORMAT",
    "NON_QUALIFIED_LABEL",
    "ProofFacts",
    "ProofKind",
    "ProofWriter",
    "evidence_document",
    "facts_from_evidence",
    "render_proof",
]

EVIDENCE_FILE = "evidence.json"
EVIDENCE_FORMAT = "pli-proof-evidence/1"
NON_QUALIFIED_LABEL = "Non-qualified: development seal and clock"

_PARIS = ZoneInfo("Europe/Paris")
_SAFE_LETTER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_TIME_FIELDS = (
    "deposited_at",
    "notified_at",
    "window_closes_at",
    "decided_at",
    "expired_at",
)

_TITLES = {
    ProofKind.DEPOSIT: ("Preuve de dépôt et d'envoi", "Proof of deposit and sending"),
    ProofKind.RECEIPT: ("Preuve de réception", "Proof of receipt"),
    ProofKind.REFUSAL: ("Preuve de refus", "Proof of refusal"),
    ProofKind.NON_CLAIM: ("Preuve de non-réclamation", "Proof of non-claim"),
}

# The ETSI EN 319 522-2 evidence each proof corresponds to. CPCE R.53-3 I
# issues the proof of deposit when the notification leaves, so it attests the
# accepted submission; non-claim is a hand-over that failed for want of a
# decision within the window.
_ETSI_EVENTS = {
    ProofKind.DEPOSIT: "SubmissionAcceptance",
    ProofKind.RECEIPT: "AcceptanceByRecipient",
    ProofKind.REFUSAL: "RejectionByRecipient",
    ProofKind.NON_CLAIM: "ContentHandoverFailure",
}


@dataclass(frozen=True)
class ProofFacts:
    """What a proof states about one letter: parties, times, content, events."""

    letter_id: str
    kind: str
    sender_name: str
    sender_email: str
    recipient_name: str
    recipient_email: str
    attachments: list[tuple[str, int, str]]
    deposited_at: datetime
    notified_at: datetime | None
    window_closes_at: datetime | None
    decided_at: datetime | None
    expired_at: datetime | None
    events: list[tuple[int, str, str]]
    time_source: str

    def __post_init__(self) -> None:
        if not _SAFE_LETTER_ID.fullmatch(self.letter_id) or ".." in self.letter_id:
            raise ValueError("letter_id must be a plain identifier")
        LetterKind(self.kind)
        for name, value in self.times():
            if value is not None and value.utcoffset() is None:
                raise ValueError(f"{name} must be timezone-aware")

    def times(self) -> Iterator[tuple[str, datetime | None]]:
        """Each time field by name, in the order of the letter's life."""
        for name in _TIME_FIELDS:
            yield name, getattr(self, name)

    @property
    def qualified(self) -> bool:
        """Whether the time source (and so the whole proof) claims qualification."""
        return "non-qualified" not in self.time_source.lower()


def evidence_document(proof_kind: ProofKind | str, facts: ProofFacts) -> dict[str, Any]:
    """The machine-readable evidence a proof embeds, ready for ``json.dumps``."""
    kind = ProofKind(proof_kind)
    return {
        "format": EVIDENCE_FORMAT,
        "proof": kind.value,
        "etsi_en_319_522_event": _ETSI_EVENTS[kind],
        "letter": {"id": facts.letter_id, "kind": facts.kind},
        "sender": {"name": facts.sender_name, "email": facts.sender_email},
        "recipient": {"name": facts.recipient_name, "email": facts.recipient_email},
        "attachments": [
            {"filename": name, "size": size, "sha256": digest}
            for name, size, digest in facts.attachments
        ],
        "times": {name: _iso(value) for name, value in facts.times()},
        "time_source": facts.time_source,
        "qualified": facts.qualified,
        "events": [
            {"version": version, "event": event, "sealed_digest": digest}
            for version, event, digest in facts.events
        ],
    }


def facts_from_evidence(document: dict[str, Any]) -> ProofFacts:
    """Read back the facts an embedded evidence document states."""
    if document.get("format") != EVIDENCE_FORMAT:
        raise ValueError(f"not a {EVIDENCE_FORMAT} document")
    times = {name: _from_iso(document["times"][name]) for name in _TIME_FIELDS}
    return ProofFacts(
        letter_id=document["letter"]["id"],
        kind=document["letter"]["kind"],
        sender_name=document["sender"]["name"],
        sender_email=document["sender"]["email"],
        recipient_name=document["recipient"]["name"],
        recipient_email=document["recipient"]["email"],
        attachments=[
            (a["filename"], a["size"], a["sha256"]) for a in document["attachments"]
        ],
        events=[
            (e["version"], e["event"], e["sealed_digest"]) for e in document["events"]
        ],
        time_source=document["time_source"],
        **times,
    )


def render_proof(proof_kind: ProofKind | str, facts: ProofFacts) -> bytes:
    """Compose the unsealed proof PDF, with ``evidence.json`` attached."""
    kind = ProofKind(proof_kind)
    # CPCE R.53-3 II and III: each proof states the time of the fact it proves.
    own_time = _STATEMENTS[kind][0]
    if getattr(facts, own_time) is None:
        raise ValueError(f"a {kind.value} proof needs {own_time}")

    page = _compose_page(kind, facts)

    evidence = json.dumps(evidence_document(kind, facts), ensure_ascii=False, indent=2)
    return _attach_evidence(page, evidence.encode("utf-8"))


class ProofWriter:
    """Renders, seals and stores proofs under ``<proofs_dir>/<letter id>/``."""

    def __init__(self, sealer: PdfSealer, proofs_dir: Path) -> None:
        self.sealer = sealer
        self.proofs_dir = proofs_dir

    def path_for(self, proof_kind: ProofKind | str, letter_id: str) -> Path:
        """Where the proof of this kind for this letter is stored."""
        return self.proofs_dir / letter_id / f"{ProofKind(proof_kind).value}.pdf"

    def write(self, proof_kind: ProofKind | str, facts: ProofFacts) -> Path:
        """Render, seal and store one proof, replacing any earlier copy."""
        kind = ProofKind(proof_kind)
        french, english = _TITLES[kind]
        sealed = self.sealer.seal(
            render_proof(kind, facts), reason=f"{french} / {english}"
        )

        path = self.path_for(kind, facts.letter_id)
        _write_atomically(path, sealed)
        return path


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _attach_evidence(pdf: bytes, evidence: bytes) -> bytes:
    writer = copy_into_new_writer(PdfFileReader(BytesIO(pdf)))
    stream = EmbeddedFileObject.from_file_data(
        writer, evidence, mime_type="application/json", params=EmbeddedFileParams()
    )
    spec = FileSpec(
        file_spec_string=EVIDENCE_FILE,
        file_name=EVIDENCE_FILE,
        embedded_data=stream,
        description="Machine-readable evidence (ETSI EN 319 522-2 semantics)",
        af_relationship=generic.pdf_name("/Data"),
    )
    embed_file(writer, spec)
    writer.root["/PageMode"] = generic.pdf_name("/UseAttachments")
    out = BytesIO()
    writer.write(out)
    return out.getvalue()


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _from_iso(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


# -- the page ---------------------------------------------------------------

_MARGIN = 18 * mm
_WIDTH = A4[0] - 2 * _MARGIN

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


@functools.cache
def _styles() -> dict[str, ParagraphStyle]:
    # Bitstream Vera ships with reportlab and is embedded in the PDF, so the
    # proof renders the same everywhere, accented French names included.
    for name, file in (("Vera", "Vera.ttf"), ("Vera-Bd", "VeraBd.ttf")):
        pdfmetrics.registerFont(TTFont(name, file))
    pdfmetrics.registerFont(TTFont("Vera-It", "VeraIt.ttf"))
    base = ParagraphStyle("base", fontName="Vera", fontSize=9, leading=12)
    bold = ParagraphStyle("bold", base, fontName="Vera-Bd")
    return {
        "base": base,
        "small": ParagraphStyle("small", base, fontSize=7.5, leading=10),
        "title": ParagraphStyle("title", bold, fontSize=16, leading=20),
        "subtitle": ParagraphStyle(
            "subtitle", base, fontName="Vera-It", fontSize=12, leading=18
        ),
        "heading": ParagraphStyle("heading", bold, spaceBefore=8, spaceAfter=3),
        "warning": ParagraphStyle("warning", bold, textColor=colors.red),
        "digest": ParagraphStyle("digest", base, fontName="Courier", fontSize=7),
    }


def _compose_page(kind: ProofKind, facts: ProofFacts) -> bytes:
    styles = _styles()
    french, english = _TITLES[kind]
    out = BytesIO()
    document = SimpleDocTemplate(
        out,
        pagesize=A4,
        leftMargin=_MARGIN,
        rightMargin=_MARGIN,
        topMargin=_MARGIN,
        bottomMargin=_MARGIN,
        title=f"{english} - letter {facts.letter_id}",
        author="pli",
        subject=f"{french} / {english}",
        creator="pli",
    )

    story: list[Any] = [
        Paragraph(escape(french), styles["title"]),
        Paragraph(escape(english), styles["subtitle"]),
        Paragraph(escape(_PRODUCTS[LetterKind(facts.kind)]), styles["small"]),
        Spacer(1, 4 * mm),
    ]
    if not facts.qualified:
        story += [_warning_box(), Spacer(1, 3 * mm)]
    story += [
        Paragraph(_statement(kind, facts), styles["base"]),
        Paragraph("Parties et lettre / Parties and letter", styles["heading"]),
        _parties_table(facts),
        Paragraph("Dates et heures / Dates and times", styles["heading"]),
        _times_table(kind, facts),
        Paragraph("Pièces jointes / Attachments", styles["heading"]),
        _grid(
            [("Fichier / File", "Octets / Bytes", "SHA-256")]
            + [(name, str(size), digest) for name, size, digest in facts.attachments],
            [56 * mm, 20 * mm, _WIDTH - 76 * mm],
            digests=True,
        ),
        Paragraph("Événements scellés / Sealed events", styles["heading"]),
        _grid(
            [("Version", "Événement / Event", "Empreinte / Digest (SHA-256)")]
            + [
                (str(version), event, digest) for version, event, digest in facts.events
            ],
            [16 * mm, 58 * mm, _WIDTH - 74 * mm],
            digests=True,
        ),
        Spacer(1, 4 * mm),
        Paragraph(_closing(facts), styles["small"]),
    ]

    def footer(canvas: Canvas, doc: SimpleDocTemplate) -> None:
        canvas.saveState()
        canvas.setFont("Vera", 7)
        line = f"pli - {english} - {facts.letter_id} - page {doc.page}"
        canvas.drawString(_MARGIN, 10 * mm, line)
        canvas.restoreState()

    document.build(story, onFirstPage=footer, onLaterPages=footer)
    return out.getvalue()


def _warning_box() -> Table:
    style = _styles()["warning"]
    french = "Non qualifié : cachet et horloge de développement"
    box = Table(
        [[Paragraph(NON_QUALIFIED_LABEL, style)], [Paragraph(french, style)]],
        colWidths=[_WIDTH],
    )
    box.setStyle(TableStyle([("BOX", (0, 0), (-1, -1), 1.2, colors.red)]))
    return box


def _statement(kind: ProofKind, facts: ProofFacts) -> str:
    field, french, english = _STATEMENTS[kind]
    when = getattr(facts, field)
    french, english = (
        french.format(when=_paris(when)),
        english.format(when=_paris(when)),
    )
    # CPCE R.53-3 I: the proof of deposit is issued when the notification
    # leaves, so it also states when that was.
    if kind is ProofKind.DEPOSIT and facts.notified_at is not None:
        notified = _paris(facts.notified_at)
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
    return _grid(rows, [62 * mm, _WIDTH - 62 * mm], header=False, style="base")


def _times_table(kind: ProofKind, facts: ProofFacts) -> Table:
    labels = dict(
        _TIME_LABELS, decided_at=_DECISION_LABELS.get(kind, _TIME_LABELS["decided_at"])
    )
    known = [(name, value) for name, value in facts.times() if value is not None]
    rows = [("", "UTC", "Europe/Paris")] + [
        (labels[name], _utc(value), _paris(value))
        for name, value in sorted(known, key=lambda item: item[1])
    ]
    return _grid(rows, [70 * mm, 46 * mm, _WIDTH - 116 * mm])


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


def _grid(
    rows: list[tuple[str, ...]],
    widths: list[float],
    *,
    header: bool = True,
    digests: bool = False,
    style: str = "small",
) -> Table:
    styles = _styles()

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


def _utc(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _paris(value: datetime) -> str:
    local = value.astimezone(_PARIS)
    offset = local.strftime("%z")
    return local.strftime(f"%Y-%m-%d %H:%M:%S %Z (UTC{offset[:3]}:{offset[3:]})")
