"""The demo's formal notice: one signed page that pdfsig accepts."""

from __future__ import annotations

import subprocess
from io import BytesIO
from pathlib import Path

from asn1crypto import pem, x509
from pyhanko.pdf_utils.reader import PdfFileReader

from pli.services.demo_letter import (
    CERTIFICATE_FILE,
    KEY_FILE,
    compose_formal_notice,
)


def pdfsig(pdf: bytes, tmp_path: Path) -> str:
    path = tmp_path / "mise-en-demeure.pdf"
    path.write_bytes(pdf)
    result = subprocess.run(
        ["pdfsig", str(path)], capture_output=True, text=True, timeout=60
    )
    return result.stdout


def signer_certificate(pdf: bytes) -> x509.Certificate:
    (signature,) = PdfFileReader(BytesIO(pdf)).embedded_signatures
    return signature.signer_cert


def stored_certificate(work_dir: Path) -> x509.Certificate:
    _, _, der = pem.unarmor((work_dir / CERTIFICATE_FILE).read_bytes())
    return x509.Certificate.load(der)


def test_formal_notice_carries_a_pades_signature_pdfsig_finds_valid(
    tmp_path: Path,
) -> None:
    pdf = compose_formal_notice(tmp_path / "demo")

    report = pdfsig(pdf, tmp_path)

    assert "Signature is Valid" in report
    assert "Signature Type: ETSI.CAdES.detached" in report


def test_formal_notice_is_one_page_naming_the_debt_and_the_deadline(
    tmp_path: Path,
) -> None:
    pdf = compose_formal_notice(tmp_path / "demo")

    text = subprocess.run(
        ["pdftotext", "-", "-"], input=pdf, capture_output=True, timeout=60
    ).stdout.decode()

    assert len(PdfFileReader(BytesIO(pdf)).root["/Pages"]["/Kids"]) == 1
    assert "mise en demeure" in text
    assert "huit jours" in text
    assert "Camille Martin" in text


def test_demo_key_is_created_private_once_and_reused(tmp_path: Path) -> None:
    work_dir = tmp_path / "demo"

    first = compose_formal_notice(work_dir)
    key_after_first = (work_dir / KEY_FILE).read_bytes()
    second = compose_formal_notice(work_dir)

    assert (work_dir / KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert (work_dir / KEY_FILE).read_bytes() == key_after_first
    stored = stored_certificate(work_dir)
    assert signer_certificate(first).dump() == stored.dump()
    assert signer_certificate(second).dump() == stored.dump()
