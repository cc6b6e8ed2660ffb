"""Handing e-mail over: to an SMTP server (RFC 5321), or to the ``.eml`` outbox.

Both transports take one message and either return, once it is accepted,
or raise one of three errors the notifier acts on differently:

- :class:`TemporaryMailFailure`: not accepted, worth trying again later (a
  4xx reply, a refused or dropped connection, a failed STARTTLS or login:
  nothing about this message, so nothing the recipient should pay for);
- :class:`PermanentMailFailure`: the server refused this message with a 5xx
  reply to MAIL, RCPT or DATA;
- :class:`DeliveryInDoubt`: the connection was lost during the DATA phase,
  so the server may or may not have taken the message.

``before_data`` is called once the envelope is accepted, right before the
message itself is handed over, so the caller can record durably that the
message may be leaving: that is the only moment after which a crash leaves
the message's fate unknown.
"""

from __future__ import annotations

import logging
import os
import re
import smtplib
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import getaddresses, parseaddr
from pathlib import Path
from typing import Protocol

from pli.infrastructure.files import write_atomically

__all__ = [
    "DeliveryInDoubt",
    "MailFailure",
    "MailTransport",
    "OutboxTransport",
    "PermanentMailFailure",
    "SmtpSettings",
    "SmtpTransport",
    "TemporaryMailFailure",
]

logger = logging.getLogger(__name__)

_OUTBOX_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")


class MailFailure(Exception):
    """The message was not, or not certainly, accepted; ``code`` is the reply."""

    def __init__(self, code: int, stage: str) -> None:
        super().__init__(f"SMTP {stage} failed with code {code}")
        self.code = code
        self.stage = stage


class TemporaryMailFailure(MailFailure):
    """Not accepted this time; the same message may be tried again later."""


class PermanentMailFailure(MailFailure):
    """The server refused the message for good (a 5xx reply)."""


class DeliveryInDoubt(MailFailure):
    """The connection was lost while the message itself was being handed over."""


class MailTransport(Protocol):
    """Something that hands one message over, or raises a :class:`MailFailure`."""

    def send(self, message: EmailMessage, before_data: Callable[[], None]) -> None:
        """Hand ``message`` over, calling ``before_data`` just before its bytes."""
        ...


@dataclass(frozen=True)
class SmtpSettings:
    """Where and how to reach the operator's SMTP relay.

    The password is never held in an environment variable: it is read from
    ``password_file`` at each connection, so it can be rotated in place.
    """

    host: str
    port: int = 587
    starttls: bool = True
    username: str = ""
    password_file: Path | None = None
    ca_file: Path | None = None
    timeout: float = 30.0
    helo_name: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> SmtpSettings | None:
        """The ``PLI_SMTP_*`` settings, or None when no host is configured."""
        host = environ.get("PLI_SMTP_HOST", "").strip()
        if not host:
            return None
        username = environ.get("PLI_SMTP_USERNAME", "")
        password_file = _optional_path(environ.get("PLI_SMTP_PASSWORD_FILE", ""))
        if bool(username) != (password_file is not None):
            raise ValueError("PLI_SMTP_USERNAME and PLI_SMTP_PASSWORD_FILE go together")
        if password_file is not None and not password_file.is_file():
            raise ValueError(f"PLI_SMTP_PASSWORD_FILE={password_file} is no file")
        return cls(
            host=host,
            port=_port(environ.get("PLI_SMTP_PORT", "587")),
            starttls=_flag("PLI_SMTP_STARTTLS", environ.get("PLI_SMTP_STARTTLS", "1")),
            username=username,
            password_file=password_file,
            ca_file=_optional_path(environ.get("PLI_SMTP_CA_FILE", "")),
            timeout=_seconds(environ.get("PLI_SMTP_TIMEOUT", "30")),
            helo_name=environ.get("PLI_SMTP_HELO_NAME", ""),
        )

    def password(self) -> str:
        """The login password, read from its file (trailing newline dropped)."""
        if self.password_file is None:
            return ""
        return self.password_file.read_text().rstrip("\r\n")


def _optional_path(value: str) -> Path | None:
    return Path(value) if value else None


