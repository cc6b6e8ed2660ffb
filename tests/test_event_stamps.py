"""Legally timed events carry an RFC 3161 stamp that anyone can check alone."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import threading
from dataclasses import replace
from pathlib import Path
from uuid import UUID

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from pli.domain.clock import FixedClock
from pli.hsm.timestamp import BadTimeStamp, check_token, stamped_digest
from pli.hsm.tsa import TimeStampAuthority
from pli.infrastructure import merkle
from pli.infrastructure.envelope import Envelope, seal_message, stamp_leaf_input
from pli.infrastructure.letters import LetterApplication
from pli.infrastructure.settings import Settings
from pli.infrastructure.stamping import (
    EventStampChecker,
    TreeStamper,
    check_event_stamp,
)
from pli.infrastructure.timestamps import LocalTimeStampClient
from pli.services.server import start_server

from conftest import Pli, connect
from frontend import Frontend

TIMED = {"Deposited", "Notified", "IdentityVerified", "Accepted", "Refused", "Expired"}


def stored_events(letters: LetterApplication, letter_id: str) -> list[object]:
    return list(letters.recorder.select_events(originator_id=UUID(letter_id)))


def seal_message_of(stored: object, envelope: Envelope) -> bytes:
    return seal_message(
        str(stored.originator_id),  # type: ignore[attr-defined]
        stored.originator_version,  # type: ignore[attr-defined]
        stored.topic,  # type: ignore[attr-defined]
        envelope.payload,
        envelope.previous,
    )


def test_each_legally_timed_event_carries_a_stamp_that_checks_alone(
    pli: Pli, dev_root: x509.Certificate
) -> None:
    front = Frontend(pli)
    letter = front.deposit_and_notify()
    front.identify(letter.letter_id)
    front.accept(letter.letter_id)

    seen = set()
    for stored in stored_events(pli.runtime.letters, letter.letter_id):
        envelope = Envelope.from_bytes(stored.state)
        name = stored.topic.rpartition(".")[2]
        if name not in TIMED:
            assert envelope.stamp is None, name
            continue
        info = check_event_stamp(
            envelope, seal_message_of(stored, envelope), trust_roots=[dev_root]
        )
        assert info.time == pli.clock.now()
        assert not info.qualified
        seen.add(name)
    assert seen == {"Deposited", "Notified", "IdentityVerified", "Accepted"}


def test_openssl_verifies_an_event_stamp_against_the_development_root(
    pli: Pli, tmp_path: Path
) -> None:
    front = Frontend(pli)
    letter = front.deposit()
    stored = stored_events(pli.runtime.letters, letter.letter_id)[0]
    envelope = Envelope.from_bytes(stored.state)
    assert envelope.stamp is not None
    leaf = merkle.leaf_hash(
        stamp_leaf_input(seal_message_of(stored, envelope), envelope.signature)
    )
    root = stamped_digest(envelope.stamp.token)
    assert merkle.verify_inclusion(
        leaf, envelope.stamp.index, envelope.stamp.size, envelope.stamp.path, root
    )
    (tmp_path / "token.der").write_bytes(envelope.stamp.token)
    certs = pli.runtime.settings.token.certs_dir
    result = subprocess.run(
        [
            "openssl",
            "ts",
            "-verify",
            "-token_in",
            "-in",
            str(tmp_path / "token.der"),
            "-digest",
            root.hex(),
            "-CAfile",
            str(certs / "root.pem"),
            "-untrusted",
            str(certs / "tsa.pem"),
        ],
        capture_output=True,
        text=True,
    )
    assert "Verification: OK" in result.stdout, result.stdout + result.stderr


def test_a_stamp_moved_to_another_event_fails(
    pli: Pli, dev_root: x509.Certificate
) -> None:
    front = Frontend(pli)
    first = stored_events(pli.runtime.letters, front.deposit().letter_id)[0]
    second = stored_events(pli.runtime.letters, front.deposit().letter_id)[0]
    borrowed = replace(
        Envelope.from_bytes(first.state),
        stamp=Envelope.from_bytes(second.state).stamp,
    )
    with pytest.raises(BadTimeStamp):
        check_event_stamp(
            borrowed, seal_message_of(first, borrowed), trust_roots=[dev_root]
        )


def test_the_checker_checks_a_token_shared_by_a_batch_once_and_each_leaf_alone(
    tsa_authority: TimeStampAuthority, dev_root: x509.Certificate
) -> None:
    stamper = TreeStamper(LocalTimeStampClient(tsa_authority, trust_roots=[dev_root]))
    leaves = [stamp_leaf_input(b"event %d" % n, b"seal %d" % n) for n in range(3)]
    envelopes = [
        Envelope(b"", "0" * 64, "key", b"seal %d" % n, stamp)
        for n, stamp in enumerate(stamper.stamp_leaves(leaves))
    ]
    checker = EventStampChecker(trust_roots=[dev_root], remembered=1)
    shared = checker.check(envelopes[0], b"event 0")

    assert stamper.requests == 1
    checked = [checker.check(e, b"event %d" % n) for n, e in enumerate(envelopes)]
    assert checked == [shared] * 3
    with pytest.raises(BadTimeStamp, match="does not hold this event's seal"):
        checker.check(envelopes[1], b"event 2")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_deposit_fails_unavailable_and_stores_nothing_when_the_tsa_is_down(
    settings: Settings, clock: FixedClock
) -> None:
    down = replace(
        settings,
        tsa=replace(
            settings.tsa, url=f"http://127.0.0.1:{_closed_port()}/", timeout=2.0
        ),
    )
    running = start_server(down, clock, processes=False)
    client = connect(running, clock)
    try:
        front = Frontend(client)
        sender = front.sender()  # sender accounts are not stamped
        before = client.event_count()
        with pytest.raises(grpc.RpcError) as failure:
            front.deposit(sender)
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "time-stamp authority" in failure.value.details()
        assert client.event_count() == before
    finally:
        client.channel.close()
        running.stop(grace=0)


def test_concurrent_events_share_one_request_and_each_keeps_its_path(
    tsa_authority: object, dev_root: x509.Certificate
) -> None:
    client = LocalTimeStampClient(tsa_authority, trust_roots=[dev_root])
    stamper = TreeStamper(client)
    results: dict[int, list[object]] = {}

    def stamp(worker: int) -> None:
        results[worker] = stamper.stamp_leaves([b"leaf %d" % worker, b"next"])

    threads = [threading.Thread(target=stamp, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert stamper.requests < 16
    for worker, stamps in results.items():
        for data, stamp in zip([b"leaf %d" % worker, b"next"], stamps, strict=True):
            root = stamped_digest(stamp.token)
            assert merkle.verify_inclusion(
                merkle.leaf_hash(data), stamp.index, stamp.size, stamp.path, root
            )


def test_without_batching_each_call_makes_its_own_request(
    tsa_authority: object, dev_root: x509.Certificate
) -> None:
    stamper = TreeStamper(
        LocalTimeStampClient(tsa_authority, trust_roots=[dev_root]), batching=False
    )
    for n in range(3):
        stamper.stamp_leaves([b"%d" % n])
    assert stamper.requests == 3


def test_a_proof_states_its_stamps_times_and_each_stamp_checks_from_the_proof_alone(
    pli: Pli, tmp_path: Path, dev_root: x509.Certificate
) -> None:
    front = Frontend(pli)
    letter = front.deposit_and_notify()
    front.identify(letter.letter_id)
    front.accept(letter.letter_id)
    pli.run_processes()
    proof = pli.runtime.settings.proofs_dir / letter.letter_id / "receipt.pdf"
    saved = tmp_path / "evidence.json"
    subprocess.run(
        ["pdfdetach", "-savefile", "evidence.json", "-o", str(saved), str(proof)],
        check=True,
    )
    evidence = json.loads(saved.read_text())

    stamps = evidence["time_stamps"]
    names = {str(e["version"]): e["event"] for e in evidence["events"]}
    assert {names[v] for v in stamps} == {
        "Deposited",
        "Notified",
        "IdentityVerified",
        "Accepted",
    }
    assert "RFC 3161 time stamp" in evidence["time_source"]
    assert "non-qualified" in evidence["time_source"]
    seal = x509.load_pem_x509_certificate(
        (pli.runtime.settings.token.certs_dir / "seal.pem").read_bytes()
    )
    for version, stamp in stamps.items():
        message_digest = bytes.fromhex(stamp["seal_message_sha256"])
        signature = base64.b64decode(stamp["seal"])
        seal.public_key().verify(
            signature, message_digest, ec.ECDSA(Prehashed(hashes.SHA256()))
        )
        leaf = merkle.leaf_hash(message_digest + signature)
        token = base64.b64decode(stamp["token"])
        root = stamped_digest(token)
        path = [bytes.fromhex(node) for node in stamp["path"]]
        assert merkle.verify_inclusion(
            leaf, stamp["leaf_index"], stamp["tree_size"], path, root
        ), version
        info = check_token(token, digest=root, trust_roots=[dev_root])
        assert info.time.isoformat().replace("+00:00", "Z") == stamp["time"]
    decided = stamps[str(max(int(v) for v in stamps))]["time"]
    assert evidence["times"]["decided_at"] == decided
