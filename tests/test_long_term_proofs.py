"""Proofs are PAdES baseline B-LT: time-stamped, and validatable with nothing else.

Each validator runs in a network namespace of its own (``unshare --net``,
loopback down), so what it accepts it accepted from the document and the
development root alone: ``pyhanko sign adesverify`` (AdES validation that
requires revocation data for every certificate), poppler's ``pdfsig`` with an
NSS database that trusts only the development root and knows only the CRL
read from the proof's DSS, and ``openssl ts -verify`` on the signature time
stamp. The proofs come from a real server: the proof builder's proof of
deposit and ``GetConsentProof``'s proof of consent.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from io import BytesIO
from pathlib import Path

import grpc
import pytest
from asn1crypto import crl as asn1_crl
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from pdf_stamps import built_in_stamper
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.general import find_unique_cms_attribute
from pyhanko.sign.timestamps.api import TimeStamper
from pyhanko.sign.validation import validate_pdf_signature
from pyhanko.sign.validation.dss import DocumentSecurityStore
from reportlab.pdfgen import canvas

from pli.domain.clock import FixedClock
from pli.hsm.long_term import (
    REVOCATION_POLICY,
    LongTermValidation,
    LongTermValidationUnavailable,
)
from pli.hsm.pades import PdfSealer, long_term_gaps
from pli.hsm.provision import (
    ROOT_CERT_FILE,
    ROOT_CRL_FILE,
    SEAL_CERT_FILE,
    TSA_CERT_FILE,
    refresh_crl,
)
from pli.hsm.token import ROOT_KEY_LABEL, Token, TokenConfig
from pli.infrastructure.settings import Settings
from pli.infrastructure.timestamps import TimeStampUnavailable
from pli.services.server import start_server
from pli.v1 import consents_pb2 as cpb

from conftest import T0, connect
from frontend import Frontend

BIN = Path(sys.executable).parent
KINDS = pytest.mark.parametrize("kind", ["deposit", "consent"])


@pytest.fixture(scope="module")
def proofs(
    token_config: TokenConfig, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Path]]:
    """A proof of deposit and a proof of consent, as a running server makes them."""
    home = tmp_path_factory.mktemp("long-term") / "var"
    settings = Settings(
        home=home,
        database_url="",
        listen="127.0.0.1:0",
        provider_name="pli test provider (non-qualified)",
        token=token_config,
        poll_interval=0.05,
        development_clock=True,
    )
    running = start_server(settings, FixedClock(T0), processes=False)
    client = connect(running, FixedClock(T0))
    try:
        front = Frontend(client)
        letter = front.deposit_and_notify()
        sender = front.sender()
        front.grant_consent(sender, "dominique@example.org")
        consent = client.consents.GetConsentProof(
            cpb.GetConsentProofRequest(
                sender_account_id=sender.account_id,
                recipient_email="dominique@example.org",
            )
        ).pdf
    finally:
        client.channel.close()
        running.stop(grace=0)
    (home / "consent.pdf").write_bytes(consent)
    yield {
        "deposit": settings.proofs_dir / letter.letter_id / "deposit.pdf",
        "consent": home / "consent.pdf",
    }


def offline(*command: str) -> subprocess.CompletedProcess[str]:
    """Run a validator in a network namespace of its own: no network at all."""
    return subprocess.run(
        ["unshare", "--net", *command], capture_output=True, text=True, timeout=120
    )


def dss_of(path: Path) -> DocumentSecurityStore:
    return DocumentSecurityStore.read_dss(PdfFileReader(BytesIO(path.read_bytes())))


def crls_in(dss: DocumentSecurityStore) -> list[bytes]:
    return [reference.get_object().data for reference in dss.crls]


def der_of(pem_file: Path) -> bytes:
    certificate = x509.load_pem_x509_certificate(pem_file.read_bytes())
    return certificate.public_bytes(Encoding.DER)


@KINDS
def test_pyhanko_judges_the_proof_valid_offline_with_its_time_stamp(
    kind: str, proofs: dict[str, Path], token_config: TokenConfig
) -> None:
    root = str(token_config.certs_dir / ROOT_CERT_FILE)

    report = offline(
        str(BIN / "pyhanko"), "sign", "adesverify", "--trust", root,
        "--trust-replace", "--pretty-print", str(proofs[kind]),
    )  # fmt: skip

    assert report.returncode == 0, report.stdout + report.stderr
    for line in (
        "The signer's certificate is trusted.",
        "Signature timestamp token: 2026-03-20T09:30:00+00:00",
        "This timestamp is backed by a time stamping authority.",
        "The timestamp token is cryptographically sound.",
        "The TSA certificate is trusted.",
        "The signature covers the entire file.",
        "The signature is judged VALID.",
    ):
        assert line in report.stdout, line


@KINDS
def test_pdfsig_trusts_the_seal_offline_with_the_crl_of_the_dss_alone(
    kind: str, proofs: dict[str, Path], token_config: TokenConfig, tmp_path: Path
) -> None:
    nss = tmp_path / "nss"
    nss.mkdir()
    database = f"sql:{nss}"
    subprocess.run(["certutil", "-N", "-d", database, "--empty-password"], check=True)
    subprocess.run(
        ["certutil", "-A", "-d", database, "-n", "pli development root",
         "-t", "C,C,C", "-i", str(token_config.certs_dir / ROOT_CERT_FILE)],
        check=True,
    )  # fmt: skip
    before = offline("pdfsig", "-nssdir", database, "-no-ocsp", str(proofs[kind]))
    for number, crl in enumerate(crls_in(dss_of(proofs[kind]))):
        (tmp_path / f"{number}.crl").write_bytes(crl)
        subprocess.run(
            ["crlutil", "-I", "-d", database, "-i", str(tmp_path / f"{number}.crl")],
            check=True,
        )

    report = offline("pdfsig", "-nssdir", database, "-no-ocsp", str(proofs[kind]))

    assert "Certificate is Trusted" not in before.stdout
    assert "Signature is Valid." in report.stdout
    assert "Certificate is Trusted." in report.stdout
    assert "Total document signed" in report.stdout


def test_openssl_verifies_the_signature_time_stamp_against_the_development_root(
    proofs: dict[str, Path], token_config: TokenConfig, tmp_path: Path
) -> None:
    reader = PdfFileReader(BytesIO(proofs["deposit"].read_bytes()))
    signer_info = reader.embedded_signatures[0].signer_info
    stamp = find_unique_cms_attribute(
        signer_info["unsigned_attrs"], "signature_time_stamp_token"
    )
    token = tmp_path / "stamp.der"
    token.write_bytes(stamp.dump())
    # RFC 3161 appendix A: the stamp's imprint is the hash of the signature value.
    imprint = hashlib.sha256(signer_info["signature"].native).hexdigest()

    verified = offline(
        "openssl", "ts", "-verify", "-digest", imprint, "-in", str(token),
        "-token_in", "-CAfile", str(token_config.certs_dir / ROOT_CERT_FILE),
    )  # fmt: skip
    shown = offline(
        "openssl", "ts", "-reply", "-in", str(token), "-token_in", "-token_out",
        "-text",
    )  # fmt: skip

    assert "Verification: OK" in verified.stdout, verified.stderr
    assert "Time stamp: Mar 20 09:30:00 2026 GMT" in shown.stdout


@KINDS
def test_the_dss_holds_the_chain_and_crl_that_validate_seal_and_stamp_alone(
    kind: str, proofs: dict[str, Path], token_config: TokenConfig
) -> None:
    certs = token_config.certs_dir
    dss = dss_of(proofs[kind])
    held = {certificate.dump() for certificate in dss.load_certs()}
    root = asn1_x509.Certificate.load(der_of(certs / ROOT_CERT_FILE))
    context = dss.as_validation_context(
        {"trust_roots": [root], "allow_fetching": False,
         "revinfo_policy": REVOCATION_POLICY}
    )  # fmt: skip
    signature = PdfFileReader(BytesIO(proofs[kind].read_bytes())).embedded_signatures[0]

    status = validate_pdf_signature(signature, context, context)

    for name in (ROOT_CERT_FILE, SEAL_CERT_FILE, TSA_CERT_FILE):
        assert der_of(certs / name) in held, name
    assert crls_in(dss) == [(certs / ROOT_CRL_FILE).read_bytes()]
    assert status.bottom_line and status.trusted
    stamp = status.timestamp_validity
    assert stamp is not None and stamp.trusted and stamp.timestamp == T0
    assert long_term_gaps(proofs[kind].read_bytes()) == []


# When sealing must fail: nothing is handed out.


@pytest.fixture(scope="module")
def stamper(token_config: TokenConfig) -> Iterator[Callable[[], TimeStamper]]:
    """Time stampers of the session token's built-in TSA, at the tests' T0."""
    token = Token(token_config)
    yield built_in_stamper(token, FixedClock(T0))
    token.close()


@pytest.fixture
def pdf() -> bytes:
    buffer = BytesIO()
    page = canvas.Canvas(buffer)
    page.drawString(72, 720, "preuve de dépôt (test)")
    page.save()
    return buffer.getvalue()


def development_crl(
    token: Token, root: x509.Certificate, issued: dt.datetime, revoked: int = 0
) -> bytes:
    """A CRL of the development root signed in the token, optionally revoking."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(root.subject)
        .last_update(issued)
        .next_update(issued + dt.timedelta(days=30))
        .add_extension(x509.CRLNumber(99), critical=False)
    )
    if revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(revoked)
            .revocation_date(issued)
            .build()
        )
    scratch = builder.sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    tbs = scratch.tbs_certlist_bytes
    return asn1_crl.CertificateList(
        {
            "tbs_cert_list": asn1_crl.TbsCertList.load(tbs),
            "signature_algorithm": {"algorithm": "sha256_ecdsa"},
            "signature": token.sign_ecdsa_sha256(ROOT_KEY_LABEL, tbs),
        }
    ).dump()


