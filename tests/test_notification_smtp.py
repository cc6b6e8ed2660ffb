"""The notification over SMTP, against a real SMTP server on loopback.

Each test runs an aiosmtpd server on 127.0.0.1 that accepts, defers (451),
refuses (550) or drops the connection as told, drives pli through a real
server and its processes on SQLite and PostgreSQL, and reads what the SMTP
server received. Time moves only by the test's FixedClock.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import ipaddress
import socket
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pli.domain.letter import Letter, LetterState
from pli.domain.sender_account import VerificationMethod
from pli.domain.values import Assurance, LetterKind, Recipient, RecipientType
from pli.infrastructure.letters import DepositRequest, NewAttachment
from pli.infrastructure.mail_queue import MailState, Purpose
from pli.infrastructure.settings import Settings, SettingsError
from pli.infrastructure.smtp import OutboxTransport, SmtpSettings
from pli.services.notification_delivery import IN_DOUBT_AFTER
from pli.services.runtime import Runtime
from pli.v1 import letters_pb2 as pb

from conftest import Pli
from frontend import Frontend

RECIPIENT = "camille@example.org"
# The address of the sender account Frontend.sender() registers.
SENDER = "sci-exemple@example.fr"
ACCEPT = "https://desk.example.test/letters/{letter_id}/accept"
REFUSE = "https://desk.example.test/letters/{letter_id}/refuse"
MINUTE = dt.timedelta(minutes=1)


@dataclass
class Received:
    """One message the SMTP server took."""

    mail_from: str
    rcpt_tos: list[str]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        """The message, parsed."""
        parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @property
    def text(self) -> str:
        """The decoded plain-text body."""
        body = self.message.get_body(("plain",))
        assert body is not None
        return str(body.get_content())


@dataclass
class Mailbox:
    """An aiosmtpd handler: keeps what it takes, answers as the test says."""

    received: list[Received] = field(default_factory=list)
    rcpt_answers: dict[str, str] = field(default_factory=dict)
    drop_at_rcpt: bool = False
    drop_during_data_for: set[str] = field(default_factory=set)
    rcpt_calls: int = 0

    async def handle_RCPT(  # noqa: N802 (aiosmtpd's hook name)
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        """Accept, answer as told, or drop the connection."""
        self.rcpt_calls += 1
        if self.drop_at_rcpt:
            server.transport.close()
            return "421 4.3.2 closing"
        if address in self.rcpt_answers:
            return self.rcpt_answers[address]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(  # noqa: N802 (aiosmtpd's hook name)
        self, server: Any, session: Any, envelope: Any
    ) -> str:
        """Keep the message; for the listed recipients, then drop the line."""
        self.received.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content)
        )
        if self.drop_during_data_for & set(envelope.rcpt_tos):
            server.transport.close()
            return "421 4.3.2 closing"
        return "250 2.0.0 queued"

    def to(self, address: str) -> list[Received]:
        """What was delivered to ``address``."""
        return [r for r in self.received if address in r.rcpt_tos]


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def mailbox() -> Mailbox:
    return Mailbox()


@pytest.fixture
def smtp_port(mailbox: Mailbox) -> Iterator[int]:
    """A plain SMTP server on a loopback port, serving ``mailbox``."""
    port = free_loopback_port()
    controller = Controller(
        mailbox, hostname="127.0.0.1", port=port, server_hostname="smtp.test"
    )
    controller.start()
    yield port
    controller.stop()


@pytest.fixture
def settings(settings: Settings, smtp_port: int) -> Settings:
    """The shared test settings, notifying through the loopback SMTP server."""
    return replace(
        settings,
        smtp=SmtpSettings(host="127.0.0.1", port=smtp_port, starttls=False, timeout=5),
        desk_accept_url_template=ACCEPT,
        desk_refuse_url_template=REFUSE,
    )


@pytest.fixture
def front(pli: Pli) -> Frontend:
    return Frontend(pli)


def deposit(front: Frontend, **overrides: object) -> str:
    """Deposit an LRE from the registered sender; return its id."""
    return front.deposit(**overrides).letter_id


def letter_of(pli: Pli, letter_id: str) -> Letter:
    return pli.runtime.letters.get(uuid.UUID(letter_id))


def failure_reasons(runtime: Runtime, letter_id: str) -> list[str]:
    events = runtime.letters.repository.event_store.get(uuid.UUID(letter_id))
    return [e.reason for e in events if isinstance(e, Letter.NotificationFailed)]


def deposit_proof(pli: Pli, letter_id: str) -> Path:
    return pli.runtime.settings.proofs_dir / letter_id / "deposit.pdf"


def reopen(settings: Settings, clock: Any) -> Runtime:
    """A fresh runtime on the same store, as after a restart."""
    return Runtime.open(settings, clock)


def run_restarted(settings: Settings, clock: Any) -> None:
    restarted = reopen(settings, clock)
    try:
        restarted.runner.run_until_idle()
    finally:
        restarted.close()


def test_notification_names_number_kind_last_day_and_links_in_french_then_english(
    front: Frontend, pli: Pli, mailbox: Mailbox
) -> None:
    letter_id = deposit(front)
    pli.run_processes()

    [notification] = mailbox.received
    text = notification.text
    assert notification.rcpt_tos == [RECIPIENT]
    assert notification.message["To"] == RECIPIENT
    assert notification.message["Message-ID"] == f"<{letter_id}@pli.invalid>"
    assert text.index("Bonjour") < text.index("Hello")
    assert "pli test provider (non-qualified)" in text
    assert letter_id in text
    assert "lettre recommandée électronique" in text
    assert "electronic registered letter (LRE)" in text
    # Notified on 20 March 2026 (Paris): day 1 is 21 March, day 15 is 4 April.
    assert "jusqu'au 04/04/2026 inclus" in text
    assert "until 4 April 2026 included" in text
    assert ACCEPT.format(letter_id=letter_id) in text
    assert REFUSE.format(letter_id=letter_id) in text


def test_notification_reveals_nothing_of_the_sender_or_the_content(
    front: Frontend, pli: Pli, mailbox: Mailbox
) -> None:
    deposit(front)
    pli.run_processes()

    [notification] = mailbox.received
    everything = notification.raw.decode("ascii") + notification.text
    for secret in ("SCI Exemple", "sci-exemple", "Loyers", "mise-en-demeure"):
        assert secret.lower() not in everything.lower()
    assert notification.mail_from == "no-reply@pli.invalid"


def test_deposit_proof_is_issued_only_once_the_smtp_server_takes_the_notification(
    front: Frontend, pli: Pli, mailbox: Mailbox
) -> None:
    mailbox.rcpt_answers[RECIPIENT] = "451 4.7.1 greylisted, try again later"
    letter_id = deposit(front)
    deposited_at = pli.clock.now()
    pli.run_processes()

    assert letter_of(pli, letter_id).state is LetterState.DEPOSITED
    assert not deposit_proof(pli, letter_id).exists()
    got = pli.letters.GetLetter(pb.GetLetterRequest(letter_id=letter_id)).letter
    assert list(got.proofs) == []

    del mailbox.rcpt_answers[RECIPIENT]
    pli.clock.advance(MINUTE)
    pli.run_processes()

    letter = letter_of(pli, letter_id)
    assert letter.state is LetterState.NOTIFIED
    assert letter.notified_at == deposited_at + MINUTE
    assert deposit_proof(pli, letter_id).exists()
    assert len(mailbox.received) == 1


def test_temporary_failures_are_retried_after_1_2_and_4_minutes(
    front: Frontend, pli: Pli, mailbox: Mailbox
) -> None:
    mailbox.rcpt_answers[RECIPIENT] = "451 4.3.0 try again later"
    deposit(front)
    attempts_seen = []

    for step in (0, 59, 1, 119, 1, 239, 1):
        pli.clock.advance(dt.timedelta(seconds=step))
        pli.run_processes()
        attempts_seen.append(mailbox.rcpt_calls)

    # Attempts at 0, 1, 3 and 7 minutes, and none in between.
    assert attempts_seen == [1, 1, 2, 2, 3, 3, 4]
    assert mailbox.received == []


def test_a_dropped_connection_before_data_is_retried(
    front: Frontend, pli: Pli, mailbox: Mailbox
) -> None:
    mailbox.drop_at_rcpt = True
    letter_id = deposit(front)
    pli.run_processes()
    dropped = letter_of(pli, letter_id)

    mailbox.drop_at_rcpt = False
    pli.clock.advance(MINUTE)
    pli.run_processes()

    assert dropped.state is LetterState.DEPOSITED
    assert dropped.notification_failures == 0
    assert letter_of(pli, letter_id).state is LetterState.NOTIFIED
    assert len(mailbox.to(RECIPIENT)) == 1


def test_temporary_failure_for_24_hours_records_notification_failed_and_tells_sender(
    front: Frontend, pli: Pli, mailbox: Mailbox
) -> None:
    mailbox.rcpt_answers[RECIPIENT] = "451 4.3.0 try again later"
    letter_id = deposit(front)
    pli.run_processes()

    pli.clock.advance(dt.timedelta(hours=24))
    pli.run_processes()

    assert failure_reasons(pli.runtime, letter_id) == ["temporary-failure-exhausted"]
    assert letter_of(pli, letter_id).state is LetterState.DEPOSITED
    [notice] = mailbox.to(SENDER)
    assert letter_id in notice.text
    assert "24" in notice.text
    assert not deposit_proof(pli, letter_id).exists()


def test_permanent_refusal_records_notification_failed_and_tells_the_sender(
    front: Frontend, pli: Pli, mailbox: Mailbox
) -> None:
    mailbox.rcpt_answers[RECIPIENT] = "550 5.1.1 no such mailbox"
    letter_id = deposit(front)
    pli.run_processes()
    pli.clock.advance(dt.timedelta(days=2))
    pli.run_processes()

    assert failure_reasons(pli.runtime, letter_id) == ["permanent-smtp-failure:550"]
    assert letter_of(pli, letter_id).state is LetterState.DEPOSITED
    assert mailbox.to(RECIPIENT) == []
    [notice] = mailbox.received
    assert notice.rcpt_tos == [SENDER]
    assert notice.message["Message-ID"] == f"<{letter_id}.sender-notice@pli.invalid>"
    assert letter_id in notice.text
    assert RECIPIENT in notice.text
    assert notice.text.index("Bonjour") < notice.text.index("Hello")
    assert not deposit_proof(pli, letter_id).exists()
    assert mailbox.rcpt_calls == 2


def test_a_connection_lost_during_data_is_never_sent_again(
    front: Frontend, pli: Pli, mailbox: Mailbox
) -> None:
    mailbox.drop_during_data_for.add(RECIPIENT)
    letter_id = deposit(front)
    pli.run_processes()
    pli.clock.advance(dt.timedelta(hours=30))
    pli.run_processes()

    assert len(mailbox.to(RECIPIENT)) == 1
    assert failure_reasons(pli.runtime, letter_id) == ["delivery-unconfirmed"]
    [notice] = mailbox.to(SENDER)
    assert letter_id in notice.text
    assert letter_of(pli, letter_id).state is LetterState.DEPOSITED


class PowerCut(Exception):
    """The process dies here."""


class DiesDuringData:
    """A transport whose process dies once the message is marked sending."""

    def send(self, message: EmailMessage, before_data: Any) -> None:
        before_data()
        raise PowerCut


def test_a_crash_while_sending_leaves_the_notification_in_doubt_and_never_resends(
    front: Frontend, pli: Pli, mailbox: Mailbox, settings: Settings
) -> None:
    letter_id = deposit(front)
    pli.runtime.notifier.delivery.transport = DiesDuringData()
    with pytest.raises(PowerCut):
        pli.run_processes()

    run_restarted(settings, pli.clock)
    still_sending = pli.runtime.notifier.delivery.queue.get(
        uuid.UUID(letter_id), Purpose.NOTIFICATION
    )
    pli.clock.advance(IN_DOUBT_AFTER)
    run_restarted(settings, pli.clock)

    assert still_sending is not None and still_sending.state is MailState.SENDING
    assert mailbox.to(RECIPIENT) == []
    assert failure_reasons(pli.runtime, letter_id) == ["delivery-unconfirmed"]
    assert len(mailbox.to(SENDER)) == 1


def test_a_crash_after_the_server_took_the_message_records_notified_without_resending(
    front: Frontend,
    pli: Pli,
    mailbox: Mailbox,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    letter_id = deposit(front)
    deposited_at = pli.clock.now()

    def power_cut(*_: object) -> None:
        raise PowerCut

    monkeypatch.setattr(pli.runtime.letters, "record_notified", power_cut)
    with pytest.raises(PowerCut):
        pli.run_processes()
    pli.clock.advance(dt.timedelta(hours=2))
    run_restarted(settings, pli.clock)

    letter = letter_of(pli, letter_id)
    assert letter.state is LetterState.NOTIFIED
    assert letter.notified_at == deposited_at
    assert len(mailbox.received) == 1


def test_each_letter_is_notified_exactly_once_however_often_the_notifier_runs(
    front: Frontend, pli: Pli, mailbox: Mailbox, settings: Settings
) -> None:
    letter_ids = {deposit(front) for _ in range(3)}
    for _ in range(3):
        pli.run_processes()
        pli.clock.advance(dt.timedelta(hours=1))
    # As if the notifier's position were lost: it sees every deposit again.
    with pli.runtime.views.datastore.transaction(commit=True) as cursor:
        cursor.execute("DELETE FROM pli_positions WHERE name = 'notifier'")
    run_restarted(settings, pli.clock)
    pli.run_processes()

    message_ids = [r.message["Message-ID"] for r in mailbox.received]
    assert sorted(message_ids) == sorted(f"<{i}@pli.invalid>" for i in letter_ids)
    assert all(letter_of(pli, i).version == 2 for i in letter_ids)


def test_the_outbox_stays_the_default_without_an_smtp_host(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PLI_SMTP_HOST", raising=False)
    monkeypatch.setenv("PLI_HOME", str(tmp_path))

    assert Settings.from_env().smtp is None
    assert SmtpSettings.from_env({}) is None


def test_smtp_settings_come_from_the_environment_with_the_password_in_a_file(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "smtp-password"
    secret.write_text("s3cret\n")

    configured = SmtpSettings.from_env(
        {
            "PLI_SMTP_HOST": "relay.example.test",
            "PLI_SMTP_PORT": "2525",
            "PLI_SMTP_STARTTLS": "0",
            "PLI_SMTP_USERNAME": "pli",
            "PLI_SMTP_PASSWORD_FILE": str(secret),
        }
    )

    assert configured is not None
    assert (configured.host, configured.port, configured.starttls) == (
        "relay.example.test",
        2525,
        False,
    )
    assert configured.password() == "s3cret"
    with pytest.raises(ValueError, match="go together"):
        SmtpSettings.from_env({"PLI_SMTP_HOST": "relay", "PLI_SMTP_USERNAME": "pli"})
    with pytest.raises(ValueError, match="TCP port"):
        SmtpSettings.from_env({"PLI_SMTP_HOST": "relay", "PLI_SMTP_PORT": "0"})


def test_desk_link_templates_must_name_the_letter(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PLI_HOME", str(tmp_path))
    monkeypatch.setenv("PLI_DESK_ACCEPT_URL_TEMPLATE", "https://desk.test/accept")

    with pytest.raises(SettingsError, match="letter_id"):
        Settings.from_env()


def test_the_outbox_writes_each_message_under_its_message_id(tmp_path: Path) -> None:
    message = EmailMessage()
    message["Message-ID"] = "<0b5e.sender-notice@pli.invalid>"
    message.set_content("x")
    marked = []

    OutboxTransport(tmp_path).send(message, lambda: marked.append(True))

    assert marked == [True]
    assert (tmp_path / "0b5e.sender-notice.eml").read_bytes() == bytes(message)


# STARTTLS: a relay is used only if its certificate verifies.


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smtp.test")])
    now = dt.datetime.now(dt.UTC)
    loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([loopback]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "smtp.crt", folder / "smtp.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def check_login(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    """The relay's accounts: only pli, with its password."""
    if not isinstance(auth_data, LoginPassword):
        return AuthResult(success=False)
    return AuthResult(success=(auth_data.login, auth_data.password) == LOGIN)


