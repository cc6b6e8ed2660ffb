"""Proof documents: sealed in the token, readable by tools that do not know pli.

The token is the session's SoftHSM token from ``conftest.py``: SoftHSM2 reads
its configuration once per process, so a second token home in the same run
would hide the first one from every other test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

import pytest
from pdf_stamps import built_in_stamper
from pyhanko.keys import load_cert_from_pemder
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.timestamps.api import TimeStamper
from pyhanko.sign.validation import validate_pdf_signature
from pyhanko_certvalidator import ValidationContext

from pli.domain.clock import FixedClock
from pli.hsm.pades import PdfSealer
from pli.hsm.token import Token, TokenConfig
from pli.services.proofs import (
    EVIDENCE_FILE,
    NON_QUALIFIED_LABEL,
    ProofFacts,
    ProofKind,
    ProofWriter,
    evidence_document,
    facts_from_evidence,
    render_proof,
)

from conftest import T0

LETTER_ID = "3f6c1f0e-8a51-4c47-9d3e-5b0b3a8e2c11"
DIGEST_A = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
DIGEST_B = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752"

DEPOSITED = ProofFacts(
    letter_id=LETTER_ID,
    kind="LRE",
    sender_name="SCI Les Tilleuls & Fils",
    sender_email="gestion@tilleuls.example",
    recipient_name="Hélène Côté-Müller",
    recipient_email="helene.cote@example.org",
    attachments=[
        ("mise-en-demeure.pdf", 48213, DIGEST_A),
        ("décompte <loyers> 2026.xlsx", 9120, DIGEST_B),
    ],
    deposited_at=datetime(2026, 3, 20, 9, 30, 12, 345678, tzinfo=UTC),
    notified_at=datetime(2026, 3, 20, 9, 31, tzinfo=UTC),
    window_closes_at=datetime(2026, 4, 4, 21, 59, 59, tzinfo=UTC),
    decided_at=None,
    expired_at=None,
    events=[(1, "Deposited", DIGEST_A), (2, "Notified", DIGEST_B)],
    time_source="pli server clock (non-qualified)",
)
DECIDED = datetime(2026, 3, 25, 16, 5, 42, tzinfo=UTC)
EXPIRED = datetime(2026, 4, 4, 22, 0, 3, tzinfo=UTC)
FACTS = {
    ProofKind.DEPOSIT: DEPOSITED,
    ProofKind.RECEIPT: replace(
        DEPOSITED,
        decided_at=DECIDED,
        events=[
            *DEPOSITED.events,
            (3, "IdentityVerified", DIGEST_A),
            (4, "Accepted", DIGEST_B),
        ],
    ),
    ProofKind.REFUSAL: replace(
        DEPOSITED,
        decided_at=DECIDED,
        events=[
            *DEPOSITED.events,
            (3, "IdentityVerified", DIGEST_A),
            (4, "Refused", DIGEST_B),
        ],
    ),
    ProofKind.NON_CLAIM: replace(
        DEPOSITED,
        expired_at=EXPIRED,
        events=[*DEPOSITED.events, (3, "Expired", DIGEST_A)],
    ),
}
# What each proof must state beyond the R.53-2 items, in Paris time.
OWN_TIME = {
    ProofKind.DEPOSIT: "2026-03-20 10:31:00 CET (UTC+01:00)",
    ProofKind.RECEIPT: "2026-03-25 17:05:42 CET (UTC+01:00)",
    ProofKind.REFUSAL: "2026-03-25 17:05:42 CET (UTC+01:00)",
    ProofKind.NON_CLAIM: "2026-04-04 23:59:59 CEST (UTC+02:00)",
}
ALL_KINDS = pytest.mark.parametrize("kind", list(ProofKind), ids=str)


# Module scope: closing the sealer logs this process out of the token, which
# the other test modules' token sessions expect to find logged out.
@pytest.fixture(scope="module")
def stamper(token_config: TokenConfig) -> Iterator[Callable[[], TimeStamper]]:
    """Time stampers of the session token's built-in TSA, at the tests' T0."""
    token = Token(token_config)
    yield built_in_stamper(token, FixedClock(T0))
    token.close()


@pytest.fixture(scope="module")
def sealer(
    token_config: TokenConfig, stamper: Callable[[], TimeStamper]
) -> Iterator[PdfSealer]:
    """One sealer on the session's token, as the server holds one."""
    sealer = PdfSealer(token_config, stamper)
    yield sealer
    sealer.close()