@pytest.fixture
def folder(token_config: TokenConfig, tmp_path: Path) -> Path:
    """A certificates folder with the development root and no CRL."""
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(token_config.certs_dir / ROOT_CERT_FILE, certs / ROOT_CERT_FILE)
    return certs


def attempt(
    token_config: TokenConfig,
    stamper: Callable[[], TimeStamper],
    validation: LongTermValidation,
    pdf: bytes,
) -> bytes:
    sealer = PdfSealer(token_config, stamper, validation=validation)
    try:
        return sealer.seal(pdf, reason="test")
    finally:
        sealer.close()


def test_a_revoked_seal_certificate_stops_sealing(
    token_config: TokenConfig,
    stamper: Callable[[], TimeStamper],
    folder: Path,
    pdf: bytes,
) -> None:
    token = Token(token_config)
    root = x509.load_pem_x509_certificate((folder / ROOT_CERT_FILE).read_bytes())
    seal = x509.load_pem_x509_certificate(
        (token_config.certs_dir / SEAL_CERT_FILE).read_bytes()
    )
    now = dt.datetime.now(dt.UTC)
    (folder / ROOT_CRL_FILE).write_bytes(
        development_crl(token, root, now, revoked=seal.serial_number)
    )
    token.close()

    with pytest.raises(LongTermValidationUnavailable, match="revoked"):
        attempt(token_config, stamper, LongTermValidation(folder), pdf)


