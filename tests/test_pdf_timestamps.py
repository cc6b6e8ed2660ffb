"""pyHanko takes its signature time stamps from pli's time-stamp sources.

The PDF is sealed with the token's seal key through pyHanko's PKCS#11
signer while the process-wide PKCS#11 lock is held, as pli's PDF sealer
does; the time stamp comes from the built-in TSA in process, or fails
closed when the TSA over HTTP is down.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pkcs11
import pytest
from cryptography import x509
from pyhanko.config.pkcs11 import TokenCriteria
from pyhanko.keys import load_cert_from_pemder
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign import fields, signers
from pyhanko.sign.pkcs11 import PKCS11Signer, open_pkcs11_session
from pyhanko.sign.timestamps.api import TimeStamper
from pyhanko.sign.validation import validate_pdf_signature
from pyhanko_certvalidator import ValidationContext
from reportlab.pdfgen import canvas

from pli.hsm.pades import long_term_gaps
from pli.hsm.provision import ROOT_CERT_FILE
from pli.hsm.token import PKCS11_LOCK, SEAL_KEY_LABEL, TokenConfig
from pli.hsm.tsa import TimeStampAuthority
from pli.infrastructure.timestamps import (
    HttpTimeStampClient,
    LocalTimeStampClient,
    PyhankoTimeStamper,
    TimeStampUnavailable,
)


@pytest.fixture
def pdf() -> bytes:
    buffer = BytesIO()
    page = canvas.Canvas(buffer)
    page.drawString(72, 720, "preuve de dépôt (test)")
    page.save()
    return buffer.getvalue()


@pytest.fixture
def seal_signer(token_config: TokenConfig) -> Iterator[PKCS11Signer]:
    """pyHanko's signer on the token's seal key, joining the process login."""
    token_config.activate()
    criteria = TokenCriteria(label=token_config.token_label)
    with PKCS11_LOCK:
        try:
            session = open_pkcs11_session(
                token_config.module,
                token_criteria=criteria,
                user_pin=token_config.pin(),
            )
        except pkcs11.UserAlreadyLoggedIn:
            session = open_pkcs11_session(token_config.module, token_criteria=criteria)
    root = load_cert_from_pemder(str(token_config.certs_dir / ROOT_CERT_FILE))
    yield PKCS11Signer(
        session,
        cert_label=SEAL_KEY_LABEL,
        key_label=SEAL_KEY_LABEL,
        ca_chain=[root],
        embed_roots=True,
        use_raw_mechanism=True,
    )
    with PKCS11_LOCK:
        session.close()


def seal(
    pdf: bytes, signer: PKCS11Signer, timestamper: TimeStamper, digest: str = "sha256"
) -> bytes:
    metadata = signers.PdfSignatureMetadata(
        field_name="pli-seal",
        md_algorithm=digest,
        subfilter=fields.SigSeedSubFilter.PADES,
    )
    writer = IncrementalPdfFileWriter(BytesIO(pdf), strict=False)
    with PKCS11_LOCK:
        sealed = signers.sign_pdf(
            writer, metadata, signer=signer, timestamper=timestamper
        )
    return sealed.getvalue()


def test_a_sealed_pdf_carries_a_valid_signature_time_stamp(
    pdf: bytes,
    seal_signer: PKCS11Signer,
    tsa_authority: TimeStampAuthority,
    dev_root: x509.Certificate,
    token_config: TokenConfig,
    tmp_path: Path,
) -> None:
    source = LocalTimeStampClient(tsa_authority, trust_roots=[dev_root])

    sealed = seal(pdf, seal_signer, PyhankoTimeStamper(source))

    root = load_cert_from_pemder(str(token_config.certs_dir / ROOT_CERT_FILE))
    context = ValidationContext(trust_roots=[root], allow_fetching=False)
    signature = PdfFileReader(BytesIO(sealed)).embedded_signatures[0]
    status = validate_pdf_signature(signature, context, context)
    stamp = status.timestamp_validity
    assert status.intact and status.valid
    assert stamp is not None and stamp.intact and stamp.valid and stamp.trusted
    path = tmp_path / "sealed.pdf"
    path.write_bytes(sealed)
    pdfsig = subprocess.run(["pdfsig", path], capture_output=True, text=True)
    assert "Signature is Valid." in pdfsig.stdout


def test_a_stamped_seal_without_its_validation_data_is_not_long_term(
    pdf: bytes,
    seal_signer: PKCS11Signer,
    tsa_authority: TimeStampAuthority,
    dev_root: x509.Certificate,
    token_config: TokenConfig,
    tmp_path: Path,
) -> None:
    """The control for the B-LT checks: offline, a bare stamped seal fails them."""
    source = LocalTimeStampClient(tsa_authority, trust_roots=[dev_root])
    path = tmp_path / "sealed.pdf"
    path.write_bytes(seal(pdf, seal_signer, PyhankoTimeStamper(source)))

    report = subprocess.run(
        ["unshare", "--net", str(Path(sys.executable).parent / "pyhanko"), "sign",
         "adesverify", "--trust", str(token_config.certs_dir / ROOT_CERT_FILE),
         "--trust-replace", str(path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert report.returncode != 0
    assert "no revocation information could be found" in report.stderr
    assert long_term_gaps(path.read_bytes()) == ["no document security store"]


def test_a_seal_fails_closed_when_the_tsa_is_down(
    pdf: bytes, seal_signer: PKCS11Signer, dev_root: x509.Certificate
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    source = HttpTimeStampClient(f"http://127.0.0.1:{port}/", trust_roots=[dev_root])

    with pytest.raises(TimeStampUnavailable, match="unreachable"):
        seal(pdf, seal_signer, PyhankoTimeStamper(source))


def test_a_seal_hashed_otherwise_than_with_sha256_gets_no_stamp(
    pdf: bytes,
    seal_signer: PKCS11Signer,
    tsa_authority: TimeStampAuthority,
    dev_root: x509.Certificate,
) -> None:
    source = LocalTimeStampClient(tsa_authority, trust_roots=[dev_root])

    with pytest.raises(TimeStampUnavailable, match="only sha256"):
        seal(pdf, seal_signer, PyhankoTimeStamper(source), digest="sha512")
