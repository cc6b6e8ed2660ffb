"""A letter's whole life over real gRPC, sealed in the real token."""

from __future__ import annotations

import datetime as dt
import email
import subprocess
from pathlib import Path

import pytest

from pli.v1 import letters_pb2 as pb

from conftest import Pli
from frontend import CONTENT, STEP, Frontend


@pytest.fixture
def front(pli: Pli) -> Frontend:
    return Frontend(pli)


def pdfsig_says_valid(path: Path) -> bool:
    result = subprocess.run(["pdfsig", str(path)], capture_output=True, text=True)
    return "Signature is Valid" in result.stdout


def proof_path(pli: Pli, letter_id: str, name: str) -> Path:
    return pli.runtime.settings.proofs_dir / letter_id / f"{name}.pdf"


def test_deposit_is_notified_without_revealing_the_sender(front: Frontend) -> None:
    letter = front.deposit_and_notify()

    assert letter.state == pb.LETTER_STATE_NOTIFIED
    outbox = front.pli.runtime.settings.outbox_dir / f"{letter.letter_id}.eml"
    message = email.message_from_bytes(outbox.read_bytes())
    text = outbox.read_text(errors="replace")
    assert message["To"] == "camille@example.org"
    assert "SCI Exemple" not in text and "sci-exemple" not in text
    assert "mise-en-demeure" not in text and "Loyers" not in text
    assert letter.letter_id in text
    assert "04/04/2026" in message.get_payload(decode=True).decode()  # type: ignore[union-attr]


def test_accepted_letter_hands_over_identical_content_and_sealed_proofs(
    front: Frontend,
) -> None:
    pli = front.pli
    letter = front.deposit_and_notify()
    front.identify(letter.letter_id)
    accepted = front.accept(letter.letter_id)
    info, content = front.download(letter.letter_id)
    pli.run_processes()

    assert accepted.state == pb.LETTER_STATE_ACCEPTED
    assert content == CONTENT
    assert info.sha256 == letter.attachments[0].sha256
    for name in ("deposit", "receipt"):
        assert pdfsig_says_valid(proof_path(pli, letter.letter_id, name))
    proof = pli.letters.GetProof(
        pb.GetProofRequest(letter_id=letter.letter_id, kind=pb.PROOF_KIND_RECEIPT)
    )
    assert proof.pdf.startswith(b"%PDF")


def test_a_second_acceptance_or_refusal_changes_nothing(front: Frontend) -> None:
    accepted = front.deposit_and_notify()
    front.identify(accepted.letter_id)
    front.accept(accepted.letter_id)
    refused = front.deposit_and_notify()
    front.identify(refused.letter_id)
    front.refuse(refused.letter_id)
    front.pli.run_processes()
    before = front.pli.event_count()

    accepted_again = front.accept(accepted.letter_id)
    refused_again = front.refuse(refused.letter_id)
    front.pli.run_processes()

    assert accepted_again.state == pb.LETTER_STATE_ACCEPTED
    assert refused_again.state == pb.LETTER_STATE_REFUSED
    assert front.pli.event_count() == before


def test_a_second_download_of_an_attachment_records_no_new_event(
    front: Frontend,
) -> None:
    letter = front.deposit_and_notify()
    front.identify(letter.letter_id)
    front.accept(letter.letter_id)
    front.download(letter.letter_id)
    front.pli.run_processes()
    before = front.pli.event_count()

    _, content = front.download(letter.letter_id)
    front.pli.run_processes()

    assert content == CONTENT
    assert front.pli.event_count() == before


def test_refused_letter_gets_a_refusal_proof_and_no_content(front: Frontend) -> None:
    pli = front.pli
    letter = front.deposit_and_notify()
    front.identify(letter.letter_id)
    front.refuse(letter.letter_id)
    pli.run_processes()

    assert pdfsig_says_valid(proof_path(pli, letter.letter_id, "refusal"))
    got = front.get(letter.letter_id)
    assert got.state == pb.LETTER_STATE_REFUSED
    assert list(got.proofs) == [pb.PROOF_KIND_DEPOSIT, pb.PROOF_KIND_REFUSAL]


