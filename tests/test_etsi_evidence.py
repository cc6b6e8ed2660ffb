"""ETSI REM evidence: schema-valid XML, sealed in the token, served and embedded.

The schema is ETSI TS 102 640-2's, read from ``../shared/schemas`` (never
copied into pli); signatures are checked by ``xmlsec1``, which knows nothing
of pli and trusts only the development root; proofs are read back with
poppler's ``pdfdetach`` and ``pdfsig`` and with pyHanko.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from io import BytesIO
from pathlib import Path
from uuid import UUID

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from lxml import etree
from pyhanko.keys import load_cert_from_pemder
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.validation import validate_pdf_signature
from pyhanko_certvalidator import ValidationContext

from pli.infrastructure.envelope import event_digest
from pli.services.etsi_evidence import POLICY_NON_QUALIFIED, EvidenceTime
from pli.services.evidence_issuer import EvidenceIssuer, QualifiedClaimRefused
from pli.v1 import letters_pb2 as pb

from conftest import Pli
from frontend import Frontend

SCHEMA = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "schemas"
    / "etsi-rem-v2"
    / "TS02640_v2.xsd"
)
REM = "{http://uri.etsi.org/02640/v2#}"
PLI = "{urn:pli:rem:v1}"
DS = "{http://www.w3.org/2000/09/xmldsig#}"
EVENT = "http:uri.etsi.org/02640/Event#"
REASON = "http:uri.etsi.org/REM/EventReason#"

# What each letter event must yield: element, event code, reason code.
EXPECTED = {
    "Deposited": ("SubmissionAcceptanceRejection", EVENT + "Acceptance", None),
    "Notified": ("DeliveryNonDeliveryToRecipient", EVENT + "Delivery", None),
    "NotificationFailed": (
        "DeliveryNonDeliveryToRecipient",
        EVENT + "NonDelivery",
        REASON + "RegularEmailRejection",
    ),
    "IdentityVerified": ("RetrievalNonRetrievalByRecipient", EVENT + "Retrieval", None),
    "Accepted": ("AcceptanceRejectionByRecipient", EVENT + "Acceptance", None),
    "Refused": (
        "AcceptanceRejectionByRecipient",
        EVENT + "Rejection",
        REASON + "RecipientRejection",
    ),
    "Expired": (
        "RetrievalNonRetrievalByRecipient",
        EVENT + "RetrievalExpiration",
        REASON + "RetentionPeriodExpired",
    ),
    "ContentDelivered": (
        "DownloadNonDownloadByRecipient",
        "urn:pli:rem:event:Download",
        None,
    ),
}
# The format and signature do not depend on the database.
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture(scope="module")
def schema() -> etree.XMLSchema:
    """TS 102 640-2 V2.1.1, with the schemas it imports, all local."""
    return etree.XMLSchema(etree.parse(str(SCHEMA)))


@pytest.fixture
def front(pli: Pli) -> Frontend:
    return Frontend(pli)


def live_every_kind_of_letter(front: Frontend) -> dict[str, str]:
    """Letters that go through every evidence-bearing event; ids by outcome."""
    pli = front.pli
    accepted = front.deposit_and_notify().letter_id
    front.identify(accepted)
    front.accept(accepted)
    front.download(accepted)
    refused = front.deposit_and_notify().letter_id
    front.identify(refused)
    front.refuse(refused)
    undelivered = front.deposit().letter_id
    pli.runtime.letters.record_notification_failed(
        UUID(undelivered), "permanent-smtp-failure:550", pli.clock.now()
    )
    expired = front.deposit_and_notify()
    pli.clock.at = expired.window_closes_at.ToDatetime(tzinfo=dt.UTC)
    pli.run_processes()
    return {
        "accepted": accepted,
        "refused": refused,
        "undelivered": undelivered,
        "expired": expired.letter_id,
    }


def evidence_files(pli: Pli, letter_id: str) -> list[Path]:
    folder = pli.runtime.settings.proofs_dir / letter_id / "evidence"
    return sorted(folder.glob("*.xml"), key=lambda p: int(p.name.split("-")[0]))


def xmlsec1_verifies(pli: Pli, path: Path) -> bool:
    root = pli.runtime.settings.token.certs_dir / "root.pem"
    result = subprocess.run(
        [
            "xmlsec1",
            "--verify",
            "--trusted-pem",
            str(root),
            "--enabled-key-data",
            "x509",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode == 0


def event_of(document: etree._Element) -> str:
    return str(document.find(f".//{PLI}Event").get("name"))


def status_details(error: grpc.RpcError) -> list[object]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    found: list[object] = []
    for detail in status.details:
        for kind in (
            error_details_pb2.BadRequest,
            error_details_pb2.RetryInfo,
            error_details_pb2.ResourceInfo,
        ):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found.append(message)
    return found


def call_error(call, request) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call(request)
    return caught.value


@SQLITE_ONLY
def test_every_evidence_type_is_schema_valid_and_verifies_with_xmlsec1(
    front: Frontend, schema: etree.XMLSchema
) -> None:
    letters = live_every_kind_of_letter(front)

    seen = set()
    for letter_id in letters.values():
        for path in evidence_files(front.pli, letter_id):
            document = etree.parse(str(path)).getroot()
            schema.assertValid(document)
            assert xmlsec1_verifies(front.pli, path), path.name
            event = event_of(document)
            element, code, reason = EXPECTED[event]
            assert document.tag == REM + element
            assert path.name.endswith(f"-{element}.xml")
            assert document.findtext(f"{REM}EventCode") == code
            assert document.findtext(f"{REM}EventReasons//{REM}Code") == reason
            seen.add(event)
    assert seen == set(EXPECTED)


@SQLITE_ONLY
def test_evidence_states_parties_times_policy_and_the_sealed_event(
    front: Frontend,
) -> None:
    pli = front.pli
    letter_id = front.deposit_and_notify().letter_id
    front.identify(letter_id)
    front.accept(letter_id)
    pli.run_processes()
    letter = front.get(letter_id)

    path = evidence_files(pli, letter_id)[-1]
    document = etree.parse(str(path)).getroot()
    (stored,) = pli.runtime.letters.recorder.select_events(
        originator_id=UUID(letter_id), gt=letter.version - 1
    )
    seal = x509.load_pem_x509_certificate(
        (pli.runtime.settings.token.certs_dir / "seal.pem").read_bytes()
    )

    def text(path: str) -> str | None:
        return document.findtext(path.replace("rem:", REM))

    assert document.tag == REM + "AcceptanceRejectionByRecipient"
    assert document.get("version") == "2.1.1"
    assert text("rem:EvidenceIssuerPolicyID/rem:PolicyID") == POLICY_NON_QUALIFIED
    assert text("rem:EvidenceIssuerDetails//rem:Name") == (
        "pli test provider (non-qualified)"
    )
    assert text("rem:EvidenceIssuerDetails//rem:X509Certificate") == (
        _b64(seal.public_bytes(serialization.Encoding.DER))
    )
    assert text("rem:SenderDetails//rem:Name") == "SCI Exemple"
    assert text("rem:SenderDetails/rem:AttributedElectronicAddress") == (
        "mailto:sci-exemple@example.fr"
    )
    assert text("rem:RecipientsDetails//rem:Name") == "Camille Martin"
    assert text("rem:RecipientsDetails//rem:AttributedElectronicAddress") == (
        "mailto:camille@example.org"
    )
    assert text("rem:SenderMessageDetails/rem:MessageIdentifierByREMMD") == letter_id
    assert text("rem:SenderMessageDetails/rem:MessageSubject") == (
        "Loyers impayés de janvier"
    )
    assert _when(text("rem:EventTime")) == letter.decided_at.ToDatetime(tzinfo=dt.UTC)
    assert _when(text("rem:SubmissionTime")) == letter.deposited_at.ToDatetime(
        tzinfo=dt.UTC
    )
    assert text("rem:RecipientAuthenticationDetails/rem:AuthenticationMethod") == (
        "http://eidas.europa.eu/LoA/substantial"
    )
    assert document.find(f".//{PLI}Event").get("sealedDigest") == event_digest(
        letter_id, letter.version, stored.topic, stored.state
    )
    assert len(document.findall(f"{DS}Signature//{DS}X509Certificate")) == 2


@SQLITE_ONLY
def test_a_changed_byte_in_sealed_evidence_fails_xmlsec1(
    front: Frontend, tmp_path: Path
) -> None:
    letter_id = front.deposit_and_notify().letter_id
    (deposit, notified) = evidence_files(front.pli, letter_id)
    original = notified.read_bytes()
    changed = tmp_path / notified.name
    changed.write_bytes(
        original.replace(b"Camille Martin", b"Camille Martin"[:-1] + b"o")
    )

    assert xmlsec1_verifies(front.pli, notified)
    assert changed.read_bytes() != original
    assert not xmlsec1_verifies(front.pli, changed)


@SQLITE_ONLY
def test_each_event_gets_its_evidence_once_and_a_restart_resumes(
    front: Frontend,
) -> None:
    pli = front.pli
    letter_id = front.deposit_and_notify().letter_id
    front.identify(letter_id)
    front.accept(letter_id)
    pli.run_processes()
    first, *others = evidence_files(pli, letter_id)
    before = {path.name: path.read_bytes() for path in others}

    # As if the server died after recording the events but before it issued
    # the first one's evidence and saved its position.
    first.unlink()
    with pli.runtime.views.datastore.transaction(commit=True) as cursor:
        cursor.execute("DELETE FROM pli_positions WHERE name = 'etsi-evidence'")
    pli.run_processes()

    assert first.exists() and xmlsec1_verifies(pli, first)
    assert {path.name: path.read_bytes() for path in others} == before


@SQLITE_ONLY
def test_the_development_chain_never_claims_the_qualified_policy(
    front: Frontend,
) -> None:
    pli = front.pli
    letter_id = front.deposit_and_notify().letter_id
    history = list(pli.runtime.letters.events.get(UUID(letter_id)))
    issuer = pli.runtime.evidence.issuer

    assert issuer.sealer.chains_to_development_root
    assert not issuer.qualifies(history)
    with pytest.raises(QualifiedClaimRefused):
        issuer.issue(history, sealed_digest="0" * 64, qualified=True)


@SQLITE_ONLY
def test_a_stamped_time_supplied_by_the_hook_is_the_event_time(
    front: Frontend, schema: etree.XMLSchema, tmp_path: Path
) -> None:
    pli = front.pli
    letter_id = front.deposit_and_notify().letter_id
    history = list(pli.runtime.letters.events.get(UUID(letter_id)))
    stamped = dt.datetime(2026, 3, 20, 9, 31, 2, 250000, tzinfo=dt.UTC)
    issuer = EvidenceIssuer(
        "pli test provider (non-qualified)",
        pli.runtime.evidence.issuer.sealer,
        time_of=lambda event: EvidenceTime(stamped, "RFC 3161 test stamp", True),
    )

    path = tmp_path / "stamped.xml"
    path.write_bytes(
        issuer.issue(
            history, sealed_digest="0" * 64, qualified=issuer.qualifies(history)
        )
    )
    document = etree.parse(str(path)).getroot()

    schema.assertValid(document)
    assert xmlsec1_verifies(pli, path)
    assert document.findtext(f"{REM}EventTime") == "2026-03-20T09:31:02.250000Z"
    assert document.findtext(f".//{PLI}TimeSource") == "RFC 3161 test stamp"
    # Qualified times do not lift the development chain's limit.
    assert document.findtext(f".//{REM}PolicyID") == POLICY_NON_QUALIFIED


def test_list_and_get_evidence_over_grpc(front: Frontend) -> None:
    pli = front.pli
    letter_id = front.deposit().letter_id

    pending = pli.letters.ListEvidence(pb.ListEvidenceRequest(letter_id=letter_id))
    not_built = call_error(
        pli.letters.GetEvidence, pb.GetEvidenceRequest(letter_id=letter_id, version=1)
    )
    pli.run_processes()
    front.begin(letter_id)
    pli.run_processes()
    listed = pli.letters.ListEvidence(pb.ListEvidenceRequest(letter_id=letter_id))
    got = pli.letters.GetEvidence(pb.GetEvidenceRequest(letter_id=letter_id, version=2))

    assert [(e.version, e.event, e.built) for e in pending.evidence] == [
        (1, "Deposited", False)
    ]
    assert not_built.code() == grpc.StatusCode.UNAVAILABLE
    assert any(
        isinstance(d, error_details_pb2.RetryInfo) for d in status_details(not_built)
    )
    assert [(e.version, e.event, e.type, e.built) for e in listed.evidence] == [
        (1, "Deposited", pb.EVIDENCE_TYPE_SUBMISSION_ACCEPTANCE_REJECTION, True),
        (2, "Notified", pb.EVIDENCE_TYPE_DELIVERY_NON_DELIVERY_TO_RECIPIENT, True),
    ]
    assert got.evidence.event == "Notified"
    assert got.xml == evidence_files(pli, letter_id)[1].read_bytes()


@pytest.mark.parametrize(
    ("letter_id", "version", "code", "fields"),
    [
        ("not-a-letter", 1, grpc.StatusCode.INVALID_ARGUMENT, ["letter_id"]),
        ("12345", 0, grpc.StatusCode.INVALID_ARGUMENT, ["letter_id", "version"]),
        (None, -3, grpc.StatusCode.INVALID_ARGUMENT, ["version"]),
        ("00000000-0000-4000-8000-000000000000", 1, grpc.StatusCode.NOT_FOUND, []),
        (None, 3, grpc.StatusCode.NOT_FOUND, []),  # IdentificationStarted
        (None, 99, grpc.StatusCode.NOT_FOUND, []),
    ],
)
def test_get_evidence_errors_name_the_problem(
    front: Frontend,
    letter_id: str | None,
    version: int,
    code: grpc.StatusCode,
    fields: list[str],
) -> None:
    pli = front.pli
    letter = front.deposit_and_notify().letter_id
    front.begin(letter)
    pli.run_processes()

    error = call_error(
        pli.letters.GetEvidence,
        pb.GetEvidenceRequest(letter_id=letter_id or letter, version=version),
    )

    assert error.code() == code
    violations = [
        v.field
        for d in status_details(error)
        if isinstance(d, error_details_pb2.BadRequest)
        for v in d.field_violations
    ]
    assert violations == fields
    if code == grpc.StatusCode.NOT_FOUND:
        (resource,) = status_details(error)
        assert isinstance(resource, error_details_pb2.ResourceInfo)


def test_list_evidence_errors_name_the_problem(front: Frontend) -> None:
    malformed = call_error(
        front.pli.letters.ListEvidence, pb.ListEvidenceRequest(letter_id="x")
    )
    unknown = call_error(
        front.pli.letters.ListEvidence,
        pb.ListEvidenceRequest(letter_id="00000000-0000-4000-8000-000000000000"),
    )

    assert malformed.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert unknown.code() == grpc.StatusCode.NOT_FOUND


def test_a_subject_xml_cannot_carry_is_refused_at_deposit(front: Frontend) -> None:
    request = front.deposit_request(subject="Loyers impay\uffffs")
    before = front.pli.event_count()

    error = call_error(front.pli.letters.DepositLetter, request)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [
        v.field
        for d in status_details(error)
        if isinstance(d, error_details_pb2.BadRequest)
        for v in d.field_violations
    ] == ["subject"]
    assert front.pli.event_count() == before


@SQLITE_ONLY
def test_proofs_carry_the_xml_evidence_as_associated_files(
    front: Frontend, tmp_path: Path
) -> None:
    pli = front.pli
    letter_id = front.deposit_and_notify().letter_id
    front.identify(letter_id)
    front.accept(letter_id)
    pli.run_processes()
    proofs = pli.runtime.settings.proofs_dir / letter_id
    stored = {p.name: p for p in evidence_files(pli, letter_id)}
    (accepted,) = [
        n for n in stored if n.endswith("-AcceptanceRejectionByRecipient.xml")
    ]
    expected = {
        "deposit": [
            "etsi-rem-1-SubmissionAcceptanceRejection.xml",
            "etsi-rem-2-DeliveryNonDeliveryToRecipient.xml",
        ],
        "receipt": [f"etsi-rem-{accepted}"],
    }
    root = pli.runtime.settings.token.certs_dir / "root.pem"

    for proof, names in expected.items():
        pdf = proofs / f"{proof}.pdf"
        listing = _run("pdfdetach", "-list", str(pdf))
        for name in names:
            saved = tmp_path / name
            _run("pdfdetach", "-savefile", name, "-o", str(saved), str(pdf))
            assert name in listing
            assert (
                saved.read_bytes()
                == stored[name.removeprefix("etsi-rem-")].read_bytes()
            )
            assert xmlsec1_verifies(pli, saved)
        reader = PdfFileReader(BytesIO(pdf.read_bytes()), strict=False)
        embedded = reader.root["/Names"]["/EmbeddedFiles"]["/Names"]
        specs = [embedded[i + 1].get_object() for i in range(0, len(embedded), 2)]
        associated = [ref.get_object() for ref in reader.root["/AF"]]
        (signature,) = reader.embedded_signatures
        status = validate_pdf_signature(
            signature,
            ValidationContext(
                trust_roots=[load_cert_from_pemder(str(root))], allow_fetching=False
            ),
        )

        assert f"{len(names) + 1} embedded files" in listing
        assert sorted(str(s["/F"]) for s in associated) == sorted(
            ["evidence.json", *names]
        )
        assert all(s in associated for s in specs)
        assert all(s["/AFRelationship"] == "/Data" for s in associated)
        assert status.intact and status.valid and status.trusted
        assert status.coverage.name == "ENTIRE_FILE"
        assert "Signature is Valid" in _run("pdfsig", str(pdf))


def _run(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    return result.stdout


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")


def _when(value: str | None) -> dt.datetime:
    assert value is not None
    return dt.datetime.fromisoformat(value)
