"""The transparency log: every sealed event a leaf, checkpoints, anchored proofs.

Roots are compared with the RFC 9162 definition computed independently
(``test_merkle.mth``) over the event digests of the stored events; seals
are checked with ``openssl dgst``, time stamps with ``openssl ts -verify``,
the evidence is taken out of the sealed PDF with poppler's ``pdfdetach``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pli.hsm.seal import SealVerifier
from pli.infrastructure.anchors import verify_anchor
from pli.infrastructure.checkpointer import Checkpointer
from pli.infrastructure.checkpoints import Checkpoint, checkpoint_problems
from pli.infrastructure.envelope import event_digest
from pli.infrastructure.settings import Settings, SettingsError
from pli.infrastructure.transparency import open_log_store
from pli.services.processes import LogAppender
from pli.v1 import letters_pb2 as pb

from conftest import Pli
from frontend import STEP, Frontend
from openssl_tsa import OpensslTsa
from test_audit_tampering import accepted_letter, execute
from test_merkle import mth


def stored_leaf_data(pli: Pli) -> list[bytes]:
    """The event digest of every stored event, in commit order."""
    rows = pli.runtime.letters.recorder.select_notifications(start=1, limit=100_000)
    return [
        bytes.fromhex(
            event_digest(
                str(row.originator_id), row.originator_version, row.topic, row.state
            )
        )
        for row in rows
    ]


def seal_certificate(pli: Pli) -> x509.Certificate:
    certs = pli.runtime.settings.token.certs_dir
    return x509.load_pem_x509_certificate((certs / "seal.pem").read_bytes())


def verifier(pli: Pli) -> SealVerifier:
    return SealVerifier([seal_certificate(pli)])


def pli_command(pli: Pli, *args: str) -> subprocess.CompletedProcess[str]:
    settings = pli.runtime.settings
    env = dict(os.environ)
    env.update(
        {
            "PLI_HOME": str(settings.home),
            "PLI_DATABASE_URL": settings.database_url,
            "PLI_HSM_DIR": str(settings.token.hsm_dir),
        }
    )
    return subprocess.run(
        [str(Path(sys.executable).parent / "pli"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def detached_evidence(pdf: bytes, folder: Path) -> dict[str, object]:
    """``evidence.json`` as poppler's ``pdfdetach`` takes it out of the PDF."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "proof.pdf").write_bytes(pdf)
    subprocess.run(
        ["pdfdetach", "-savefile", "evidence.json", "-o", str(folder / "evidence.json"),
         str(folder / "proof.pdf")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return json.loads((folder / "evidence.json").read_text(encoding="utf-8"))


@pytest.fixture
def two_letters(pli: Pli) -> tuple[str, str]:
    front = Frontend(pli)
    return accepted_letter(front), accepted_letter(front)


def test_every_stored_event_is_a_leaf_in_commit_order(
    pli: Pli, two_letters: tuple[str, str]
) -> None:
    log = pli.runtime.log
    rows = pli.runtime.letters.recorder.select_notifications(start=1, limit=100_000)
    entries = log.entries(0, 100_000)

    assert [(e.notification_id, e.aggregate_id, e.version) for e in entries] == [
        (r.id, str(r.originator_id), r.originator_version) for r in rows
    ]
    assert [e.position for e in entries] == list(range(len(rows)))
    assert log.size() == pli.event_count()
    assert log.root(log.size()) == mth(stored_leaf_data(pli))


def test_the_log_rebuilt_from_scratch_gives_the_same_roots(
    pli: Pli, two_letters: tuple[str, str]
) -> None:
    log = pli.runtime.log
    first = pli.runtime.checkpointer.checkpoint_now()
    Frontend(pli).deposit_and_notify()
    second = pli.runtime.checkpointer.checkpoint_now()
    assert first.size < second.size

    execute(pli, "DELETE FROM pli_log_nodes", {})
    execute(pli, "DELETE FROM pli_log_leaves", {})
    tracking = "tracking" if pli.runtime.settings.is_embedded else "letters_tracking"
    execute(
        pli,
        f"DELETE FROM {tracking} WHERE application_name = %(name)s",
        {"name": "pli-transparency-log"},
    )
    assert log.size() == 0
    rebuilt = LogAppender(pli.runtime.letters, log).run_until_idle()

    assert rebuilt == pli.event_count()
    assert log.root(first.size) == first.root
    assert log.root(second.size) == second.root
    assert log.root(log.size()) == mth(stored_leaf_data(pli))


def test_concurrent_appenders_append_each_event_exactly_once(
    pli: Pli, two_letters: tuple[str, str]
) -> None:
    front = Frontend(pli)
    for _ in range(3):
        front.deposit()
    appenders = [
        LogAppender(pli.runtime.letters, open_log_store(pli.runtime.letters.recorder))
        for _ in range(4)
    ]
    for appender in appenders:
        appender.batch_size = 2
    threads = [threading.Thread(target=a.run_until_idle) for a in appenders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    entries = pli.runtime.log.entries(0, 100_000)
    assert len(entries) == pli.event_count()
    assert len({e.notification_id for e in entries}) == len(entries)
    assert pli.runtime.log.root(len(entries)) == mth(stored_leaf_data(pli))
    # Handing an appended batch to the log again appends nothing.
    again = pli.runtime.letters.recorder.select_notifications(start=1, limit=5)
    assert pli.runtime.log.append(again) == 0


def test_a_checkpoint_seal_verifies_with_openssl_and_binds_its_fields(
    pli: Pli, two_letters: tuple[str, str], tmp_path: Path
) -> None:
    checkpoint = pli.runtime.checkpointer.checkpoint_now()
    public_key = (
        seal_certificate(pli)
        .public_key()
        .public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    (tmp_path / "seal.pub").write_bytes(public_key)
    (tmp_path / "seal.der").write_bytes(checkpoint.seal)

    def openssl_verdict(message: bytes) -> str:
        (tmp_path / "message").write_bytes(message)
        result = subprocess.run(
            ["openssl", "dgst", "-sha256", "-verify", str(tmp_path / "seal.pub"),
             "-signature", str(tmp_path / "seal.der"), str(tmp_path / "message")],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        return result.stdout.strip()

    assert checkpoint.message.startswith(b"pli/log-checkpoint/v1\n")
    assert checkpoint.size == pli.event_count()
    assert openssl_verdict(checkpoint.message) == "Verified OK"
    grown = Checkpoint(
        checkpoint.size + 1,
        checkpoint.root,
        checkpoint.time,
        checkpoint.key_id,
        checkpoint.seal,
    )
    assert openssl_verdict(grown.message) == "Verification failure"
    assert checkpoint_problems(checkpoint, verifier(pli)) == []
    assert checkpoint_problems(grown, verifier(pli)) == [
        "checkpoint seal does not verify"
    ]


def test_checkpoints_are_sealed_each_interval_while_the_log_grows(pli: Pli) -> None:
    front = Frontend(pli)
    runtime = pli.runtime
    checkpointer = Checkpointer(
        runtime.log, runtime.checkpointer.sealer, pli.clock, interval=300
    )
    assert checkpointer.run_once() == 0  # an empty log has nothing to seal
    front.deposit()
    runtime.log_appender.run_until_idle()

    assert checkpointer.run_once() == 1
    front.deposit()  # 30 s later
    runtime.log_appender.run_until_idle()
    assert checkpointer.run_once() == 0
    pli.clock.advance(STEP * 10)
    assert checkpointer.run_once() == 1
    assert checkpointer.run_once() == 0  # nothing new to seal
    latest = runtime.log.latest_checkpoint()
    assert latest is not None and latest.size == runtime.log.size()


def test_a_stamped_checkpoint_carries_an_rfc3161_token_over_its_message(
    pli: Pli, two_letters: tuple[str, str], tmp_path: Path
) -> None:
    tsa = OpensslTsa(tmp_path / "tsa")
    runtime = pli.runtime
    checkpointer = Checkpointer(
        runtime.log, runtime.checkpointer.sealer, pli.clock, stamper=tsa
    )
    Frontend(pli).deposit()
    runtime.log_appender.run_until_idle()
    checkpoint = checkpointer.checkpoint_now()
    assert checkpoint.stamp is not None
    stored = runtime.log.checkpoint(checkpoint.size)

    digest = hashlib.sha256(checkpoint.message).digest()
    assert "Verification: OK" in tsa.verify(checkpoint.stamp, digest)
    assert stored == checkpoint
    assert checkpoint_problems(checkpoint, verifier(pli)) == []
    other = tsa(hashlib.sha256(b"another checkpoint").digest())
    swapped = Checkpoint(**{**checkpoint.__dict__, "stamp": other})
    assert checkpoint_problems(swapped, verifier(pli)) == [
        "checkpoint time stamp does not cover this checkpoint"
    ]


def test_with_trust_anchors_a_checkpoint_stamp_is_checked_for_its_authority(
    pli: Pli, two_letters: tuple[str, str], tmp_path: Path
) -> None:
    tsa = OpensslTsa(tmp_path / "tsa")
    runtime = pli.runtime
    Frontend(pli).deposit()  # a size no checkpoint has yet
    runtime.log_appender.run_until_idle()
    checkpoint = Checkpointer(
        runtime.log, runtime.checkpointer.sealer, pli.clock, stamper=tsa
    ).checkpoint_now()
    assert checkpoint.stamp is not None
    tsa_root = x509.load_pem_x509_certificate(tsa.certificate.read_bytes())
    dev_root = x509.load_pem_x509_certificate(
        (runtime.settings.token.certs_dir / "root.pem").read_bytes()
    )
    token = bytearray(checkpoint.stamp)
    token[-1] ^= 0x01  # the TSA's signature, not the imprint
    flipped = Checkpoint(**{**checkpoint.__dict__, "stamp": bytes(token)})
    digest = hashlib.sha256(checkpoint.message).digest()

    assert "Verification: OK" in tsa.verify(checkpoint.stamp, digest)
    assert "Verification: OK" not in tsa.verify(flipped.stamp or b"", digest)
    assert checkpoint_problems(checkpoint, verifier(pli), trust_roots=[tsa_root]) == []
    assert checkpoint_problems(flipped, verifier(pli)) == []  # the imprint only
    (bad_signature,) = checkpoint_problems(
        flipped, verifier(pli), trust_roots=[tsa_root]
    )
    assert bad_signature.startswith("checkpoint time stamp does not verify: ")
    (untrusted,) = checkpoint_problems(
        checkpoint, verifier(pli), trust_roots=[dev_root]
    )
    assert untrusted.startswith("checkpoint time stamp does not verify: ")


def test_every_proof_is_anchored_in_a_checkpoint_and_verifies_offline(
    pli: Pli, two_letters: tuple[str, str], tmp_path: Path
) -> None:
    victim, _ = two_letters
    pdf = pli.letters.GetProof(
        pb.GetProofRequest(letter_id=victim, kind=pb.PROOF_KIND_RECEIPT)
    ).pdf
    evidence = detached_evidence(pdf, tmp_path)
    section = evidence["log"]
    assert isinstance(section, dict)
    checkpoint = Checkpoint.from_json(section["checkpoint"])
    versions = [event["version"] for event in evidence["events"]]  # type: ignore[index, union-attr]
    positions = {e.version: e.position for e in pli.runtime.log.entries_of(victim)}

    assert verify_anchor(evidence, [seal_certificate(pli)]) == []
    assert [e["version"] for e in section["entries"]] == versions
    assert [e["position"] for e in section["entries"]] == [
        positions[v] for v in versions
    ]
    assert checkpoint.size > max(positions.values())
    assert pli.runtime.log.checkpoint(checkpoint.size) == checkpoint


def test_a_changed_anchor_names_the_event_and_its_position(
    pli: Pli, two_letters: tuple[str, str], tmp_path: Path
) -> None:
    victim, _ = two_letters
    pdf = pli.letters.GetProof(
        pb.GetProofRequest(letter_id=victim, kind=pb.PROOF_KIND_DEPOSIT)
    ).pdf
    evidence = detached_evidence(pdf, tmp_path)
    certificates = [seal_certificate(pli)]
    entry = evidence["log"]["entries"][1]  # type: ignore[index]
    where = f"event version 2 at log position {entry['position']}"

    path = list(entry["inclusion_path"])
    flipped = f"{int(path[0][-2:], 16) ^ 1:02x}"  # always a different byte
    entry["inclusion_path"] = [path[0][:-2] + flipped, *path[1:]]
    assert verify_anchor(evidence, certificates) == [
        f"{where}: inclusion path does not lead to the root of the checkpoint "
        f"of size {evidence['log']['checkpoint']['size']}"  # type: ignore[index]
    ]
    entry["inclusion_path"] = path
    evidence["events"][1]["sealed_digest"] = "00" * 32  # type: ignore[index]
    assert verify_anchor(evidence, certificates) == [
        f"{where}: leaf hash is not that of the stated event digest"
    ]
    evidence["log"]["checkpoint"]["size"] += 1  # type: ignore[index]
    assert "checkpoint seal does not verify" in verify_anchor(evidence, certificates)
    del evidence["log"]
    assert verify_anchor(evidence, certificates) == ["the evidence has no log section"]


def test_the_proof_builder_waits_for_the_log_appender(pli: Pli) -> None:
    front = Frontend(pli)
    letter = front.deposit()
    runtime = pli.runtime
    runtime.projector.run_until_idle()
    runtime.notifier.run_until_idle()  # records Notified, which warrants a proof
    proof = runtime.settings.proofs_dir / letter.letter_id / "deposit.pdf"

    assert runtime.proof_builder.run_until_idle() == 0
    assert not proof.exists()
    runtime.log_appender.run_until_idle()
    assert runtime.proof_builder.run_until_idle() == 1
    assert proof.exists()


def test_pli_log_checkpoint_brings_the_log_up_to_date_and_writes_json(
    pli: Pli, tmp_path: Path
) -> None:
    empty = pli_command(pli, "log", "checkpoint")
    front = Frontend(pli)
    front.deposit()  # processes not run: the log is behind the store
    out = tmp_path / "checkpoint.json"

    result = pli_command(pli, "log", "checkpoint", "--out", str(out))

    assert empty.returncode == 1 and "holds no event" in empty.stderr
    assert result.returncode == 0, result.stderr
    checkpoint = Checkpoint.from_json(json.loads(out.read_text()))
    assert checkpoint.size == pli.event_count()
    assert checkpoint.root == mth(stored_leaf_data(pli))
    assert checkpoint_problems(checkpoint, verifier(pli)) == []
    assert pli.runtime.log.latest_checkpoint() == checkpoint
    # An auditor's saved checkpoint is never replaced, nor a folder made up.
    again = pli_command(pli, "log", "checkpoint", "--out", str(out))
    nowhere = pli_command(
        pli, "log", "checkpoint", "--out", str(tmp_path / "no" / "such.json")
    )
    assert again.returncode == 2 and "it exists" in again.stderr
    assert nowhere.returncode == 2 and "folder does not exist" in nowhere.stderr
    assert Checkpoint.from_json(json.loads(out.read_text())) == checkpoint


@pytest.mark.parametrize("value", ["soon", "0", "-5", "inf", "nan"])
def test_a_checkpoint_interval_that_is_no_positive_number_is_refused(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLI_CHECKPOINT_INTERVAL", value)
    with pytest.raises(SettingsError, match="PLI_CHECKPOINT_INTERVAL"):
        Settings.from_env()


def test_the_checkpoint_interval_defaults_to_five_minutes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PLI_CHECKPOINT_INTERVAL", raising=False)
    assert Settings.from_env().checkpoint_interval == 300.0
    monkeypatch.setenv("PLI_CHECKPOINT_INTERVAL", "60")
    assert Settings.from_env().checkpoint_interval == 60.0
