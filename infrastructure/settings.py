"""pli's configuration: one typed object read from ``PLI_*`` variables.

The embedded default needs no variable at all: SQLite, the SoftHSM token,
content, proofs and the ``.eml`` outbox all live under ``./var`` (or
``PLI_HOME``). Production sets ``PLI_DATABASE_URL`` to a PostgreSQL URL,
``PLI_PKCS11_MODULE`` to its HSM's module and ``PLI_SMTP_HOST`` to its mail
relay; the README lists every variable. ``PLI_TSA_URL`` points at the
operator's time-stamping authority; without it pli stamps with its built-in,
non-qualified TSA.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from cryptography import x509

from pli.hsm.provision import ROOT_CERT_FILE
from pli.hsm.timestamp import NotQualifiedRoot, refuse_development_roots
from pli.hsm.token import TokenConfig
from pli.infrastructure.smtp import SmtpSettings

__all__ = ["Settings", "SettingsError", "TsaSettings"]

DEFAULT_MAIL_FROM = "pli <no-reply@pli.invalid>"
DEFAULT_ACCEPT_URL = "https://desk.pli.invalid/letters/{letter_id}/accept"
DEFAULT_REFUSE_URL = "https://desk.pli.invalid/letters/{letter_id}/refuse"
DEFAULT_TSA_LISTEN = "127.0.0.1:8318"
_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")


class SettingsError(ValueError):
    """A configuration variable has a value pli cannot use."""


@dataclass(frozen=True)
class TsaSettings:
    """Where time stamps come from and which authorities are believed.

    Without ``url`` pli stamps with its built-in TSA (non-qualified); the
    built-in TSA's HTTP server (``pli tsa serve``) listens on ``listen_host``
    and ``listen_port``. Trust anchors default to the development root
    beside the token; qualified roots default to none, so no stamp counts as
    qualified until the operator names its qualified roots.
    """

    url: str | None = None
    policy: str | None = None
    username: str | None = None
    password_file: Path | None = None
    trust_file: Path | None = None
    qualified_roots_file: Path | None = None
    listen_host: str = "127.0.0.1"
    listen_port: int = 8318
    timeout: float = 10.0
    batching: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> TsaSettings:
        """The ``PLI_TSA_*`` and ``PLI_QUALIFIED_ROOTS`` settings."""
        url = environ.get("PLI_TSA_URL", "").strip() or None
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise SettingsError("PLI_TSA_URL is no http:// or https:// URL")
            if parts.username or parts.password:
                raise SettingsError(
                    "PLI_TSA_URL may not carry credentials; "
                    "use PLI_TSA_USERNAME and PLI_TSA_PASSWORD_FILE"
                )
        policy = environ.get("PLI_TSA_POLICY", "").strip() or None
        if policy is not None and not _OID.fullmatch(policy):
            raise SettingsError(f"PLI_TSA_POLICY={policy!r} is no dotted OID")
        username = environ.get("PLI_TSA_USERNAME") or None
        password_file = _file("PLI_TSA_PASSWORD_FILE", environ)
        if (username is None) != (password_file is None):
            raise SettingsError(
                "PLI_TSA_USERNAME and PLI_TSA_PASSWORD_FILE go together"
            )
        host, port = _listen(environ.get("PLI_TSA_LISTEN", DEFAULT_TSA_LISTEN))
        timeout = environ.get("PLI_TSA_TIMEOUT", "10")
        try:
            seconds = float(timeout)
        except ValueError as exc:
            raise SettingsError(f"PLI_TSA_TIMEOUT={timeout!r} is no number") from exc
        if not seconds > 0:
            raise SettingsError(f"PLI_TSA_TIMEOUT={timeout!r} must be positive")
        settings = cls(
            url=url,
            policy=policy,
            username=username,
            password_file=password_file,
            trust_file=_file("PLI_TSA_TRUST", environ),
            qualified_roots_file=_file("PLI_QUALIFIED_ROOTS", environ),
            listen_host=host,
            listen_port=port,
            timeout=seconds,
            batching=_batching(environ),
        )
        settings.qualified_roots()
        return settings

    def trust_roots(self, certs_dir: Path) -> list[x509.Certificate]:
        """The trust anchors: ``PLI_TSA_TRUST``, else the development root."""
        path = self.trust_file or certs_dir / ROOT_CERT_FILE
        return _certificates(path, "PLI_TSA_TRUST")

    def qualified_roots(self) -> list[x509.Certificate]:
        """The roots whose stamps count as qualified; never a development root."""
        if self.qualified_roots_file is None:
            return []
        roots = _certificates(self.qualified_roots_file, "PLI_QUALIFIED_ROOTS")
        try:
            refuse_development_roots(roots)
        except NotQualifiedRoot as exc:
            raise SettingsError(f"PLI_QUALIFIED_ROOTS: {exc}") from exc
        return roots

    def password(self) -> str | None:
        """The TSA login password, read from its file at each call."""
        if self.password_file is None:
            return None
        try:
            return self.password_file.read_text().rstrip("\r\n")
        except OSError as exc:
            raise SettingsError(
                f"PLI_TSA_PASSWORD_FILE={self.password_file} is unreadable"
            ) from exc


@dataclass(frozen=True)
class Settings:
    """Everything a pli process needs to know about its surroundings."""

    home: Path
    database_url: str
    listen: str
    provider_name: str
    token: TokenConfig
    poll_interval: float
    development_clock: bool
    oidc_issuers: Path | None = None
    content_retention_days: int | None = None
    mail_from: str = DEFAULT_MAIL_FROM
    desk_accept_url_template: str = DEFAULT_ACCEPT_URL
    desk_refuse_url_template: str = DEFAULT_REFUSE_URL
    smtp: SmtpSettings | None = None
    tsa: TsaSettings = field(default_factory=TsaSettings)
    checkpoint_interval: float = 300.0

    @classmethod
    def from_env(cls) -> Settings:
        """Read the settings from the environment, with embedded defaults."""
        home = Path(os.environ.get("PLI_HOME", "var")).resolve()
        interval = os.environ.get("PLI_POLL_INTERVAL", "0.2")
        try:
            poll_interval = float(interval)
        except ValueError as exc:
            raise SettingsError(f"PLI_POLL_INTERVAL={interval!r} is no number") from exc
        if not poll_interval > 0:
            raise SettingsError(
                f"PLI_POLL_INTERVAL={interval!r} must be a positive number of seconds"
            )
        return cls(
            home=home,
            database_url=os.environ.get("PLI_DATABASE_URL", ""),
            listen=os.environ.get("PLI_LISTEN", "127.0.0.1:50051"),
            provider_name=os.environ.get(
                "PLI_PROVIDER_NAME", "pli (development, non-qualified)"
            ),
            token=TokenConfig.from_env(home),
            poll_interval=poll_interval,
            development_clock=os.environ.get("PLI_DEVELOPMENT_CLOCK", "") == "1",
            oidc_issuers=_optional_path("PLI_OIDC_ISSUERS"),
            content_retention_days=_retention_days(),
            mail_from=os.environ.get("PLI_MAIL_FROM", DEFAULT_MAIL_FROM),
            desk_accept_url_template=_desk_template("ACCEPT", DEFAULT_ACCEPT_URL),
            desk_refuse_url_template=_desk_template("REFUSE", DEFAULT_REFUSE_URL),
            smtp=_smtp_settings(),
            tsa=TsaSettings.from_env(),
            checkpoint_interval=_checkpoint_interval(),
        )

    @property
    def is_embedded(self) -> bool:
        """Whether this is the embedded default (SQLite under the home)."""
        return not self.database_url

    @property
    def content_dir(self) -> Path:
        """Where letters' content is stored, addressed by SHA-256."""
        return self.home / "content"

    @property
    def proofs_dir(self) -> Path:
        """Where proof PDFs are written, one folder per letter."""
        return self.home / "proofs"

    @property
    def dev_idp_dir(self) -> Path:
        """Where the development identity provider keeps its key and JWKS."""
        return self.home / "dev-idp"

    @property
    def outbox_dir(self) -> Path:
        """Where the embedded notifier writes its ``.eml`` messages."""
        return self.home / "outbox"

    def eventsourcing_env(self) -> dict[str, str]:
        """The ``eventsourcing`` persistence settings for this database."""
        if self.is_embedded:
            self.home.mkdir(parents=True, exist_ok=True)
            return {
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": str(self.home / "pli.sqlite3"),
                "SQLITE_LOCK_TIMEOUT": "10",
            }
        url = urlsplit(self.database_url)
        if url.scheme not in ("postgresql", "postgres") or not url.path.strip("/"):
            raise SettingsError(
                "PLI_DATABASE_URL must look like postgresql://user@host:port/dbname"
            )
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": unquote(url.path.strip("/")),
            "POSTGRES_HOST": url.hostname or "127.0.0.1",
            "POSTGRES_PORT": str(url.port or 5432),
            "POSTGRES_USER": unquote(url.username or "postgres"),
            "POSTGRES_PASSWORD": unquote(url.password or ""),
            "POSTGRES_POOL_SIZE": os.environ.get("PLI_DATABASE_POOL_SIZE", "10"),
            "POSTGRES_MAX_OVERFLOW": "10",
            "POSTGRES_CONNECT_TIMEOUT": "5",
        }
        return env