def test_window_closing_expires_the_letter_exactly_once(front: Frontend) -> None:
    pli = front.pli
    letter = front.deposit_and_notify()
    closes = letter.window_closes_at.ToDatetime(tzinfo=dt.UTC)

    pli.clock.at = closes - dt.timedelta(seconds=1)
    pli.run_processes()
    still_open = front.get(letter.letter_id)
    pli.clock.at = closes
    pli.run_processes()
    events_after_expiry = pli.event_count()
    pli.clock.at = closes + dt.timedelta(days=3)
    pli.run_processes()

    assert still_open.state == pb.LETTER_STATE_NOTIFIED
    got = front.get(letter.letter_id)
    assert got.state == pb.LETTER_STATE_EXPIRED
    assert pli.event_count() == events_after_expiry
    assert pdfsig_says_valid(proof_path(pli, letter.letter_id, "non-claim"))


def test_ere_follows_the_same_flow_with_a_low_identification(
    front: Frontend,
) -> None:
    letter = front.deposit_and_notify(kind=pb.LETTER_KIND_ERE, second_factor_code="")
    identified = front.identify(letter.letter_id, acr="eidas1")
    accepted = front.accept(letter.letter_id)

    assert identified.state == pb.LETTER_STATE_IDENTIFIED
    assert front.get(letter.letter_id).identification_level == (pb.ASSURANCE_LEVEL_LOW)
    assert accepted.kind == pb.LETTER_KIND_ERE
    assert accepted.state == pb.LETTER_STATE_ACCEPTED


def test_a_restarted_runtime_resumes_without_notifying_twice(
    front: Frontend,
    settings,
    clock,  # type: ignore[no-untyped-def]
) -> None:
    from pli.services.runtime import Runtime

    pli = front.pli
    letter = front.deposit_and_notify()
    version = letter.version
    outbox = sorted(pli.runtime.settings.outbox_dir.iterdir())

    # As if the server died after recording Notified but before it saved its
    # position: the notifier sees the deposit again on restart.
    with pli.runtime.views.datastore.transaction(commit=True) as cursor:
        cursor.execute("DELETE FROM pli_positions WHERE name = 'notifier'")
    second = Runtime.open(settings, clock)
    try:
        second.runner.run_until_idle()
    finally:
        second.close()

    again = front.get(letter.letter_id)
    assert again.version == version
    assert sorted(pli.runtime.settings.outbox_dir.iterdir()) == outbox


def test_concurrent_deposits_while_processes_run_all_succeed(
    settings,
    clock,  # type: ignore[no-untyped-def]
) -> None:
    import time
    from concurrent.futures import ThreadPoolExecutor

    from pli.services.server import start_server

    from conftest import connect

    running = start_server(settings, clock, processes=True)
    client = connect(running, clock)
    front = Frontend(client)
    try:
        # A code is spent once per account and step, so each of the 24
        # concurrent LREs comes from its own sender, with a code of one step.
        senders = [front.sender(f"sender-{n}", f"Sender {n}") for n in range(24)]
        requests = [front.deposit_request(sender) for sender in senders]
        clock.advance(STEP)
        for sender, request in zip(senders, requests, strict=True):
            request.second_factor_code = front.code(sender)
        with ThreadPoolExecutor(max_workers=8) as pool:
            letters = list(
                pool.map(
                    lambda request: client.letters.DepositLetter(request).letter,
                    requests,
                )
            )
        deadline = time.monotonic() + 60
        pending = {letter.letter_id for letter in letters}
        while pending and time.monotonic() < deadline:
            for letter_id in list(pending):
                got = front.get(letter_id)
                if list(got.proofs) == [pb.PROOF_KIND_DEPOSIT]:
                    pending.discard(letter_id)
            time.sleep(0.1)
        assert pending == set()
    finally:
        client.channel.close()
        running.stop(grace=0)