@pytest.fixture(scope="module")
def proofs(
    sealer: PdfSealer, tmp_path_factory: pytest.TempPathFactory
) -> dict[ProofKind, Path]:
    """Each of the four proofs, written once for the tests that read them."""
    writer = ProofWriter(sealer, tmp_path_factory.mktemp("proofs"))
    return {kind: writer.write(kind, FACTS[kind]) for kind in ProofKind}


def run(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    return result.stdout


def page_count(path: Path) -> int:
    return len(PdfFileReader(BytesIO(path.read_bytes())).root["/Pages"]["/Kids"])


@ALL_KINDS
def test_proof_is_stored_under_the_letter_and_named_after_its_kind(
    kind: ProofKind, proofs: dict[ProofKind, Path]
) -> None:
    path = proofs[kind]

    assert path.parent.name == LETTER_ID
    assert path.name == f"{kind.value}.pdf"


@ALL_KINDS
def test_pdfsig_finds_the_provider_seal_valid(
    kind: ProofKind, proofs: dict[ProofKind, Path]
) -> None:
    report = run("pdfsig", str(proofs[kind]))

    assert "Signature is Valid" in report
    assert "Signature Type: ETSI.CAdES.detached" in report
    assert "pli development seal (non-qualified)" in report
    assert "Total document signed" in report


@ALL_KINDS
def test_pyhanko_finds_the_seal_intact_and_trusted_under_the_development_root(
    kind: ProofKind, proofs: dict[ProofKind, Path], token_config: TokenConfig
) -> None:
    root = load_cert_from_pemder(str(token_config.certs_dir / "root.pem"))
    reader = PdfFileReader(BytesIO(proofs[kind].read_bytes()), strict=False)
    (signature,) = reader.embedded_signatures

    status = validate_pdf_signature(
        signature, ValidationContext(trust_roots=[root], allow_fetching=False)
    )

    assert status.intact and status.valid and status.trusted
    assert status.coverage.name == "ENTIRE_FILE"
    assert status.bottom_line


@ALL_KINDS
def test_evidence_json_detached_with_pdfdetach_states_the_same_facts(
    kind: ProofKind, proofs: dict[ProofKind, Path], tmp_path: Path
) -> None:
    listing = run("pdfdetach", "-list", str(proofs[kind]))
    saved = tmp_path / "evidence.json"
    run("pdfdetach", "-savefile", "evidence.json", "-o", str(saved), str(proofs[kind]))

    document = json.loads(saved.read_text(encoding="utf-8"))
    assert "1 embedded files" in listing and EVIDENCE_FILE in listing
    assert document["proof"] == kind.value
    assert document["qualified"] is False
    assert facts_from_evidence(document) == FACTS[kind]


def test_evidence_is_a_data_associated_file_of_the_document(
    proofs: dict[ProofKind, Path],
) -> None:
    reader = PdfFileReader(BytesIO(proofs[ProofKind.RECEIPT].read_bytes()))

    (associated,) = reader.root["/AF"]
    names = reader.root["/Names"]["/EmbeddedFiles"]["/Names"]
    assert associated.get_object()["/AFRelationship"] == "/Data"
    assert names[0] == EVIDENCE_FILE
    assert names[1].get_object() == associated.get_object()


@ALL_KINDS
def test_proof_states_the_legal_items_and_its_own_time_in_both_languages(
    kind: ProofKind, proofs: dict[ProofKind, Path]
) -> None:
    text = " ".join(run("pdftotext", str(proofs[kind]), "-").split())

    for item in (
        LETTER_ID,
        "SCI Les Tilleuls & Fils",
        "gestion@tilleuls.example",
        "Hélène Côté-Müller",
        "helene.cote@example.org",
        "2026-03-20 09:30:12 UTC",
        "2026-03-20 10:30:12 CET (UTC+01:00)",
        OWN_TIME[kind],
        DIGEST_A,
        "décompte <loyers> 2026.xlsx",
        NON_QUALIFIED_LABEL,
        "Preuve",
        "Proof",
    ):
        assert item in text, item
    assert page_count(proofs[kind]) in (1, 2)


def test_a_qualified_proof_drops_the_non_qualified_label(tmp_path: Path) -> None:
    facts = replace(DEPOSITED, qualified=True)
    path = tmp_path / "deposit.pdf"

    path.write_bytes(render_proof(ProofKind.DEPOSIT, facts))

    assert NON_QUALIFIED_LABEL not in run("pdftotext", str(path), "-")


def test_a_time_source_that_calls_itself_qualified_does_not_qualify_a_proof(
    tmp_path: Path,
) -> None:
    facts = replace(DEPOSITED, time_source="Example qualified TSA (RFC 3161)")
    path = tmp_path / "deposit.pdf"

    path.write_bytes(render_proof(ProofKind.DEPOSIT, facts))

    assert NON_QUALIFIED_LABEL in run("pdftotext", str(path), "-")
    assert evidence_document(ProofKind.DEPOSIT, facts)["qualified"] is False


def test_ere_proof_says_it_is_not_equivalent_to_a_paper_registered_letter(
    tmp_path: Path,
) -> None:
    path = tmp_path / "deposit.pdf"

    path.write_bytes(render_proof(ProofKind.DEPOSIT, replace(DEPOSITED, kind="ERE")))

    text = " ".join(run("pdftotext", str(path), "-").split())
    assert "Envoi recommandé électronique simple (ERE)" in text
    assert "not equivalent to a paper registered letter" in text


def test_proof_of_receipt_without_its_acceptance_time_is_not_rendered() -> None:
    with pytest.raises(ValueError, match="decided_at"):
        render_proof(ProofKind.RECEIPT, DEPOSITED)


def test_writing_a_proof_again_replaces_it_and_leaves_no_temporary_file(
    sealer: PdfSealer, tmp_path: Path
) -> None:
    writer = ProofWriter(sealer, tmp_path)
    first = writer.write(ProofKind.DEPOSIT, DEPOSITED)
    first_bytes = first.read_bytes()

    second = writer.write("deposit", DEPOSITED)

    assert second == first
    assert second.read_bytes() != first_bytes
    assert [p.name for p in second.parent.iterdir()] == ["deposit.pdf"]
    assert "Signature is Valid" in run("pdfsig", str(second))


# PKCS#11 shares one login among all of a process's sessions, and this
# process is logged in through the session's sealer; a PIN is only put to the
# test in a fresh process.
FRESH_PROCESS_SEAL = """
import sys
from pathlib import Path
from pli.hsm.pades import PdfSealer
from pli.hsm.token import Token, TokenConfig, TokenUnavailable
from pli.infrastructure.clock import SystemClock
from pdf_stamps import built_in_stamper

def attempt(sealer):
    try:
        sealer.seal(Path(sys.argv[2]).read_bytes(), reason="test")
    except TokenUnavailable as exc:
        return f"TokenUnavailable({type(exc.__cause__).__name__})"
    return "sealed"

config = TokenConfig.from_env(Path(sys.argv[1]))
sealer = PdfSealer(config, built_in_stamper(Token(config), SystemClock()))
print(attempt(sealer))
if len(sys.argv) > 3:
    Path(sys.argv[3]).write_text(Path(sys.argv[4]).read_text())
    print(attempt(sealer))
"""


def seal_in_fresh_process(
    token_config: TokenConfig, tmp_path: Path, env: dict[str, str], *args: str
) -> list[str]:
    pdf = tmp_path / "unsealed.pdf"
    pdf.write_bytes(render_proof(ProofKind.DEPOSIT, DEPOSITED))
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("PLI_") or name == "PLI_PKCS11_MODULE"
    }
    home = str(token_config.hsm_dir.parent)
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS_SEAL, home, str(pdf), *args],
        env={**environment, "PYTHONPATH": str(Path(__file__).parent), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_wrong_pin_fails_closed_with_token_unavailable(
    token_config: TokenConfig, tmp_path: Path
) -> None:
    outcome = seal_in_fresh_process(token_config, tmp_path, {"PLI_HSM_PIN": "wrong"})

    assert outcome == ["TokenUnavailable(PinIncorrect)"]


def test_sealer_logs_in_again_once_the_pin_is_put_right(
    token_config: TokenConfig, tmp_path: Path
) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text("wrong\n")

    outcome = seal_in_fresh_process(
        token_config,
        tmp_path,
        {"PLI_HSM_PIN_FILE": str(pin_file)},
        str(pin_file),
        str(token_config.pin_file),
    )

    assert outcome == ["TokenUnavailable(PinIncorrect)", "sealed"]


def test_second_sealer_in_a_process_joins_the_existing_login(
    sealer: PdfSealer,
    stamper: Callable[[], TimeStamper],
    token_config: TokenConfig,
    proofs: dict[ProofKind, Path],
) -> None:
    second = PdfSealer(token_config, stamper)

    sealed = second.seal(render_proof(ProofKind.DEPOSIT, DEPOSITED), reason="test")

    second.close()
    assert len(PdfFileReader(BytesIO(sealed)).embedded_signatures) == 1