def test_without_a_crl_for_the_seal_certificate_nothing_is_sealed(
    token_config: TokenConfig,
    stamper: Callable[[], TimeStamper],
    folder: Path,
    pdf: bytes,
) -> None:
    with pytest.raises(LongTermValidationUnavailable, match="CRL could not be found"):
        attempt(token_config, stamper, LongTermValidation(folder), pdf)


def test_a_crl_past_its_next_update_stops_sealing(
    token_config: TokenConfig,
    stamper: Callable[[], TimeStamper],
    folder: Path,
    pdf: bytes,
) -> None:
    token = Token(token_config)
    root = x509.load_pem_x509_certificate((folder / ROOT_CERT_FILE).read_bytes())
    issued = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    (folder / ROOT_CRL_FILE).write_bytes(development_crl(token, root, issued))
    token.close()

    with pytest.raises(LongTermValidationUnavailable):
        attempt(token_config, stamper, LongTermValidation(folder), pdf)


def test_the_token_reissues_a_half_lived_development_crl_before_sealing(
    token_config: TokenConfig,
    stamper: Callable[[], TimeStamper],
    folder: Path,
    pdf: bytes,
) -> None:
    token = Token(token_config)
    root = x509.load_pem_x509_certificate((folder / ROOT_CERT_FILE).read_bytes())
    issued = dt.datetime.now(dt.UTC) - dt.timedelta(days=20)
    refresh_crl(token, root, folder / ROOT_CRL_FILE, now=issued)

    try:
        sealed = attempt(
            token_config, stamper, LongTermValidation(folder, token=token), pdf
        )
    finally:
        token.close()

    reissued = x509.load_der_x509_crl((folder / ROOT_CRL_FILE).read_bytes())
    assert reissued.last_update_utc > issued + dt.timedelta(days=19)
    assert (
        reissued.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        == 2
    )
    path = folder / "sealed.pdf"
    path.write_bytes(sealed)
    assert crls_in(dss_of(path)) == [(folder / ROOT_CRL_FILE).read_bytes()]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class TsaProcess:
    """``pli tsa serve`` on the session's token, in a process of its own.

    The PDF sealer holds this process's PKCS#11 lock while it asks for its
    stamp, so a TSA over HTTP that signs in the same token must run elsewhere.
    """

    def __init__(self, token_config: TokenConfig, home: Path, port: int) -> None:
        self.env = {
            "PATH": "/usr/bin:/bin",
            "PLI_HOME": str(home),
            "PLI_HSM_DIR": str(token_config.hsm_dir),
            "PLI_TSA_LISTEN": f"127.0.0.1:{port}",
        }
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(BIN / "pli"), "tsa", "serve"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        assert "serving on" in self.process.stdout.readline()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None


