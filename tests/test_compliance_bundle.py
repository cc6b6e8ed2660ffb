"""Compliance bundles: exported sealed, verified offline, every damage named.

One history of letters (accepted, refused, expired, pending, and one whose
decision falls after the middle of the history) is written through the real
gRPC server on PostgreSQL with the session's SoftHSM token; the CLI exports
its bundle, and each damage test edits a copy of that archive the way an
attacker with the file would, then checks the verifier names the damage.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import timestamp_pb2

from pli.compliance.bundle_stamps import LEGALLY_TIMED_TOPICS
from pli.compliance.verify_bundle import Verification, verify_bundle
from pli.domain.clock import FixedClock
from pli.domain.key_ceremony import KeyRegistry
from pli.hsm.seal import key_id_of
from pli.hsm.token import TokenConfig
from pli.infrastructure.checkpoints import Checkpoint
from pli.infrastructure.dev_idp import DevIdentityProvider
from pli.infrastructure.settings import Settings
from pli.services.server import start_server
from pli.v1 import compliance_pb2 as cpb
from pli.v1 import compliance_pb2_grpc
from pli.v1 import letters_pb2 as pb

from conftest import T0, Pli, connect
from frontend import Frontend
from postgres import fresh_database
from test_errors_over_grpc import call_error, field_violations

PLI = str(Path(sys.executable).parent / "pli")


@dataclass
class History:
    """A server with letters in every outcome, and the CLI's bundle of it all."""

    pli: Pli
    settings: Settings
    start: dt.datetime
    middle: dt.datetime
    end: dt.datetime
    accepted: str
    crossing: str
    bundle: Path


def pli_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLI_")}
    env.update(
        {
            "PLI_HOME": str(settings.home),
            "PLI_DATABASE_URL": settings.database_url,
            "PLI_HSM_DIR": str(settings.token.hsm_dir),
        }
    )
    return env


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PLI, "compliance", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def instant(moment: dt.datetime) -> str:
    return moment.isoformat()


def decided(front: Frontend, accept: bool) -> str:
    letter = front.deposit_and_notify()
    front.pli.clock.advance(dt.timedelta(hours=5 if accept else 2))
    front.identify(letter.letter_id)
    if accept:
        front.accept(letter.letter_id)
        front.download(letter.letter_id)
    else:
        front.refuse(letter.letter_id)
    return letter.letter_id


@pytest.fixture(scope="module")
def history(
    tmp_path_factory: pytest.TempPathFactory,
    token_config: TokenConfig,
    postgres_base: str,
) -> Iterator[History]:
    home = tmp_path_factory.mktemp("bundle-history") / "var"
    identity_provider = DevIdentityProvider(home / "dev-idp")
    identity_provider.ensure()
    with fresh_database(postgres_base) as dsn:
        settings = Settings(
            home=home,
            database_url=dsn,
            listen="127.0.0.1:0",
            provider_name="pli test provider (non-qualified)",
            token=token_config,
            poll_interval=0.05,
            development_clock=True,
            oidc_issuers=identity_provider.issuers_file,
        )
        clock = FixedClock(T0)
        running = start_server(settings, clock, processes=False)
        pli = connect(running, clock)
        try:
            yield _write_history(pli, settings, home.parent)
        finally:
            pli.channel.close()
            running.stop(grace=0)


def _write_history(pli: Pli, settings: Settings, folder: Path) -> History:
    front = Frontend(pli)
    to_expire = front.deposit_and_notify()
    accepted = decided(front, accept=True)
    decided(front, accept=False)
    crossing = front.deposit_and_notify().letter_id
    pli.run_processes()

    middle = pli.clock.now() + dt.timedelta(seconds=10)
    pli.clock.at = middle + dt.timedelta(seconds=10)
    front.identify(crossing)
    front.accept(crossing)
    pli.clock.at = to_expire.window_closes_at.ToDatetime(tzinfo=dt.UTC)
    pli.run_processes()
    front.deposit_and_notify()

    start, end = T0 - dt.timedelta(days=1), pli.clock.now() + dt.timedelta(days=1)
    bundle = folder / "all.zip"
    done = cli(
        pli_env(settings),
        "export",
        "--from",
        start.date().isoformat(),
        "--to",
        instant(end),
        str(bundle),
    )
    assert done.returncode == 0, done.stderr
    return History(pli, settings, start, middle, end, accepted, crossing, bundle)


# Editing archives the way someone holding the file would.