def _batching(environ: Mapping[str, str]) -> bool:
    """``PLI_TSA_BATCHING``: 1 (default) shares a request among events."""
    value = environ.get("PLI_TSA_BATCHING", "1").strip()
    if value not in ("0", "1"):
        raise SettingsError(f"PLI_TSA_BATCHING={value!r} must be 0 or 1")
    return value == "1"


def _optional_path(name: str) -> Path | None:
    value = os.environ.get(name, "")
    return Path(value).resolve() if value else None


def _checkpoint_interval() -> float:
    value = os.environ.get("PLI_CHECKPOINT_INTERVAL", "300")
    try:
        interval = float(value)
    except ValueError:
        interval = -1.0
    if not 0 < interval < float("inf"):
        raise SettingsError(
            f"PLI_CHECKPOINT_INTERVAL={value!r} is not a positive number of seconds"
        )
    return interval


def _retention_days() -> int | None:
    value = os.environ.get("PLI_CONTENT_RETENTION_DAYS", "")
    if not value:
        return None
    if not value.isdigit():
        raise SettingsError(
            f"PLI_CONTENT_RETENTION_DAYS={value!r} is not a whole number of days"
        )
    return int(value)


def _desk_template(decision: str, default: str) -> str:
    """A desk link template; ``PLI_DESK_URL_TEMPLATE`` serves both decisions."""
    name = f"PLI_DESK_{decision}_URL_TEMPLATE"
    template = os.environ.get(name) or os.environ.get("PLI_DESK_URL_TEMPLATE")
    if not template:
        return default
    try:
        link = template.format(letter_id="00000000-0000-0000-0000-000000000000")
    except (KeyError, IndexError, ValueError) as exc:
        raise SettingsError(
            f"{name} may hold no placeholder but {{letter_id}}"
        ) from exc
    if link == template:
        raise SettingsError(f"{name} must contain {{letter_id}}")
    return template


def _smtp_settings() -> SmtpSettings | None:
    try:
        return SmtpSettings.from_env()
    except ValueError as exc:
        raise SettingsError(str(exc)) from exc


def _file(name: str, environ: Mapping[str, str]) -> Path | None:
    value = environ.get(name, "")
    if not value:
        return None
    path = Path(value).resolve()
    if not path.is_file():
        raise SettingsError(f"{name}={value!r} is no file")
    return path


def _certificates(path: Path, name: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise SettingsError(f"{name}: no PEM certificates in {path}") from exc
    return certificates


def _listen(value: str) -> tuple[str, int]:
    """A loopback ``host:port`` (``[::1]:port`` for IPv6)."""
    host, _, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(
            f"PLI_TSA_LISTEN={value!r} must be a loopback address and port, "
            "e.g. 127.0.0.1:8318"
        )
    return host, int(port)
