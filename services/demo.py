"""``pli demo``: three registered letters through a real ``pli serve``.

The demo starts the server as a separate process on a free loopback port
and drives it over gRPC as a frontend would. The first letter (a signed
formal notice the demo composes, or any file given with ``--letter``) is
notified, its recipient identified, and accepted; the content handed over
must be byte-identical and its own signatures must still validate. The
second is refused. The third lets its window lapse: a one-shot expirer with
the development clock moved past the window records the non-claim. Then it
checks every proof with ``pdfsig`` and runs ``pli audit verify``.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pli.infrastructure.settings import Settings
from pli.services.demo_letter import compose_formal_notice
from pli.v1 import letters_pb2 as pb
from pli.v1 import letters_pb2_grpc

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


class _Frontend:
    """What a sender frontend and a recipient desk would do, over gRPC."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.letters = letters_pb2_grpc.LetterServiceStub(channel)
        self.desk = letters_pb2_grpc.RecipientDeskServiceStub(channel)

    def deposit(self, filename: str, content: bytes) -> pb.Letter:
        request = pb.DepositLetterRequest(
            idempotency_key=f"demo-{uuid.uuid4()}",
            kind=pb.LETTER_KIND_LRE,
            sender=pb.Party(name="SCI Exemple", email="gestion@sci-exemple.example"),
            recipient=pb.Party(
                name="Camille Martin", email="camille.martin@example.org"
            ),
            attachments=[
                pb.Attachment(
                    filename=filename, media_type="application/pdf", content=content
                )
            ],
        )
        letter = self.letters.DepositLetter(request).letter
        _say(f"deposited letter {letter.letter_id} ({len(content)} bytes)")
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

    def identify(self, letter_id: str) -> None:
        self.desk.IdentifyRecipient(
            pb.IdentifyRecipientRequest(
                letter_id=letter_id,
                method="identity-document+liveness (demo)",
                level=pb.ASSURANCE_LEVEL_SUBSTANTIAL,
                verifier_reference=f"demo-check-{uuid.uuid4().hex[:8]}",
            )
        )
        _say(f"recipient of {letter_id} identified (substantial)")

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
        return path.name, path.read_bytes()
    work = settings.home / "demo"
    work.mkdir(parents=True, exist_ok=True)
    return "mise-en-demeure.pdf", compose_formal_notice(work)


def _accepted_letter(
    front: _Frontend, settings: Settings, filename: str, content: bytes
) -> str:
    letter = front.deposit(filename, content)
    front.wait_for(letter.letter_id, pb.LETTER_STATE_NOTIFIED)
    _say(f"notification written to {settings.outbox_dir}/{letter.letter_id}.eml")
    front.identify(letter.letter_id)
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


def _refused_letter(front: _Frontend, filename: str, content: bytes) -> str:
    letter = front.deposit(filename, content)
    front.wait_for(letter.letter_id, pb.LETTER_STATE_NOTIFIED)
    front.identify(letter.letter_id)
    front.desk.RefuseLetter(pb.RefuseLetterRequest(letter_id=letter.letter_id))
    _say(f"letter {letter.letter_id} refused")
    return letter.letter_id


def _expired_letter(
    front: _Frontend, env: dict[str, str], filename: str, content: bytes
) -> str:
    letter = front.deposit(filename, content)
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
    env.update(
        {
            "PLI_HOME": str(settings.home),
            "PLI_LISTEN": f"127.0.0.1:{port}",
            "PLI_POLL_INTERVAL": "0.1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    filename, content = _letter_content(settings, letter)
    server = _start_server(env)
    _say(f"pli serve started on 127.0.0.1:{port} (pid {server.pid})")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        _wait_until_serving(channel, server)
        front = _Frontend(channel)
        accepted = _accepted_letter(front, settings, filename, content)
        refused = _refused_letter(front, filename, content)
        expired = _expired_letter(front, env, filename, content)
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
