"""``pli demo``: registered letters through a real ``pli serve``.

The demo starts the server as a separate process on a free loopback port
and drives it over gRPC as the operator's back office, a sender frontend
and the recipient desk would. It registers two verified senders with their
TOTP second factor and records a consumer's consent. The first letter (a
signed formal notice the demo composes, or any file given with
``--letter``) goes as an LRE to that consumer: a first identification with
someone else's ID token is refused, a second one matches, and the letter is
accepted; the content handed over must be byte-identical and its own
signatures must still validate. An LRE to a consumer who never consented
is refused at deposit. The second letter, an ERE, is refused. The third
lets its window lapse: a one-shot expirer with the development clock moved
past the window records the non-claim. Then it checks every proof with
``pdfsig`` and runs ``pli audit verify``. ID tokens come from the
development identity provider (``pli dev id-token``), trusted for the demo
only.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import grpc
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pli.infrastructure.dev_idp import DevIdentityProvider
from pli.infrastructure.settings import Settings
from pli.services.demo_letter import compose_formal_notice
from pli.v1 import accounts_pb2 as apb
from pli.v1 import accounts_pb2_grpc, consents_pb2, consents_pb2_grpc, letters_pb2_grpc
from pli.v1 import letters_pb2 as pb

__all__ = ["run_demo"]

_TIMEOUT = 60.0


class DemoFailed(Exception):
    """A step of the demo did not give the expected outcome."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _pli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pli.services.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def _pdfsig(path: Path) -> list[str]:
    result = subprocess.run(["pdfsig", str(path)], capture_output=True, text=True)
    lines = result.stdout.splitlines()
    # The first line names the file; the verdicts follow.
    return [line.strip() for line in lines[1:] if "Signature" in line]


_CONSUMER = pb.Recipient(
    email="camille.martin@example.org",
    type=pb.RECIPIENT_TYPE_CONSUMER,
    given_names="Camille Anne",
    family_name="Martin",
    birthdate="1988-04-12",
)
_COMPANY = pb.Recipient(
    email="direction@atelier-durand.example",
    type=pb.RECIPIENT_TYPE_PROFESSIONAL,
    given_names="Luc",
    family_name="Durand",
    company_name="Atelier Durand SARL",
    company_id="552100554",
)


class _Sender:
    """A registered sender account and its enrolled TOTP secret."""

    def __init__(self, account_id: str, otpauth_uri: str) -> None:
        self.account_id = account_id
        secret = parse_qs(urlsplit(otpauth_uri).query)["secret"][0]
        self.secret = base64.b32decode(secret + "=" * (-len(secret) % 8))
        self.last_step = 0

    def code(self) -> tuple[int, str]:
        """A one-time code of a step not used yet (each is accepted once)."""
        step = int(time.time()) // 30
        while step <= self.last_step:
            time.sleep(1)
            step = int(time.time()) // 30
        totp = TOTP(self.secret, 6, SHA1(), 30, enforce_key_length=False)
        return step, totp.generate(step * 30).decode()