LOGIN = (b"pli", b"s3cret")


@pytest.fixture
def tls_relay(tmp_path: Path, mailbox: Mailbox) -> Iterator[tuple[int, Path]]:
    """A relay that requires STARTTLS and a login: its port and certificate."""
    cert_file, key_file = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    port = free_loopback_port()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        server_hostname="smtp.test",
        tls_context=context,
        require_starttls=True,
        auth_required=True,
        authenticator=check_login,
    )
    controller.start()
    yield port, cert_file
    controller.stop()


def deposit_and_run(
    settings: Settings, tmp_path: Path, clock: Any, port: int, ca_file: Path | None
) -> Letter:
    """Deposit one letter through a runtime using the TLS relay; run it."""
    secret = tmp_path / "smtp-password"
    secret.write_text(LOGIN[1].decode() + "\n")
    smtp = SmtpSettings(
        host="127.0.0.1",
        port=port,
        username=LOGIN[0].decode(),
        password_file=secret,
        ca_file=ca_file,
        timeout=5,
    )
    runtime = Runtime.open(replace(settings, smtp=smtp), clock)
    try:
        account = runtime.accounts.register(
            uuid.uuid4(),
            name="SCI Exemple",
            email=SENDER,
            assurance=Assurance.SUBSTANTIAL,
            method=VerificationMethod.NOTIFIED_EID,
            verifier_reference="franceconnect-check-1",
        )
        request = DepositRequest(
            kind=LetterKind.ERE,
            sender_account_id=account.id,
            recipient=Recipient(
                email=RECIPIENT,
                type=RecipientType.PROFESSIONAL,
                given_names="Camille",
                family_name="Martin",
            ),
            subject="",
            attachments=[NewAttachment("avis.pdf", "application/pdf", b"%PDF-1.4")],
        )
        # An ERE needs no second factor: the authoriser checks the account only.
        letter, _ = runtime.letters.deposit(
            uuid.uuid4().hex, request, runtime.authoriser(request, "")
        )
        runtime.runner.run_until_idle()
        return runtime.letters.get(letter.id)
    finally:
        runtime.close()


def test_starttls_and_login_reach_a_relay_whose_certificate_verifies(
    settings: Settings,
    clock: Any,
    tmp_path: Path,
    tls_relay: tuple[int, Path],
    mailbox: Mailbox,
) -> None:
    port, certificate = tls_relay

    letter = deposit_and_run(settings, tmp_path, clock, port, ca_file=certificate)

    assert letter.state is LetterState.NOTIFIED
    [notification] = mailbox.received
    assert "envoi recommandé électronique simple" in notification.text


def test_starttls_keeps_the_message_when_the_relay_certificate_does_not_verify(
    settings: Settings,
    clock: Any,
    tmp_path: Path,
    tls_relay: tuple[int, Path],
    mailbox: Mailbox,
) -> None:
    port, _ = tls_relay

    letter = deposit_and_run(settings, tmp_path, clock, port, ca_file=None)

    assert letter.state is LetterState.DEPOSITED
    assert letter.notification_failures == 0
    assert mailbox.received == []