def members(bundle: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(bundle) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def write_archive(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def damaged(
    history: History, tmp_path: Path, edit: Callable[[dict[str, bytes]], None]
) -> Path:
    files = members(history.bundle)
    edit(files)
    return write_archive(tmp_path / "damaged.zip", files)


def event_lines(files: dict[str, bytes]) -> list[bytes]:
    return files["events.jsonl"].splitlines(keepends=True)


def set_event_lines(files: dict[str, bytes], lines: list[bytes]) -> None:
    files["events.jsonl"] = b"".join(lines)


def line_of(files: dict[str, bytes], aggregate: str, version: int) -> int:
    for number, line in enumerate(event_lines(files), start=1):
        record = json.loads(line)
        if record["aggregate"] == aggregate and record["version"] == version:
            return number
    raise AssertionError(f"no line for {aggregate} version {version}")


def faults(verification: Verification) -> list[str]:
    return [str(fault) for fault in verification.findings.faults]


def named(verification: Verification, *words: str) -> bool:
    return any(all(word in fault for word in words) for fault in faults(verification))


def relist(files: dict[str, bytes]) -> None:
    """Make the manifest list the files as they now are (it stays unsealed)."""
    manifest = json.loads(files["manifest.json"])
    manifest["files"] = [
        {"path": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        for name, data in sorted(files.items())
        if name not in ("manifest.json", "manifest.sig")
    ]
    files["manifest.json"] = json.dumps(manifest, indent=2).encode()


def certificate(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None = None,
    ca: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = issuer or (name, key)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def reseal(files: dict[str, bytes], key: ec.EllipticCurvePrivateKey) -> None:
    """Relist the files and seal the manifest with someone else's key."""
    relist(files)
    manifest = json.loads(files["manifest.json"])
    manifest["seal"]["key_id"] = key_id_of(
        certificate("forger", key)
    )  # key ids depend on the public key alone
    files["manifest.json"] = json.dumps(manifest, indent=2).encode()
    files["manifest.sig"] = key.sign(files["manifest.json"], ec.ECDSA(hashes.SHA256()))


# A clean bundle.


def test_a_clean_bundle_verifies_offline_with_no_database_and_no_token(
    history: History, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLI_")}
    env["PLI_HOME"] = str(tmp_path / "empty")
    env["PLI_HSM_DIR"] = str(tmp_path / "no-token")

    done = cli(env, "verify", "--json", str(history.bundle))

    report = json.loads(done.stdout)
    assert done.returncode == 0, done.stdout
    assert report["clean"] and report["faults"] == []
    assert report["notes"]["events"]["events"] == history.pli.event_count()
    assert report["notes"]["manifest"]["manifest seal"] == "valid"
    # Every letter's proofs: fewer than the ten a sample holds by default.
    proofs = list(history.settings.proofs_dir.glob("*/*.pdf"))
    assert report["notes"]["proofs"]["proofs checked"] == len(proofs) == 9
    assert not (tmp_path / "empty").exists() and not (tmp_path / "no-token").exists()


def test_the_report_shows_the_root_fingerprint_that_openssl_computes(
    history: History,
) -> None:
    root = history.settings.token.certs_dir / "root.pem"
    openssl = subprocess.run(
        ["openssl", "x509", "-in", str(root), "-noout", "-fingerprint", "-sha256"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()

    done = cli(pli_env(history.settings), "verify", str(history.bundle))

    assert done.returncode == 0
    assert openssl.split("=", 1)[1] in done.stdout
    assert done.stdout.rstrip().endswith("verdict: clean")


def test_openssl_verifies_the_manifest_seal_with_the_bundled_certificate(
    history: History, tmp_path: Path
) -> None:
    files = members(history.bundle)
    for name in ("manifest.json", "manifest.sig", "certs/seal.pem"):
        (tmp_path / name.replace("/", "-")).write_bytes(files[name])
    public = subprocess.run(
        [
            "openssl",
            "x509",
            "-in",
            str(tmp_path / "certs-seal.pem"),
            "-noout",
            "-pubkey",
        ],
        capture_output=True,
        check=True,
    ).stdout
    (tmp_path / "seal-public.pem").write_bytes(public)

    done = subprocess.run(
        [
            "openssl",
            "dgst",
            "-sha256",
            "-verify",
            str(tmp_path / "seal-public.pem"),
            "-signature",
            str(tmp_path / "manifest.sig"),
            str(tmp_path / "manifest.json"),
        ],
        capture_output=True,
        text=True,
    )

    assert done.returncode == 0 and "Verified OK" in done.stdout


def test_sample_proofs_are_the_sealed_pdfs_pdfsig_finds_valid(
    history: History, tmp_path: Path
) -> None:
    proofs = {n: d for n, d in members(history.bundle).items() if n.endswith(".pdf")}
    assert proofs
    for name, data in proofs.items():
        path = tmp_path / name.replace("/", "-")
        path.write_bytes(data)
        report = subprocess.run(["pdfsig", str(path)], capture_output=True, text=True)
        assert "Signature is Valid" in report.stdout, name


def test_event_lines_carry_digests_and_no_payload_or_personal_data(
    history: History,
) -> None:
    files = members(history.bundle)
    text = b"".join(
        data for name, data in files.items() if not name.endswith(".pdf")
    ).decode("utf-8", "replace")

    record = json.loads(event_lines(files)[0])
    assert set(record) == {
        "position",
        "aggregate",
        "version",
        "topic",
        "header",
        "payload_sha256",
    }
    for personal in ("camille", "Martin", "sci-exemple@", "Loyers", "mise-en-demeure"):
        assert personal not in text
    configuration = json.loads(files["configuration.json"])
    assert "@" not in json.dumps(configuration["database"])
    assert "pin" not in json.dumps(configuration["token"]).replace("pin_read_from", "")


def test_statistics_count_letters_by_kind_and_outcome_and_time_decisions(
    history: History,
) -> None:
    statistics = json.loads(members(history.bundle)["statistics.json"])

    deposited = statistics["letters_deposited"]
    outcomes = {"accepted": 2, "refused": 1, "expired": 1, "pending": 1}
    assert deposited["total"] == 5
    assert deposited["by_outcome"] == outcomes
    assert deposited["by_kind"] == {"LRE": {"total": 5, **outcomes}}
    assert statistics["decisions"] == {"accepted": 2, "refused": 1}
    assert statistics["expiries"] == 1
    assert statistics["notification_failures"] == 0
    timing = statistics["time_to_decision_seconds"]
    # Refused after 2 h, accepted after 5 h, and one accepted within a minute.
    assert timing == {"count": 3, "median": 2 * 3600.0, "p90": 5 * 3600.0}


def test_a_later_period_anchors_its_chains_in_the_events_before_it(
    history: History, tmp_path: Path
) -> None:
    bundle = tmp_path / "later.zip"
    done = cli(
        pli_env(history.settings),
        "export",
        "--from",
        instant(history.middle),
        "--to",
        instant(history.end),
        str(bundle),
    )
    assert done.returncode == 0, done.stderr

    verification = verify_bundle(bundle)

    assert verification.clean, faults(verification)
    files = members(bundle)
    contexts = [json.loads(line) for line in files["chain-context.jsonl"].splitlines()]
    crossing = next(c for c in contexts if c["aggregate"] == history.crossing)
    assert crossing["previous"]["version"] == crossing["first_version"] - 1
    statistics = json.loads(files["statistics.json"])
    assert statistics["letters_deposited"]["total"] == 1
    assert statistics["time_to_decision_seconds"]["count"] == 1
    # Only the checkpoints that end inside the period, then the latest.
    positions = [p["log_position"] for p in jsonl(files, "log/inclusion.jsonl")]
    sizes = [c["size"] for c in jsonl(files, "log/checkpoints.jsonl")]
    assert positions[0] > 0
    assert all(positions[0] < size <= positions[-1] + 1 for size in sizes[:-1])
    assert sizes[-1] >= positions[-1] + 1


# Each damage is detected and named.


def test_a_changed_byte_in_an_event_line_breaks_that_event_seal(
    history: History, tmp_path: Path
) -> None:
    def edit(files: dict[str, bytes]) -> None:
        lines = event_lines(files)
        digest = json.loads(lines[2])["payload_sha256"]
        changed = ("0" if digest[0] != "0" else "1") + digest[1:]
        lines[2] = lines[2].replace(digest.encode(), changed.encode())
        set_event_lines(files, lines)

    verification = verify_bundle(damaged(history, tmp_path, edit))

    assert named(verification, "events.jsonl line 3", "seal does not verify")
    assert named(verification, "[manifest] events.jsonl", "changed")


def test_a_removed_event_line_is_named_as_a_missing_version(
    history: History, tmp_path: Path
) -> None:
    def edit(files: dict[str, bytes]) -> None:
        lines = event_lines(files)
        del lines[line_of(files, history.accepted, 2) - 1]
        set_event_lines(files, lines)

    verification = verify_bundle(damaged(history, tmp_path, edit))

    assert named(verification, history.accepted, "version 3 where 2 was due")


def test_the_removed_last_event_of_a_letter_is_noticed_by_the_chain_context(
    history: History, tmp_path: Path
) -> None:
    def edit(files: dict[str, bytes]) -> None:
        lines = [
            line for line in event_lines(files) if history.crossing.encode() in line
        ]
        last = lines[-1]
        set_event_lines(files, [x for x in event_lines(files) if x != last])

    verification = verify_bundle(damaged(history, tmp_path, edit))

    assert named(verification, history.crossing, "an event is missing")


def test_an_inserted_line_is_named(history: History, tmp_path: Path) -> None:
    def edit(files: dict[str, bytes]) -> None:
        lines = event_lines(files)
        lines.insert(5, lines[1])
        set_event_lines(files, lines)

    verification = verify_bundle(damaged(history, tmp_path, edit))

    assert named(verification, "events.jsonl line 6", "inserted or moved")


def test_reordered_lines_are_named(history: History, tmp_path: Path) -> None:
    def edit(files: dict[str, bytes]) -> None:
        lines = event_lines(files)
        lines[6], lines[7] = lines[7], lines[6]
        set_event_lines(files, lines)

    verification = verify_bundle(damaged(history, tmp_path, edit))

    assert named(verification, "events.jsonl line 8", "inserted or moved")


def test_a_changed_file_is_named_and_its_figures_contradicted(
    history: History, tmp_path: Path
) -> None:
    def edit(files: dict[str, bytes]) -> None:
        statistics = json.loads(files["statistics.json"])
        statistics["expiries"] = 0
        files["statistics.json"] = json.dumps(statistics).encode()

    verification = verify_bundle(damaged(history, tmp_path, edit))

    assert named(verification, "statistics.json", "changed")
    assert named(verification, "statistics.expiries", "the events give 1")


def test_a_missing_file_is_named(history: History, tmp_path: Path) -> None:
    verification = verify_bundle(
        damaged(history, tmp_path, lambda files: files.pop("configuration.json"))
    )

    assert named(verification, "configuration.json", "missing")


def test_an_added_file_is_named(history: History, tmp_path: Path) -> None:
    def edit(files: dict[str, bytes]) -> None:
        files["proofs/notes.txt"] = b"nothing to see\n"

    verification = verify_bundle(damaged(history, tmp_path, edit))

    assert named(verification, "proofs/notes.txt", "added")


def test_an_edited_digest_in_the_manifest_breaks_the_manifest_seal(
    history: History, tmp_path: Path
) -> None:
    def edit(files: dict[str, bytes]) -> None:
        files["software.json"] = b'{"pli": "9.9.9"}\n'
        relist(files)

    verification = verify_bundle(damaged(history, tmp_path, edit))

    assert named(verification, "manifest.sig", "seal does not verify")


def test_a_manifest_resealed_by_another_key_is_refused(
    history: History, tmp_path: Path
) -> None:
    forger = ec.generate_private_key(ec.SECP256R1())

    def edit(files: dict[str, bytes]) -> None:
        files["certs/forger.pem"] = pem(certificate("forger", forger))
        statistics = json.loads(files["statistics.json"])
        statistics["expiries"] = 0
        files["statistics.json"] = json.dumps(statistics).encode()
        reseal(files, forger)

    verification = verify_bundle(damaged(history, tmp_path, edit))

    assert named(verification, "manifest.sig", "does not chain to the trust anchor")
    assert named(verification, "certs/forger.pem", "does not chain")
    assert named(verification, "statistics.expiries")


def test_a_bundle_resealed_under_another_root_fails_its_event_seals_and_trust(
    history: History, tmp_path: Path
) -> None:
    root_key = ec.generate_private_key(ec.SECP256R1())
    seal_key = ec.generate_private_key(ec.SECP256R1())
    root_file = tmp_path / "auditor-root.pem"
    root_file.write_bytes((history.settings.token.certs_dir / "root.pem").read_bytes())

    def edit(files: dict[str, bytes]) -> None:
        for name in [n for n in files if n.startswith("certs/")]:
            del files[name]
        files["certs/root.pem"] = pem(certificate("root", root_key, ca=True))
        files["certs/seal.pem"] = pem(
            certificate("seal", seal_key, issuer=("root", root_key))
        )
        reseal(files, seal_key)

    bundle = damaged(history, tmp_path, edit)
    alone = verify_bundle(bundle)
    done = cli(
        pli_env(history.settings), "verify", "--trust", str(root_file), str(bundle)
    )

    assert named(alone, "events.jsonl line 1", "no trusted certificate holds")
    assert done.returncode == 1
    assert "the bundle's root is not the root given with --trust" in done.stdout


def test_a_changed_proof_pdf_is_named(history: History, tmp_path: Path) -> None:
    files = members(history.bundle)
    proof = sorted(n for n in files if n.endswith(".pdf"))[0]

    def edit(files: dict[str, bytes]) -> None:
        data = files[proof]
        files[proof] = data.replace(b"/Producer", b"/Producex", 1)

    verification = verify_bundle(damaged(history, tmp_path, edit))

    assert named(verification, f"[manifest] {proof}", "changed")
    assert named(verification, f"[proofs] {proof}", "PAdES seal")


# The transparency log and the time stamps.


def jsonl(files: dict[str, bytes], name: str) -> list[dict]:
    return [json.loads(line) for line in files[name].splitlines()]


def set_jsonl(files: dict[str, bytes], name: str, values: list[dict]) -> None:
    files[name] = b"".join(
        json.dumps(v, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        for v in values
    )


def flipped(hex_hash: str) -> str:
    return ("0" if hex_hash[0] != "0" else "1") + hex_hash[1:]


def timed_lines(files: dict[str, bytes]) -> list[int]:
    """The events.jsonl line numbers of legally timed events."""
    return [
        number
        for number, record in enumerate(jsonl(files, "events.jsonl"), start=1)
        if record["topic"] in LEGALLY_TIMED_TOPICS
    ]


def edit_header(
    files: dict[str, bytes], line: int, edit: Callable[[dict], None]
) -> None:
    records = jsonl(files, "events.jsonl")
    header = json.loads(records[line - 1]["header"])
    edit(header)
    records[line - 1]["header"] = json.dumps(
        header, separators=(",", ":"), sort_keys=True
    )
    set_jsonl(files, "events.jsonl", records)


def test_every_event_is_proven_in_the_latest_checkpoint_and_every_stamp_checked(
    history: History,
) -> None:
    files = members(history.bundle)

    verification = verify_bundle(history.bundle)

    assert verification.clean, faults(verification)
    log = verification.findings.notes["log"]
    events = len(event_lines(files))
    assert log["inclusion proofs valid"] == events
    assert log["log positions"] == f"0 to {events - 1}"
    assert log["checkpoints"] >= 3
    assert log["checkpoint time stamps valid"] == log["checkpoints"]
    assert log["consistency proofs valid"] == log["checkpoints"] - 1
    latest = log["latest checkpoint"]
    assert latest["seal"] == "valid"
    # The root the database's own tree gives for that size.
    assert latest["root"] == history.pli.runtime.log.root(latest["size"]).hex()
    stamps = verification.findings.notes["time stamps"]
    assert stamps["stamps valid"] == len(timed_lines(files)) > 0
    assert stamps["legally timed events"] == len(timed_lines(files))
    certificates = verification.findings.notes["certificates"]
    assert certificates["TSA certificates"] == 1
    assert certificates["seal certificates trusted"] == 1


def test_openssl_verifies_a_bundled_checkpoint_seal_and_its_time_stamp(
    history: History, tmp_path: Path
) -> None:
    files = members(history.bundle)
    checkpoint = Checkpoint.from_json(jsonl(files, "log/checkpoints.jsonl")[1])
    assert checkpoint.stamp is not None
    for name in ("certs/seal.pem", "certs/root.pem", "certs/tsa.pem"):
        (tmp_path / name.split("/")[1]).write_bytes(files[name])
    (tmp_path / "message").write_bytes(checkpoint.message)
    (tmp_path / "seal.der").write_bytes(checkpoint.seal)
    (tmp_path / "token.der").write_bytes(checkpoint.stamp)
    public = subprocess.run(
        ["openssl", "x509", "-in", str(tmp_path / "seal.pem"), "-noout", "-pubkey"],
        capture_output=True,
        check=True,
    ).stdout
    (tmp_path / "seal-public.pem").write_bytes(public)

    seal = subprocess.run(
        ["openssl", "dgst", "-sha256", "-verify", str(tmp_path / "seal-public.pem"),
         "-signature", str(tmp_path / "seal.der"), str(tmp_path / "message")],
        capture_output=True, text=True,
    )  # fmt: skip
    stamp = subprocess.run(
        ["openssl", "ts", "-verify", "-token_in", "-in", str(tmp_path / "token.der"),
         "-digest", hashlib.sha256(checkpoint.message).hexdigest(),
         "-CAfile", str(tmp_path / "root.pem"),
         "-untrusted", str(tmp_path / "tsa.pem")],
        capture_output=True, text=True,
    )  # fmt: skip

    assert seal.returncode == 0 and "Verified OK" in seal.stdout
    assert stamp.returncode == 0 and "Verification: OK" in stamp.stdout


def test_a_forged_checkpoint_resealed_by_another_key_is_named(
    history: History, tmp_path: Path
) -> None:
    forger = ec.generate_private_key(ec.SECP256R1())
    forged_certificate = certificate("forger", forger)
    files = members(history.bundle)
    checkpoints = jsonl(files, "log/checkpoints.jsonl")
    size, following = checkpoints[3]["size"], checkpoints[4]["size"]

    def edit(files: dict[str, bytes]) -> None:
        forged = Checkpoint.from_json(checkpoints[3])
        forged = replace(forged, root=bytes(32), key_id=key_id_of(forged_certificate))
        forged = replace(
            forged, seal=forger.sign(forged.message, ec.ECDSA(hashes.SHA256()))
        )
        changed = [*checkpoints]
        changed[3] = forged.to_json()
        set_jsonl(files, "log/checkpoints.jsonl", changed)
        files["certs/forger.pem"] = pem(forged_certificate)
        relist(files)

    verification = verify_bundle(damaged(history, tmp_path, edit))

    where = f"[log] log/checkpoints.jsonl line 4 (size {size})"
    assert named(verification, where, "checkpoint seal", "does not chain")
    assert named(verification, where, "checkpoint time stamp", "imprint")
    assert named(
        verification,
        "log/consistency.jsonl line 3",
        f"does not prove that the checkpoint of size {size} extends",
    )
    assert named(
        verification,
        "log/consistency.jsonl line 4",
        f"does not prove that the checkpoint of size {following} extends that of "
        f"size {size}",
    )


def test_a_removed_checkpoint_is_named_by_the_proofs_that_need_it(
    history: History, tmp_path: Path
) -> None:
    files = members(history.bundle)
    checkpoints = jsonl(files, "log/checkpoints.jsonl")
    before, removed, after = (c["size"] for c in checkpoints[3:6])

    def edit(files: dict[str, bytes]) -> None:
        set_jsonl(files, "log/checkpoints.jsonl", checkpoints[:4] + checkpoints[5:])
        relist(files)

    verification = verify_bundle(damaged(history, tmp_path, edit))

    assert named(
        verification,
        "[log] log/consistency.jsonl line 4",
        f"names the checkpoint of size {removed}",
    )
    assert named(
        verification,
        "[log] log/consistency.jsonl",
        f"no proof that the checkpoint of size {after} extends that of size {before}",
    )


def test_a_broken_consistency_proof_is_named(history: History, tmp_path: Path) -> None:
    def edit(files: dict[str, bytes]) -> None:
        proofs = jsonl(files, "log/consistency.jsonl")
        proofs[2]["proof"][0] = flipped(proofs[2]["proof"][0])
        set_jsonl(files, "log/consistency.jsonl", proofs)

    verification = verify_bundle(damaged(history, tmp_path, edit))

    assert named(verification, "[log] log/consistency.jsonl line 3", "does not prove")
    assert named(verification, "[manifest] log/consistency.jsonl", "changed")


def test_a_changed_inclusion_proof_is_named_with_its_event(
    history: History, tmp_path: Path
) -> None:
    files = members(history.bundle)
    aggregate = jsonl(files, "events.jsonl")[6]["aggregate"]

    def edit(files: dict[str, bytes]) -> None:
        proofs = jsonl(files, "log/inclusion.jsonl")
        proofs[6]["path"][-1] = flipped(proofs[6]["path"][-1])
        set_jsonl(files, "log/inclusion.jsonl", proofs)

    verification = verify_bundle(damaged(history, tmp_path, edit))

    assert named(
        verification, "[log] log/inclusion.jsonl line 7", aggregate, "does not lead"
    )
    assert sum("[log]" in fault for fault in faults(verification)) == 1


def test_an_event_removed_with_its_inclusion_line_leaves_a_gap_in_the_log(
    history: History, tmp_path: Path
) -> None:
    def edit(files: dict[str, bytes]) -> None:
        for name in ("events.jsonl", "log/inclusion.jsonl"):
            lines = files[name].splitlines(keepends=True)
            del lines[9]
            files[name] = b"".join(lines)

    verification = verify_bundle(damaged(history, tmp_path, edit))

    assert named(
        verification,
        "[log] log/inclusion.jsonl line 10",
        "log position 10 does not follow 8",
    )


def test_a_stamp_swapped_with_another_events_is_named(
    history: History, tmp_path: Path
) -> None:
    files = members(history.bundle)
    first, second = timed_lines(files)[:2]
    other = json.loads(jsonl(files, "events.jsonl")[second - 1]["header"])["stamp"]

    def edit(files: dict[str, bytes]) -> None:
        edit_header(files, first, lambda header: header.update(stamp=other))

    verification = verify_bundle(damaged(history, tmp_path, edit))

    assert named(
        verification,
        f"[time stamps] events.jsonl line {first}",
        "the stamped tree does not hold this event's seal",
    )
    # The header is in the event's digest: its leaf no longer matches.
    assert named(verification, f"[log] log/inclusion.jsonl line {first}", "leaf")


def test_a_flipped_byte_in_a_stamp_token_is_named(
    history: History, tmp_path: Path
) -> None:
    files = members(history.bundle)
    line = timed_lines(files)[2]

    def flip(header: dict) -> None:
        token = bytearray(base64.b64decode(header["stamp"]["tst"]))
        token[-1] ^= 0x01
        header["stamp"]["tst"] = base64.b64encode(bytes(token)).decode()

    verification = verify_bundle(
        damaged(history, tmp_path, lambda files: edit_header(files, line, flip))
    )

    assert named(verification, f"[time stamps] events.jsonl line {line}", "time stamp:")
    assert not named(verification, "[time stamps]", "no time stamp")


def test_a_legally_timed_event_stripped_of_its_stamp_is_named(
    history: History, tmp_path: Path
) -> None:
    files = members(history.bundle)
    line = timed_lines(files)[0]

    verification = verify_bundle(
        damaged(
            history,
            tmp_path,
            lambda files: edit_header(files, line, lambda h: h.pop("stamp")),
        )
    )

    assert named(
        verification,
        f"[time stamps] events.jsonl line {line}",
        "a legally timed event carries no time stamp",
    )


# The command line and gRPC.


def test_verify_exits_1_on_a_damaged_bundle_and_2_on_unusable_input(
    history: History, tmp_path: Path
) -> None:
    bundle = damaged(history, tmp_path, lambda files: files.pop("software.json"))
    not_a_zip = tmp_path / "not-a-bundle.zip"
    not_a_zip.write_bytes(b"hello")
    env = pli_env(history.settings)

    assert cli(env, "verify", str(bundle)).returncode == 1
    assert cli(env, "verify", str(not_a_zip)).returncode == 2
    unreadable_root = cli(env, "verify", "--trust", str(not_a_zip), str(bundle))
    assert unreadable_root.returncode == 2


def test_export_rejects_bad_or_inverted_dates_and_writes_nothing(
    history: History, tmp_path: Path
) -> None:
    env = pli_env(history.settings)
    out = tmp_path / "bundle.zip"

    bad = cli(env, "export", "--from", "2026-13-01", "--to", "2026-04-01", str(out))
    naive = cli(
        env, "export", "--from", "2026-03-01T00:00", "--to", "2026-04-01", str(out)
    )
    inverted = cli(
        env, "export", "--from", "2026-04-01", "--to", "2026-03-01", str(out)
    )

    assert bad.returncode == 2 and "--from: '2026-13-01'" in bad.stderr
    assert naive.returncode == 2 and "needs a UTC offset" in naive.stderr
    assert (
        inverted.returncode == 2
        and "--to: must be later than --from" in inverted.stderr
    )
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_to_replace_an_existing_file(
    history: History, tmp_path: Path
) -> None:
    out = tmp_path / "bundle.zip"
    out.write_bytes(b"keep me")

    done = cli(
        pli_env(history.settings),
        "export",
        "--from",
        "2026-03-01",
        "--to",
        "2026-04-01",
        str(out),
    )

    assert done.returncode == 2 and "exists" in done.stderr
    assert out.read_bytes() == b"keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle.zip"]


def timestamp(moment: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def download(pli: Pli, request: cpb.ExportBundleRequest, out: Path) -> str:
    stub = compliance_pb2_grpc.ComplianceServiceStub(pli.channel)
    digest = ""
    with out.open("wb") as archive:
        for message in stub.ExportBundle(request):
            assert not digest, "nothing may follow the message with the digest"
            archive.write(message.chunk)
            digest = message.sha256
            if digest:
                assert message.size_bytes == archive.tell()
    return digest


def test_the_grpc_stream_carries_a_bundle_that_verifies_and_its_digest(
    history: History, tmp_path: Path
) -> None:
    out = tmp_path / "streamed.zip"
    request = cpb.ExportBundleRequest(
        start_time=timestamp(history.start),
        end_time=timestamp(history.end),
        proof_sample_size=3,
    )

    digest = download(history.pli, request, out)

    assert digest == hashlib.sha256(out.read_bytes()).hexdigest()
    verification = verify_bundle(out)
    assert verification.clean, faults(verification)
    assert verification.findings.notes["proofs"]["proofs checked"] == 3
    assert not list((history.settings.home / "exports").iterdir())


def test_the_grpc_export_rejects_bad_dates_with_field_violations(
    history: History,
) -> None:
    stub = compliance_pb2_grpc.ComplianceServiceStub(history.pli.channel)
    start, end = timestamp(history.start), timestamp(history.end)
    out_of_range = timestamp_pb2.Timestamp(seconds=10**13)

    missing = call_error(stub.ExportBundle, cpb.ExportBundleRequest(start_time=start))
    inverted = call_error(
        stub.ExportBundle, cpb.ExportBundleRequest(start_time=end, end_time=start)
    )
    invalid = call_error(
        stub.ExportBundle,
        cpb.ExportBundleRequest(
            start_time=out_of_range, end_time=end, proof_sample_size=-1
        ),
    )

    for error in (missing, inverted, invalid):
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(missing) == ["end_time"]
    assert field_violations(inverted) == ["end_time"]
    assert field_violations(invalid) == ["start_time", "proof_sample_size"]
    assert "must be later than start_time" in inverted.details()


def record_ceremony(pli: Pli) -> None:
    """Two key ceremony events: the log opened and a key generated."""
    now = dt.datetime.now(dt.UTC)
    registry = KeyRegistry.open(now)
    registry.generate(
        role="seal",
        label="pli-seal.9",
        key_id="a" * 64,
        algorithm="EC P-256",
        operator="Alice Martin",
        at=now,
    )
    pli.runtime.letters.save(registry)


def test_each_store_exports_a_bundle_over_grpc_that_verifies(
    pli: Pli, tmp_path: Path
) -> None:
    front = Frontend(pli)
    decided(front, accept=True)
    pli.run_processes()
    # The ceremony's events take the wall clock's time, not the test clock's.
    record_ceremony(pli)
    out = tmp_path / "bundle.zip"
    request = cpb.ExportBundleRequest(
        start_time=timestamp(T0 - dt.timedelta(hours=1)),
        end_time=timestamp(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)),
    )

    download(pli, request, out)

    verification = verify_bundle(out)
    assert verification.clean, faults(verification)
    assert verification.findings.notes["events"]["events"] == pli.event_count()
    assert verification.findings.notes["key ceremony"]["events"] == 2
    # The export logged the ceremony's events and sealed a checkpoint of them.
    latest = verification.findings.notes["log"]["latest checkpoint"]
    assert latest["size"] == pli.event_count()
    assert latest["root"] == pli.runtime.log.latest_checkpoint().root.hex()


def test_an_export_refuses_a_log_that_disagrees_with_its_events(
    pli: Pli, tmp_path: Path
) -> None:
    decided(Frontend(pli), accept=True)
    pli.run_processes()
    with pli.runtime.log.datastore.transaction(commit=True) as cursor:
        cursor.execute(
            "UPDATE pli_log_leaves SET leaf_hash = "
            "(SELECT leaf_hash FROM pli_log_leaves WHERE position = 0) "
            "WHERE position = 2"
        )
    request = cpb.ExportBundleRequest(
        start_time=timestamp(T0 - dt.timedelta(hours=1)),
        end_time=timestamp(T0 + dt.timedelta(days=1)),
    )

    error = call_error(
        compliance_pb2_grpc.ComplianceServiceStub(pli.channel).ExportBundle, request
    )

    assert error.code() == grpc.StatusCode.DATA_LOSS
    assert "the leaf at log position 2 is not the hash of its event" in error.details()
    assert not list((pli.runtime.settings.home / "exports").iterdir())


def test_a_removed_key_ceremony_event_is_named(pli: Pli, tmp_path: Path) -> None:
    record_ceremony(pli)
    out = tmp_path / "bundle.zip"
    download(
        pli,
        cpb.ExportBundleRequest(
            start_time=timestamp(T0 - dt.timedelta(hours=1)),
            end_time=timestamp(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)),
        ),
        out,
    )
    files = members(out)
    files["key-ceremony.jsonl"] = files["key-ceremony.jsonl"].split(b"\n", 1)[1]

    verification = verify_bundle(write_archive(tmp_path / "damaged.zip", files))

    assert named(verification, "[key ceremony] key-ceremony.jsonl line 1", "version 2")


def test_an_event_recorded_past_the_period_does_not_cut_it_short(
    pli: Pli, settings: Settings, tmp_path: Path
) -> None:
    # A development clock moved ahead (as `pli expire --at` does) records an
    # event past the period in the middle of the log; what follows it, back
    # inside the period, must still be in the bundle.
    front = Frontend(pli)
    ere = {"kind": pb.LETTER_KIND_ERE, "second_factor_code": ""}
    first = front.deposit(**ere)
    pli.clock.advance(dt.timedelta(days=30))
    ahead = front.deposit(**ere)
    pli.clock.advance(-dt.timedelta(days=30) + dt.timedelta(hours=1))
    after = front.deposit(**ere)
    pli.run_processes()
    bundle = tmp_path / "day.zip"

    done = cli(
        pli_env(settings),
        "export",
        "--from",
        instant(T0 - dt.timedelta(hours=1)),
        "--to",
        instant(T0 + dt.timedelta(days=1)),
        str(bundle),
    )

    assert done.returncode == 0, done.stderr
    verification = verify_bundle(bundle)
    assert verification.clean, faults(verification)
    aggregates = {
        json.loads(line)["aggregate"] for line in event_lines(members(bundle))
    }
    assert {first.letter_id, ahead.letter_id, after.letter_id} <= aggregates