class _Frontend:
    """What the back office, a sender frontend and the desk would do, over gRPC."""

    def __init__(self, channel: grpc.Channel, env: dict[str, str]) -> None:
        self.env = env
        self.letters = letters_pb2_grpc.LetterServiceStub(channel)
        self.desk = letters_pb2_grpc.RecipientDeskServiceStub(channel)
        self.accounts = accounts_pb2_grpc.SenderAccountServiceStub(channel)
        self.consents = consents_pb2_grpc.ConsentServiceStub(channel)

    def register(self, key: str, name: str, email: str) -> _Sender:
        account = self.accounts.RegisterSenderAccount(
            apb.RegisterSenderAccountRequest(
                idempotency_key=key,
                identity=pb.Party(name=name, email=email),
                level=pb.ASSURANCE_LEVEL_SUBSTANTIAL,
                method=apb.VERIFICATION_METHOD_NOTIFIED_EID,
                verifier_reference="demo-verification",
            )
        ).account
        uri = self.accounts.EnrollSecondFactor(
            apb.EnrollSecondFactorRequest(account_id=account.account_id)
        ).otpauth_uri
        _say(f"sender {name} registered, TOTP second factor enrolled")
        return _Sender(account.account_id, uri)

    def consent(self, sender: _Sender, address: str) -> None:
        try:
            self.consents.GetConsent(
                consents_pb2.GetConsentRequest(
                    sender_account_id=sender.account_id, recipient_email=address
                )
            )
            _say(f"consumer consent already recorded for {address}")
            return
        except grpc.RpcError as missing:
            if missing.code() != grpc.StatusCode.NOT_FOUND:
                raise
        self.consents.GrantConsent(
            consents_pb2.GrantConsentRequest(
                sender_account_id=sender.account_id,
                recipient_email=address,
                method="signed-form",
                text_version="demo-consent-1",
                evidence_reference="demo-form-1",
            )
        )
        _say(f"consumer consent recorded for {address}")

    def deposit(
        self,
        sender: _Sender,
        recipient: pb.Recipient,
        filename: str,
        content: bytes,
        kind: int = pb.LETTER_KIND_LRE,
    ) -> pb.Letter:
        step, code = sender.code() if kind == pb.LETTER_KIND_LRE else (0, "")
        request = pb.DepositLetterRequest(
            idempotency_key=f"demo-{uuid.uuid4()}",
            kind=kind,
            sender_account_id=sender.account_id,
            recipient=recipient,
            subject="Mise en demeure",
            attachments=[
                pb.Attachment(
                    filename=filename, media_type="application/pdf", content=content
                )
            ],
            second_factor_code=code,
        )
        letter = self.letters.DepositLetter(request).letter
        sender.last_step = max(sender.last_step, step)
        kind_name = pb.LetterKind.Name(kind).removeprefix("LETTER_KIND_")
        _say(f"deposited {kind_name} {letter.letter_id} ({len(content)} bytes)")
        return letter

    def wait_for(self, letter_id: str, state: int, proofs: int = 0) -> pb.Letter:
        deadline = time.monotonic() + _TIMEOUT
        while time.monotonic() < deadline:
            letter = self.letters.GetLetter(
                pb.GetLetterRequest(letter_id=letter_id)
            ).letter
            if letter.state == state and len(letter.proofs) >= proofs:
                return letter
            time.sleep(0.2)
        raise DemoFailed(f"letter {letter_id} never reached state {state}")

    def identify(
        self, letter_id: str, given_name: str, family_name: str, siret: str = ""
    ) -> None:
        nonce = self.desk.BeginIdentification(
            pb.BeginIdentificationRequest(letter_id=letter_id)
        ).nonce
        result = _pli(
            "dev",
            "id-token",
            "--given-name",
            given_name,
            "--family-name",
            family_name,
            "--birthdate",
            "1988-04-12",
            "--acr",
            "eidas2",
            "--nonce",
            nonce,
            *(["--siret", siret] if siret else []),
            env=self.env,
        )
        if result.returncode != 0:
            raise DemoFailed(f"pli dev id-token failed: {result.stderr.strip()}")
        self.desk.IdentifyRecipient(
            pb.IdentifyRecipientRequest(
                letter_id=letter_id, nonce=nonce, id_token=result.stdout.strip()
            )
        )
        _say(f"recipient of {letter_id} identified (eidas2, substantial)")

    def download(self, letter_id: str) -> bytes:
        chunks = [
            part.chunk
            for part in self.desk.DownloadContent(
                pb.DownloadContentRequest(letter_id=letter_id, attachment_index=0)
            )
        ]
        return b"".join(chunks)


def _start_server(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pli.services.cli", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(Path(env["PLI_HOME"]) / "demo-server.log", "ab"),  # noqa: SIM115
    )


def _wait_until_serving(channel: grpc.Channel, server: subprocess.Popen[bytes]) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + _TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise DemoFailed("pli serve exited; see var/demo-server.log")
        try:
            answer = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            if answer.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            time.sleep(0.2)
    raise DemoFailed("pli serve did not become healthy")


def _letter_content(settings: Settings, letter: str | None) -> tuple[str, bytes]:
    if letter:
        path = Path(letter)
        try:
            return path.name, path.read_bytes()
        except OSError as exc:
            raise DemoFailed(f"cannot read the letter {path}: {exc.strerror}") from exc
    work = settings.home / "demo"
    work.mkdir(parents=True, exist_ok=True)
    return "mise-en-demeure.pdf", compose_formal_notice(work)


def _accepted_letter(
    front: _Frontend,
    sender: _Sender,
    settings: Settings,
    filename: str,
    content: bytes,
) -> str:
    letter = front.deposit(sender, _CONSUMER, filename, content)
    front.wait_for(letter.letter_id, pb.LETTER_STATE_NOTIFIED)
    _say(f"notification written to {settings.outbox_dir}/")
    try:
        front.identify(letter.letter_id, "Camille", "Moreau")
        raise DemoFailed("an identity that does not match was accepted")
    except grpc.RpcError as refused:
        _say(f"identification of someone else refused: {refused.details()}")
    front.identify(letter.letter_id, "Camille Anne Sophie", "MARTIN")
    front.desk.AcceptLetter(pb.AcceptLetterRequest(letter_id=letter.letter_id))
    _say(f"letter {letter.letter_id} accepted")
    handed_over = front.download(letter.letter_id)
    if handed_over != content:
        raise DemoFailed("the content handed over differs from the deposit")
    _say("content handed over is byte-identical to the deposit")
    original = settings.home / "demo" / f"deposited-{filename}"
    received = settings.home / "demo" / f"received-{filename}"
    original.parent.mkdir(parents=True, exist_ok=True)
    original.write_bytes(content)
    received.write_bytes(handed_over)
    before, after = _pdfsig(original), _pdfsig(received)
    if before != after:
        raise DemoFailed("pdfsig judges the received letter differently")
    valid = sum("Signature is Valid" in line for line in after)
    _say(f"pdfsig on the received letter: {valid} valid signature(s)")
    return letter.letter_id


