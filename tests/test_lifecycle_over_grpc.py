"""A letter's whole life over real gRPC, sealed in the real token."""

from __future__ import annotations

import datetime as dt
import email
import subprocess
import uuid
from pathlib import Path

from pli.v1 import letters_pb2 as pb

from conftest import Pli

CONTENT = b"%PDF-1.4\n% a letter's bytes, opaque to pli\n"


def deposit_request(
    key: str | None = None, **overrides: object
) -> pb.DepositLetterRequest:
    fields: dict[str, object] = {
        "idempotency_key": key or uuid.uuid4().hex,
        "kind": pb.LETTER_KIND_LRE,
        "sender": pb.Party(name="SCI Exemple", email="gestion@sci-exemple.fr"),
        "recipient": pb.Party(name="Camille Martin", email="camille@example.org"),
        "attachments": [
            pb.Attachment(
                filename="mise-en-demeure.pdf",
                media_type="application/pdf",
                content=CONTENT,
            )
        ],
    }
    fields.update(overrides)
    return pb.DepositLetterRequest(**fields)  # type: ignore[arg-type]


def deposit_and_notify(pli: Pli, **overrides: object) -> pb.Letter:
    letter = pli.letters.DepositLetter(deposit_request(**overrides)).letter
    pli.run_processes()
    return pli.letters.GetLetter(pb.GetLetterRequest(letter_id=letter.letter_id)).letter


def identify(pli: Pli, letter_id: str) -> pb.Letter:
    return pli.desk.IdentifyRecipient(
        pb.IdentifyRecipientRequest(
            letter_id=letter_id,
            method="identity-document+video",
            level=pb.ASSURANCE_LEVEL_SUBSTANTIAL,
            verifier_reference="check-42",
        )
    ).letter


def download(
    pli: Pli, letter_id: str, index: int = 0
) -> tuple[pb.AttachmentInfo, bytes]:
    stream = pli.desk.DownloadContent(
        pb.DownloadContentRequest(letter_id=letter_id, attachment_index=index)
    )
    info = None
    chunks = []
    for part in stream:
        if part.HasField("attachment"):
            info = part.attachment
        chunks.append(part.chunk)
    assert info is not None
    return info, b"".join(chunks)


def pdfsig_says_valid(path: Path) -> bool:
    result = subprocess.run(["pdfsig", str(path)], capture_output=True, text=True)
    return "Signature is Valid" in result.stdout


def proof_path(pli: Pli, letter_id: str, name: str) -> Path:
    return pli.runtime.settings.proofs_dir / letter_id / f"{name}.pdf"


def test_deposit_is_notified_without_revealing_the_sender(pli: Pli) -> None:
    letter = deposit_and_notify(pli)

    assert letter.state == pb.LETTER_STATE_NOTIFIED
    outbox = pli.runtime.settings.outbox_dir / f"{letter.letter_id}.eml"
    message = email.message_from_bytes(outbox.read_bytes())
    text = outbox.read_text(errors="replace")
    assert message["To"] == "camille@example.org"
    assert "SCI Exemple" not in text and "sci-exemple" not in text
    assert "mise-en-demeure" not in text
    assert letter.letter_id in text
    assert "04/04/2026" in message.get_payload(decode=True).decode()  # type: ignore[union-attr]


def test_accepted_letter_hands_over_identical_content_and_sealed_proofs(
    pli: Pli,
) -> None:
    letter = deposit_and_notify(pli)
    identify(pli, letter.letter_id)
    accepted = pli.desk.AcceptLetter(pb.AcceptLetterRequest(letter_id=letter.letter_id))
    info, content = download(pli, letter.letter_id)
    pli.run_processes()

    assert accepted.letter.state == pb.LETTER_STATE_ACCEPTED
    assert content == CONTENT
    assert info.sha256 == letter.attachments[0].sha256
    for name in ("deposit", "receipt"):
        assert pdfsig_says_valid(proof_path(pli, letter.letter_id, name))
    proof = pli.letters.GetProof(
        pb.GetProofRequest(letter_id=letter.letter_id, kind=pb.PROOF_KIND_RECEIPT)
    )
    assert proof.pdf.startswith(b"%PDF")


def test_refused_letter_gets_a_refusal_proof_and_no_content(pli: Pli) -> None:
    letter = deposit_and_notify(pli)
    identify(pli, letter.letter_id)
    pli.desk.RefuseLetter(pb.RefuseLetterRequest(letter_id=letter.letter_id))
    pli.run_processes()

    assert pdfsig_says_valid(proof_path(pli, letter.letter_id, "refusal"))
    got = pli.letters.GetLetter(pb.GetLetterRequest(letter_id=letter.letter_id)).letter
    assert got.state == pb.LETTER_STATE_REFUSED
    assert list(got.proofs) == [pb.PROOF_KIND_DEPOSIT, pb.PROOF_KIND_REFUSAL]


def test_window_closing_expires_the_letter_exactly_once(pli: Pli) -> None:
    letter = deposit_and_notify(pli)
    closes = letter.window_closes_at.ToDatetime(tzinfo=dt.UTC)

    pli.clock.at = closes - dt.timedelta(seconds=1)
    pli.run_processes()
    still_open = pli.letters.GetLetter(pb.GetLetterRequest(letter_id=letter.letter_id))
    pli.clock.at = closes
    pli.run_processes()
    events_after_expiry = pli.event_count()
    pli.clock.at = closes + dt.timedelta(days=3)
    pli.run_processes()

    assert still_open.letter.state == pb.LETTER_STATE_NOTIFIED
    got = pli.letters.GetLetter(pb.GetLetterRequest(letter_id=letter.letter_id)).letter
    assert got.state == pb.LETTER_STATE_EXPIRED
    assert pli.event_count() == events_after_expiry
    assert pdfsig_says_valid(proof_path(pli, letter.letter_id, "non-claim"))


def test_ere_follows_the_same_flow_with_a_low_identification(pli: Pli) -> None:
    letter = deposit_and_notify(pli, kind=pb.LETTER_KIND_ERE)
    pli.desk.IdentifyRecipient(
        pb.IdentifyRecipientRequest(
            letter_id=letter.letter_id, method="email-otp", level=pb.ASSURANCE_LEVEL_LOW
        )
    )
    accepted = pli.desk.AcceptLetter(pb.AcceptLetterRequest(letter_id=letter.letter_id))
    assert accepted.letter.kind == pb.LETTER_KIND_ERE
    assert accepted.letter.state == pb.LETTER_STATE_ACCEPTED


def test_a_restarted_runtime_resumes_without_notifying_twice(
    pli: Pli,
    settings,
    clock,  # type: ignore[no-untyped-def]
) -> None:
    from pli.services.runtime import Runtime

    letter = deposit_and_notify(pli)
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

    again = pli.letters.GetLetter(pb.GetLetterRequest(letter_id=letter.letter_id))
    assert again.letter.version == version
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
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            letters = list(
                pool.map(
                    lambda _: client.letters.DepositLetter(deposit_request()).letter,
                    range(24),
                )
            )
        deadline = time.monotonic() + 60
        pending = {letter.letter_id for letter in letters}
        while pending and time.monotonic() < deadline:
            for letter_id in list(pending):
                got = client.letters.GetLetter(pb.GetLetterRequest(letter_id=letter_id))
                if list(got.letter.proofs) == [pb.PROOF_KIND_DEPOSIT]:
                    pending.discard(letter_id)
            time.sleep(0.1)
        assert pending == set()
    finally:
        client.channel.close()
        running.stop(grace=0)