def _port(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ValueError(f"PLI_SMTP_PORT={value!r} is no TCP port")
    return int(value)


def _flag(name: str, value: str) -> bool:
    if value not in ("0", "1"):
        raise ValueError(f"{name}={value!r} must be 0 or 1")
    return value == "1"


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError as exc:
        raise ValueError(f"PLI_SMTP_TIMEOUT={value!r} is no number") from exc
    if seconds <= 0:
        raise ValueError(f"PLI_SMTP_TIMEOUT={value!r} must be positive")
    return seconds


def _failure(code: int, stage: str) -> MailFailure:
    if 500 <= code < 600:
        return PermanentMailFailure(code, stage)
    return TemporaryMailFailure(code, stage)


class SmtpTransport:
    """Sends each message over its own SMTP connection to the configured relay."""

    def __init__(self, settings: SmtpSettings, envelope_from: str) -> None:
        self.settings = settings
        self.envelope_from = parseaddr(envelope_from)[1]

    def send(self, message: EmailMessage, before_data: Callable[[], None]) -> None:
        """Connect, give the envelope, call ``before_data``, then send DATA."""
        recipients = [address for _, address in getaddresses(message.get_all("To", []))]
        data = message.as_bytes(policy=SMTP_POLICY)
        smtp = self._connect()
        try:
            self._envelope(smtp, recipients)
            before_data()
            self._data(smtp, data)
        finally:
            _close(smtp)

    def _connect(self) -> smtplib.SMTP:
        """An open, greeted and (as configured) encrypted and logged-in session."""
        settings = self.settings
        try:
            # An explicit HELO name keeps smtplib from resolving our own name.
            smtp = smtplib.SMTP(
                settings.host,
                settings.port,
                local_hostname=settings.helo_name or socket.gethostname(),
                timeout=settings.timeout,
            )
        except smtplib.SMTPConnectError as refused:
            raise TemporaryMailFailure(refused.smtp_code, "connect") from refused
        except OSError as unreachable:
            raise TemporaryMailFailure(0, "connect") from unreachable
        try:
            self._secure_and_login(smtp)
        except (smtplib.SMTPException, OSError) as failed:
            _close(smtp)
            # A relay that will not talk TLS or take our login is the operator's
            # problem, not the recipient's: keep the message and try again.
            code = getattr(failed, "smtp_code", 0)
            raise TemporaryMailFailure(code, "session") from failed
        return smtp

    def _secure_and_login(self, smtp: smtplib.SMTP) -> None:
        smtp.ehlo()
        if self.settings.starttls:
            cafile = str(self.settings.ca_file) if self.settings.ca_file else None
            smtp.starttls(context=ssl.create_default_context(cafile=cafile))
            smtp.ehlo()
        if self.settings.username:
            smtp.login(self.settings.username, self.settings.password())

    def _envelope(self, smtp: smtplib.SMTP, recipients: list[str]) -> None:
        try:
            code, _ = smtp.mail(self.envelope_from)
            if code != 250:
                raise _failure(code, "MAIL")
            for recipient in recipients:
                code, _ = smtp.rcpt(recipient)
                if code not in (250, 251):
                    raise _failure(code, "RCPT")
        except (smtplib.SMTPServerDisconnected, OSError) as lost:
            raise TemporaryMailFailure(0, "envelope") from lost

    @staticmethod
    def _data(smtp: smtplib.SMTP, data: bytes) -> None:
        try:
            smtp.data(data)
        except smtplib.SMTPDataError as refused:
            raise _failure(refused.smtp_code, "DATA") from refused
        except (smtplib.SMTPServerDisconnected, OSError) as lost:
            raise DeliveryInDoubt(0, "DATA") from lost


def _close(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        # The message's fate is already settled; a QUIT that fails changes
        # nothing, so the socket is simply closed.
        smtp.close()


class OutboxTransport:
    """The embedded default: writes each message to ``<folder>/<name>.eml``.

    The name is the local part of the Message-ID, so writing the same
    message again replaces its file instead of adding one.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def send(self, message: EmailMessage, before_data: Callable[[], None]) -> None:
        """Write the message atomically under its Message-ID."""
        path = self.folder / f"{_outbox_name(message)}.eml"
        before_data()
        try:
            write_atomically(path, bytes(message))
        except OSError as failed:
            # Writing the same file again replaces it, so a retry is harmless.
            raise TemporaryMailFailure(0, "write") from failed


def _outbox_name(message: EmailMessage) -> str:
    message_id = str(message["Message-ID"] or "")
    name = message_id.strip("<>").partition("@")[0]
    if not _OUTBOX_NAME.fullmatch(name):
        raise ValueError("the message has no Message-ID usable as a file name")
    return name