def _unconsented_letter(
    front: _Frontend, sender: _Sender, filename: str, content: bytes
) -> None:
    stranger = pb.Recipient()
    stranger.CopyFrom(_CONSUMER)
    stranger.email = "dominique.petit@example.org"
    try:
        front.deposit(sender, stranger, filename, content)
    except grpc.RpcError as refused:
        _say(f"LRE to a consumer without consent refused: {refused.details()}")
        return
    raise DemoFailed("an LRE to a consumer without consent was deposited")


def _refused_letter(
    front: _Frontend, sender: _Sender, filename: str, content: bytes
) -> str:
    letter = front.deposit(sender, _COMPANY, filename, content, pb.LETTER_KIND_ERE)
    front.wait_for(letter.letter_id, pb.LETTER_STATE_NOTIFIED)
    front.identify(letter.letter_id, "Luc", "Durand", siret="55210055400013")
    front.desk.RefuseLetter(pb.RefuseLetterRequest(letter_id=letter.letter_id))
    _say(f"letter {letter.letter_id} refused")
    return letter.letter_id


def _expired_letter(
    front: _Frontend,
    sender: _Sender,
    env: dict[str, str],
    filename: str,
    content: bytes,
) -> str:
    letter = front.deposit(sender, _COMPANY, filename, content)
    notified = front.wait_for(letter.letter_id, pb.LETTER_STATE_NOTIFIED)
    closes = notified.window_closes_at.ToDatetime(tzinfo=dt.UTC)
    at = (closes + dt.timedelta(minutes=1)).isoformat()
    _say(f"moving the development clock past the window ({closes.isoformat()})")
    result = _pli("expire", "--at", at, env=env)
    if result.returncode != 0:
        raise DemoFailed(f"pli expire failed: {result.stderr.strip()}")
    _say(f"letter {letter.letter_id}: {result.stdout.strip()}")
    return letter.letter_id


def _check_proofs(front: _Frontend, settings: Settings, outcomes: dict) -> None:
    for letter_id, (state, proofs) in outcomes.items():
        letter = front.wait_for(letter_id, state, proofs=len(proofs))
        for name in proofs:
            path = settings.proofs_dir / letter.letter_id / f"{name}.pdf"
            if not any("Signature is Valid" in line for line in _pdfsig(path)):
                raise DemoFailed(f"pdfsig does not validate {path}")
            _say(f"proof {path} : pdfsig says Signature is Valid")


def run_demo(settings: Settings, letter: str | None) -> int:
    """Run the demo; 0 when every step gave the expected outcome."""
    env = dict(os.environ)
    port = _free_port()
    identity_provider = DevIdentityProvider(settings.dev_idp_dir)
    identity_provider.ensure()
    env.update(
        {
            "PLI_HOME": str(settings.home),
            "PLI_OIDC_ISSUERS": str(identity_provider.issuers_file),
            "PLI_LISTEN": f"127.0.0.1:{port}",
            "PLI_POLL_INTERVAL": "0.1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    try:
        filename, content = _letter_content(settings, letter)
    except DemoFailed as exc:
        print(f"demo: FAILED: {exc}", file=sys.stderr)
        return 1
    server = _start_server(env)
    _say(f"pli serve started on 127.0.0.1:{port} (pid {server.pid})")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        _wait_until_serving(channel, server)
        front = _Frontend(channel, env)
        landlord = front.register(
            "demo-sci-exemple", "SCI Exemple", "gestion@sci-exemple.example"
        )
        insurer = front.register(
            "demo-assurances", "Mutuelle Exemple", "resiliation@mutuelle.example"
        )
        front.consent(landlord, _CONSUMER.email)
        accepted = _accepted_letter(front, landlord, settings, filename, content)
        _unconsented_letter(front, landlord, filename, content)
        refused = _refused_letter(front, landlord, filename, content)
        expired = _expired_letter(front, insurer, env, filename, content)
        _check_proofs(
            front,
            settings,
            {
                accepted: (pb.LETTER_STATE_ACCEPTED, ["deposit", "receipt"]),
                refused: (pb.LETTER_STATE_REFUSED, ["deposit", "refusal"]),
                expired: (pb.LETTER_STATE_EXPIRED, ["deposit", "non-claim"]),
            },
        )
        _say(f"proofs are under {settings.proofs_dir}/<letter id>/")
    except (DemoFailed, grpc.RpcError) as exc:
        print(f"demo: FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        channel.close()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    result = _pli("audit", "verify", env=env)
    print(result.stdout, end="")
    if result.returncode != 0:
        print("demo: FAILED: the audit found faults", file=sys.stderr)
        return 1
    _say("done: all three letters evidenced and the event log audits clean")
    return 0
