"""The demo's own letter: a signed formal notice to pay rent arrears.

``pli demo`` needs a realistic document to send, one that carries its own
signature, so it can show that pli hands the recipient the very bytes the
sender deposited. This module composes a one-page French *mise en demeure
de payer* (formal notice to pay) with reportlab and signs it, PAdES style,
with pyHanko's ``SimpleSigner``.

The signature is the fictional sender's, made with a demo key and a
self-signed certificate kept in the demo's work directory. It is not pli's
seal: pli never signs letters, it seals proofs with the key in its token.
Every party, address and amount in the letter is imaginary.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass
from decimal import Decimal
from io import BytesIO
from pathlib import Path
from zoneinfo import ZoneInfo

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from pyhanko.keys import load_cert_from_pemder, load_private_key_from_pemder
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.sign import fields, signers
from pyhanko.stamp import TextStampStyle
from pyhanko_certvalidator.registry import SimpleCertificateStore
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    Flowable,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

__all__ = ["CERTIFICATE_FILE", "KEY_FILE", "compose_formal_notice"]

logger = logging.getLogger(__name__)

KEY_FILE = "demo-signer-key.pem"
CERTIFICATE_FILE = "demo-signer-cert.pem"

_PARIS = ZoneInfo("Europe/Paris")
_FIELD_NAME = "Signature1"
_CERTIFICATE_LIFETIME = dt.timedelta(days=3650)
_RENT = Decimal("850.00")
_CHARGES = Decimal("90.00")
_MONTHS = (
    "janvier",
    "février",
    "mars",
    "avril",
    "mai",
    "juin",
    "juillet",
    "août",
    "septembre",
    "octobre",
    "novembre",
    "décembre",
)
_NBSP = "\u00a0"


@dataclass(frozen=True)
class _DemoSigner:
    key_path: Path
    certificate_path: Path


def _write_private(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(data)


def _load_or_create_key(path: Path) -> rsa.RSAPrivateKey:
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{path} does not hold an RSA key")
        return key

    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    _write_private(
        path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    logger.info("demo signing key created", extra={"path": str(path)})
    return key


def _issue_certificate(key: rsa.RSAPrivateKey, now: dt.datetime) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SCI Exemple (fictive)"),
            x509.NameAttribute(NameOID.COMMON_NAME, "SCI Exemple - demo signer"),
        ]
    )
    public_key = key.public_key()
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=True,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + _CERTIFICATE_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
        .sign(key, hashes.SHA256())
    )


def _certificate_fits(path: Path, key: rsa.RSAPrivateKey, now: dt.datetime) -> bool:
    if not path.exists():
        return False
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    same_key = certificate.public_key() == key.public_key()
    current = certificate.not_valid_after_utc > now + dt.timedelta(days=1)
    return same_key and current


def _demo_signer(work_dir: Path) -> _DemoSigner:
    work_dir.mkdir(parents=True, exist_ok=True)
    signer = _DemoSigner(work_dir / KEY_FILE, work_dir / CERTIFICATE_FILE)
    key = _load_or_create_key(signer.key_path)

    now = dt.datetime.now(dt.UTC)
    if not _certificate_fits(signer.certificate_path, key, now):
        certificate = _issue_certificate(key, now)
        signer.certificate_path.write_bytes(
            certificate.public_bytes(serialization.Encoding.PEM)
        )
        logger.info(
            "demo signing certificate issued",
            extra={"path": str(signer.certificate_path)},
        )
    return signer


def _euros(amount: Decimal) -> str:
    whole, cents = f"{amount:,.2f}".split(".")
    return f"{whole.replace(',', _NBSP)},{cents}{_NBSP}€"


def _french_date(day: dt.date) -> str:
    ordinal = "1er" if day.day == 1 else str(day.day)
    return f"{ordinal} {_MONTHS[day.month - 1]} {day.year}"


def _month(first_day: dt.date, *, with_year: bool) -> str:
    name = _MONTHS[first_day.month - 1]
    return f"{name} {first_day.year}" if with_year else name


def _unpaid_months(today: dt.date) -> list[dt.date]:
    first = today.replace(day=1)
    months: list[dt.date] = []
    for _ in range(3):
        first = (first - dt.timedelta(days=1)).replace(day=1)
        months.append(first)
    return list(reversed(months))


class _SignatureSpace(Flowable):
    """Room left in the flow for the signature widget; remembers where it fell."""

    def __init__(self, width: float, height: float) -> None:
        super().__init__()
        self.width = width
        self.height = height
        self.box: tuple[int, int, int, int] | None = None

    def wrap(self, *_available: float) -> tuple[float, float]:
        return self.width, self.height

    def draw(self) -> None:
        x, y = self.canv.absolutePosition(0, 0)
        self.box = (int(x), int(y), int(x + self.width), int(y + self.height))


class _Indented(Flowable):
    """Shifts a flowable right, so the signature sits under the signatory."""

    def __init__(self, inner: Flowable, indent: float) -> None:
        super().__init__()
        self.inner = inner
        self.indent = indent

    def wrap(
        self, available_width: float, available_height: float
    ) -> tuple[float, float]:
        width, height = self.inner.wrap(available_width - self.indent, available_height)
        return width + self.indent, height

    def draw(self) -> None:
        self.inner.drawOn(self.canv, self.indent, 0)


def _styles() -> dict[str, ParagraphStyle]:
    base = getSampleStyleSheet()["Normal"]
    body = ParagraphStyle("body", base, fontName="Helvetica", fontSize=10, leading=13)
    return {
        "body": ParagraphStyle("justified", body, alignment=4, spaceAfter=6),
        "plain": body,
        "right": ParagraphStyle("right", body, leftIndent=95 * mm),
        "subject": ParagraphStyle("subject", body, fontName="Helvetica-Bold"),
        "small": ParagraphStyle(
            "small", body, fontSize=7.5, leading=9, textColor=colors.grey
        ),
    }


def _arrears_table(months: list[dt.date]) -> Table:
    rows: list[list[str]] = [["Échéance", "Loyer", "Charges", "Total dû"]]
    for month in months:
        label = _month(month, with_year=True).capitalize()
        rows.append([label, _euros(_RENT), _euros(_CHARGES), _euros(_RENT + _CHARGES)])
    total = (_RENT + _CHARGES) * len(months)
    rows.append(["Total de l'arriéré", "", "", _euros(total)])
    table = Table(rows, colWidths=[60 * mm, 30 * mm, 30 * mm, 30 * mm])
    table.setStyle(
        TableStyle(
            [
                ("FONT", (0, 0), (-1, -1), "Helvetica", 9.5),
                ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 9.5),
                ("FONT", (0, -1), (-1, -1), "Helvetica-Bold", 9.5),
                ("ALIGN", (1, 0), (-1, -1), "RIGHT"),
                ("LINEBELOW", (0, 0), (-1, 0), 0.6, colors.black),
                ("LINEABOVE", (0, -1), (-1, -1), 0.6, colors.black),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
                ("TOPPADDING", (0, 0), (-1, -1), 2),
            ]
        )
    )
    return table


def _story(today: dt.date, signature: _SignatureSpace) -> list[Flowable]:
    s = _styles()
    months = _unpaid_months(today)
    total = _euros((_RENT + _CHARGES) * len(months))
    period = f"{_month(months[0], with_year=months[0].year != months[-1].year)} à "
    period += _month(months[-1], with_year=True)
    return [
        Paragraph(
            "<b>SCI Exemple</b><br/>Société civile immobilière (fictive)<br/>"
            "12 rue de l'Exemple<br/>99999 Villefictive",
            s["plain"],
        ),
        Spacer(0, 4 * mm),
        Paragraph(
            "Madame Camille Martin<br/>3 allée des Essais, appartement 4<br/>"
            "99999 Villefictive",
            s["right"],
        ),
        Spacer(0, 6 * mm),
        Paragraph(f"Villefictive, le {_french_date(today)}", s["right"]),
        Spacer(0, 6 * mm),
        Paragraph(
            "Lettre recommandée électronique (article L. 100 du code des postes "
            "et des communications électroniques)",
            s["plain"],
        ),
        Paragraph(
            f"Objet : mise en demeure de payer les loyers et charges de {period} "
            f"({total})",
            s["subject"],
        ),
        Paragraph(
            "Bail d'habitation du 1er septembre 2023 — logement situé "
            "3 allée des Essais, appartement 4, 99999 Villefictive",
            s["plain"],
        ),
        Spacer(0, 5 * mm),
        Paragraph("Madame,", s["body"]),
        Paragraph(
            "Aux termes du bail cité en référence, vous êtes tenue de payer le "
            "loyer et les charges récupérables aux termes convenus, soit "
            f"{_euros(_RENT + _CHARGES)} payables d'avance le 5 de chaque mois "
            "(article 7 a) de la loi n° 89-462 du 6 juillet 1989). Malgré nos "
            "rappels, les échéances suivantes demeurent impayées à ce jour :",
            s["body"],
        ),
        _arrears_table(months),
        Spacer(0, 4 * mm),
        Paragraph(
            "En conséquence, nous vous mettons en demeure, conformément à "
            f"l'article 1344 du code civil, de nous régler la somme de {total} "
            "<b>dans un délai de huit jours à compter de la réception de la "
            "présente lettre</b>, par virement sur le compte indiqué sur vos "
            "avis d'échéance. Cette mise en demeure fait courir les intérêts "
            "au taux légal sur les sommes dues (article 1231-6 du code civil).",
            s["body"],
        ),
        Paragraph(
            "À défaut de paiement intégral dans ce délai, nous ferons délivrer "
            "par commissaire de justice un commandement de payer visant la "
            "clause résolutoire du bail (article 24 de la loi du 6 juillet "
            "1989) et saisirons, si nécessaire, le juge des contentieux de la "
            "protection du tribunal judiciaire aux fins de paiement et de "
            "résiliation du bail.",
            s["body"],
        ),
        Paragraph(
            "Si vous rencontrez des difficultés de paiement, nous vous invitons "
            "à prendre contact avec nous sans attendre afin de convenir d'un "
            "échéancier ; vous pouvez également solliciter le fonds de "
            "solidarité pour le logement (FSL) de votre département ou l'ADIL.",
            s["body"],
        ),
        Paragraph(
            "Nous vous prions d'agréer, Madame, l'expression de nos salutations "
            "distinguées.",
            s["body"],
        ),
        Spacer(0, 3 * mm),
        Paragraph("Pour la SCI Exemple,<br/>Claude Durand, gérant", s["right"]),
        Spacer(0, 2 * mm),
        _Indented(signature, 95 * mm),
    ]


def _footer(canvas: Canvas, _document: SimpleDocTemplate) -> None:
    canvas.saveState()
    canvas.setFont("Helvetica", 7.5)
    canvas.setFillColor(colors.grey)
    canvas.drawCentredString(
        A4[0] / 2,
        12 * mm,
        "Document fictif produit par la démonstration de pli : personnes, "
        "adresses et montants sont imaginaires.",
    )
    canvas.restoreState()


def _compose(today: dt.date) -> tuple[bytes, tuple[int, int, int, int]]:
    buffer = BytesIO()
    document = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=22 * mm,
        rightMargin=22 * mm,
        topMargin=18 * mm,
        bottomMargin=20 * mm,
        title="Mise en demeure de payer (document fictif)",
        author="SCI Exemple (fictive)",
        subject="Arriéré de loyers et charges",
    )
    signature = _SignatureSpace(60 * mm, 18 * mm)
    document.build(_story(today, signature), onFirstPage=_footer)
    if document.page != 1 or signature.box is None:
        raise RuntimeError("the formal notice no longer fits on one page")
    return buffer.getvalue(), signature.box


def _sign(pdf: bytes, box: tuple[int, int, int, int], demo: _DemoSigner) -> bytes:
    certificate = load_cert_from_pemder(str(demo.certificate_path))
    signer = signers.SimpleSigner(
        signing_cert=certificate,
        signing_key=load_private_key_from_pemder(str(demo.key_path), None),
        cert_registry=SimpleCertificateStore.from_certs([certificate]),
    )
    metadata = signers.PdfSignatureMetadata(
        field_name=_FIELD_NAME,
        md_algorithm="sha256",
        subfilter=fields.SigSeedSubFilter.PADES,
        reason="Mise en demeure de payer",
        location="Villefictive",
        name="SCI Exemple (fictive)",
    )
    pdf_signer = signers.PdfSigner(
        metadata,
        signer,
        stamp_style=TextStampStyle(
            stamp_text="Signé par %(signer)s\nle %(ts)s", border_width=1
        ),
        new_field_spec=fields.SigFieldSpec(_FIELD_NAME, on_page=0, box=box),
    )
    signed = pdf_signer.sign_pdf(IncrementalPdfFileWriter(BytesIO(pdf)))
    return signed.getvalue()


def compose_formal_notice(work_dir: Path) -> bytes:
    """Compose the demo's formal notice and sign it with the demo's own key."""
    demo = _demo_signer(work_dir)
    pdf, box = _compose(dt.datetime.now(_PARIS).date())
    return _sign(pdf, box, demo)