@pytest.mark.parametrize("database_url", [""], ids=["sqlite"])
def test_while_the_tsa_is_down_the_proof_builder_writes_nothing_then_catches_up(
    settings: Settings, clock: FixedClock, token_config: TokenConfig, tmp_path: Path
) -> None:
    port = _free_port()
    remote = replace(
        settings,
        tsa=replace(settings.tsa, url=f"http://127.0.0.1:{port}/", timeout=5.0),
    )
    tsa = TsaProcess(token_config, tmp_path / "tsa-home", port)
    tsa.start()
    running = start_server(remote, clock, processes=False)
    client = connect(running, clock)
    try:
        runtime = client.runtime
        letter = Frontend(client).deposit()
        for step in (
            runtime.log_appender, runtime.projector, runtime.notifier,
            runtime.evidence_follower, runtime.log_appender,
        ):  # fmt: skip
            step.run_once()
        runtime.checkpointer.checkpoint_now()
        proof = settings.proofs_dir / letter.letter_id / "deposit.pdf"
        tsa.stop()

        with pytest.raises(TimeStampUnavailable, match="unreachable"):
            runtime.proof_builder.run_once()
        # The evidence follower's XML is there; of the proof, not even a draft.
        assert [path.name for path in proof.parent.iterdir()] == ["evidence"]

        tsa.start()
        client.run_processes()
    finally:
        tsa.stop()
        client.channel.close()
        running.stop(grace=0)

    report = offline(
        str(BIN / "pyhanko"), "sign", "adesverify", "--trust",
        str(token_config.certs_dir / ROOT_CERT_FILE), "--trust-replace", str(proof),
    )  # fmt: skip
    assert report.returncode == 0, report.stdout + report.stderr
    assert "INTACT:TRUSTED,TIMESTAMP_TOKEN<INTACT:TRUSTED>" in report.stdout


def test_a_proof_of_consent_answers_unavailable_while_the_tsa_is_down(
    settings: Settings, clock: FixedClock
) -> None:
    down = replace(
        settings,
        tsa=replace(settings.tsa, url=f"http://127.0.0.1:{_free_port()}/", timeout=2.0),
    )
    running = start_server(down, clock, processes=False)
    client = connect(running, clock)
    try:
        front = Frontend(client)
        sender = front.sender()  # neither accounts nor consents are stamped
        front.grant_consent(sender, "dominique@example.org")

        with pytest.raises(grpc.RpcError) as failure:
            client.consents.GetConsentProof(
                cpb.GetConsentProofRequest(
                    sender_account_id=sender.account_id,
                    recipient_email="dominique@example.org",
                )
            )
    finally:
        client.channel.close()
        running.stop(grace=0)

    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "time-stamp authority" in (failure.value.details() or "")
